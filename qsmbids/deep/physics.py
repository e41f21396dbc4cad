"""Dipole physics for the networks: the dipole operator on batched tensors and the two data-fidelity terms.

The networks work in a fixed *training frame*: 1 mm isotropic voxels, B0 along +z of the voxel grid, field and
χ in ppm, tensors shaped (B, 1, X, Y, Z). The dipole kernel comes from :func:`qsmbids.qsm.fourier.dipole_kernel`
on the rfft half grid, (X, Y, Z//2+1), so a convolution costs one ``rfftn``/``irfftn`` pair. That kernel is real
and even (D(k) = D(−k), Nyquist cross terms symmetrised), hence the operator is self-adjoint, Dᵀ = D, and
:func:`apply_dipole` equals :func:`qsmbids.qsm.fourier.forward_field` with ``pad_factor=1`` (circular).

Data terms, with f the local field (ppm), W a voxel weight (the mask, or a magnitude-derived weight) and
c = 2π·γ̄·B0·TE·1e−6 the phase scale (rad/ppm, :func:`phase_scale`):

* linear (LPCNN/MoDL-QSM):  L(χ) = ½‖W(Dχ − f)‖²,               ∇L = Dᵀ[W²(Dχ − f)];
* nonlinear (NSIDL):       N(χ) = ½‖W(e^{icDχ} − e^{icf})‖²  = Σ W²(1 − cos c(Dχ − f)),
                           ∇N = c·Dᵀ[W²·sin c(Dχ − f)] = c·Dᵀ[W²·Im(conj(e^{icDχ})(e^{icDχ} − e^{icf}))].

The nonlinear term depends on f only through e^{icf}: it is unchanged when f is shifted by 2π/c, so it can be fed
a *wrapped* local phase φ as f = φ/c, and it does not over-weight voxels whose linearised phase is wrong. For small
residuals ∇N ≈ c²·∇L, which is why the NSIDL step size is written α/c² (see :mod:`qsmbids.deep.models.nsidl`).

FFTs always run in float32 (even under CUDA autocast): half-precision FFTs only accept power-of-two sizes and
lose too much precision for a kernel with values down to 1e−3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from qsmbids.qsm.fourier import dipole_kernel
from qsmbids.qsm.phase import GAMMA_BAR

__all__ = [
    "apply_dipole",
    "dipole_half",
    "linear_data_grad",
    "linear_data_term",
    "nonlinear_data_grad",
    "nonlinear_data_term",
    "phase_scale",
]

_DIMS = (-3, -2, -1)


def dipole_half(
    shape: Sequence[int],
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    device: torch.device | str | None = None,
) -> Tensor:
    """Dipole kernel D(k) = 1/3 − (k·b̂)²/|k|² on the rfft half grid of ``shape``: a float32 (X, Y, Z//2+1) tensor.

    ``shape`` is the spatial shape (the last three entries are used, so ``x.shape`` works too).

    >>> dipole_half((8, 6, 5)).shape
    torch.Size([8, 6, 3])
    """
    shape = tuple(int(s) for s in shape[-3:])
    return dipole_kernel(shape, voxel_size, b0_dir, device=device, dtype=torch.float32, half=True)


def _check_kernel(x: Tensor, D_half: Tensor) -> None:
    X, Y, Z = x.shape[-3:]
    want = (X, Y, Z // 2 + 1)
    if x.dim() < 3 or tuple(D_half.shape[-3:]) != want:
        raise ValueError(
            f"kernel: expected a half-grid dipole kernel of spatial shape {want} for a volume of shape "
            f"{tuple(x.shape[-3:])}, got {tuple(D_half.shape)} (use dipole_half(x.shape))"
        )


def apply_dipole(x: Tensor, D_half: Tensor) -> Tensor:
    """Circular convolution D ∗ x over the last three dims (batched), in float32 (float64 for float64 input).

    ``D_half`` is a :func:`dipole_half` kernel of matching shape, or a batch of them broadcastable against
    ``x`` (e.g. (B, 1, X, Y, Z//2+1) for one B0 direction per sample). The operator is self-adjoint.
    """
    _check_kernel(x, D_half)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    spec = torch.fft.rfftn(x.to(dtype), dim=_DIMS) * D_half.to(dtype)
    return torch.fft.irfftn(spec, s=x.shape[-3:], dim=_DIMS)


def phase_scale(field_strength: float = 3.0, te: float = 0.02) -> float:
    """Phase accrued per ppm of field, c = 2π·γ̄·B0·TE·1e−6 (rad/ppm); 3 T and TE = 20 ms give ≈ 16.05.

    >>> round(phase_scale(3.0, 0.02), 3)
    16.051
    """
    if not (field_strength > 0 and te > 0):
        raise ValueError(f"phase_scale: field strength and echo time must be positive, got {field_strength}, {te}")
    return 2.0 * math.pi * GAMMA_BAR * float(field_strength) * float(te) * 1e-6


def _real(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _weight2(weight: Tensor | None) -> Tensor | float:
    if weight is None:
        return 1.0
    w = weight if weight.dtype in (torch.float32, torch.float64) else weight.float()
    return w * w


def _per_sample_sum(x: Tensor) -> Tensor:
    return x.flatten(1).sum(1) if x.dim() > 3 else x.sum()


def linear_data_term(chi: Tensor, field: Tensor, D_half: Tensor, weight: Tensor | None = None) -> Tensor:
    """½‖W(Dχ − f)‖² per sample (shape (B,) for batched input, a scalar for a single 3-D volume)."""
    r = apply_dipole(chi, D_half) - field.to(_real(chi))
    return 0.5 * _per_sample_sum(_weight2(weight) * r * r)


def linear_data_grad(chi: Tensor, field: Tensor, D_half: Tensor, weight: Tensor | None = None) -> Tensor:
    """Gradient of :func:`linear_data_term`: Dᵀ[W²(Dχ − f)] (D is self-adjoint)."""
    r = apply_dipole(chi, D_half) - field.to(_real(chi))
    return apply_dipole(_weight2(weight) * r, D_half)


def nonlinear_data_term(chi: Tensor, field: Tensor, D_half: Tensor, c: float, weight: Tensor | None = None) -> Tensor:
    """½‖W(e^{icDχ} − e^{icf})‖² = Σ W²·(1 − cos c(Dχ − f)) per sample (the NSIDL data term).

    Written with the cosine rather than complex exponentials: identical values, real arithmetic, and exact
    for residuals of any size (no phase unwrapping involved).
    """
    r = apply_dipole(chi, D_half) - field.to(_real(chi))
    return _per_sample_sum(_weight2(weight) * (1.0 - torch.cos(c * r)))


def nonlinear_data_grad(chi: Tensor, field: Tensor, D_half: Tensor, c: float, weight: Tensor | None = None) -> Tensor:
    """Gradient of :func:`nonlinear_data_term`: c·Dᵀ[W²·sin c(Dχ − f)].

    Derivation: with u = Dχ, ½|e^{icu} − e^{icf}|² = 1 − cos c(u − f), whose derivative in u is c·sin c(u − f)
    (= c·Im(conj(e^{icu})(e^{icu} − e^{icf}))); the chain rule through the linear, self-adjoint D gives Dᵀ.
    """
    r = apply_dipole(chi, D_half) - field.to(_real(chi))
    return c * apply_dipole(_weight2(weight) * torch.sin(c * r), D_half)
