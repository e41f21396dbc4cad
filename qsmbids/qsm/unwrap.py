"""Spatial and temporal phase unwrapping: Laplacian (FFT), quality-guided (ROMEO-style MST) and scikit-image.

Phase in rad; the last three dims are the volume, leading dims are unwrapped volume by volume (echoes are
handled jointly only by :func:`unwrap_multi_echo`). Wrapped input is expected in [−π, π); every method
returns a result *congruent* with its input: result − input is an exact integer multiple of 2π in each valid
voxel (up to float rounding), so no information in the wrapped phase is lost or smoothed.

Invalid voxels — outside ``mask`` or NaN/Inf in any input — are ignored by the algorithms and set to **0**
in the result (not NaN, so FFT-based later stages cannot spread NaN; use the mask downstream). Without a
mask, every finite voxel is valid.

Several disconnected regions are unwrapped independently; their relative 2π offsets are undetermined.
With ``correct_global=True`` (default) each region is shifted by a multiple of 2π so that its mean lies in
[−π, π) (ROMEO's "global correction" idea); this matters for temporal unwrapping of later echoes.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from ._utils import (
    SolverInfo,
    as_real,
    check_echo_times,
    check_mask,
    check_positive,
    check_voxel_size,
    numpy_io,
    to_tensor,
)
from ._regions import band_regions, boundary_edges, region_offsets
from .fourier import laplacian_kernel, padded_shape
from .mask import _flat_edge_weights, _magnitude_reference

__all__ = [
    "UNWRAP_METHODS",
    "unwrap",
    "unwrap_laplacian",
    "unwrap_quality",
    "unwrap_skimage",
    "unwrap_multi_echo",
]

#: Names accepted by :func:`unwrap` and :func:`unwrap_multi_echo`.
UNWRAP_METHODS: tuple[str, ...] = ("laplacian", "quality", "skimage")

TWO_PI = 2.0 * math.pi

#: Voxels whose mean ROMEO edge weight is below this value are not merged into phase-band regions in
#: :func:`unwrap_quality` (ours: random phase scores ≈ 0.5 without and ≈ 0.1 with magnitude, smooth tissue ≳ 0.8).
RELIABLE_QUALITY = 0.5


# -------- shared helpers --------------------------------------------------------------------------------------
def _phase(phase: Any, name: str = "phase") -> Tensor:
    if phase is None:
        raise ValueError(f"{name}: expected a phase array in rad, got None")
    ph = as_real(to_tensor(phase) if not isinstance(phase, Tensor) else phase, name)
    if ph.ndim < 3:
        raise ValueError(f"{name}: expected at least 3 dims (the volume last), got shape {tuple(ph.shape)}")
    if ph.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty array")
    return ph


def _like(x: Any, ph: Tensor, name: str) -> Tensor | None:
    """Optional companion array (magnitude, phase2) of the phase's shape, or of its volume shape (broadcast)."""
    if x is None:
        return None
    t = as_real(to_tensor(x) if not isinstance(x, Tensor) else x, name).to(device=ph.device, dtype=ph.dtype)
    if tuple(t.shape) == tuple(ph.shape):
        return t
    if tuple(t.shape) == tuple(ph.shape[-3:]):
        return t.expand(ph.shape)
    raise ValueError(f"{name}: expected shape {tuple(ph.shape)} (or {tuple(ph.shape[-3:])}), got {tuple(t.shape)}")


def _mask_of(mask: Any, ph: Tensor) -> Tensor | None:
    """Validated boolean mask of the phase's shape (a volume-shaped mask is broadcast over leading dims)."""
    if mask is None:
        return None
    m = to_tensor(mask) if not isinstance(mask, Tensor) else mask
    if tuple(m.shape) == tuple(ph.shape[-3:]) and ph.ndim > 3:
        return check_mask(m, ph.shape[-3:], device=ph.device).expand(ph.shape)
    return check_mask(m, ph.shape, device=ph.device)


