"""Brain masks from the magnitude (Otsu / robust-range threshold) and from the phase quality (ROMEO-style).

Two complementary cues: the magnitude is bright where there is tissue, and the phase is *coherent* (smooth,
neighbour differences well below π) only where there is signal; pure-noise background has random phase.
The phase-quality map follows the edge weights of ROMEO (Dymerska et al., Magn Reson Med 2021): every pair
of 6-neighbours gets a weight in [0, 1] that is the product of

* phase coherence        c_pc = 1 − |wrap(φ_j − φ_i)| / π,
* gradient coherence     c_gc = max(0, 1 − |wrap(Δφ₁) − wrap(Δφ₂)·TE₁/TE₂|)     (two echoes),
* magnitude coherence    c_mc = (min(M_i, M_j) / max(M_i, M_j))²,
* magnitude weight       c_mw = 0.5 + 0.5·min(1, min(M_i, M_j) / (0.5·M_ref)),

and a voxel's quality is the mean weight of its neighbour edges. ``M_ref`` is the 99th percentile of the
finite magnitude (a robust maximum). The same edge weights drive :func:`qsmbids.qsm.unwrap.unwrap_quality`.

NaN/Inf in phase or magnitude mark voxels as invalid: their edges weigh 0 and they are never part of a mask
(also not after hole filling). Morphology (hole filling, connected components, erosion) is sequential and
runs with :mod:`scipy.ndimage` on the CPU; masks are returned on the input's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from ._utils import (
    as_real,
    check_echo_times,
    check_mask,
    check_positive,
    check_same_shape,
    check_voxel_size,
    numpy_io,
    to_tensor,
)

__all__ = [
    "MASK_METHODS",
    "otsu_threshold",
    "magnitude_mask",
    "edge_weights",
    "phase_quality",
    "quality_mask",
    "brain_mask",
    "refine_mask",
]

#: Names accepted by :func:`brain_mask`.
MASK_METHODS: tuple[str, ...] = ("combined", "magnitude", "quality")

#: Default quality thresholds (ours, measured on the 64³ head phantom with a smooth wrapped phase and Rician
#: noise of σ = 5 % of white matter): phase only, smooth phase scores ≈ 0.99 (median) and random background
#: phase 0.50 (median) / 0.77 (99th percentile) → 0.7; with magnitude weighting tissue ≈ 0.86 and background
#: 0.10 / 0.24 → 0.3 (tissue next to dark structures loses magnitude coherence, hence the low value).
QUALITY_THRESHOLD_PHASE: float = 0.7
QUALITY_THRESHOLD_MAGNITUDE: float = 0.3
#: Width (mm) of the rim of a brain-extraction mask that :func:`refine_mask` checks for poor phase quality in the
#: app's default ``deepbet`` mask (0 = no refinement).
DEFAULT_REFINE_RIM_MM: float = 0.0


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def _real_volume(x: Any, name: str, ndims: tuple[int, ...] = (3,)) -> Tensor:
    if x is None:
        raise ValueError(f"{name}: expected an array, got None")
    t = as_real(to_tensor(x) if not isinstance(x, Tensor) else x, name)
    if t.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name}: expected a {want} array, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty array")
    return t


def _percentile(x: Tensor, q: float) -> float:
    """q-th percentile (0..100) of a 1-D tensor by order statistic (works for any size, unlike torch.quantile)."""
    n = x.numel()
    k = min(n, max(1, int(math.ceil(q / 100.0 * n))))
    return float(torch.kthvalue(x.flatten().to(torch.float32).cpu(), k).values)


def _wrap(x: Tensor) -> Tensor:
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


def _pairs(x: Tensor, axis: int) -> tuple[Tensor, Tensor]:
    """(x_i, x_{i+1}) along one of the last three axes (axis 0, 1, 2)."""
    d = x.ndim - 3 + axis
    n = x.shape[d]
    return x.narrow(d, 0, n - 1), x.narrow(d, 1, n - 1)


def _postprocess(
    m: Tensor,
    voxel_size: Sequence[float],
    *,
    valid: Tensor | None = None,
    fill_holes: bool = True,
    largest_component: bool = True,
    erode_mm: float = 0.0,
) -> Tensor:
    """Hole filling, largest 6-connected component and ellipsoidal erosion (mm) on the CPU; invalid stays out."""
    device = m.device
    a = m.detach().cpu().numpy().astype(bool)
    if fill_holes and a.any():
        a = ndimage.binary_fill_holes(a)
    if valid is not None:
        a &= valid.detach().cpu().numpy().astype(bool)
    if largest_component and a.any():
        lab, n = ndimage.label(a)
        if n > 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            a = lab == int(np.argmax(sizes))
    if erode_mm > 0 and a.any():
        vs = np.asarray(voxel_size, dtype=np.float64)
        r = [int(math.floor(erode_mm / h)) for h in vs]
        grids = np.meshgrid(*[np.arange(-k, k + 1) * h for k, h in zip(r, vs)], indexing="ij")
        ball = sum(g**2 for g in grids) <= erode_mm**2 + 1e-9
        a = ndimage.binary_erosion(a, structure=ball, border_value=0)
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


# ----------------------------------------------------------------------------------------------------------
# magnitude
# ----------------------------------------------------------------------------------------------------------
@numpy_io
def otsu_threshold(x: Tensor, mask: Tensor | None = None, *, bins: int = 256) -> float:
    """Otsu's threshold: the value t maximising the between-class variance ω₀ω₁(μ₀ − μ₁)² of a histogram.

    Otsu, IEEE Trans Syst Man Cybern 1979. ``bins`` equal-width bins (256, as in scikit-image) over the finite
    values (inside ``mask`` if given). Returns a Python float; values ``> t`` form the bright class.

    >>> t = otsu_threshold(np.array([0.0, 0.1, 0.0, 1.0, 0.9, 1.0]))
    >>> 0.1 < t < 0.9
    True
    """
    t = as_real(x, "x")
    if t.numel() == 0:
        raise ValueError("x: expected a non-empty array")
    sel = torch.isfinite(t)
    if mask is not None:
        sel = sel & check_mask(mask, t.shape, device=t.device)
    v = t[sel].to(torch.float64)
    if v.numel() == 0:
        raise ValueError("x: no finite values (inside the mask)")
    if int(bins) < 2:
        raise ValueError(f"bins: expected at least 2 histogram bins, got {bins}")
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist = torch.histc(v, bins=int(bins), min=lo, max=hi)
    width = (hi - lo) / bins
    centers = lo + (torch.arange(bins, dtype=torch.float64, device=v.device) + 0.5) * width
    p = hist / hist.sum()
    w0 = torch.cumsum(p, 0)
    m0 = torch.cumsum(p * centers, 0)
    mt = m0[-1]
    denom = w0 * (1 - w0)
    between = torch.where(denom > 1e-12, (mt * w0 - m0) ** 2 / denom.clamp_min(1e-12), torch.zeros_like(w0))
    idx = int(torch.argmax(between[:-1]))
    return float(lo + (idx + 1) * width)


@numpy_io
def magnitude_mask(
    magnitude: Tensor,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    method: str = "otsu",
    percentile: float = 98.0,
    fraction: float = 0.1,
    threshold_factor: float = 1.0,
    fill_holes: bool = True,
    largest_component: bool = True,
    erode_mm: float = 0.0,
) -> Tensor:
    """Brain/head mask from a (multi-echo) magnitude image: M > threshold_factor·t, then morphology.

    ``magnitude``: (X, Y, Z) or (E, X, Y, Z); several echoes are combined by root-sum-of-squares first.
    ``method``:

    * ``"otsu"`` (default): t = Otsu's threshold of the finite magnitudes (Otsu 1979);
    * ``"percentile"``: the robust-range rule of FSL BET (Smith, Hum Brain Mapp 2002),
      t = p_lo + fraction·(p_hi − p_lo) with p_hi the ``percentile``-th and p_lo the (100 − ``percentile``)-th
      percentile (defaults 98 / 2 and 0.1 as in BET).

    Then holes are filled (3-D), the largest 6-connected component is kept and the mask is eroded by a ball of
    ``erode_mm`` mm (anisotropic voxels respected). NaN/Inf voxels are never in the mask. Returns a bool tensor
    of the volume shape on the input's device.
    """
    mag = _real_volume(magnitude, "magnitude", (3, 4))
    vs = check_voxel_size(voxel_size)
    factor = check_positive(threshold_factor, "threshold_factor")
    if erode_mm < 0 or not math.isfinite(erode_mm):
        raise ValueError(f"erode_mm: expected a non-negative erosion radius in mm, got {erode_mm}")
    finite = torch.isfinite(mag)
    if mag.ndim == 4:
        finite = finite.all(dim=0)
        mag = torch.sqrt(torch.where(torch.isfinite(mag), mag, torch.zeros_like(mag)).pow(2).sum(dim=0))
    vals = mag[finite]
    if vals.numel() == 0:
        raise ValueError("magnitude: no finite values")
    key = str(method).lower()
    if key == "otsu":
        thr = otsu_threshold(torch.where(finite, mag, torch.full_like(mag, float("nan"))))
    elif key == "percentile":
        if not (50.0 < float(percentile) <= 100.0):
            raise ValueError(f"percentile: expected a value in (50, 100], got {percentile}")
        if not (0.0 <= float(fraction) < 1.0):
            raise ValueError(f"fraction: expected a value in [0, 1), got {fraction}")
        hi = _percentile(vals, float(percentile))
        lo = _percentile(vals, 100.0 - float(percentile))
        thr = lo + float(fraction) * (hi - lo)
    else:
        raise ValueError(f"method: expected 'otsu' or 'percentile', got {method!r}")
    m = finite & (mag > thr * factor)
    if not bool(m.any()):
        raise ValueError(f"threshold_factor: no voxel above the threshold {thr * factor:g} (factor {factor:g})")
    return _postprocess(
        m, vs, valid=finite, fill_holes=fill_holes, largest_component=largest_component, erode_mm=erode_mm
    )


# ----------------------------------------------------------------------------------------------------------
# phase quality (ROMEO-style)
# ----------------------------------------------------------------------------------------------------------
@numpy_io
def edge_weights(
    phase: Tensor,
    magnitude: Tensor | None = None,
    *,
    phase2: Tensor | None = None,
    echo_times: Sequence[float] | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """ROMEO edge weights w ∈ [0, 1] between 6-neighbours (Dymerska et al., Magn Reson Med 2021).

    w = c_pc·c_gc·c_mc·c_mw (see the module docstring); c_gc needs ``phase2`` (a later echo) and
    ``echo_times`` = (TE of ``phase``, TE of ``phase2``) in s; c_mc and c_mw need ``magnitude``. Factors
    without their input are 1. ``phase`` in rad, (X, Y, Z). Returns the weights of the edges along x, y and
    z, shaped (X−1, Y, Z), (X, Y−1, Z), (X, Y, Z−1); an edge touching a voxel outside ``mask`` or with
    NaN/Inf input weighs 0.
    """
    ph = _real_volume(phase, "phase")
    valid = torch.isfinite(ph)
    mag = None
    if magnitude is not None:
        mag = _real_volume(magnitude, "magnitude")
        check_same_shape(ph, mag, "phase", "magnitude")
        mag = mag.to(device=ph.device, dtype=ph.dtype)
        valid &= torch.isfinite(mag)
        mag = torch.where(torch.isfinite(mag), mag.abs(), torch.zeros_like(mag))
    ph2 = None
    ratio = 1.0
    if phase2 is not None:
        ph2 = _real_volume(phase2, "phase2")
        check_same_shape(ph, ph2, "phase", "phase2")
        ph2 = ph2.to(device=ph.device, dtype=ph.dtype)
        if echo_times is None:
            raise ValueError("echo_times: expected the echo times (TE1, TE2) in s of phase and phase2")
        te = check_echo_times(echo_times, 2, min_echoes=2)
        ratio = te[0] / te[1]
        valid &= torch.isfinite(ph2)
    if mask is not None:
        valid &= check_mask(mask, ph.shape, device=ph.device)
    zero = torch.zeros((), dtype=ph.dtype, device=ph.device)
    ph = torch.where(valid, ph, zero)
    if ph2 is not None:
        ph2 = torch.where(valid, ph2, zero)
    mref = _magnitude_reference(mag, valid) if mag is not None else 1.0
    out = []
    for axis in range(3):
        a, b = _pairs(ph, axis)
        a2, b2 = _pairs(ph2, axis) if ph2 is not None else (None, None)
        ma, mb = _pairs(mag, axis) if mag is not None else (None, None)
        w = _romeo_weight(a, b, a2, b2, ma, mb, ratio=ratio, mref=mref)
        va, vb = _pairs(valid, axis)
        out.append(torch.where(va & vb, w, zero))
    return out[0], out[1], out[2]


def _magnitude_reference(mag: Tensor, valid: Tensor) -> float:
    """Robust maximum of the magnitude (99th percentile over valid voxels) for the magnitude weight."""
    mv = mag[valid]
    mref = _percentile(mv, 99.0) if mv.numel() else 1.0
    return mref if mref > 0 else 1.0


def _romeo_weight(
    a: Tensor,
    b: Tensor,
    a2: Tensor | None = None,
    b2: Tensor | None = None,
    ma: Tensor | None = None,
    mb: Tensor | None = None,
    *,
    ratio: float = 1.0,
    mref: float = 1.0,
    in_range: bool = False,
) -> Tensor:
    """Elementwise ROMEO weight of edges between voxels with phases ``a`` and ``b`` (rad).

    ``a2``/``b2``: phases of a later echo (gradient coherence with ``ratio`` = TE1/TE2); ``ma``/``mb``:
    magnitudes (finite, ≥ 0; ``mref`` their robust maximum). See the module docstring for the formula.
    ``in_range``: ``a`` and ``b`` lie in [−π, π], so |wrap(b − a)| = π − |π − |b − a|| (fewer operations).
    """
    if in_range and a2 is None:
        w = (b - a).abs_().sub_(math.pi).abs_().mul_(1.0 / math.pi)  # c_pc = |π − |Δφ||/π ∈ [0, 1]
    else:
        d1 = _wrap(b - a)
        w = 1.0 - d1.abs() / math.pi
        if a2 is not None and b2 is not None:
            w = w * (1.0 - (d1 - _wrap(b2 - a2) * ratio).abs()).clamp_min(0.0)
        w = w.clamp(0.0, 1.0)
    if ma is not None and mb is not None:
        small, big = torch.minimum(ma, mb), torch.maximum(ma, mb)
        w = w * torch.where(big > 0, small / big.clamp_min(1e-30), torch.zeros_like(big)) ** 2
        w = w * (0.5 + 0.5 * (small / (0.5 * mref)).clamp(max=1.0))
    return w


def _flat_edge_weights(
    xf: np.ndarray, vf: np.ndarray, mf: np.ndarray | None, x2f: np.ndarray | None, strides: Sequence[int],
    voxel_size: Sequence[float], ratio: float, mref: float,
) -> tuple[dict[int, Tensor], Tensor]:
    """ROMEO weights of the pairs (i, i + stride) of a flattened box (phase in [−π, π], 0 where invalid, and an
    invalid last layer along every axis) and each voxel's quality: the mean weight of its edges to valid
    neighbours, axes weighted by 1/voxel size. CPU, float32; used by :func:`~qsmbids.qsm.unwrap.unwrap_quality`.
    """
    g = torch.from_numpy
    n = xf.size
    total = torch.zeros(n, dtype=torch.float32)
    iso = max(voxel_size) == min(voxel_size)
    count = np.zeros(n, dtype=np.uint8 if iso else np.float32)
    weights = {}
    for st, h in zip(strides, voxel_size):
        ev = vf[:-st] & vf[st:]
        w = _romeo_weight(g(xf[:-st]), g(xf[st:]), None if x2f is None else g(x2f[:-st]),
                          None if x2f is None else g(x2f[st:]), None if mf is None else g(mf[:-st]),
                          None if mf is None else g(mf[st:]), ratio=ratio, mref=mref, in_range=True)
        np.multiply(w.numpy(), ev, out=w.numpy())  # invalid pairs weigh 0 (numpy: bool × float is cheap)
        weights[st] = w
        if not iso:
            w = w / h
            ev = ev / np.float32(h)
        total[:-st] += w
        total[st:] += w
        count[:-st] += ev
        count[st:] += ev
    return weights, total.div_(g(np.maximum(count, 1e-30 if not iso else 1).astype(np.float32)))


def _voxel_quality(weights: Sequence[Tensor], shape: Sequence[int], voxel_size: Sequence[float]) -> Tensor:
    """Mean weight of the (existing) neighbour edges of each voxel; axes weighted by 1/voxel size."""
    w0 = weights[0]
    num = torch.zeros(tuple(shape), dtype=w0.dtype, device=w0.device)
    den = torch.zeros_like(num)
    for axis, (w, h) in enumerate(zip(weights, voxel_size)):
        ones = torch.ones_like(w)
        for before, after in ((1, 0), (0, 1)):
            widths = [0, 0] * (2 - axis) + [before, after]
            num = num + torch.nn.functional.pad(w, widths) / h
            den = den + torch.nn.functional.pad(ones, widths) / h
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))


def _quality_inputs(
    phase: Any, magnitude: Any, echo_times: Any
) -> tuple[Tensor, Tensor | None, Tensor | None, tuple[float, float] | None]:
    """(first-echo phase, its magnitude, second-echo phase, (TE1, TE2)) from 3-D or (E, X, Y, Z) inputs."""
    ph = _real_volume(phase, "phase", (3, 4))
    mag = None
    if magnitude is not None:
        mag = _real_volume(magnitude, "magnitude", (3, 4))
        if mag.ndim == 4 and ph.ndim == 3:
            raise ValueError(f"magnitude: expected a 3-D volume like phase {tuple(ph.shape)}, got {tuple(mag.shape)}")
        if tuple(mag.shape[-3:]) != tuple(ph.shape[-3:]) or (mag.ndim == 4 and mag.shape[0] != ph.shape[0]):
            raise ValueError(f"magnitude: expected the shape of phase {tuple(ph.shape)}, got {tuple(mag.shape)}")
        mag = mag[0] if mag.ndim == 4 else mag
    if ph.ndim == 3 or ph.shape[0] == 1:
        return (ph if ph.ndim == 3 else ph[0]), mag, None, None
    if echo_times is None:
        raise ValueError(f"echo_times: expected {ph.shape[0]} echo times (s) for multi-echo phase")
    te = check_echo_times(echo_times, ph.shape[0])
    return ph[0], mag, ph[1], (te[0], te[1])


@numpy_io
def phase_quality(
    phase: Tensor,
    magnitude: Tensor | None = None,
    echo_times: Sequence[float] | None = None,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
) -> Tensor:
    """ROMEO-style voxel quality q ∈ [0, 1]: the mean of the edge weights of a voxel's 6 neighbour edges.

    Dymerska et al., Magn Reson Med 2021 (edge weights in :func:`edge_weights`). ``phase`` in rad,
    (X, Y, Z) or (E, X, Y, Z); with several echoes the first is scored and the second gives the gradient
    coherence (``echo_times`` in s required, strictly increasing). ``magnitude`` (same shape, optional)
    adds magnitude coherence and weight. Edges beyond the field of view are not counted; the mean weighs
    each axis by 1/voxel size (farther neighbours say less). NaN/Inf voxels get quality 0.
    Smooth phase scores ≈ 1, random phase ≈ 0.5 (phase only) and much lower with magnitude.
    """
    vs = check_voxel_size(voxel_size)
    ph, mag, ph2, te = _quality_inputs(phase, magnitude, echo_times)
    w = edge_weights(ph, mag, phase2=ph2, echo_times=te)
    return _voxel_quality(w, ph.shape, vs)


@numpy_io
def quality_mask(
    phase: Tensor,
    magnitude: Tensor | None = None,
    echo_times: Sequence[float] | None = None,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    threshold: float | None = None,
    fill_holes: bool = True,
    largest_component: bool = True,
) -> Tensor:
    """Mask of voxels with coherent phase: :func:`phase_quality` > ``threshold``, then morphology.

    The idea is ROMEO's quality mask (Dymerska et al. 2021). ``threshold=None`` picks our phantom-measured
    defaults: 0.7 for phase only (smooth tissue ≈ 0.99, random-phase background ≈ 0.5, 99th percentile 0.77)
    and 0.3 with magnitude (tissue ≈ 0.86, background ≈ 0.1, 99th percentile 0.24); see
    :data:`QUALITY_THRESHOLD_PHASE` / :data:`QUALITY_THRESHOLD_MAGNITUDE`. Holes are filled and the largest
    6-connected component kept. NaN/Inf voxels are excluded. Returns a bool tensor of the volume shape on
    the input's device.
    """
    vs = check_voxel_size(voxel_size)
    if threshold is None:
        threshold = QUALITY_THRESHOLD_PHASE if magnitude is None else QUALITY_THRESHOLD_MAGNITUDE
    if not (0.0 <= float(threshold) < 1.0):
        raise ValueError(f"threshold: expected a quality threshold in [0, 1), got {threshold}")
    q = phase_quality(phase, magnitude, echo_times, vs)
    ph = _real_volume(phase, "phase", (3, 4))
    valid = torch.isfinite(ph) if ph.ndim == 3 else torch.isfinite(ph).all(dim=0)
    if magnitude is not None:
        mag = _real_volume(magnitude, "magnitude", (3, 4)).to(ph.device)
        valid &= torch.isfinite(mag) if mag.ndim == 3 else torch.isfinite(mag).all(dim=0)
    m = (q > float(threshold)) & valid
    if not bool(m.any()):
        raise ValueError(f"threshold: no voxel has phase quality above {threshold}")
    return _postprocess(m, vs, valid=valid, fill_holes=fill_holes, largest_component=largest_component)


@numpy_io
def brain_mask(
    magnitude: Tensor | None = None,
    phase: Tensor | None = None,
    echo_times: Sequence[float] | None = None,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    method: str = "combined",
    magnitude_method: str = "otsu",
    threshold_factor: float = 1.0,
    quality_threshold: float | None = None,
    fill_holes: bool = True,
    largest_component: bool = True,
    erode_mm: float = 0.0,
) -> Tensor:
    """Brain mask by ``method`` (one of :data:`MASK_METHODS`).

    * ``"magnitude"``: :func:`magnitude_mask` (``magnitude_method``, ``threshold_factor``);
    * ``"quality"``: :func:`quality_mask` (``quality_threshold``, None = its defaults; magnitude used for
      weighting when given);
    * ``"combined"`` (default): magnitude mask ∩ quality mask — bright *and* coherent — then holes filled,
      the largest 6-connected component kept and ``erode_mm`` mm eroded. Needs both inputs.

    Inputs as in those functions ((X, Y, Z) or (E, X, Y, Z); ``echo_times`` in s for multi-echo phase).
    NaN/Inf voxels are never in the mask. Returns a bool tensor of the volume shape.
    """
    key = str(method).lower()
    if key not in MASK_METHODS:
        raise ValueError(f"method: expected one of {', '.join(MASK_METHODS)}; got {method!r}")
    vs = check_voxel_size(voxel_size)
    if erode_mm < 0 or not math.isfinite(erode_mm):
        raise ValueError(f"erode_mm: expected a non-negative erosion radius in mm, got {erode_mm}")
    if key in ("magnitude", "combined") and magnitude is None:
        raise ValueError(f"magnitude: method {key!r} needs a magnitude image")
    if key in ("quality", "combined") and phase is None:
        raise ValueError(f"phase: method {key!r} needs a phase image")
    if key == "magnitude":
        return magnitude_mask(
            magnitude, vs, method=magnitude_method, threshold_factor=threshold_factor,
            fill_holes=fill_holes, largest_component=largest_component, erode_mm=erode_mm,
        )
    if key == "quality":
        m = quality_mask(
            phase, magnitude, echo_times, vs, threshold=quality_threshold,
            fill_holes=fill_holes, largest_component=largest_component,
        )
        return _postprocess(m, vs, fill_holes=False, largest_component=False, erode_mm=erode_mm) if erode_mm else m
    mm = magnitude_mask(magnitude, vs, method=magnitude_method, threshold_factor=threshold_factor,
                        fill_holes=fill_holes, largest_component=False)
    qm = quality_mask(phase, magnitude, echo_times, vs, threshold=quality_threshold,
                      fill_holes=fill_holes, largest_component=False)
    check_same_shape(mm, qm.to(mm.device), "magnitude volume", "phase volume")
    both = mm & qm.to(mm.device)
    if not bool(both.any()):
        raise ValueError("phase: magnitude and quality masks do not overlap")
    ph = _real_volume(phase, "phase", (3, 4)).to(mm.device)
    mag = _real_volume(magnitude, "magnitude", (3, 4)).to(mm.device)
    valid = (torch.isfinite(ph) if ph.ndim == 3 else torch.isfinite(ph).all(dim=0))
    valid &= torch.isfinite(mag) if mag.ndim == 3 else torch.isfinite(mag).all(dim=0)
    return _postprocess(both, vs, valid=valid, fill_holes=fill_holes, largest_component=largest_component,
                        erode_mm=erode_mm)


@numpy_io
def refine_mask(
    mask: Tensor,
    phase: Tensor,
    magnitude: Tensor | None = None,
    echo_times: Sequence[float] | None = None,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    rim_mm: float = 4.0,
    quality_threshold: float | None = None,
) -> Tensor:
    """Drop the unreliable rim of a brain mask: voxels within ``rim_mm`` of the mask surface whose
    :func:`phase_quality` is at or below ``quality_threshold`` (None: the defaults of :func:`quality_mask`).

    The idea is the consensus mask of QSMxT (Stewart et al., Magn Reson Med 2022): a brain-extraction mask
    follows the anatomy, but next to sinuses, veins and the skull base the phase there is incoherent (strong
    gradients, low signal) and corrupts the field estimate; the interior is kept whatever its quality. Holes are
    filled and the largest 6-connected component kept afterwards. Returns a bool tensor of the mask's shape.
    """
    vs = check_voxel_size(voxel_size)
    if not (math.isfinite(float(rim_mm)) and float(rim_mm) >= 0):
        raise ValueError(f"rim_mm: expected a non-negative width in mm, got {rim_mm}")
    m = _real_volume(mask, "mask") > 0
    if not bool(m.any()):
        raise ValueError("mask: the mask is empty")
    if quality_threshold is None:
        quality_threshold = QUALITY_THRESHOLD_PHASE if magnitude is None else QUALITY_THRESHOLD_MAGNITUDE
    if not (0.0 <= float(quality_threshold) < 1.0):
        raise ValueError(f"quality_threshold: expected a quality in [0, 1), got {quality_threshold}")
    if float(rim_mm) == 0.0:
        return m
    q = phase_quality(phase, magnitude, echo_times, vs)
    a = m.detach().cpu().numpy()
    depth = ndimage.distance_transform_edt(a, sampling=vs)  # mm to the nearest voxel outside the mask
    poor = (q.detach().cpu().numpy() <= float(quality_threshold)) & (depth <= float(rim_mm))
    kept = torch.from_numpy(a & ~poor).to(m.device)
    if not bool(kept.any()):
        return m
    return _postprocess(kept, vs, fill_holes=True, largest_component=True)
