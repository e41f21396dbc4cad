"""Susceptibility referencing: χ is defined up to a constant (D(0) = 0), so a region is set to zero.

χ_ref = χ − mean(χ over the reference region), applied inside the brain mask. Reference regions: the whole
brain mask (``"mean"``, the most common choice), ventricular CSF (``"csf"``, often preferred for comparisons
across subjects; the QSM consensus paper, QSM Consensus Organization Committee, Magn Reson Med 2024, asks that
the reference region always be reported), or any set of labels (``"roi"``); ``"none"`` leaves χ as it is.
:func:`csf_mask` finds ventricular CSF automatically.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from ._utils import as_real, check_finite, check_mask, check_positive, check_voxel_size, numpy_io, to_tensor

__all__ = ["REFERENCE_METHODS", "CSF_CONTRASTS", "reference", "csf_mask"]

#: Methods accepted by :func:`reference`.
REFERENCE_METHODS = ("mean", "csf", "roi", "none")
#: Image contrasts accepted by :func:`csf_mask`.
CSF_CONTRASTS = ("r2star", "magnitude")


@numpy_io
def reference(
    chi: Tensor,
    mask: Tensor,
    *,
    method: str = "mean",
    labels: Tensor | None = None,
    roi_labels: int | Iterable[int] | None = None,
    csf_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference susceptibility maps: returns (χ − ref inside ``mask``, ref), χ and ref in ppm.

    ref = mean of χ over the reference region R ∩ mask, where R is the mask itself (``"mean"``), ``csf_mask``
    (``"csf"``; e.g. from :func:`csf_mask`), the voxels whose ``labels`` value is in ``roi_labels``
    (``"roi"``), or nothing (``"none"``, ref = 0). Voxels outside ``mask`` are returned untouched.
    ``chi`` may carry leading batch dims (…, X, Y, Z); ref then has shape (…) (0-dim for one volume).
    """
    x = as_real(chi, "chi")
    if x.dim() < 3:
        raise ValueError(f"chi: expected a volume (…, X, Y, Z), got shape {tuple(x.shape)}")
    m = check_mask(mask, x.shape[-3:], device=x.device)
    check_finite(x, "chi", m.expand(x.shape))
    if method not in REFERENCE_METHODS:
        raise ValueError(f"method: expected one of {REFERENCE_METHODS}, got {method!r}")
    if method == "none":
        return x.clone(), torch.zeros(x.shape[:-3], dtype=x.dtype, device=x.device)
    if method == "mean":
        region = m
    elif method == "csf":
        if csf_mask is None:
            raise ValueError("csf_mask: method 'csf' needs a CSF mask (see qsmbids.qsm.reference.csf_mask)")
        region = check_mask(csf_mask, x.shape[-3:], name="csf_mask", device=x.device) & m
        if not bool(region.any()):
            raise ValueError("csf_mask: no CSF voxel lies inside the brain mask")
    else:
        if labels is None or roi_labels is None:
            raise ValueError("labels: method 'roi' needs labels and roi_labels")
        lab = to_tensor(labels) if not isinstance(labels, Tensor) else labels
        if tuple(lab.shape) != tuple(x.shape[-3:]):
            raise ValueError(f"labels: expected shape {tuple(x.shape[-3:])}, got {tuple(lab.shape)}")
        wanted = [int(roi_labels)] if isinstance(roi_labels, (int, np.integer)) else [int(v) for v in roi_labels]
        if not wanted:
            raise ValueError("roi_labels: expected at least one label value")
        lab = lab.to(x.device)
        region = torch.isin(lab, torch.tensor(wanted, dtype=lab.dtype, device=x.device)) & m
        if not bool(region.any()):
            raise ValueError(f"roi_labels: no voxel of labels {wanted} lies inside the brain mask")
    ref = x[..., region].mean(-1)
    out = torch.where(m, x - ref[..., None, None, None], x)
    return out, ref


def _ball(radius_mm: float, voxel_size: tuple[float, ...]) -> np.ndarray:
    r = [int(math.floor(radius_mm / d + 1e-9)) for d in voxel_size]
    axes = [np.arange(-n, n + 1) * d for n, d in zip(r, voxel_size)]
    X, Y, Z = np.meshgrid(*axes, indexing="ij")
    return (X**2 + Y**2 + Z**2) <= radius_mm**2 + 1e-9


