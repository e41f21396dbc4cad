"""Report figures ("reportlets"): small, deterministic SVG files for the visual report.

Every function takes NIfTI paths (or nibabel images, or arrays already in RAS voxel order) and writes one SVG.

Why these choices:

* Matplotlib's object API with an explicit Agg canvas (never :mod:`matplotlib.pyplot`), so building a figure
  leaves no global state behind in a long-running nipype worker; rc settings only inside ``rc_context``.
* Reproducible bytes: ``svg.hashsalt`` fixes the element ids, the ``Date`` metadata is dropped and images are
  embedded at their native voxel resolution (``interpolation="none"``), so the same input gives the same file
  (re-running a pipeline does not produce spurious report diffs). Text stays text (``svg.fonttype="none"``):
  smaller files, searchable numbers.
* Images are reoriented to the closest canonical (RAS+) orientation before slicing and shown in the neurological
  convention used by nilearn/fMRIPrep (subject's left on the left of axial and coronal views); every panel carries
  its orientation letters on both sides so nobody has to guess.
* Windows are fixed where the physics gives a natural scale (χ ±0.15 ppm as asked in issue #4, local field
  ±0.05 ppm, R2* 0–60 s⁻¹) so runs and subjects are visually comparable; data-driven only where the scale is
  arbitrary (total field: symmetric 99th percentile in Hz; SWI/minIP: 1st–99th percentile, a.u.).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nibabel as nb
import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["LABEL_COLOURS", "MAP_STYLES", "SVG_RC", "MapStyle", "load_ras", "map_window", "plot_accuracy",
           "plot_dseg_overlay", "plot_map", "plot_mask", "save_svg", "svg_rc"]

SVG_RC: dict[str, Any] = {
    "svg.hashsalt": "qsmbids",
    "svg.fonttype": "none",
    "font.size": 8.0,
    "axes.titlesize": 8.0,
    "image.origin": "lower",
}
_BACKGROUND = "#1f2a36"  # outside the mask: a dark slate, distinct from any grey level of the maps
_LETTER = "#ffd54a"
#: colours of labels (atlas regions) and of participants in the group plots, in order
LABEL_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                 "#17becf", "#393b79", "#ad494a", "#637939", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1")


@dataclass(frozen=True)
class MapStyle:
    """How one kind of map is shown. ``auto`` picks the window when ``vmin``/``vmax`` are None."""

    label: str
    units: str
    cmap: str = "gray"
    vmin: float | None = None
    vmax: float | None = None
    auto: str = "percentile"  # "percentile" (1..99 in the mask) or "symmetric" (± 99th percentile of |x|)


MAP_STYLES: dict[str, MapStyle] = {
    "chimap": MapStyle("Susceptibility χ", "ppm", "gray", -0.15, 0.15),
    "localfield": MapStyle("Local field", "ppm", "gray", -0.05, 0.05),
    "totalfield": MapStyle("Total field", "Hz", "RdBu_r", auto="symmetric"),
    "r2star": MapStyle("R2*", "1/s", "inferno", 0.0, 60.0),
    "swi": MapStyle("SWI", "a.u.", "gray", auto="percentile"),
    "minip": MapStyle("minIP", "a.u.", "gray", auto="percentile"),
}


# --------------------------------------------------------------------------------------------------------------
# loading


def load_ras(img: Any, *, first_volume: bool = True) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Data (float64, 3-D), voxel size (mm) and affine in the closest canonical (RAS+) orientation.

    ``img``: a path, a nibabel image, or an array taken as already RAS-ordered with 1 mm voxels. 4-D input keeps
    its first volume (the first echo of a multi-echo magnitude) when ``first_volume``.
    """
    if isinstance(img, (str, os.PathLike)):
        img = nb.load(os.fspath(img))
    if isinstance(img, nb.spatialimages.SpatialImage):
        img = nb.as_closest_canonical(img)
        data = np.asanyarray(img.dataobj)
        affine = img.affine
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    else:
        data = np.asarray(img)
        affine = np.eye(4)
        zooms = (1.0, 1.0, 1.0)
    data = np.asarray(data, dtype=np.float64)
    while data.ndim > 3 and first_volume:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D volume (or 4-D with first_volume), got shape {data.shape}")
    return data, zooms, affine


def _load_mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    m = load_ras(mask)[0] > 0.5
    if m.shape != shape:
        raise ValueError(f"mask: expected shape {shape} (same grid as the image), got {m.shape}")
    return m


