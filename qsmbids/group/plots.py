"""Figures of regions of interest: the atlas overlay of one run (participant report) and the study-wide plots of the
group report (per-region box/strip plot, χ against age).

Same habits as :mod:`qsmbids.reports.reportlets`: matplotlib's object API on an Agg canvas (no pyplot state in
long-lived workers), deterministic SVG bytes (fixed hash salt, no date, seeded jitter), text kept as text.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# the reportlets' panel helpers, so that the overlay looks like every other figure of the participant report
from ..reports.reportlets import (
    SVG_RC,
    _bbox,
    _cuts,
    _decorate,
    _new_figure,
    _panels,
    _save,
    _world,
    load_ras,
)

__all__ = ["plot_dseg_overlay", "plot_roi_box", "plot_roi_covariate"]

_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#393b79", "#ad494a", "#637939", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1")


def _svg_rc(fn):
    """Build the figure under the report's rc settings (font sizes, SVG hash salt)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with rc_context(SVG_RC):
            return fn(*args, **kwargs)
    return wrapper


def _region_order(names: Sequence[str]) -> list[str]:
    """Regions grouped by structure, left before right (``Left_Putamen`` next to ``Right_Putamen``)."""
    def key(n: str):
        low = n.lower()
        side = 0 if low.startswith("left") or low.endswith(("_l", "left")) else 1
        base = low.replace("left", "").replace("right", "").strip("_- ")
        return base, side, n
    return sorted(dict.fromkeys(names), key=key)


@_svg_rc
def plot_dseg_overlay(background: Any, dseg: Any, out_file: str | os.PathLike, *,
                      names: dict[int, str] | None = None) -> str:
    """Labels in colour over the (first-echo) magnitude, three planes through the labelled voxels' centre."""
    bg, zooms, affine = load_ras(background)
    lab = np.rint(load_ras(dseg)[0]).astype(np.int64)
    if lab.shape != bg.shape:
        raise ValueError(f"dseg: expected the background's grid {bg.shape}, got {lab.shape}")
    present = [int(v) for v in np.unique(lab) if v != 0]
    colour = {v: _COLOURS[i % len(_COLOURS)] for i, v in enumerate(present)}
    from matplotlib.colors import ListedColormap

    lut = np.zeros(max(present, default=0) + 1, np.int64)
    for i, v in enumerate(present, start=1):
        lut[v] = i
    cmap = ListedColormap(["#000000"] + [colour[v] for v in present]) if present else None
    cuts = list(_cuts(lab > 0 if present else bg > 0, bg.shape))
    if present:  # sagittal plane through the largest region (the regions' centre is often between hemispheres)
        big = max(present, key=lambda v: int((lab == v).sum()))
        cuts[0] = _cuts(lab == big, bg.shape)[0]
    box = _bbox(bg > np.percentile(bg[bg > 0], 5) if (bg > 0).any() else None, bg.shape)
    lo, hi = (np.percentile(bg[bg > 0], [1, 99]) if (bg > 0).any() else (0.0, 1.0))
    fig, axes = _new_figure(bg, box, zooms, extra_h=0.5)
    world = _world(affine, cuts)
    for ax, (name, axis, letters, plane, extent) in zip(axes, _panels(bg, cuts, box, zooms)):
        ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="none", origin="lower")
        if present:
            lp = next(p for n2, a2, _, p, _ in _panels(lab, cuts, box, zooms) if a2 == axis)
            idx = lut[np.clip(lp, 0, lut.size - 1)]
            ax.imshow(np.ma.masked_equal(idx, 0), cmap=cmap, vmin=0, vmax=len(present), alpha=0.65,
                      extent=extent, interpolation="none", origin="lower")
        _decorate(ax, name, letters, float(world[axis]), axis)
    if present:
        from matplotlib.patches import Patch

        handles = [Patch(color=colour[v], label=(names or {}).get(v, str(v))) for v in present]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(7, len(handles)), fontsize=6,
                   frameon=False)
    return _save(fig, out_file)