def _valid(ph: Tensor, mask: Any, *extras: Tensor | None) -> Tensor:
    """Valid voxels: finite in every input and inside ``mask`` (volume-shaped or phase-shaped)."""
    v = torch.isfinite(ph)
    for e in extras:
        if e is not None:
            v = v & torch.isfinite(e)
    m = _mask_of(mask, ph)
    if m is not None:
        v = v & m
    if not bool(v.any()):
        raise ValueError("phase: no finite phase value inside the mask")
    return v


def _box_valid(p3: Tensor, m3: Tensor | None, *extras: Tensor | None) -> tuple[tuple[slice, ...], Tensor]:
    """Bounding box of the mask (whole volume without one) and the valid voxels inside it."""
    box = _bbox(m3) if m3 is not None else (slice(None),) * 3
    v = torch.isfinite(p3[box])
    if m3 is not None:
        v &= m3[box]
    for e in extras:
        if e is not None:
            v &= torch.isfinite(e[box])
    return box, v


def _spatial(fn: Callable[..., Tensor], ph: Tensor, mask: Any, *arrays: Tensor | None) -> Tensor:
    """Run ``fn(phase3d, box, valid_in_box, *arrays3d)`` on every volume; refuse input with no valid voxel."""
    empty: list[bool] = []

    def run(p3: Tensor, m3: Tensor | None, *a3: Tensor | None) -> Tensor:
        box, v = _box_valid(p3, m3, *a3)
        if not bool(v.any()):
            empty.append(True)
            return torch.zeros_like(p3)
        return fn(p3, box, v, *a3)

    out = _per_volume(run, ph, _mask_of(mask, ph), *arrays)
    if len(empty) == ph.numel() // max(1, math.prod(ph.shape[-3:])):
        raise ValueError("phase: no finite phase value inside the mask")
    return out


def _components(valid: Tensor) -> tuple[Tensor, int]:
    """6-connected components of a 3-D mask: labels 0..n−1 inside, −1 outside (tensor on valid's device)."""
    lab, n = ndimage.label(valid.detach().cpu().numpy())
    return torch.from_numpy(lab.astype(np.int64) - 1).to(valid.device), int(n)


def _recentre(res: Tensor, lab: Tensor, n: int) -> Tensor:
    """Shift each component (label ``lab`` per valid voxel) by 2π·k so that its mean lies in [−π, π)."""
    z = torch.zeros(n, dtype=torch.float64, device=res.device)
    res = res.to(torch.float64)
    mean = z.index_add(0, lab, res) / z.index_add(0, lab, torch.ones_like(res)).clamp_min(1)
    return res - TWO_PI * torch.floor(mean / TWO_PI + 0.5)[lab]


def _bbox(valid: Tensor) -> tuple[slice, slice, slice]:
    """Bounding box of the valid voxels of a 3-D mask (which must not be empty)."""
    xy, z = valid.any(dim=2), valid.any(dim=(0, 1))
    idx = (torch.nonzero(xy.any(dim=1)).flatten(), torch.nonzero(xy.any(dim=0)).flatten(), torch.nonzero(z).flatten())
    return tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)  # type: ignore[return-value]


def _per_volume(fn: Callable[..., Tensor], ph: Tensor, *arrays: Tensor | None) -> Tensor:
    """Apply a 3-D ``fn(phase3d, *arrays3d)`` to every volume of a (..., X, Y, Z) batch."""
    if ph.ndim == 3:
        return fn(ph, *arrays)
    lead = ph.shape[:-3]
    flat = ph.reshape(-1, *ph.shape[-3:])
    flat_arrays = [None if a is None else a.reshape(-1, *ph.shape[-3:]) for a in arrays]
    outs = [fn(flat[i], *[None if a is None else a[i] for a in flat_arrays]) for i in range(flat.shape[0])]
    return torch.stack(outs).reshape(*lead, *ph.shape[-3:])


