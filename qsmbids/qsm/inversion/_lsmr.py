"""LSMR for linear operators on torch tensors (used by iLSQR and RTS).

LSMR (Fong DC-L, Saunders M. LSMR: an iterative algorithm for sparse least-squares problems. SIAM J Sci
Comput 2011;33:2950–2971) solves min_x ‖A x − b‖₂ by Golub–Kahan bidiagonalisation. It is MINRES on the
normal equations, so ‖Aᵀr‖ decreases monotonically and ‖r‖ in practice too, which makes early stopping
(a few iterations act as regularisation, as RTS uses) safe. Here ``x`` and ``b`` may be tensors of any
(different) shapes on any device; ``A`` and ``AT`` are callables that must not modify their argument and may
return one of two alternating buffers (:class:`PingPong`). Scalars of the recurrences are Python
floats; each iteration costs one ``A``, one ``AT``, three norms and a few axpys on preallocated buffers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["LSMRResult", "lsmr", "PingPong"]


class PingPong:
    """Two alternating output buffers for an operator passed to :func:`lsmr`.

    :func:`lsmr` only keeps an operator's previous result while computing the next one, so ``A`` may write
    into ``buffers()`` (alternately the first and the second buffer) instead of allocating every call.
    """

    def __init__(self, like: Tensor):
        self._bufs = (torch.empty_like(like), torch.empty_like(like))
        self._i = 0

    def __call__(self) -> Tensor:
        self._i ^= 1
        return self._bufs[self._i]


@dataclasses.dataclass
class LSMRResult:
    """Solution and diagnostics of :func:`lsmr`.

    ``residual``: estimate of ‖b − A x‖/‖b‖; ``normal_residual``: ‖Aᵀr‖/(‖A‖·‖r‖) (estimates from the
    recurrences, no extra operator calls); ``matvecs``: number of ``A`` plus ``AT`` applications.
    """

    x: Tensor
    iterations: int
    residual: float
    normal_residual: float
    converged: bool
    matvecs: int


def _norm(x: Tensor) -> float:
    return float(torch.linalg.vector_norm(x))


def lsmr(
    A: Callable[[Tensor], Tensor],
    AT: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    atol: float = 1e-6,
    btol: float = 1e-6,
    max_iter: int = 100,
    stop_residual: float | None = None,
) -> LSMRResult:
    """Least-squares solution of A x ≈ b with LSMR (Fong & Saunders 2011), starting from x = 0.

    Stops after ``max_iter`` iterations or when either test of the paper holds:
    ‖r‖ ≤ btol·‖b‖ + atol·‖A‖·‖x‖ (compatible system) or ‖Aᵀr‖ ≤ atol·‖A‖·‖r‖ (least-squares optimum),
    with ‖A‖ the Frobenius-norm estimate of the bidiagonalisation. ``atol = btol = 0`` runs exactly
    ``max_iter`` iterations (fixed-iteration regularisation). ``stop_residual``: also stop as soon as the
    estimate of ‖b − A x‖ falls to this value (the discrepancy principle as a stopping rule; counts as converged).
    """
    if max_iter < 0:
        raise ValueError(f"max_iter: expected a non-negative integer, got {max_iter}")
    u = b.clone()
    beta = _norm(u)
    normb = beta
    if beta > 0:
        u.div_(beta)
    v = AT(u)
    matvecs = 1
    x = torch.zeros_like(v)
    alpha = _norm(v)
    if alpha > 0:
        v.div_(alpha)
    if alpha == 0 or beta == 0:
        return LSMRResult(x, 0, 1.0 if normb > 0 else 0.0, 0.0, True, matvecs)

    # bidiagonalisation and the two QR rotations (notation of the paper)
    alpha_bar = alpha
    zeta_bar = alpha * beta
    rho = rho_bar = c_bar = 1.0
    s_bar = 0.0
    h = v.clone()
    h_bar = torch.zeros_like(v)
    # quantities of the ‖r‖ estimate (§3.2 of the paper; damping is zero here)
    beta_dd = beta
    beta_d = 0.0
    rho_d_old = 1.0
    tau_t_old = 0.0
    theta_t = 0.0
    zeta = 0.0
    norm_a2 = alpha * alpha

    residual = 1.0
    normal_residual = float("inf")
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        # next Golub–Kahan vectors: β u = A v − α u, α v = Aᵀ u − β v
        u = A(v).sub_(u, alpha=alpha)
        beta = _norm(u)
        if beta > 0:
            u.div_(beta)
        v = AT(u).sub_(v, alpha=beta)
        matvecs += 2
        alpha = _norm(v)
        if alpha > 0:
            v.div_(alpha)

        # rotation eliminating β from the lower bidiagonal matrix
        rho_old = rho
        rho = math.hypot(alpha_bar, beta)
        c, s = alpha_bar / rho, beta / rho
        theta_new = s * alpha
        alpha_bar = c * alpha
        # second rotation, on the upper bidiagonal R̄
        rho_bar_old = rho_bar
        zeta_old = zeta
        theta_bar = s_bar * rho
        rho_bar = math.hypot(c_bar * rho, theta_new)
        c_bar, s_bar = c_bar * rho / rho_bar, theta_new / rho_bar
        zeta = c_bar * zeta_bar
        zeta_bar = -s_bar * zeta_bar

        # solution update (two-term recurrences for h and h̄)
        h_bar.mul_(-theta_bar * rho / (rho_old * rho_bar_old)).add_(h)
        x.add_(h_bar, alpha=zeta / (rho * rho_bar))
        h.mul_(-theta_new / rho).add_(v)

        # ‖r‖ estimate
        beta_hat = c * beta_dd
        beta_dd = -s * beta_dd
        theta_t_old = theta_t
        rho_t_old = math.hypot(rho_d_old, theta_bar)
        c_t_old, s_t_old = rho_d_old / rho_t_old, theta_bar / rho_t_old
        theta_t = s_t_old * rho_bar
        rho_d_old = c_t_old * rho_bar
        beta_d = -s_t_old * beta_d + c_t_old * beta_hat
        tau_t_old = (zeta_old - theta_t_old * tau_t_old) / rho_t_old
        tau_d = (zeta - theta_t * tau_t_old) / rho_d_old
        normr = math.sqrt((beta_d - tau_d) ** 2 + beta_dd**2)

        # ‖A‖ (Frobenius estimate) and the stopping tests
        norm_a2 += beta * beta
        norm_a = math.sqrt(norm_a2)
        norm_a2 += alpha * alpha
        norm_ar = abs(zeta_bar)
        residual = normr / normb
        normal_residual = norm_ar / (norm_a * normr) if normr > 0 else 0.0
        if stop_residual is not None and normr <= stop_residual:
            converged = True
            break
        if atol > 0 or btol > 0:
            normx = _norm(x)
            if residual <= btol + atol * norm_a * normx / normb or normal_residual <= atol:
                converged = True
                break
        if alpha == 0 or beta == 0:  # exact solution in the Krylov space
            converged = True
            break
    return LSMRResult(x, it, residual, normal_residual, converged, matvecs)