@_svg_rc
def plot_roi_box(table, out_file: str | os.PathLike, *, value: str = "mean", units: str = "ppm") -> str:
    """Per-region box plot of ``value`` across runs, every run a point (jittered, coloured by participant)."""
    regions = _region_order(list(table["roi"]))
    participants = sorted(table["participant"].unique())
    colour = {p: _COLOURS[i % len(_COLOURS)] for i, p in enumerate(participants)}
    width = min(max(6.0, 0.55 * len(regions) + 2.0), 16.0)
    fig = Figure(figsize=(width, 4.2), layout="constrained", facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    data = [table.loc[table["roi"] == r, value].to_numpy(float) for r in regions]
    data = [d[np.isfinite(d)] for d in data]
    ax.boxplot([d if d.size else [np.nan] for d in data], positions=np.arange(len(regions)), widths=0.6,
               showfliers=False, medianprops={"color": "#333333"}, boxprops={"color": "#777777"},
               whiskerprops={"color": "#777777"}, capprops={"color": "#777777"})
    for i, r in enumerate(regions):
        sub = table[(table["roi"] == r) & np.isfinite(table[value].astype(float))]
        x = i + rng.uniform(-0.18, 0.18, len(sub))
        ax.scatter(x, sub[value].astype(float), s=14, c=[colour[p] for p in sub["participant"]], zorder=3,
                   edgecolors="white", linewidths=0.4)
    ax.axhline(0.0, color="#bbbbbb", lw=0.6, zorder=0)
    ax.set_xticks(np.arange(len(regions)), [r.replace("_", " ") for r in regions], rotation=45, ha="right")
    ax.set_ylabel(f"{value} χ ({units})")
    ax.set_title(f"Regional {value} susceptibility: {len(participants)} participant"
                 f"{'s' if len(participants) != 1 else ''}, {table[['participant', 'session', 'acq', 'run']].drop_duplicates().shape[0]} run(s)")
    if len(participants) <= 20:
        from matplotlib.lines import Line2D

        ax.legend(handles=[Line2D([], [], ls="", marker="o", color=colour[p], label=f"sub-{p}")
                           for p in participants], fontsize=6, ncols=min(10, len(participants)), frameon=False,
                  loc="upper left", bbox_to_anchor=(0, -0.35))
    return _save(fig, out_file)


@_svg_rc
def plot_roi_covariate(table, out_file: str | os.PathLike, *, covariate: str = "age", value: str = "mean",
                       units: str = "ppm") -> str:
    """One panel per region: ``value`` against a numeric participant column, with the least-squares line and r."""
    regions = _region_order(list(table["roi"]))
    ncol = min(4, len(regions))
    nrow = int(np.ceil(len(regions) / ncol))
    fig = Figure(figsize=(2.6 * ncol, 2.1 * nrow + 0.3), layout="constrained", facecolor="white")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    for ax, r in zip(axes, regions):
        sub = table[table["roi"] == r]
        x, y = sub[covariate].astype(float).to_numpy(), sub[value].astype(float).to_numpy()
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[ok], y[ok], s=12, color="#1f5fa8", edgecolors="white", linewidths=0.4)
        title = r.replace("_", " ")
        if ok.sum() >= 3 and np.ptp(x[ok]) > 0:
            slope, icpt = np.polyfit(x[ok], y[ok], 1)
            xs = np.linspace(x[ok].min(), x[ok].max(), 2)
            ax.plot(xs, slope * xs + icpt, color="#b45309", lw=1)
            title += f"\nr = {np.corrcoef(x[ok], y[ok])[0, 1]:.2f}, n = {int(ok.sum())}"
        ax.set_title(title, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_xlabel(covariate, fontsize=6)
        ax.set_ylabel(f"χ ({units})", fontsize=6)
    for ax in axes[len(regions):]:
        ax.set_visible(False)
    fig.suptitle(f"Regional {value} susceptibility against {covariate}", fontsize=8)
    return _save(fig, out_file)