# -------- Laplacian (least-squares) unwrapping ----------------------------------------------------------------
def _diff(u: Tensor, axis: int) -> Tensor:
    return torch.diff(u, dim=axis - 3)


def _diff_adjoint(y: Tensor, axis: int) -> Tensor:
    """Adjoint of the forward difference: (Dᵀy)_i = y_{i−1} − y_i (zero beyond the ends)."""
    widths = [0, 0] * (2 - axis)
    return torch.nn.functional.pad(y, widths + [1, 0]) - torch.nn.functional.pad(y, widths + [0, 1])


def _laplacian_3d(
    ph: Tensor, box: tuple[slice, ...], v: Tensor, vs: tuple[float, ...], *, congruent: bool, pad_factor: float,
    tol: float, max_iter: int, correct_global: bool, info: list[SolverInfo],
) -> Tensor:
    out = torch.zeros_like(ph)
    x = torch.where(v, ph[box], torch.zeros((), dtype=ph.dtype, device=ph.device))
    u, it_info = _laplacian_solve(x, v, vs, pad_factor=pad_factor, tol=tol, max_iter=max_iter)
    info.append(it_info)
    # align each region's constant with the wrapped data (circular mean of φ − u), then make congruent
    labels, n = _components(v)
    lab = labels[v]
    xv, uv = x[v].to(torch.float64), u[v].to(torch.float64)
    zeros = torch.zeros(n, dtype=torch.float64, device=ph.device)
    cs = zeros.index_add(0, lab, torch.cos(xv - uv))
    sn = zeros.index_add(0, lab, torch.sin(xv - uv))
    uv = uv + torch.atan2(sn, cs)[lab]
    res = xv + TWO_PI * torch.round((uv - xv) / TWO_PI) if congruent else uv
    if correct_global:
        res = _recentre(res, lab, n)
    block = torch.zeros_like(x)
    block[v] = res.to(ph.dtype)
    out[box] = block
    return out