@numpy_io
def csf_mask(
    image: Tensor,
    mask: Tensor,
    *,
    contrast: str = "r2star",
    threshold: float | None = None,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    central_fraction: float = 0.5,
    erode_mm: float = 1.0,
    min_size_mm3: float = 20.0,
) -> Tensor:
    """Automatic ventricular CSF mask (boolean, X×Y×Z) from an R2* map or a late-echo magnitude.

    Heuristic (our own; thresholds from typical 3 T values):

    1. candidates inside ``mask``: R2* < ``threshold`` (default 5 s⁻¹; CSF ≈ 1–3 s⁻¹, grey and white matter
       ≈ 15–25 s⁻¹ at 3 T; voxels clipped to 0 count as CSF), or for ``contrast="magnitude"`` |S| >
       ``threshold`` (default 0.6 × the 99.9th percentile inside the mask: at TE ≈ 20–30 ms CSF is about twice
       as bright as white matter). Scale the R2* threshold with field strength (≈ ×2 at 7 T);
    2. erosion by a ball of ``erode_mm`` (drops partial-volume voxels and thin sulcal CSF);
    3. connected components (face connectivity) of at least ``min_size_mm3`` whose centroid lies within
       ``central_fraction`` of the brain's half-extent from the brain's centroid (normalised ellipsoidal
       distance) — the ventricles are central, extra-axial CSF and the fit failures at the rim are not.

    Raises ValueError when nothing survives (choose ``reference(method="mean")`` instead).
    """
    img = as_real(image, "image")
    if img.dim() != 3:
        raise ValueError(f"image: expected a 3-D map (X, Y, Z), got shape {tuple(img.shape)}")
    m = check_mask(mask, img.shape, device=img.device)
    check_finite(img, "image", m)
    vs = check_voxel_size(voxel_size)
    if contrast not in CSF_CONTRASTS:
        raise ValueError(f"contrast: expected one of {CSF_CONTRASTS}, got {contrast!r}")
    if not (0 < float(central_fraction) <= 1.5):
        raise ValueError(f"central_fraction: expected a value in (0, 1.5], got {central_fraction!r}")
    if not (float(erode_mm) >= 0 and math.isfinite(float(erode_mm))):
        raise ValueError(f"erode_mm: expected a finite value >= 0 in mm, got {erode_mm!r}")
    if not (float(min_size_mm3) >= 0):
        raise ValueError(f"min_size_mm3: expected a value >= 0, got {min_size_mm3!r}")
    from scipy import ndimage

    a = img.detach().cpu().numpy().astype(np.float64)
    mk = m.detach().cpu().numpy()
    if contrast == "r2star":
        thr = 5.0 if threshold is None else check_positive(threshold, "threshold")
        cand = mk & (a < thr)
    else:
        thr = 0.6 * float(np.percentile(a[mk], 99.9)) if threshold is None else check_positive(threshold, "threshold")
        cand = mk & (a > thr)
    if erode_mm > 0:
        cand = ndimage.binary_erosion(cand, structure=_ball(float(erode_mm), vs))
    lab, n = ndimage.label(cand)
    keep = np.zeros_like(cand)
    if n:
        idx = np.arange(1, n + 1)
        sizes = ndimage.sum_labels(np.ones_like(a), lab, idx) * float(np.prod(vs))
        cents = np.asarray(ndimage.center_of_mass(cand, lab, idx), dtype=np.float64).reshape(n, 3)
        coords = np.nonzero(mk)
        c0 = np.array([c.mean() for c in coords])
        half = np.array([max((c.max() - c.min()) / 2.0, 0.5) for c in coords])
        dist = np.sqrt((((cents - c0) / half) ** 2).sum(1))
        good = idx[(sizes >= float(min_size_mm3)) & (dist <= float(central_fraction))]
        keep = np.isin(lab, good)
    if not keep.any():
        raise ValueError(
            f"image: no central CSF-like region found ({contrast} threshold {thr:.3g}, erosion {erode_mm} mm); "
            "use reference method 'mean' or pass csf_mask yourself"
        )
    return torch.from_numpy(keep).to(img.device)