def map_window(data: np.ndarray, mask: np.ndarray | None, auto: str = "percentile") -> tuple[float, float]:
    """Display window from the finite voxels in ``mask``: 1st–99th percentile, or ± the 99th percentile of |x|."""
    sel = np.isfinite(data) if mask is None else (mask & np.isfinite(data))
    v = data[sel]
    if v.size == 0:
        return (-1.0, 1.0) if auto == "symmetric" else (0.0, 1.0)
    if auto == "symmetric":
        a = float(np.percentile(np.abs(v), 99))
        a = a if a > 0 else 1.0
        return -a, a
    if auto != "percentile":
        raise ValueError(f"auto: expected 'percentile' or 'symmetric', got {auto!r}")
    lo, hi = (float(x) for x in np.percentile(v, [1, 99]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


# --------------------------------------------------------------------------------------------------------------
# drawing helpers


def _cuts(mask: np.ndarray | None, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Voxel indices of the three planes: the mask centroid, or the volume centre for an empty/absent mask."""
    if mask is None or not mask.any():
        return tuple(int(s // 2) for s in shape)  # type: ignore[return-value]
    c = np.argwhere(mask).mean(axis=0)
    return tuple(round(float(x)) for x in c)  # type: ignore[return-value]


def _bbox(mask: np.ndarray | None, shape: tuple[int, ...], margin: float = 0.08) -> list[slice]:
    """Bounding box of the mask plus a margin (fraction of the box), or the whole field of view."""
    if mask is None or not mask.any():
        return [slice(0, s) for s in shape]
    idx = np.argwhere(mask)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    pad = np.ceil((hi - lo) * margin).astype(int) + 1
    return [slice(max(int(a - p), 0), min(int(b + p), s)) for a, b, p, s in zip(lo, hi, pad, shape)]


_PLANES = (  # (name, fixed axis, letters left/right/bottom/top)
    ("sagittal", 0, ("P", "A", "I", "S")),
    ("coronal", 1, ("L", "R", "I", "S")),
    ("axial", 2, ("L", "R", "P", "A")),
)


def _panels(data: np.ndarray, cuts: Sequence[int], box: Sequence[slice], zooms: Sequence[float]):
    """Yield (name, axis, letters, 2-D slice transposed for imshow, extent in mm) for the three planes."""
    for name, axis, letters in _PLANES:
        sl = [box[0], box[1], box[2]]
        sl[axis] = cuts[axis]
        plane = data[tuple(sl)].T  # rows: the later axis (up), columns: the earlier axis (right)
        a, b = [ax for ax in range(3) if ax != axis]
        extent = (0.0, plane.shape[1] * zooms[a], 0.0, plane.shape[0] * zooms[b])
        yield name, axis, letters, plane, extent


def _new_figure(data: np.ndarray, box: Sequence[slice], zooms: Sequence[float], extra_h: float = 0.0):
    """Figure with three panels whose widths follow each plane's physical aspect (equal heights)."""
    dims = [(box[i].stop - box[i].start) * zooms[i] for i in range(3)]
    ratios = [dims[1] / dims[2], dims[0] / dims[2], dims[0] / dims[1]]
    height = 2.6
    width = min(max(height * sum(ratios) * 1.05, 6.0), 11.0)
    fig = Figure(figsize=(width, height + extra_h), layout="constrained", facecolor="white")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, width_ratios=ratios)
    return fig, axes


def _decorate(ax, name: str, letters: Sequence[str], coord_mm: float, axis: int) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_title(f"{name}, {'xyz'[axis]} = {coord_mm:+.1f} mm")
    kw = {"transform": ax.transAxes, "color": _LETTER, "fontsize": 8, "fontweight": "bold"}
    ax.text(0.02, 0.5, letters[0], ha="left", va="center", **kw)
    ax.text(0.98, 0.5, letters[1], ha="right", va="center", **kw)
    ax.text(0.5, 0.02, letters[2], ha="center", va="bottom", **kw)
    ax.text(0.5, 0.98, letters[3], ha="center", va="top", **kw)


def _world(affine: np.ndarray, cuts: Sequence[int]) -> np.ndarray:
    return (affine @ np.array([*cuts, 1.0]))[:3]


def _fmt(v: float) -> str:
    return f"{v:.3g}".replace("-", "\u2212")


def save_svg(fig: Figure, out_file: str | os.PathLike) -> str:
    out = os.fspath(out_file)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with rc_context(SVG_RC):
        fig.savefig(out, format="svg", metadata={"Date": None}, facecolor=fig.get_facecolor())
    return os.path.abspath(out)


def svg_rc(fn):
    """Build the figure under the report's rc settings (font sizes, SVG hash salt)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with rc_context(SVG_RC):
            return fn(*args, **kwargs)
    return wrapper


# --------------------------------------------------------------------------------------------------------------
# public figures


def plot_mask(magnitude: Any, mask: Any, out_file: str | os.PathLike) -> dict[str, Any]:
    """First-echo magnitude in three orthogonal planes through the mask centroid, with the mask outline.

    The whole field of view is shown so that brain left outside the mask (or scalp kept in it) is visible.
    Greyscale window: 0.5th percentile of the non-zero magnitude to the 99.5th percentile inside the mask (brain
    contrast first; brighter scalp saturates). Returns the written path, the cut
    (voxel indices in RAS orientation) and the window.
    """
    with rc_context(SVG_RC):
        data, zooms, affine = load_ras(magnitude)
        m = _load_mask(mask, data.shape)
        nz = np.isfinite(data) & (data != 0)
        lo = float(np.percentile(data[nz], 0.5)) if nz.any() else 0.0
        inside = data[nz & m] if (nz & m).any() else data[nz]
        hi = float(np.percentile(inside, 99.5)) if inside.size else 1.0
        hi = hi if hi > lo else lo + 1.0
        cuts = _cuts(m, data.shape)
        box = _bbox(None, data.shape)
        world = _world(affine, cuts)
        fig, axes = _new_figure(data, box, zooms)
        clean = np.nan_to_num(data)
        mplanes = [p[3] for p in _panels(m.astype(float), cuts, box, zooms)]
        for ax, mplane, (name, axis, letters, plane, extent) in zip(axes, mplanes, _panels(clean, cuts, box, zooms)):
            ax.set_facecolor("black")
            ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="none", aspect="equal")
            if mplane.any() and not mplane.all():
                ax.contour(mplane, levels=[0.5], colors="#ff3b30", linewidths=0.9, extent=extent, origin="lower")
            _decorate(ax, name, letters, float(world[axis]), axis)
        fig.suptitle(f"Brain mask ({int(m.sum())} voxels, {m.sum() * np.prod(zooms) / 1000:.1f} mL)", fontsize=9)
        out = save_svg(fig, out_file)
    return {"out_file": out, "cuts": cuts, "vmin": lo, "vmax": hi}


def plot_map(
    img: Any,
    mask: Any,
    out_file: str | os.PathLike,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "gray",
    label: str = "",
    units: str = "",
    auto: str = "percentile",
) -> dict[str, Any]:
    """A parametric map in three planes through the mask centroid, cropped to the mask, with a colourbar.

    Voxels outside ``mask`` are left transparent over a dark slate background (never confused with a grey
    level). The window is exactly [``vmin``, ``vmax``] (values beyond are clipped to the end colours, shown by
    the colourbar's arrows); when either is None it comes from :func:`map_window` with ``auto``. ``mask`` may be
    None (whole volume). Returns the written path, cut and window.
    """
    with rc_context(SVG_RC):
        data, zooms, affine = load_ras(img)
        m = None if mask is None else _load_mask(mask, data.shape)
        if vmin is None or vmax is None:
            lo, hi = map_window(data, m, auto)
            vmin = lo if vmin is None else vmin
            vmax = hi if vmax is None else vmax
        if not vmax > vmin:
            raise ValueError(f"vmax: expected a value above vmin={vmin}, got {vmax}")
        cuts = _cuts(m, data.shape)
        box = _bbox(m, data.shape)
        world = _world(affine, cuts)
        hidden = ~np.isfinite(data) if m is None else (~m | ~np.isfinite(data))
        shown = np.ma.masked_array(np.nan_to_num(data), mask=hidden)
        fig, axes = _new_figure(data, box, zooms, extra_h=0.45)
        im = None
        for ax, (name, axis, letters, plane, extent) in zip(axes, _panels(shown, cuts, box, zooms)):
            ax.set_facecolor(_BACKGROUND)
            im = ax.imshow(plane, cmap=cmap, vmin=vmin, vmax=vmax, extent=extent, interpolation="none", aspect="equal")
            _decorate(ax, name, letters, float(world[axis]), axis)
        ticks = [vmin, (vmin + vmax) / 2.0, vmax]
        cbar = fig.colorbar(im, ax=list(axes), orientation="horizontal", extend="both", shrink=0.45, aspect=35)
        cbar.set_ticks(ticks, labels=[_fmt(t) for t in ticks])
        cbar.set_label(f"{label} ({units})" if units else label)
        out = save_svg(fig, out_file)
    return {"out_file": out, "cuts": cuts, "vmin": float(vmin), "vmax": float(vmax)}


def plot_accuracy(
    est_means: Sequence[float],
    truth_means: Sequence[float],
    names: Sequence[str] | None,
    out_file: str | os.PathLike,
    *,
    units: str = "ppm",
    title: str = "Estimate vs ground truth",
) -> dict[str, Any]:
    """Scatter of estimated vs true values (e.g. regional means) with the identity line and the fitted line.

    The least-squares slope (estimate ≈ slope·truth + intercept) is what the QSM challenge's deep-grey-matter
    linearity scores (|1 − slope|). ``names`` labels the points (None for anonymous points, e.g. voxels).
    """
    est = np.asarray(est_means, dtype=np.float64).ravel()
    tru = np.asarray(truth_means, dtype=np.float64).ravel()
    if est.shape != tru.shape or est.size == 0:
        raise ValueError(f"est_means/truth_means: expected two non-empty sequences of equal length, got "
                         f"{est.size} and {tru.size}")
    slope = intercept = float("nan")
    if est.size >= 2 and np.ptp(tru) > 0:
        slope, intercept = (float(v) for v in np.polyfit(tru, est, 1))
    with rc_context(SVG_RC):
        fig = Figure(figsize=(4.2, 4.0), layout="constrained", facecolor="white")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        lo = float(min(est.min(), tru.min()))
        hi = float(max(est.max(), tru.max()))
        pad = 0.08 * (hi - lo) if hi > lo else 0.05
        lims = (lo - pad, hi + pad)
        ax.plot(lims, lims, color="0.55", lw=1, ls="--", label="identity")
        if np.isfinite(slope):
            xs = np.asarray(lims)
            ax.plot(xs, slope * xs + intercept, color="#d0342c", lw=1.2,
                    label=f"fit: slope {slope:.2f}, intercept {_fmt(intercept)}")
        small = names is None or len(est) > 60
        ax.scatter(tru, est, s=6 if small else 22, color="#1f5fa8", alpha=0.5 if small else 0.9, lw=0)
        if names is not None and len(names) == len(est) and not small:
            span = lims[1] - lims[0]
            for k, (x, y, n) in enumerate(zip(tru, est, names)):
                # alternate sides so left/right pairs of a nucleus do not overprint; keep labels inside the axes
                left = (k % 2 == 0 or x > lims[0] + 0.75 * span) and x > lims[0] + 0.3 * span
                short = re.sub(r"[_ ](left|right)$", lambda g: " " + g.group(1)[0].upper(), str(n)).replace("_", " ")
                up = k % 2 == 0
                ax.annotate(short, (x, y), xytext=(-4 if left else 4, 2 if up else -2), textcoords="offset points",
                            fontsize=6, ha="right" if left else "left", va="bottom" if up else "top")
        ax.set_xlim(lims)
        ax.set_ylim(lims)
        ax.set_aspect("equal")
        ax.set_xlabel(f"ground truth ({units})")
        ax.set_ylabel(f"estimate ({units})")
        ax.set_title(title)
        ax.grid(True, lw=0.3, color="0.85")
        ax.legend(loc="upper left", fontsize=7, frameon=False)
        out = save_svg(fig, out_file)
    return {"out_file": out, "slope": slope, "intercept": intercept}


@svg_rc
def plot_dseg_overlay(background: Any, dseg: Any, out_file: str | os.PathLike, *,
                      names: dict[int, str] | None = None) -> str:
    """Labels in colour over the (first-echo) magnitude, three planes through the labelled voxels' centre."""
    bg, zooms, affine = load_ras(background)
    lab = np.rint(load_ras(dseg)[0]).astype(np.int64)
    if lab.shape != bg.shape:
        raise ValueError(f"dseg: expected the background's grid {bg.shape}, got {lab.shape}")
    present = [int(v) for v in np.unique(lab) if v != 0]
    colour = {v: LABEL_COLOURS[i % len(LABEL_COLOURS)] for i, v in enumerate(present)}
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
    return save_svg(fig, out_file)