def _laplacian_solve(
    x: Tensor, v: Tensor, vs: tuple[float, ...], *, pad_factor: float, tol: float, max_iter: int
) -> tuple[Tensor, SolverInfo]:
    """Least-squares phase from wrapped neighbour differences on the valid edges: FFT-preconditioned CG."""
    shape = tuple(x.shape)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    e = [(v.narrow(a, 0, shape[a] - 1) & v.narrow(a, 1, shape[a] - 1)).to(x.dtype) / h**2 for a, h in enumerate(vs)]

    def apply_a(u: Tensor) -> Tensor:
        return sum(_diff_adjoint(e[a] * _diff(u, a), a) for a in range(3))  # type: ignore[return-value]

    b = sum(_diff_adjoint(e[a] * (torch.remainder(_diff(x, a) + math.pi, TWO_PI) - math.pi), a) for a in range(3))
    # periodic Poisson solve on a zero-padded grid (Schofield & Zhu 2003): first guess and preconditioner
    pshape = padded_shape(shape, pad_factor) if pad_factor > 1 else shape
    lap = -laplacian_kernel(pshape, vs, device=x.device, dtype=torch.float64)[..., : pshape[2] // 2 + 1]
    inv = torch.where(lap > 0, 1.0 / lap.clamp_min(1e-30), torch.zeros_like(lap)).to(x.dtype)
    sl = tuple(slice((p - n) // 2, (p - n) // 2 + n) for p, n in zip(pshape, shape))
    big = torch.zeros(pshape, dtype=x.dtype, device=x.device)

    def precond(r: Tensor) -> Tensor:
        big[sl] = r
        z = torch.fft.irfftn(torch.fft.rfftn(big) * inv, s=pshape)
        return torch.where(v, z[sl], zero)

    def dot(p: Tensor, q: Tensor) -> float:
        return float(torch.dot(p.flatten(), q.flatten()))

    bnorm = math.sqrt(dot(b, b))  # type: ignore[arg-type]
    u = precond(b)  # type: ignore[arg-type]
    fft_pairs, it, rel = 1, 0, 0.0
    if bnorm > 0 and max_iter > 0:
        r = b - apply_a(u)
        rel = math.sqrt(dot(r, r)) / bnorm
        z = precond(r)
        fft_pairs += 1
        p, rz = z, dot(r, z)
        while rel > tol and it < max_iter and rz > 0:
            ap = apply_a(p)
            pap = dot(p, ap)
            if pap <= 0:
                break
            alpha = rz / pap
            u = u + alpha * p
            r = r - alpha * ap
            it += 1
            rel = math.sqrt(dot(r, r)) / bnorm
            if rel <= tol:
                break
            z = precond(r)
            fft_pairs += 1
            rz_new = dot(r, z)
            p = z + (rz_new / rz) * p
            rz = rz_new
    info = SolverInfo(method="laplacian", iterations=it, residual=rel, converged=rel <= tol or bnorm == 0,
                      fft_pairs=fft_pairs, params={"tol": tol, "max_iter": max_iter, "pad_factor": pad_factor})
    return u, info


@numpy_io
def unwrap_laplacian(
    phase: Tensor,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    mask: Tensor | None = None,
    congruent: bool = True,
    pad_factor: float = 1.25,
    tol: float = 1e-3,
    max_iter: int = 50,
    correct_global: bool = True,
    return_info: bool = False,
) -> Tensor | tuple[Tensor, SolverInfo]:
    """Laplacian (least-squares) phase unwrapping: solve ∇²φ_u = ∇·wrap(∇φ) over the valid voxels.

    Schofield & Zhu, Opt Lett 2003: the Laplacian of the unwrapped phase is computable from wrapped data
    and inverted by FFT. Here the Laplacian is formed from the wrapped neighbour differences wrap(φ_j − φ_i)
    (equal to their cos φ·∇²sin φ − sin φ·∇²cos φ to first order, and exact for the discrete Laplacian when
    true neighbour differences are below π). The Poisson solve is the periodic FFT inverse of
    :func:`~qsmbids.qsm.fourier.laplacian_kernel` on a zero-padded grid (``pad_factor``, ours 1.25), used as
    the first guess and as preconditioner of a conjugate-gradient refinement that enforces the masked
    (Neumann) problem exactly — Ghiglia & Romero, J Opt Soc Am A 1994. So the smooth estimate reproduces the
    true phase wherever it is free of aliasing, also with an irregular mask. ``tol`` (relative residual,
    ours 1e-3) and ``max_iter`` (50; 0 = pure FFT solve) control the refinement. Edges weigh 1/h² (h in mm).

    With ``congruent`` (default) the result is made congruent with the input, φ + 2π·round((φ_lap − φ)/2π)
    (the smooth estimate φ_lap is first shifted by the circular mean of φ − φ_lap in each region), so it
    differs from the wrapped input by integer multiples of 2π only. ``congruent=False`` returns φ_lap.

    ``phase`` in rad, (..., X, Y, Z); ``mask`` (volume or phase shaped) optional. Returns rad, 0 outside the
    mask and at NaN/Inf voxels; with ``return_info=True`` also a :class:`SolverInfo` (relative residual
    ‖b − Aφ_lap‖/‖b‖; for a batch the worst over volumes).
    """
    ph = _phase(phase)
    vs = check_voxel_size(voxel_size)
    check_positive(tol, "tol")
    if int(max_iter) < 0:
        raise ValueError(f"max_iter: expected a non-negative iteration count, got {max_iter}")
    if not (math.isfinite(pad_factor) and pad_factor >= 1):
        raise ValueError(f"pad_factor: expected a padding factor >= 1, got {pad_factor}")
    infos: list[SolverInfo] = []

    def run(p3: Tensor, box: tuple[slice, ...], v3: Tensor) -> Tensor:
        return _laplacian_3d(p3, box, v3, vs, congruent=congruent, pad_factor=pad_factor, tol=float(tol),
                             max_iter=int(max_iter), correct_global=correct_global, info=infos)

    out = _spatial(run, ph, mask)
    if not return_info:
        return out
    worst = max(infos, key=lambda i: i.residual)
    info = SolverInfo(method="laplacian", iterations=max(i.iterations for i in infos), residual=worst.residual,
                      converged=all(i.converged for i in infos), fft_pairs=sum(i.fft_pairs for i in infos),
                      params=worst.params)
    return out, info


# -------- quality-guided unwrapping: maximum spanning tree of ROMEO edge weights ------------------------------
def _quality_3d(ph: Tensor, box: tuple[slice, ...], vb: Tensor, mag: Tensor | None, ph2: Tensor | None,
                vs: tuple[float, ...], te: tuple[float, float] | None, correct_global: bool, n_bands: int) -> Tensor:
    out = torch.zeros(ph.shape, dtype=ph.dtype, device=ph.device)
    inner = (slice(0, -1),) * 3

    def host(c: Tensor) -> np.ndarray:
        """A box-shaped tensor on the CPU (invalid voxels 0/False) with one invalid layer added at the far ends."""
        if c.dtype != torch.bool:
            c = torch.where(vb, c, torch.zeros((), dtype=c.dtype, device=c.device))
        a = np.zeros(tuple(n + 1 for n in c.shape), dtype=np.bool_ if c.dtype == torch.bool else np.float32)
        a[inner] = c.detach().cpu().numpy()
        return a

    v = host(vb)
    x = host(ph[box])
    if float(x.min()) < -math.pi or float(x.max()) > math.pi:  # congruent to the input, so the result is too
        x = (np.remainder(x + math.pi, TWO_PI) - math.pi).astype(np.float32)
    m = None if mag is None else np.abs(host(mag[box]))
    x2 = None if ph2 is None else host(ph2[box])
    g = torch.from_numpy
    xf, vf = x.ravel(), v.ravel()
    strides = (x.shape[1] * x.shape[2], x.shape[2], 1)
    mref = _magnitude_reference(g(m), g(v)) if m is not None else 1.0
    weights, quality = _flat_edge_weights(xf, vf, None if m is None else m.ravel(), None if x2 is None else x2.ravel(),
                                          strides, vs, 1.0 if te is None else te[0] / te[1], mref)
    # reliable voxels form the phase-band regions; the others stay single and join through the spanning tree
    reliable = v & (quality.numpy() >= RELIABLE_QUALITY).reshape(v.shape)
    lab, n_regions = band_regions(x, reliable, n_bands)
    labf = lab.ravel()
    single = np.flatnonzero(vf & ~reliable.ravel())
    labf[single] = n_regions + np.arange(single.size, dtype=np.int32)
    n_regions += single.size
    us, ws, wts = [], [], []
    for st, u in boundary_edges(lab):
        us.append(u)
        ws.append(u + st)
        wts.append(weights[st].numpy()[u])
    u, w_ = np.concatenate(us), np.concatenate(ws)
    step = np.rint((xf[u].astype(np.float64) - xf[w_]) / TWO_PI).astype(np.int64)
    offset, comp = region_offsets(n_regions, labf[u], labf[w_], np.concatenate(wts), step)
    n_comp = int(comp.max()) + 1
    if correct_global:  # shift each component by 2π·k so that its mean lies in [−π, π)
        lp = labf.astype(np.intp) + 1
        size = np.bincount(lp, minlength=n_regions + 1)[1:].astype(np.float64)
        total = np.bincount(lp, weights=xf, minlength=n_regions + 1)[1:] + TWO_PI * offset * size
        mean = np.bincount(comp, weights=total, minlength=n_comp) / np.bincount(comp, weights=size, minlength=n_comp)
        offset = offset - np.floor(mean / TWO_PI + 0.5).astype(np.int64)[comp]
    else:  # anchor each component at its voxel of highest quality (which keeps its wrapped value)
        q = quality.double()
        inside = g(labf >= 0)
        reg = g(labf.astype(np.int64))[inside]
        qr = torch.full((n_regions,), -1.0, dtype=torch.float64).scatter_reduce(0, reg, q[inside], "amax")
        qc = torch.full((n_comp,), -1.0, dtype=torch.float64).scatter_reduce(0, g(comp), qr, "amax")
        ids = torch.arange(n_regions)
        cand = qr == qc[g(comp)]
        seed = torch.full((n_comp,), n_regions, dtype=torch.int64).scatter_reduce(
            0, g(comp)[cand], ids[cand], "amin").numpy()
        offset = offset - offset[seed][comp]
    shift = np.append(TWO_PI * offset, 0.0).astype(np.float32)  # lab = −1 (invalid) → no shift
    res = x[inner] + shift[lab[inner]]
    out[box] = torch.from_numpy(res).to(device=ph.device, dtype=ph.dtype)
    return out


@numpy_io
def unwrap_quality(
    phase: Tensor,
    magnitude: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    echo_times: Sequence[float] | None = None,
    phase2: Tensor | None = None,
    correct_global: bool = True,
    bands: int = 4,
) -> Tensor:
    """Quality-guided spatial unwrapping along a maximum spanning tree of ROMEO edge weights.

    ROMEO (Dymerska et al., Magn Reson Med 2021) grows the unwrapped region through the most reliable edge
    first — Prim's construction of the maximum spanning tree of its edge weights (phase, gradient and
    magnitude coherence, magnitude weight; :func:`~qsmbids.qsm.mask.edge_weights`) — and sets
    φ_u(child) = φ_u(parent) + wrap(φ_child − φ_parent) along the tree.

    Vectorised construction of such a tree. (1) Voxel quality q = mean weight of its edges to valid
    neighbours (axes weighted by 1/``voxel_size``, as :func:`~qsmbids.qsm.mask.phase_quality`). Reliable
    voxels (q ≥ :data:`RELIABLE_QUALITY` = 0.5, ours) whose phase lies in the same band of width
    2π/``bands`` (|Δφ| < 2π/``bands``: no wrap between neighbours) are joined first: the 6-connected regions
    of each band (the phase partition of PRELUDE, Jenkinson, Magn Reson Med 2003) are labelled with
    :func:`scipy.ndimage.label`; inside a region the 2π offset is constant. Unreliable voxels stay single.
    (2) The maximum spanning forest of the remaining edges over regions follows from
    :func:`scipy.sparse.csgraph.minimum_spanning_tree` (costs 2 − w, parallel edges reduced to the heaviest).
    (3) One breadth-first search orients the forest and the integer steps are summed to the roots by pointer
    jumping. The result is the maximum spanning tree of the weights with reliable intra-band edges ranked
    first. ``bands`` = 4 (ours): same-band clusters of noise voxels (probability ≤ 1/4 < 0.31, the
    site-percolation threshold of the cubic lattice) stay small and cannot bridge distant regions (with 3
    bands, a random-phase blob in the noisy phantom of tests/qsm/test_unwrap.py bridged a wrap: 89 % correct).

    ``phase`` in rad, (..., X, Y, Z). ``magnitude`` (same shape or volume) adds magnitude coherence/weight;
    ``phase2`` (a later echo) with ``echo_times`` = (TE of ``phase``, TE of ``phase2``) in s adds gradient
    coherence. Each connected region of the mask is unwrapped on its own; with ``correct_global`` its mean is
    brought into [−π, π) by a 2π multiple, otherwise its highest-quality voxel (the seed) keeps its wrapped
    value. Returns rad, congruent with the input, 0 outside ``mask`` and at NaN/Inf voxels.
    """
    ph = _phase(phase)
    vs = check_voxel_size(voxel_size)
    if int(bands) != bands or not 3 <= int(bands) <= 16:
        raise ValueError(f"bands: expected an integer number of phase bands in 3..16, got {bands}")
    mag = _like(magnitude, ph, "magnitude")
    ph2 = _like(phase2, ph, "phase2")
    te = None
    if ph2 is not None:
        if echo_times is None:
            raise ValueError("echo_times: expected (TE1, TE2) in s of phase and phase2")
        te = check_echo_times(echo_times, 2, min_echoes=2)

    def run(p3: Tensor, box: tuple[slice, ...], v3: Tensor, m3: Tensor | None, q3: Tensor | None) -> Tensor:
        return _quality_3d(p3, box, v3, m3, q3, vs, te, correct_global, int(bands))

    return _spatial(run, ph, mask, mag, ph2)


# -------- scikit-image ----------------------------------------------------------------------------------------
@numpy_io
def unwrap_skimage(phase: Tensor, mask: Tensor | None = None) -> Tensor:
    """Adapter to :func:`skimage.restoration.unwrap_phase` (Herráez et al., Appl Opt 2002; Abdul-Rahman et al.,
    Appl Opt 2007): reliability-sorted edge merging, 3-D, no wrap-around, seeded (``rng=0``).

    ``phase`` in rad, (..., X, Y, Z), unwrapped volume by volume; ``mask`` and NaN/Inf become a masked array.
    Returns rad, congruent with the input, 0 outside the mask and at NaN/Inf voxels (no global correction).
    """
    from skimage.restoration import unwrap_phase

    ph = _phase(phase)
    valid = _valid(ph, mask)

    def run(p3: Tensor, v3: Tensor) -> Tensor:
        a = p3.detach().cpu().numpy().astype(np.float64)
        v = v3.detach().cpu().numpy()
        keep = [i for i, s in enumerate(a.shape) if s > 1] or [0]
        sq = tuple(a.shape[i] for i in keep)
        arr = np.ma.masked_array(np.where(v, a, 0.0).reshape(sq), mask=~v.reshape(sq))
        res = unwrap_phase(arr, rng=0)
        res = np.ma.filled(res, 0.0).reshape(a.shape) if np.ma.isMaskedArray(res) else res.reshape(a.shape)
        res = np.where(v, res, 0.0)
        return torch.from_numpy(res).to(device=ph.device, dtype=ph.dtype)

    return _per_volume(run, ph, valid)


# -------- dispatch and multi-echo -----------------------------------------------------------------------------
_FUNCS: dict[str, Callable[..., Any]] = {
    "laplacian": unwrap_laplacian,
    "quality": unwrap_quality,
    "skimage": unwrap_skimage,
}


def _method(method: str) -> Callable[..., Any]:
    key = str(method).lower()
    if key not in _FUNCS:
        raise ValueError(f"method: expected one of {', '.join(UNWRAP_METHODS)}; got {method!r}")
    return _FUNCS[key]


@numpy_io
def unwrap(phase: Tensor, method: str = "quality", **kw: Any) -> Tensor:
    """Spatial unwrapping of ``phase`` (rad, (..., X, Y, Z)) with ``method`` in :data:`UNWRAP_METHODS`.

    ``kw`` go to :func:`unwrap_laplacian`, :func:`unwrap_quality` or :func:`unwrap_skimage`; the common
    inputs ``mask``, ``magnitude``, ``voxel_size``, ``echo_times`` and ``phase2`` are dropped silently for a
    method that does not use them, so callers can pass the same set to every method. NumPy in → NumPy out.
    """
    fn = _method(method)
    accepted = inspect.signature(fn).parameters
    common = ("mask", "magnitude", "voxel_size", "echo_times", "phase2")
    kw = {k: v for k, v in kw.items() if k in accepted or k not in common}
    return fn(phase, **kw)


@numpy_io
def unwrap_multi_echo(
    phase: Tensor,
    magnitude: Tensor | None = None,
    echo_times: Sequence[float] | None = None,
    mask: Tensor | None = None,
    *,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    method: str = "quality",
    template: int = 0,
    correct_global: bool = True,
) -> Tensor:
    """Multi-echo unwrapping: the template echo spatially, every other echo temporally from it.

    ROMEO's template mode (Dymerska et al., Magn Reson Med 2021; Eckstein et al. 2018 for the phase-offset
    assumption): with φ_t the spatially unwrapped template echo,
    φ_e ← φ_e + 2π·round((φ_t·TE_e/TE_t − φ_e)/2π). This assumes the phase is proportional to TE (phase
    offset φ0 ≈ 0, e.g. after MCPC-3D-S or for coil-combined data with a removed offset). The template is
    shifted by 2π·k so that its mean lies in [−π, π) (``correct_global``), otherwise a 2π error in the
    template would scale by TE_e/TE_t.

    ``phase`` in rad, (E, X, Y, Z) or a single (X, Y, Z) volume (then only spatial unwrapping); ``echo_times``
    in s, strictly increasing, required for E ≥ 2; ``magnitude`` (E, X, Y, Z) or (X, Y, Z), optional;
    ``method`` in :data:`UNWRAP_METHODS` for the template (``"quality"`` also uses the next echo for gradient
    coherence). Returns rad, same shape, congruent per echo, 0 outside the mask and at voxels that are NaN/Inf
    in any echo.
    """
    ph = _phase(phase)
    fn = _method(method)
    key = str(method).lower()
    vs = check_voxel_size(voxel_size)
    if ph.ndim not in (3, 4):
        raise ValueError(f"phase: expected (E, X, Y, Z) or (X, Y, Z), got shape {tuple(ph.shape)}")
    single = ph.ndim == 3
    p4 = ph[None] if single else ph
    n_echo = p4.shape[0]
    mag = _like(magnitude, p4, "magnitude")
    te: tuple[float, ...] | None = None
    if echo_times is not None or n_echo > 1:
        if echo_times is None:
            raise ValueError(f"echo_times: expected {n_echo} echo times in s for {n_echo} echoes")
        te = check_echo_times(echo_times, n_echo)
    t = int(template)
    if not 0 <= t < n_echo:
        raise ValueError(f"template: expected an echo index in [0, {n_echo}), got {template}")
    valid = _valid(p4, mask, mag).all(dim=0)
    if not bool(valid.any()):
        raise ValueError("phase: no voxel is finite in every echo inside the mask")
    zero = torch.zeros((), dtype=ph.dtype, device=ph.device)
    if key == "quality":
        nxt = t + 1 if t + 1 < n_echo else None
        ref = fn(p4[t], None if mag is None else mag[t], valid, voxel_size=vs,
                 echo_times=None if nxt is None else (te[t], te[nxt]),  # type: ignore[index]
                 phase2=None if nxt is None else p4[nxt], correct_global=correct_global)
    elif key == "laplacian":
        ref = fn(p4[t], vs, mask=valid, correct_global=correct_global)
    else:
        ref = fn(p4[t], valid)
        if correct_global:
            labels, n = _components(valid)
            ref = ref.clone()
            ref[valid] = _recentre(ref[valid], labels[valid], n).to(ph.dtype)
    outs = []
    for e in range(n_echo):
        if e == t:
            outs.append(ref)
            continue
        xe = torch.where(valid, p4[e], zero).to(torch.float64)
        pred = ref.to(torch.float64) * (te[e] / te[t])  # type: ignore[index]
        ue = xe + TWO_PI * torch.round((pred - xe) / TWO_PI)
        outs.append(torch.where(valid, ue.to(ph.dtype), zero))
    out = torch.stack(outs)
    return out[0] if single else out
