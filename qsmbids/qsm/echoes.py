"""Multi-echo GRE phase → total field (Hz): phase-offset removal, temporal unwrapping, weighted fit.

Signal model per voxel and echo i (phase in rad, TEᵢ in s, field f in Hz):

    φᵢ = φ0 + 2π·f·TEᵢ (+ β·pᵢ for bipolar readouts) + noise,   σ_φᵢ ≈ σ_n / |Sᵢ|,

where φ0 is the echo-independent (coil/transmit) phase offset and pᵢ = 1 for the 2nd, 4th, … echo of a
bipolar readout (0 otherwise). The stage (:func:`combine_echoes`) removes φ0 with MCPC-3D-S
(:func:`mcpc3ds_offset`), unwraps one template echo spatially and the other echoes temporally from the echo-
time ratios (:func:`unwrap_temporal`), then fits f by weighted least squares (:func:`fit_field`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ._utils import (
    as_real,
    check_echo_times,
    check_finite,
    check_mask,
    check_same_shape,
    check_voxel_size,
    numpy_io,
)
from .fourier import crop, fast_len, fftn3, ifftn3, kspace_grid, pad
from .phase import wrap

__all__ = [
    "FieldFit",
    "WEIGHTINGS",
    "OFFSET_METHODS",
    "gaussian_smooth",
    "smooth_phase_linear",
    "mcpc3ds_offset",
    "remove_phase_offset",
    "unwrap_temporal",
    "fit_field",
    "combine_echoes",
]

#: Echo weightings accepted by :func:`fit_field`.
WEIGHTINGS = ("snr", "magnitude", "uniform")
#: Phase-offset handling accepted by :func:`combine_echoes`.
OFFSET_METHODS = ("mcpc3ds", "none")
#: Smoothing of the MCPC-3D-S offset: local linear fit (default) or the plain Gaussian circular mean.
OFFSET_SMOOTHINGS = ("linear", "gaussian")

_TWO_PI = 2 * math.pi

Unwrapper = Callable[..., Tensor]


@dataclasses.dataclass
class FieldFit:
    """Result of the multi-echo field fit (all volumes zero outside the mask).

    field_hz: total field f (Hz). residual: weighted RMS of the phase fit residual (rad),
    √(Σ wᵢ rᵢ² / Σ wᵢ). noise: standard deviation of f (Hz) predicted from the weighted fit and the
    noise level estimated from the residuals (``inf`` where no echo carries signal); use 1/noise as a
    data weight downstream. offset: fitted φ0 (rad) when ``intercept=True``. bipolar_offset: fitted
    even-echo phase offset β (rad) when ``bipolar=True``. mcpc_offset: φ0 removed by MCPC-3D-S and
    unwrapped: the unwrapped, offset-free phase (E, …) — both only from :func:`combine_echoes`.
    """

    field_hz: Tensor
    residual: Tensor
    noise: Tensor
    offset: Tensor | None = None
    bipolar_offset: Tensor | None = None
    mcpc_offset: Tensor | None = None
    unwrapped: Tensor | None = None


# ----------------------------------------------------------------------------------------------------------
# helpers


def _sigma3(sigma_mm: float | Sequence[float], name: str = "sigma_mm") -> tuple[float, float, float]:
    if isinstance(sigma_mm, numbers.Real):
        s = (float(sigma_mm),) * 3
    else:
        try:
            s = tuple(float(v) for v in sigma_mm)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: expected a number or 3 numbers in mm, got {sigma_mm!r}") from exc
    if len(s) != 3 or not all(math.isfinite(v) and v >= 0 for v in s):
        raise ValueError(f"{name}: expected 3 finite values >= 0 in mm, got {sigma_mm!r}")
    return s  # type: ignore[return-value]


@numpy_io
def gaussian_smooth(
    x: Tensor,
    sigma_mm: float | Sequence[float],
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    weight: Tensor | None = None,
) -> Tensor:
    """Gaussian smoothing of the last three dims (σ in mm per axis, 0 = none), real or complex.

    Multiplies by exp(−2π²Σ σₐ²kₐ²) on a grid zero-padded by 3σ per axis, so nothing wraps around.
    With ``weight`` it is the normalised convolution G∗(w·x) / G∗w (0 where G∗w vanishes), which
    keeps a masked region's values from being pulled towards the zeros outside it.
    """
    vs = check_voxel_size(voxel_size)
    sig = _sigma3(sigma_mm)
    shape = tuple(int(n) for n in x.shape[-3:])
    pshape = tuple(fast_len(n + 2 * math.ceil(3 * s / d)) for n, s, d in zip(shape, sig, vs))
    kx, ky, kz = kspace_grid(pshape, vs, device=x.device, dtype=torch.float64)
    g = torch.exp(-2 * math.pi**2 * (sig[0] ** 2 * kx**2 + sig[1] ** 2 * ky**2 + sig[2] ** 2 * kz**2))
    real_dtype = x.real.dtype if x.is_complex() else x.dtype
    g = g.to(real_dtype)

    def smooth(v: Tensor) -> Tensor:
        y = crop(ifftn3(fftn3(pad(v, pshape)) * g), shape)
        return y if v.is_complex() else y.real

    if weight is None:
        return smooth(x).to(x.dtype)
    w = weight.to(real_dtype)
    num = smooth(x * w)
    den = smooth(w)
    tiny = 1e-6 * float(den.abs().max()) if den.numel() else 0.0
    out = torch.where(den > tiny, num / torch.where(den > tiny, den, torch.ones_like(den)), torch.zeros_like(num))
    return out.to(x.dtype)


def _bbox(weight: Tensor, margin: Sequence[int]) -> tuple[slice, ...]:
    """Bounding box of ``weight != 0`` (last three dims) widened by ``margin`` voxels per axis."""
    nz = weight != 0
    box = []
    for d in range(3):
        others = tuple(i for i in range(3) if i != d)
        idx = torch.nonzero(nz.any(dim=others)).flatten()
        if idx.numel() == 0:
            return (slice(None),) * 3
        n = nz.shape[d]
        box.append(slice(max(0, int(idx[0]) - margin[d]), min(n, int(idx[-1]) + 1 + margin[d])))
    return tuple(box)


@numpy_io
def smooth_phase_linear(
    phase: Tensor,
    weight: Tensor,
    sigma_mm: float | Sequence[float],
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    ridge: float = 1e-3,
    iterations: int = 3,
) -> Tensor:
    """Smooth a wrapped phase map by a Gaussian-weighted *local linear* fit (rad in, rad out, wrapped).

    First the circular mean φ_s = arg(G ∗ (w·e^{iφ})); then, per voxel x, the residual r = wrap(φ − φ_s) is
    fitted by a + g·(y − x) over the Gaussian window G(y − x)·w(y) (first-order normalised convolution, Knutsson &
    Westin, CVPR 1993) and φ_s + a is returned. A plain (zeroth-order) weighted mean is biased wherever the window
    is cut by the mask edge, by about the phase gradient times the shift of the window's centre of mass (up to
    ~0.8σ): with a 10 mm σ and a phase offset that changes by π across the head that is several tenths of a rad at
    the brain edge, i.e. several Hz of non-harmonic field error. The local linear fit has no bias for offsets
    that are linear within the window. ``weight`` ≥ 0 (0 = not used; e.g. magnitude inside the mask);
    ``ridge`` regularises the gradient where the window holds too few voxels to define it. Values are computed on
    the bounding box of the weight plus 3σ and are zero elsewhere. The fit is applied ``iterations`` times to
    the remaining residual (the circular mean's bias is not exactly linear); 10 + 4·iterations Gaussian
    convolutions (float64).
    """
    vs = check_voxel_size(voxel_size)
    sig = _sigma3(sigma_mm)
    full_shape = tuple(int(n) for n in phase.shape[-3:])
    box = _bbox(weight, [math.ceil(3 * s / d) for s, d in zip(sig, vs)])
    ph = phase[box].to(torch.float64)
    w = weight[box].to(torch.float64)
    z = gaussian_smooth(torch.polar(torch.ones_like(ph), ph) * w, sig, vs)
    phs = torch.angle(z)
    shape = tuple(ph.shape)
    coords = []
    for d in range(3):
        c = torch.arange(shape[d], dtype=torch.float64, device=ph.device) * vs[d]
        c = (c - c.mean()) / max(sig[d], 1e-12)
        coords.append(c.reshape([-1 if i == d else 1 for i in range(3)]).expand(shape))

    # the moments and residuals are real: one real-to-complex FFT pair each, float32 (moments are O(1) in units
    # of σ, so single precision keeps ~6 digits), the kernel computed once
    pshape = tuple(fast_len(n + 2 * math.ceil(3 * sg / d)) for n, sg, d in zip(shape, sig, vs))
    freqs = [torch.fft.fftfreq(n, d=d, dtype=torch.float64, device=ph.device) for n, d in zip(pshape[:2], vs[:2])]
    freqs.append(torch.fft.rfftfreq(pshape[2], d=vs[2], dtype=torch.float64, device=ph.device))
    expo = sum((sg * f.reshape([-1 if i == a else 1 for i in range(3)])) ** 2
               for a, (sg, f) in enumerate(zip(sig, freqs)))
    kernel = torch.exp(-2 * math.pi**2 * expo).to(torch.float32)

    def g(x: Tensor) -> Tensor:
        y = torch.fft.irfftn(torch.fft.rfftn(pad(x.to(torch.float32), pshape)) * kernel, s=pshape)
        return crop(y, shape).to(torch.float64)

    # only where the weight is non-zero (the offset is used inside the mask only): moments gathered there
    sel = w > 0
    xs = [c[sel] for c in coords]
    s0 = g(w)[sel]
    s1 = [g(w * c)[sel] for c in coords]
    A = torch.empty((int(sel.sum()), 4, 4), dtype=torch.float64, device=ph.device)
    A[:, 0, 0] = s0
    for i in range(3):
        m1 = s1[i] - xs[i] * s0
        A[:, 0, i + 1] = m1
        A[:, i + 1, 0] = m1
        for j in range(i, 3):
            s2 = g(w * coords[i] * coords[j])[sel]
            m2 = s2 - xs[i] * s1[j] - xs[j] * s1[i] + xs[i] * xs[j] * s0
            A[:, i + 1, j + 1] = m2
            A[:, j + 1, i + 1] = m2
    del s1
    for i in range(3):
        A[:, i + 1, i + 1] += ridge * s0
    LU, pivots, info = torch.linalg.lu_factor_ex(A)
    ok = (info == 0) & (s0 > 0)
    del A
    est = phs
    for _ in range(int(iterations)):
        # the local linear fit reproduces linear phases exactly; iterating on the residual removes what is left of
        # the circular mean's edge bias, which is not linear (e ← e − LL(e))
        r = torch.remainder(ph - est + math.pi, 2 * math.pi) - math.pi
        rb = g(w * r)[sel]
        rhs = torch.stack([rb] + [g(w * r * c)[sel] - x * rb for c, x in zip(coords, xs)], dim=-1)
        sol = torch.linalg.lu_solve(LU, pivots, rhs[..., None])[..., 0]
        est = est.clone()
        est[sel] = est[sel] + torch.where(ok, sol[:, 0], torch.zeros_like(s0))
    out = torch.zeros(full_shape, dtype=phase.dtype, device=phase.device)
    out[box] = wrap(est.to(phase.dtype))
    return out


def _resolve_unwrapper(unwrapper: Unwrapper | str | None) -> Unwrapper:
    """Map ``unwrapper`` to a callable ``f(phase, *, magnitude, mask, voxel_size) -> unwrapped phase``."""
    if unwrapper is None or unwrapper == "quality":
        from .unwrap import unwrap_quality  # lazy: optional at import time

        return lambda p, *, magnitude, mask, voxel_size: unwrap_quality(p, magnitude, mask, voxel_size=voxel_size)
    if unwrapper == "laplacian":
        from .unwrap import unwrap_laplacian

        return lambda p, *, magnitude, mask, voxel_size: unwrap_laplacian(p, voxel_size, mask=mask)
    if callable(unwrapper):
        return unwrapper
    raise ValueError(
        f"unwrapper: expected None, 'quality', 'laplacian' or a callable "
        f"f(phase, *, magnitude, mask, voxel_size), got {unwrapper!r}"
    )


def _unwrap_spatial(
    fn: Unwrapper, phase: Tensor, magnitude: Tensor | None, mask: Tensor | None, voxel_size: tuple[float, ...]
) -> Tensor:
    """Spatially unwrap one 3-D phase and remove the global 2π ambiguity.

    The result is shifted by the multiple of 2π that brings its median (inside the mask) into [−π, π):
    shimmed brains have a median field that accrues less than π at the echo times used here. Where that
    fails the step costs only a constant field offset (k/TE Hz), which background-field removal discards.
    """
    out = fn(phase, magnitude=magnitude, mask=mask, voxel_size=voxel_size)
    if not isinstance(out, Tensor):
        out = torch.as_tensor(out)
    out = out.to(device=phase.device, dtype=phase.dtype)
    if tuple(out.shape) != tuple(phase.shape):
        raise ValueError(f"unwrapper: returned shape {tuple(out.shape)}, expected {tuple(phase.shape)}")
    sel = out[mask] if mask is not None else out.reshape(-1)
    sel = sel[torch.isfinite(sel)]
    if sel.numel():
        out = out - _TWO_PI * torch.round(torch.median(sel) / _TWO_PI)
    return out


def _prepare(
    phase: Any, magnitude: Any, mask: Any, n_dims: int | None = 4, name: str = "phase"
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    ph = as_real(phase, name)
    if n_dims is not None and ph.dim() != n_dims:
        raise ValueError(f"{name}: expected a (echoes, X, Y, Z) array, got shape {tuple(ph.shape)}")
    if ph.dim() < 2:
        raise ValueError(f"{name}: expected an echo dimension first, got shape {tuple(ph.shape)}")
    m = None if mask is None else check_mask(mask, ph.shape[1:], device=ph.device)
    mag = None
    if magnitude is not None:
        mag = as_real(magnitude, "magnitude").to(device=ph.device, dtype=ph.dtype)
        check_same_shape(ph, mag, name, "magnitude")
    full = None if m is None else m.expand(ph.shape)
    check_finite(ph, name, full)
    if mag is not None:
        check_finite(mag, "magnitude", full)
        neg = mag < 0 if full is None else (mag < 0) & full
        if bool(neg.any()):
            raise ValueError("magnitude: expected non-negative values (|S|), found negative ones")
    return ph, mag, m


# ----------------------------------------------------------------------------------------------------------
# phase offset


@numpy_io
def mcpc3ds_offset(
    phase: Tensor,
    magnitude: Tensor | None,
    echo_times: Sequence[float],
    mask: Tensor | None = None,
    *,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    sigma_mm: float | Sequence[float] = 10.0,
    echoes: tuple[int, int] = (0, 1),
    unwrapper: Unwrapper | str | None = None,
    smoothing: str = "linear",
) -> Tensor:
    """Echo-independent phase offset φ0 (rad, wrapped to [−π, π)) by MCPC-3D-S.

    Solves φ0 = φ₁ − TE₁·Δφ/(TE₂ − TE₁) with Δφ = unwrap(arg(S₂·S₁*)), the spatially unwrapped phase of the
    Hermitian product of two echoes, then smooths e^{iφ0} with a Gaussian weighted by √(|S₁||S₂|) inside the
    mask (Eckstein, Dymerska, Bachrata, et al., "Computationally efficient combination of multi-channel phase
    data from multi-echo acquisitions (ASPIRE)", Magn Reson Med 2018, the MCPC-3D-S variant).

    Parameters
    ----------
    phase, magnitude
        (E, X, Y, Z) wrapped phase (rad) and magnitude; ``magnitude=None`` weights all voxels equally.
    echo_times
        E echo times in s, strictly increasing; at least 2 echoes.
    echoes
        The two echoes (0-based) used; default (0, 1) as in MriResearchTools. For bipolar readouts use two
        echoes of the same polarity, e.g. (0, 2).
    sigma_mm
        Gaussian σ (mm, scalar or per axis). Default 10 mm: MriResearchTools smooths with σ = (10, 10, 5)
        voxels, i.e. ≈ 10 mm at a typical 1×1×2 mm resolution.
    unwrapper
        Spatial unwrapper for Δφ: ``None``/``"quality"`` (:func:`qsmbids.qsm.unwrap.unwrap_quality`, the
        ROMEO-style unwrapper the paper's toolbox uses), ``"laplacian"``, or a callable
        ``f(phase, *, magnitude, mask, voxel_size)``. The unwrapped Δφ is shifted by 2π·k so that its median
        lies in [−π, π) (a 2π error in Δφ would otherwise bias φ0 by 2π·TE₁/ΔTE).
    smoothing
        ``"linear"`` (default): :func:`smooth_phase_linear`, a Gaussian-weighted local linear fit, free of the
        bias a plain weighted mean has where the window is cut by the mask edge (measured on qsm-forward's
        quadratic offset at 3 mm: the total-field error seen through V-SHARP fell from 74 % to 61 %; 57 % with
        the true offset removed);
        ``"gaussian"``: the circular mean of the paper's toolbox.
    """
    ph, mag, m = _prepare(phase, magnitude, mask)
    te = check_echo_times(echo_times, ph.shape[0], min_echoes=2)
    vs = check_voxel_size(voxel_size)
    try:
        e1, e2 = (int(e) for e in echoes)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"echoes: expected two echo indices, got {echoes!r}") from exc
    n = ph.shape[0]
    e1, e2 = (e1 + n if e1 < 0 else e1), (e2 + n if e2 < 0 else e2)
    if e1 == e2 or not (0 <= e1 < n and 0 <= e2 < n):
        raise ValueError(f"echoes: expected two different indices in 0..{n - 1}, got {echoes!r}")
    e1, e2 = min(e1, e2), max(e1, e2)
    if smoothing not in OFFSET_SMOOTHINGS:
        raise ValueError(f"smoothing: expected one of {OFFSET_SMOOTHINGS}, got {smoothing!r}")
    fn = _resolve_unwrapper(unwrapper)
    zero = torch.zeros((), dtype=ph.dtype, device=ph.device)
    if mag is None:
        weight = torch.ones(ph.shape[1:], dtype=ph.dtype, device=ph.device)
    else:
        weight = torch.sqrt(mag[e1] * mag[e2])
    if m is not None:
        weight = torch.where(m, weight, zero)
    dphi = wrap(ph[e2] - ph[e1])
    dphi_u = _unwrap_spatial(fn, dphi, weight, m, vs)
    phi0 = ph[e1] - te[e1] / (te[e2] - te[e1]) * dphi_u
    if m is not None:
        phi0 = torch.where(m, phi0, zero)
    if smoothing == "linear":
        return smooth_phase_linear(phi0, weight, sigma_mm, vs)
    z = torch.polar(torch.ones_like(phi0), phi0)
    z = gaussian_smooth(z * weight, sigma_mm, vs)
    return wrap(torch.angle(z).to(ph.dtype))


@numpy_io
def remove_phase_offset(phase: Tensor, offset: Tensor) -> Tensor:
    """Wrapped phase with the offset removed: wrap(φᵢ − φ0) (rad), φ0 broadcast over the echoes."""
    ph = as_real(phase, "phase")
    off = as_real(offset, "offset").to(device=ph.device, dtype=ph.dtype)
    if off.dim() > ph.dim() or any(a != b and b != 1 for a, b in zip(ph.shape[::-1], off.shape[::-1])):
        raise ValueError(
            f"offset: expected a shape broadcastable to the phase {tuple(ph.shape)}, got {tuple(off.shape)}"
        )
    return wrap(ph - off)


# ----------------------------------------------------------------------------------------------------------
# temporal unwrapping


@numpy_io
def unwrap_temporal(
    phase: Tensor,
    echo_times: Sequence[float],
    template_unwrapped: Tensor,
    *,
    template: int = 0,
    step: int = 1,
) -> Tensor:
    """Unwrap echoes in time from one spatially unwrapped template echo using echo-time ratios.

    For offset-free phase φᵢ = 2π·f·TEᵢ, echo i is predicted from the already unwrapped echo j = i ∓ step
    as φⱼ·TEᵢ/TEⱼ and receives the multiple of 2π that brings its wrapped value closest to the prediction:
    uᵢ = φᵢ + 2π·round((uⱼ·TEᵢ/TEⱼ − φᵢ)/2π) (the template idea of ROMEO's multi-echo mode, Dymerska et al.,
    Magn Reson Med 2021). It is exact while the prediction error stays below π.

    ``phase`` (E, …) wrapped, offset-removed (rad); ``template_unwrapped`` the unwrapped echo ``template``.
    Only echoes whose index differs from ``template`` by a multiple of ``step`` are unwrapped (``step=2``
    chains odd and even echoes of bipolar readouts separately); the others are returned unchanged.
    """
    ph = as_real(phase, "phase")
    te = check_echo_times(echo_times, ph.shape[0])
    tu = as_real(template_unwrapped, "template_unwrapped").to(device=ph.device, dtype=ph.dtype)
    check_same_shape(ph[0], tu, "phase[0]", "template_unwrapped")
    n = ph.shape[0]
    if not 0 <= int(template) < n:
        raise ValueError(f"template: expected an echo index in 0..{n - 1}, got {template}")
    if int(step) < 1:
        raise ValueError(f"step: expected a positive integer, got {step}")
    t, s = int(template), int(step)
    out = [ph[i] for i in range(n)]
    out[t] = tu
    for i in list(range(t + s, n, s)) + list(range(t - s, -1, -s)):
        j = i - s if i > t else i + s
        pred = out[j] * (te[i] / te[j])
        out[i] = ph[i] + _TWO_PI * torch.round((pred - ph[i]) / _TWO_PI)
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------------------
# field fit


def _solve(A: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Batched solve of the p×p normal equations; singular systems (no weight) give β = 0, A⁻¹ = inf·I."""
    p = A.shape[-1]
    eye = torch.eye(p, dtype=A.dtype, device=A.device)
    scale = torch.diagonal(A, dim1=-2, dim2=-1).sum(-1)
    ok = scale > 0
    if p == 1:
        safe = torch.where(ok, A[:, 0, 0], torch.ones_like(scale))
        inv = (1.0 / safe)[:, None, None]
    else:
        Aok = torch.where(ok[:, None, None], A, eye)
        inv, info = torch.linalg.inv_ex(Aok)
        ok = ok & (info == 0)
        inv = torch.where(ok[:, None, None], inv, torch.zeros_like(inv))
    beta = (inv @ b[..., None])[..., 0]
    beta = torch.where(ok[:, None], beta, torch.zeros_like(beta))
    inf_eye = torch.where(eye.bool(), torch.full_like(eye, math.inf), torch.zeros_like(eye))
    inv = torch.where(ok[:, None, None], inv, inf_eye)
    return beta, inv


def _chi2_median_ratio(k: int) -> float:
    """median(χ²_k)/k, to turn a median of per-voxel variance estimates into a mean."""
    from scipy.special import gammaincinv

    return 2.0 * float(gammaincinv(k / 2.0, 0.5)) / k


@numpy_io
def fit_field(
    unwrapped_phase: Tensor,
    echo_times: Sequence[float] | float,
    magnitude: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    weighting: str = "snr",
    intercept: bool = False,
    bipolar: bool = False,
) -> FieldFit:
    """Weighted least-squares field (Hz) from unwrapped multi-echo phase, one closed-form fit per voxel.

    Minimises Σᵢ wᵢ (φᵢ − 2π·f·TEᵢ − [φ0] − [β·pᵢ])² per voxel (normal equations, batched in torch); through
    the origin this is f = Σ wᵢ TEᵢ φᵢ / (2π Σ wᵢ TEᵢ²). A single echo gives f = φ/(2π·TE).

    Weighting (phase noise σ_φᵢ ≈ σ_n/|Sᵢ| at SNR ≳ 3, Conturo & Smith, Magn Reson Med 1990):

    * ``"snr"`` (default): wᵢ = |Sᵢ|², the inverse phase variance, so f is the minimum-variance (BLUE) estimate.
      Equivalently it averages the per-echo fields fᵢ = φᵢ/(2π·TEᵢ) with their inverse variances
      |Sᵢ|²·TEᵢ² (Var fᵢ = σ_n²/(2π·|Sᵢ|·TEᵢ)²). Same weights as QSM.jl / QSM.m (W = magnitude²).
    * ``"magnitude"``: wᵢ = |Sᵢ| (linear magnitude weighting, as in ``echofit.m`` of H. Sun's QSM toolbox), a milder
      weighting between "snr" and "uniform".
    * ``"uniform"``: wᵢ = 1 (ordinary least squares).

    Without ``magnitude`` all weightings are uniform. ``intercept=True`` also fits φ0 (needs ≥ 2 echoes).
    ``bipolar=True`` fits an even-echo offset β (pᵢ = 1 for the 2nd, 4th, … echo): bipolar readouts give odd
    and even echoes opposite gradient-delay phases (needs ≥ 3 echoes).

    Noise: Var f = σ_n²·[(XᵀWX)⁻¹XᵀW V W X(XᵀWX)⁻¹]₀₀/(2π)² with V = diag(1/|Sᵢ|²) (sandwich form, exact for any
    weighting). σ_n² is estimated from the residuals of the minimum-variance fit as the median over the
    mask of Σᵢ|Sᵢ|²rᵢ²/k (k = E − #parameters), divided by median(χ²_k)/k (robust to voxels with unwrapping
    errors); with no residual degrees of freedom σ_n = 1 (noise in units of the magnitude noise).

    Units: phase in rad, echo times in s, magnitude in any unit; field_hz and noise in Hz, residual in rad.
    Everything is zero outside ``mask``.
    """
    ph = as_real(unwrapped_phase, "unwrapped_phase")
    if isinstance(echo_times, numbers.Real):
        echo_times = (float(echo_times),)
    te = check_echo_times(echo_times)
    if len(te) == 1 and ph.dim() == 3:
        ph = ph.unsqueeze(0)
        if magnitude is not None:
            magnitude = as_real(magnitude, "magnitude")
            magnitude = magnitude.unsqueeze(0) if magnitude.dim() == 3 else magnitude
    if ph.dim() < 2:
        raise ValueError(f"unwrapped_phase: expected (echoes, ...), got shape {tuple(ph.shape)}")
    te = check_echo_times(te, ph.shape[0])
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting: expected one of {WEIGHTINGS}, got {weighting!r}")
    n_echo = ph.shape[0]
    if bipolar and n_echo < 3:
        raise ValueError(f"bipolar: fitting the odd/even echo offset needs at least 3 echoes, got {n_echo}")
    n_par = 1 + int(bool(intercept)) + int(bool(bipolar))
    if n_echo < n_par:
        raise ValueError(f"intercept: fitting a phase offset needs at least {n_par} echoes, got {n_echo}")
    ph_, mag, m = _prepare(ph, magnitude, mask, n_dims=None, name="unwrapped_phase")
    if m is None:
        m = torch.ones(ph_.shape[1:], dtype=torch.bool, device=ph_.device)

    dev, out_dtype = ph_.device, ph_.dtype
    f64 = torch.float64
    y = ph_[:, m].to(f64)  # (E, N)
    te_max = te[-1]
    cols = [torch.tensor(te, dtype=f64, device=dev) / te_max]
    if intercept:
        cols.append(torch.ones(n_echo, dtype=f64, device=dev))
    if bipolar:
        cols.append(torch.tensor([float(i % 2) for i in range(n_echo)], dtype=f64, device=dev))
    X = torch.stack(cols, dim=1)  # (E, p)

    if mag is not None:
        s = mag[:, m].to(f64)
        s2 = s * s
        w = {"snr": s2, "magnitude": s, "uniform": torch.ones_like(s)}[weighting]
        # w²/|S|², the per-echo weight² × phase variance (in units of σ_n²)
        wvw = torch.where(s > 0, w * w / torch.where(s > 0, s2, torch.ones_like(s2)),
                          torch.where(w > 0, torch.full_like(w, math.inf), torch.zeros_like(w)))
    else:
        s2 = None
        w = torch.ones_like(y)
        wvw = w

    def normal(wt: Tensor) -> tuple[Tensor, Tensor]:
        A = torch.einsum("en,ep,eq->npq", wt, X, X)
        b = torch.einsum("en,ep,en->np", wt, X, y)
        return _solve(A, b)

    beta, Ainv = normal(w)
    resid = y - (X @ beta.T)  # (E, N)
    wsum = w.sum(0)
    rms = torch.sqrt(torch.where(wsum > 0, (w * resid**2).sum(0) / torch.where(wsum > 0, wsum, torch.ones_like(wsum)),
                                 torch.zeros_like(wsum)))

    # noise level σ_n² from the minimum-variance fit's residuals
    k = n_echo - n_par
    sigma2 = 1.0
    if k >= 1:
        if weighting == "snr" or s2 is None:
            r_blue = resid
        else:
            beta_b, _ = normal(s2)
            r_blue = y - (X @ beta_b.T)
        if s2 is None:
            per_vox = (r_blue**2).sum(0) / k
            good = torch.ones_like(per_vox, dtype=torch.bool)
        else:
            per_vox = (s2 * r_blue**2).sum(0) / k
            good = (s2 > 0).all(0)
        if bool(good.any()):
            sigma2 = float(torch.median(per_vox[good])) / _chi2_median_ratio(k)
    B = torch.einsum("en,ep,eq->npq", torch.nan_to_num(wvw, posinf=0.0), X, X)
    var = (Ainv @ B @ Ainv)[:, 0, 0]
    inf_mask = torch.isinf(wvw).any(0) | torch.isinf(Ainv[:, 0, 0])
    scale = _TWO_PI * te_max
    noise = torch.sqrt(torch.nan_to_num(var, nan=0.0).clamp_min(0) * sigma2) / scale
    noise = torch.where(inf_mask, torch.full_like(noise, math.inf), noise)

    def scatter(v: Tensor) -> Tensor:
        out = torch.zeros(m.shape, dtype=out_dtype, device=dev)
        out[m] = v.to(out_dtype)
        return out

    return FieldFit(
        field_hz=scatter(beta[:, 0] / scale),
        residual=scatter(rms),
        noise=scatter(noise),
        offset=scatter(beta[:, 1]) if intercept else None,
        bipolar_offset=scatter(beta[:, -1]) if bipolar else None,
    )


# ----------------------------------------------------------------------------------------------------------
# whole stage


@numpy_io
def combine_echoes(
    phase: Tensor,
    magnitude: Tensor | None,
    echo_times: Sequence[float] | float,
    mask: Tensor | None = None,
    *,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    offset: str = "mcpc3ds",
    bipolar: bool = False,
    unwrapper: Unwrapper | str | None = None,
    weighting: str = "snr",
    sigma_mm: float | Sequence[float] = 10.0,
    template: int = 0,
    offset_smoothing: str = "linear",
) -> FieldFit:
    """Multi-echo wrapped phase → total field (Hz): offset removal → unwrapping → weighted fit.

    1. ``offset="mcpc3ds"``: remove φ0 estimated by :func:`mcpc3ds_offset` (Eckstein et al., MRM 2018) from
       echoes (0, 1), or (0, 2) with ``bipolar=True`` so that φ0 absorbs the odd-echo readout phase;
       ``offset="none"``: the phase is taken as offset-free (e.g. already combined with offset correction
       on the scanner, or single-echo data, where no offset can be estimated).
    2. Unwrap echo ``template`` spatially with ``unwrapper`` (see :func:`mcpc3ds_offset`), then the other
       echoes in time with :func:`unwrap_temporal` (echo-time ratios). With ``bipolar=True`` echo
       ``template ± 1`` is also unwrapped spatially and odd and even echoes are chained separately, so the
       bipolar offset never enters a prediction.
    ``offset_smoothing`` is passed to :func:`mcpc3ds_offset` as ``smoothing``.
    3. :func:`fit_field` through the origin (plus the even-echo offset when ``bipolar``) with ``weighting``.

    ``phase``/``magnitude`` are (E, X, Y, Z) (a 3-D phase with one echo time is one echo); echo times in s.
    Returns :class:`FieldFit` with ``mcpc_offset`` (rad, or None) and ``unwrapped`` (E, X, Y, Z) filled in.
    """
    if isinstance(echo_times, numbers.Real):
        echo_times = (float(echo_times),)
    ph = as_real(phase, "phase")
    if ph.dim() == 3 and len(tuple(echo_times)) == 1:
        ph = ph.unsqueeze(0)
        if magnitude is not None:
            magnitude = as_real(magnitude, "magnitude")
            magnitude = magnitude.unsqueeze(0) if magnitude.dim() == 3 else magnitude
    ph, mag, m = _prepare(ph, magnitude, mask)
    n = ph.shape[0]
    te = check_echo_times(echo_times, n)
    vs = check_voxel_size(voxel_size)
    if offset not in OFFSET_METHODS:
        raise ValueError(f"offset: expected one of {OFFSET_METHODS}, got {offset!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting: expected one of {WEIGHTINGS}, got {weighting!r}")
    if bipolar and n < 3:
        raise ValueError(f"bipolar: the odd/even echo correction needs at least 3 echoes, got {n}")
    if not 0 <= int(template) < n:
        raise ValueError(f"template: expected an echo index in 0..{n - 1}, got {template}")
    if offset == "mcpc3ds" and n < 2:
        raise ValueError("offset: MCPC-3D-S needs at least 2 echoes, got 1 (use offset='none' for single-echo data)")
    fn = _resolve_unwrapper(unwrapper)

    phi0 = None
    if offset == "mcpc3ds":
        pair = (0, 2) if bipolar else (0, 1)
        phi0 = mcpc3ds_offset(ph, mag, te, m, voxel_size=vs, sigma_mm=sigma_mm, echoes=pair, unwrapper=fn,
                              smoothing=offset_smoothing)
        ph = remove_phase_offset(ph, phi0)
    else:
        ph = wrap(ph)
    if m is not None:
        ph = torch.where(m, ph, torch.zeros((), dtype=ph.dtype, device=ph.device))

    t0 = int(template)
    templates = [t0]
    if bipolar:
        templates.append(t0 + 1 if t0 + 1 < n else t0 - 1)
    step = 2 if bipolar else 1
    unwrapped = ph.clone()
    for t in templates:
        u_t = _unwrap_spatial(fn, ph[t], None if mag is None else mag[t], m, vs)
        chain = unwrap_temporal(ph, te, u_t, template=t, step=step)
        idx = list(range(t % step, n, step))
        unwrapped[idx] = chain[idx]
    fit = fit_field(unwrapped, te, mag, m, weighting=weighting, intercept=False, bipolar=bipolar)
    fit.mcpc_offset = phi0
    fit.unwrapped = unwrapped
    return fit
