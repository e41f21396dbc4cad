"""Closed-form (single-FFT-pair) dipole inversions: TKD, TSVD and Tikhonov.

All three divide the field spectrum by a regularised dipole kernel,

    χ = F⁻¹[ K(k) · F(f) ] · mask,

and differ only in the k-space filter K. They run on the FFT grid of :func:`~._common.prepare` (by
default the input grid rounded up to FFT-friendly sizes, ``pad_factor=1``: the data term of every inversion
here is the circular convolution, and a brain mask leaves enough margin in practice; pass
``pad_factor=1.5`` for data whose mask touches the edge of the field of view). Real FFTs are used, so one
solve costs one forward and one inverse real 3-D FFT (reported as ``fft_pairs=1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._utils import check_positive, numpy_io
from ..fourier import gradient_kernels
from ._common import Problem, SolverInfo, prepare

__all__ = ["tkd", "tsvd", "tikhonov"]

_DIMS = (-3, -2, -1)


def half_spectrum(k: Tensor) -> Tensor:
    """The ``rfftn`` half (last axis 0..n//2) of a full-grid k-space array in FFT order."""
    n = k.shape[-1]
    return k[..., : n // 2 + 1]


class RealFFT:
    """Reusable spectrum buffer for filtering real volumes of one grid: out = F⁻¹(K · F x) with real FFTs."""

    def __init__(self, shape: Sequence[int], like: Tensor):
        self.shape = tuple(int(s) for s in shape[-3:])
        cdtype = torch.complex128 if like.dtype == torch.float64 else torch.complex64
        half = (*self.shape[:-1], self.shape[-1] // 2 + 1)
        self.spec = torch.empty(half, dtype=cdtype, device=like.device)

    def forward(self, x: Tensor) -> Tensor:
        """F x into the shared spectrum buffer (overwritten by the next call)."""
        return torch.fft.rfftn(x, dim=_DIMS, out=self.spec)

    def inverse(self, X: Tensor, out: Tensor) -> Tensor:
        return torch.fft.irfftn(X, s=self.shape, dim=_DIMS, out=out)

    def filter(self, x: Tensor, K: Tensor, out: Tensor) -> Tensor:
        """``out`` ← F⁻¹(K · F x) (one real FFT pair; ``out`` may be ``x``)."""
        return self.inverse(self.forward(x).mul_(K), out)


def _filter_solve(p: Problem, K: Tensor, name: str, params: dict, return_info: bool):
    """χ = mask · F⁻¹(K · F f) on the problem grid, cropped back; optional report."""
    fft = RealFFT(p.shape, p.field)
    F = fft.forward(p.field)
    res = 0.0
    if return_info:
        nf = float(torch.linalg.vector_norm(F))
        D = p.D_half
        res = float(torch.linalg.vector_norm((D * K - 1.0) * F)) / nf if nf > 0 else 0.0
    chi = fft.inverse(F.mul_(K), torch.empty_like(p.field)).mul_(p.mask)
    chi = p.unpad(chi).contiguous()
    if not return_info:
        return chi
    info = SolverInfo(method=name, iterations=0, residual=res, converged=True, fft_pairs=1, params=params)
    return chi, info


def _check_threshold(threshold: float) -> float:
    t = check_positive(threshold, "threshold")
    if t >= 2.0 / 3.0:
        raise ValueError(f"threshold: expected a value in (0, 2/3) (|D| ≤ 2/3), got {threshold!r}")
    return t


@numpy_io
def tkd(
    local_field: Tensor,
    mask: Tensor,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    threshold: float = 0.15,
    pad_factor: float = 1.0,
    return_info: bool = False,
):
    """Thresholded k-space division (TKD): χ = F⁻¹[ F(f) / D̃ ], D̃ = D where |D| > t, else sign(D)·t.

    Shmueli K, de Zwart JA, van Gelderen P, Li T-Q, Dodd SJ, Duyn JH. Magnetic susceptibility mapping of brain
    tissue in vivo using MRI phase data. Magn Reson Med 2009;62:1510–1522; Wharton S, Schäfer A, Bowtell R.
    Susceptibility mapping in the human brain using threshold-based k-space division. Magn Reson Med
    2010;63:1292–1304.

    ``local_field`` in ppm (δB/B0), ``mask`` where it is valid, ``voxel_size`` in mm, ``b0_dir`` in voxel
    coordinates; returns χ in ppm, zero outside the mask (the mean of χ, k = 0, is set to 0). The sign-preserving
    truncation keeps the sign of 1/D near the magic-angle cone. Default ``threshold=0.15`` (QSM.jl; 0.19 is
    also common). No bias correction is applied: TKD underestimates χ by roughly the fraction of k-space energy
    inside the truncated cone. ``return_info=True`` adds a :class:`SolverInfo` whose ``residual`` is the
    relative k-space data misfit ‖D·χ̂ − f̂‖/‖f̂‖ (before masking).
    """
    t = _check_threshold(threshold)
    p = prepare(local_field, mask, voxel_size, b0_dir, pad_factor=pad_factor)
    D = p.D_half
    K = torch.where(D.abs() > t, 1.0 / D, torch.sign(D) / t)  # D = 0 (k = 0) → sign 0 → 0
    return _filter_solve(p, K, "tkd", {"threshold": t, "pad_factor": pad_factor}, return_info)


@numpy_io
def tsvd(
    local_field: Tensor,
    mask: Tensor,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    threshold: float = 0.15,
    pad_factor: float = 1.0,
    return_info: bool = False,
):
    """Truncated-SVD k-space division: χ = F⁻¹[ K · F(f) ], K = 1/D where |D| > t, else 0.

    Wharton S, Schäfer A, Bowtell R. Susceptibility mapping in the human brain using threshold-based k-space
    division. Magn Reson Med 2010;63:1292–1304 (the dipole convolution is diagonal in k-space, so its singular
    values are |D| and truncating them zeroes the cone region).

    Units and outputs as :func:`tkd`; default ``threshold=0.15`` (QSM.jl). Compared with TKD the cone region
    is removed instead of clipped, which gives fewer streaks but a stronger underestimation of χ.
    """
    t = _check_threshold(threshold)
    p = prepare(local_field, mask, voxel_size, b0_dir, pad_factor=pad_factor)
    D = p.D_half
    K = torch.where(D.abs() > t, 1.0 / D, torch.zeros((), dtype=D.dtype, device=D.device))
    return _filter_solve(p, K, "tsvd", {"threshold": t, "pad_factor": pad_factor}, return_info)


@numpy_io
def tikhonov(
    local_field: Tensor,
    mask: Tensor,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    lambda_: float = 1e-2,
    regulariser: str = "identity",
    pad_factor: float = 1.0,
    return_info: bool = False,
):
    """Closed-form Tikhonov inversion: argmin_χ ½‖D∗χ − f‖² + ½λ‖Γχ‖², i.e. χ̂ = D·f̂ / (D² + λ·R).

    ``regulariser="identity"`` (Γ = I, R = 1) or ``"gradient"`` (Γ = periodic forward differences,
    R = Σᵢ|e^{2πi kᵢ/Nᵢ} − 1|²/hᵢ², voxel sizes in mm). Kressler B, de Rochefort L, Liu T, Spincemaille P,
    Jiang Q, Wang Y. Nonlinear regularization for per voxel estimation of magnetic susceptibility distributions
    from MRI field maps. IEEE Trans Med Imaging 2010;29:273–281; Bilgic B et al. Fast quantitative
    susceptibility mapping with L1-regularization and automatic parameter selection. Magn Reson Med
    2014;72:1444–1459 (closed-form L2 solution).

    Units and outputs as :func:`tkd`. Default ``lambda_=1e-2`` (QSM.jl) with the field in ppm; the gradient
    penalty has units of 1/mm², so its λ is resolution dependent. The k = 0 coefficient is set to 0.
    """
    lam = check_positive(lambda_, "lambda_")
    reg = str(regulariser).lower()
    if reg not in ("identity", "gradient"):
        raise ValueError(f"regulariser: expected 'identity' or 'gradient', got {regulariser!r}")
    p = prepare(local_field, mask, voxel_size, b0_dir, pad_factor=pad_factor)
    D = p.D_half
    if reg == "identity":
        R = torch.ones_like(D)
    else:
        cdtype = torch.complex128 if D.dtype == torch.float64 else torch.complex64
        R = torch.zeros_like(D)
        for g in gradient_kernels(p.shape, p.voxel_size, device=D.device, dtype=cdtype):
            R = R + half_spectrum(g.abs() ** 2).to(D.dtype)
    den = D * D + lam * R
    K = torch.where(den > 0, D / den, torch.zeros((), dtype=D.dtype, device=D.device))  # 0/0 only at k = 0
    params = {"lambda_": lam, "regulariser": reg, "pad_factor": pad_factor}
    return _filter_solve(p, K, "tikhonov", params, return_info)
