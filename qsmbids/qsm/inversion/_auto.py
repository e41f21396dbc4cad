"""Automatic choice of the regularisation parameter: L-curve corner and noise estimate for the discrepancy principle.

* :func:`lcurve_corner`: Hansen's L-curve — the parameter at the point of maximum curvature of
  (log ‖residual‖, log ‖solution‖) (Hansen PC, O'Leary DP. The use of the L-curve in the regularization of
  discrete ill-posed problems. SIAM J Sci Comput 1993;14:1487–1503; Hansen PC. Analysis of discrete ill-posed
  problems by means of the L-curve. SIAM Rev 1992;34:561–580). For the closed-form k-space inversions both norms
  are sums over the spectrum of the field (Parseval), so a whole curve costs one FFT of the field
  (:func:`kspace_lcurve`); Bilgic et al. (MRM 2014) choose the Tikhonov λ of QSM the same way.
* :func:`estimate_noise`: a robust estimate of the field's noise standard deviation from its finest-scale
  differences (median absolute deviation of the 3-D Haar "diagonal" detail band, Donoho & Johnstone,
  Biometrika 1994), for the discrepancy principle when no noise map from the echo fit is given.
* :func:`discrepancy_target`: Morozov's discrepancy principle — the data misfit a regularised solution should have,
  ‖W(D∗χ − f)‖² ≈ Σ_mask W²σ² (Morozov VA. On the solution of functional equations by the method of
  regularization. Soviet Math Dokl 1966;7:414–417); :func:`discrepancy_search` finds the parameter that meets it
  for an iterative solver by a bracketed secant search in log λ (a few warm-started solves).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["lcurve_corner", "kspace_lcurve", "estimate_noise", "noise_level", "discrepancy_target",
           "discrepancy_search", "is_discrepancy"]

#: The rule names recorded in the solver's ``params`` (``lambda_rule``).
L_CURVE = "l-curve"
DISCREPANCY = "discrepancy"
FIXED = "fixed"


def lcurve_corner(params: Sequence[float], res_norm: Sequence[float], sol_norm: Sequence[float]) -> int:
    """Index of the L-curve corner: maximum curvature of (log ρ, log η) against log(parameter).

    ``params`` increasing (log-spaced), ``res_norm`` ρ and ``sol_norm`` η the residual and solution norms at each.
    The curve is parametrised by t = log(parameter); curvature κ = (x′y″ − x″y′)/(x′² + y′²)^{3/2} with
    x = log ρ, y = log η and central differences. The corner is the largest κ with the L's orientation
    (residual growing, solution shrinking with more regularisation); end points are never chosen.
    """
    t = torch.log(torch.as_tensor(params, dtype=torch.float64))
    x = torch.log(torch.as_tensor(res_norm, dtype=torch.float64).clamp_min(1e-300))
    y = torch.log(torch.as_tensor(sol_norm, dtype=torch.float64).clamp_min(1e-300))
    n = t.numel()
    if n < 5:
        raise ValueError("lcurve_corner: expected at least 5 parameter values")
    # light smoothing against kinks of a discrete parameter (TSVD, TKD): a 3-point binomial filter
    def smooth(v: Tensor) -> Tensor:
        out = v.clone()
        out[1:-1] = 0.25 * v[:-2] + 0.5 * v[1:-1] + 0.25 * v[2:]
        return out

    x, y = smooth(x), smooth(y)
    dt = torch.gradient(t)[0]
    x1 = torch.gradient(x)[0] / dt
    y1 = torch.gradient(y)[0] / dt
    x2 = torch.gradient(x1)[0] / dt
    y2 = torch.gradient(y1)[0] / dt
    kappa = (x1 * y2 - x2 * y1) / torch.clamp((x1 * x1 + y1 * y1) ** 1.5, min=1e-300)
    kappa[0] = kappa[-1] = -math.inf
    kappa[1] = kappa[-2] = -math.inf
    return int(torch.argmax(kappa))


def kspace_lcurve(
    power: Tensor, D: Tensor, params: Sequence[float], filt: Callable[[Tensor, float], Tensor]
) -> tuple[list[float], list[float]]:
    """Residual and solution norms of a k-space filter inversion χ̂ = K·f̂ for each parameter.

    ``power`` = |f̂|² (with the Hermitian weights of a real-FFT half spectrum folded in), ``D`` the dipole kernel on
    the same grid, ``filt(D, p)`` the filter K for parameter p. ρ² = Σ|D K − 1|²|f̂|², η² = Σ|K|²|f̂|².
    """
    res, sol = [], []
    for p in params:
        K = filt(D, float(p))
        res.append(math.sqrt(float(((D * K - 1.0) ** 2 * power).sum())))
        sol.append(math.sqrt(float((K * K * power).sum())))
    return res, sol


def _haar_hhh(x: Tensor) -> Tensor:
    """The finest 3-D Haar detail band with differences along all three axes (unnormalised ±1 weights / 8)."""
    s = [n // 2 * 2 for n in x.shape[-3:]]
    v = x[..., : s[0], : s[1], : s[2]]
    v = v[..., 0::2, :, :] - v[..., 1::2, :, :]
    v = v[..., :, 0::2, :] - v[..., :, 1::2, :]
    v = v[..., :, :, 0::2] - v[..., :, :, 1::2]
    return v


def estimate_noise(field: Tensor, mask: Tensor) -> float:
    """Robust standard deviation (field units) of white noise in ``field`` inside ``mask``.

    The finest diagonal Haar band d = Σ ±f over each 2×2×2 block (8 terms) has std √8·σ for white noise σ and
    almost no energy from a field that is smooth on the voxel scale (the local field is a low-pass-filtered χ);
    σ̂ = median|d| / (0.6745·√8) over blocks entirely inside the mask (Donoho & Johnstone's MAD estimator).
    Structure at the voxel scale (vessels, nuclei edges) biases it slightly upwards.
    """
    f = field.to(torch.float64)
    m = mask.to(torch.bool)
    d = _haar_hhh(f).abs()
    inside = _haar_min(m)
    vals = d[inside]
    if vals.numel() < 16:
        vals = d[_haar_any(m)]
    if vals.numel() == 0:
        return 0.0
    return float(torch.median(vals)) / (0.6744897501960817 * math.sqrt(8.0))


def _blocks(m: Tensor) -> Tensor:
    s = [n // 2 * 2 for n in m.shape[-3:]]
    v = m[..., : s[0], : s[1], : s[2]]
    return v.reshape(s[0] // 2, 2, s[1] // 2, 2, s[2] // 2, 2)


def _haar_min(m: Tensor) -> Tensor:
    return _blocks(m).all(dim=5).all(dim=3).all(dim=1)


def _haar_any(m: Tensor) -> Tensor:
    return _blocks(m).any(dim=5).any(dim=3).any(dim=1)


def noise_level(field: Tensor, mask: Tensor, noise_std: Tensor | float | None) -> tuple[float, str]:
    """RMS noise σ (ppm) in the mask: from ``noise_std`` (a map or a number) when given, else estimated.

    Returns (σ, source) with source ``"noise_std"`` or ``"estimated"``.
    """
    m = mask.to(torch.bool)
    if noise_std is None:
        return estimate_noise(field, m), "estimated"
    if isinstance(noise_std, Tensor):
        sd = noise_std.to(device=field.device, dtype=torch.float64)
        if sd.shape != field.shape:
            raise ValueError(f"noise_std: expected shape {tuple(field.shape)}, got {tuple(sd.shape)}")
        v = sd[m]
        if not bool(torch.isfinite(v).all()) or bool((v <= 0).any()):
            raise ValueError("noise_std: expected positive finite noise standard deviations inside the mask")
        return float(torch.sqrt((v * v).mean())), "noise_std"
    s = float(noise_std)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"noise_std: expected a positive number or map, got {noise_std!r}")
    return s, "noise_std"


def discrepancy_target(sigma: float, n_voxels: int) -> float:
    """Morozov's target for the data misfit norm ‖D∗χ − f‖ inside the mask: √N·σ."""
    return math.sqrt(float(n_voxels)) * float(sigma)


def is_discrepancy(value) -> bool:
    """Whether a parameter value asks for the discrepancy principle (the string ``"discrepancy"``, any case)."""
    return isinstance(value, str) and value.strip().lower() == DISCREPANCY


def discrepancy_search(
    misfit: Callable[[float], float],
    target: float,
    lam0: float,
    *,
    increasing: bool,
    factor: float = 4.0,
    rtol: float = 0.05,
    max_solves: int = 6,
    bounds: tuple[float, float] | None = None,
) -> tuple[float, list[tuple[float, float]]]:
    """The λ whose data misfit ``misfit(λ)`` (a solve) is closest to ``target``, by a bracketed secant search.

    ``increasing``: whether the misfit grows with λ (λ on the prior, as TV) or shrinks (λ on the data term, as
    MEDI). The search works on g(t) = log misfit − log target with t = log λ: from λ0 it steps towards the target
    (first by ``factor``, each further step 1.5× longer in log λ, clipped to ``bounds``) until g changes sign
    (bracket), then takes regula-falsi steps (Illinois variant) inside the
    bracket; it stops when |misfit/target − 1| ≤ ``rtol``, after ``max_solves`` solves, or at ``bounds``
    (default λ0·[1e-3, 1e3]). Returns the evaluated λ with the misfit nearest the target (its solution is the
    caller's last or cached one) and the history [(λ, misfit), …] in evaluation order.
    """
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"discrepancy: expected a positive target misfit, got {target!r}")
    if not (math.isfinite(lam0) and lam0 > 0):
        raise ValueError(f"discrepancy: expected a positive starting λ, got {lam0!r}")
    lo_b, hi_b = bounds if bounds is not None else (lam0 * 1e-3, lam0 * 1e3)
    t_lo, t_hi = math.log(lo_b), math.log(hi_b)
    sgn = 1.0 if increasing else -1.0
    history: list[tuple[float, float]] = []
    tol = math.log1p(rtol)

    def g_at(t: float) -> float:
        lam = math.exp(t)
        r = float(misfit(lam))
        history.append((lam, r))
        return math.log(max(r, 1e-300)) - math.log(target)

    t0 = math.log(lam0)
    g0 = g_at(t0)
    a = b = None  # bracket ends (t, g) with g(a) < 0 < g(b)
    t, g = t0, g0
    step = math.log(factor)
    while abs(g) > tol and len(history) < max_solves:
        if g < 0:
            a = (t, g)
        else:
            b = (t, g)
        if a is not None and b is not None:
            break
        # misfit too small (g < 0) → move λ in the direction that increases it
        t_new = min(max(t + sgn * step * (1.0 if g < 0 else -1.0), t_lo), t_hi)
        if abs(t_new - t) < 1e-12:  # at a bound
            break
        t, g = t_new, g_at(t_new)
        step *= 1.5  # widen the steps while no bracket is found
    if abs(g) > tol and a is not None and b is not None:
        side = 0
        while len(history) < max_solves:
            ga, gb = a[1], b[1]
            t = (a[0] * gb - b[0] * ga) / (gb - ga)
            g = g_at(t)
            if abs(g) <= tol:
                break
            if g < 0:
                a = (t, g)
                if side == -1:
                    b = (b[0], b[1] / 2)
                side = -1
            else:
                b = (t, g)
                if side == 1:
                    a = (a[0], a[1] / 2)
                side = 1
    best = min(history, key=lambda h: abs(math.log(max(h[1], 1e-300)) - math.log(target)))
    return best[0], history
