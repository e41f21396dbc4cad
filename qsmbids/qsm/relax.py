"""R2*/T2* mapping from multi-echo GRE magnitude: weighted log-linear fit and ARLO.

Model per voxel: |S(TEᵢ)| = S0·exp(−R2*·TEᵢ), echo times in s, R2* in 1/s (s⁻¹), T2* = 1/R2* in s.
Maps are zero outside the mask and clipped to [0, r2_max]; r2_max = 1000 s⁻¹ (T2* = 1 ms) is our choice, a
ceiling below which multi-echo brain GRE (first echo ≳ 2 ms) can still see signal.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._utils import as_real, check_echo_times, check_finite, check_mask, check_positive, numpy_io

__all__ = ["R2STAR_METHODS", "r2star_loglinear", "r2star_arlo", "r2star_map", "t2star"]

#: Methods accepted by :func:`r2star_map`.
R2STAR_METHODS = ("loglinear", "arlo")

_R2_MAX = 1000.0


def _prepare(magnitude: Tensor, echo_times: Sequence[float], mask: Tensor | None, min_echoes: int):
    mag = as_real(magnitude, "magnitude")
    if mag.dim() < 2:
        raise ValueError(f"magnitude: expected (echoes, ...) with the echoes first, got shape {tuple(mag.shape)}")
    te = check_echo_times(echo_times, mag.shape[0], min_echoes=min_echoes)
    if mask is None:
        m = torch.ones(mag.shape[1:], dtype=torch.bool, device=mag.device)
    else:
        m = check_mask(mask, mag.shape[1:], device=mag.device)
    check_finite(mag, "magnitude", m.expand(mag.shape))
    if bool((mag[:, m] < 0).any()):
        raise ValueError("magnitude: expected non-negative values (|S|), found negative ones")
    return mag, te, m


def _scatter(values: Tensor, m: Tensor, dtype: torch.dtype, r2_max: float) -> Tensor:
    values = torch.nan_to_num(values, nan=0.0, posinf=r2_max, neginf=0.0).clamp(0.0, r2_max)
    out = torch.zeros(m.shape, dtype=dtype, device=m.device)
    out[m] = values.to(dtype)
    return out


@numpy_io
def r2star_loglinear(
    magnitude: Tensor,
    echo_times: Sequence[float],
    mask: Tensor | None = None,
    *,
    weighted: bool = True,
    r2_max: float = _R2_MAX,
) -> Tensor:
    """R2* (1/s) by (weighted) linear least squares on the log signal, closed form per voxel.

    Fits ln|Sᵢ| = ln S0 − R2*·TEᵢ minimising Σ wᵢ (ln|Sᵢ| − ln S0 + R2*·TEᵢ)². ``weighted=True`` uses wᵢ = |Sᵢ|²:
    a first-order error propagation gives Var(ln|S|) ≈ σ²/|S|², so these are the inverse variances and the
    late, noisy echoes no longer dominate (the weighted linear least squares argument of Veraart et al.,
    NeuroImage 2013, here for mono-exponential T2* decay). ``weighted=False`` is the plain log-linear fit.
    Echoes with |S| = 0 get weight 0. Needs ≥ 2 echoes; echo times in s; magnitude in any unit.
    """
    mag, te, m = _prepare(magnitude, echo_times, mask, 2)
    r2_max = check_positive(r2_max, "r2_max")
    f64 = torch.float64
    s = mag[:, m].to(f64)  # (E, N)
    pos = s > 0
    y = torch.log(torch.where(pos, s, torch.ones_like(s)))
    w = torch.where(pos, s * s if weighted else torch.ones_like(s), torch.zeros_like(s))
    t = torch.tensor(te, dtype=f64, device=s.device)[:, None] / te[-1]  # scaled for conditioning
    sw, st, stt = w.sum(0), (w * t).sum(0), (w * t * t).sum(0)
    sy, sty = (w * y).sum(0), (w * t * y).sum(0)
    den = sw * stt - st * st
    ok = (den > 1e-12 * sw * sw) & (pos.sum(0) >= 2)
    slope = torch.where(ok, (sw * sty - st * sy) / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))
    return _scatter(-slope / te[-1], m, mag.dtype, r2_max)


@numpy_io
def r2star_arlo(
    magnitude: Tensor,
    echo_times: Sequence[float],
    mask: Tensor | None = None,
    *,
    r2_max: float = _R2_MAX,
) -> Tensor:
    """R2* (1/s) by ARLO, auto-regression on linear operations (Pei, Nguyen, Thimmappa, et al., MRM 2015).

    With echo spacing Δ, Simpson's rule over three consecutive echoes gives
    sᵢ = Δ/3·(Sᵢ + 4Sᵢ₊₁ + Sᵢ₊₂) ≈ ∫ S dt = T2*·(Sᵢ − Sᵢ₊₂) = T2*·δᵢ. Minimising the prediction error of Sᵢ₊₂,
    eᵢ = (sᵢ − T2*·δᵢ)/(T2* + Δ/3), over T2* gives the closed form

        T2* = (Σ sᵢ² + (Δ/3)·Σ sᵢδᵢ) / ((Δ/3)·Σ δᵢ² + Σ sᵢδᵢ),   R2* = 1/T2*.

    Needs ≥ 3 equally spaced echoes (spacings may differ by 5 % — sidecar echo times are often rounded to
    0.1 ms; the mean spacing is used). Non-positive T2* (rising signal) gives R2* = 0.
    """
    mag, te, m = _prepare(magnitude, echo_times, mask, 3)
    r2_max = check_positive(r2_max, "r2_max")
    steps = [b - a for a, b in zip(te, te[1:])]
    delta = sum(steps) / len(steps)
    if any(abs(d - delta) > 0.05 * delta for d in steps):
        raise ValueError(f"echo_times: ARLO needs equally spaced echoes, got spacings {steps}")
    f64 = torch.float64
    s = mag[:, m].to(f64)
    a = delta / 3.0
    integ = a * (s[:-2] + 4 * s[1:-1] + s[2:])
    diff = s[:-2] - s[2:]
    num = (integ * integ).sum(0) + a * (integ * diff).sum(0)
    den = a * (diff * diff).sum(0) + (integ * diff).sum(0)
    t2 = torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(den))
    r2 = torch.where(t2 > 0, 1.0 / torch.where(t2 > 0, t2, torch.ones_like(t2)), torch.zeros_like(t2))
    return _scatter(r2, m, mag.dtype, r2_max)


@numpy_io
def t2star(r2star: Tensor) -> Tensor:
    """T2* = 1/R2* in s (R2* in 1/s); 0 where R2* ≤ 0 (no decay measured)."""
    r2 = as_real(r2star, "r2star")
    pos = r2 > 0
    return torch.where(pos, 1.0 / torch.where(pos, r2, torch.ones_like(r2)), torch.zeros_like(r2))


@numpy_io
def r2star_map(
    magnitude: Tensor,
    echo_times: Sequence[float],
    mask: Tensor | None = None,
    *,
    method: str = "loglinear",
    **kwargs,
) -> Tensor:
    """R2* (1/s) with ``method`` = ``"loglinear"`` (:func:`r2star_loglinear`, default) or ``"arlo"``."""
    if method == "loglinear":
        return r2star_loglinear(magnitude, echo_times, mask, **kwargs)
    if method == "arlo":
        return r2star_arlo(magnitude, echo_times, mask, **kwargs)
    raise ValueError(f"method: expected one of {R2STAR_METHODS}, got {method!r}")

