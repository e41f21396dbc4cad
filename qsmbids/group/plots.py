"""Figures of the group report: the study-wide plots of regions of interest (per-region box/strip plot, χ against
age). The atlas overlay of one run is a participant reportlet (:func:`qsmbids.reports.reportlets.plot_dseg_overlay`).

Same habits as :mod:`qsmbids.reports.reportlets`: matplotlib's object API on an Agg canvas (no pyplot state in
long-lived workers), deterministic SVG bytes (fixed hash salt, no date, seeded jitter), text kept as text.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# the reportlets' habits, so that the group figures look like every figure of the participant report
from ..reports.reportlets import LABEL_COLOURS, save_svg, svg_rc

__all__ = ["plot_roi_box", "plot_roi_covariate"]


def _region_order(names: Sequence[str]) -> list[str]:
    """Regions grouped by structure, left before right (``Left_Putamen`` next to ``Right_Putamen``)."""
    def key(n: str):
        low = n.lower()
        side = 0 if low.startswith("left") or low.endswith(("_l", "left")) else 1
        base = low.replace("left", "").replace("right", "").strip("_- ")
        return base, side, n
    return sorted(dict.fromkeys(names), key=key)


@svg_rc
def plot_roi_box(table, out_file: str | os.PathLike, *, value: str = "mean", units: str = "ppm") -> str:
    """Per-region box plot of ``value`` across runs, every run a point (jittered, coloured by participant)."""
    regions = _region_order(list(table["roi"]))
    participants = sorted(table["participant"].unique())
    colour = {p: LABEL_COLOURS[i % len(LABEL_COLOURS)] for i, p in enumerate(participants)}
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
    return save_svg(fig, out_file)


@svg_rc
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
    return save_svg(fig, out_file)
