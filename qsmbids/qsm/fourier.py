"""Fourier-domain building blocks: k-space grids, dipole kernel, SMV kernel, padding, finite differences.

Conventions used throughout :mod:`qsmbids.qsm`:

* volumes are the **last three** dimensions of a tensor; leading dimensions are batch (e.g. echoes);
* k-space arrays are in *unshifted* FFT order (``torch.fft.fftfreq``), so they multiply ``fftn(x)`` directly;
* spatial frequencies are in cycles/mm, voxel sizes in mm;
* the B0 direction is a unit vector in **voxel coordinates** (see :func:`qsmbids.qsm.phase.b0_direction_from_affine`).

The dipole kernel (Salomir et al. 2003, Marques & Bowtell 2005) relating susceptibility to the relative
field perturbation (both in ppm) with the Lorentz-sphere correction is

    D(k) = 1/3 − (k·b̂)² / |k|²,   D(0) = 0,

so a uniformly magnetised sphere produces no field inside and a dipolar field outside.
Multiplication in k-space is a *circular* convolution: :func:`forward_field` zero-pads (default ×1.5 per
axis, rounded up to FFT-friendly sizes) so that sources near the edge do not wrap around.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._utils import as_real, check_b0_dir, check_voxel_size, numpy_io

__all__ = [
    "kspace_grid",
    "dipole_kernel",
    "smv_kernel",
    "sphere_kernel",
    "laplacian_kernel",
    "gradient_kernels",
    "fast_len",
    "padded_shape",
    "pad",
    "crop",
    "fftn3",
    "ifftn3",
    "convolve",
    "forward_field",
    "forward_difference",
    "backward_difference",
    "forward_difference_into",
    "backward_difference_into",
    "gradient",
    "divergence",
    "laplacian",
]

_DIMS = (-3, -2, -1)


def fftn3(x: Tensor) -> Tensor:
    """3-D FFT over the last three dimensions."""
    return torch.fft.fftn(x, dim=_DIMS)


def ifftn3(x: Tensor) -> Tensor:
    """3-D inverse FFT over the last three dimensions (complex result)."""
    return torch.fft.ifftn(x, dim=_DIMS)


def fast_len(n: int) -> int:
    """Smallest integer ≥ n whose only prime factors are 2, 3 and 5 (fast for every FFT backend)."""
    n = max(int(n), 1)
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def padded_shape(shape: Sequence[int], factor: float = 1.5, multiple: int = 1) -> tuple[int, ...]:
    """Shape of the last three dims after zero padding by ``factor`` (≥ 1), FFT-friendly.

    ``multiple`` forces each padded length to be a multiple of that number (networks need it).
    """
    if factor < 1:
        raise ValueError(f"factor: expected a padding factor >= 1, got {factor}")
    out = []
    for n in shape[-3:]:
        m = fast_len(math.ceil(n * factor))
        if multiple > 1:
            while m % multiple:
                m = fast_len(m + 1)
        out.append(m)
    return tuple(out)


def pad(x: Tensor, shape: Sequence[int], value: float = 0.0) -> Tensor:
    """Zero-pad the last three dims of ``x`` to ``shape``, keeping the data centred (undo with :func:`crop`)."""
    shape = tuple(int(s) for s in shape[-3:])
    widths: list[int] = []
    for n, m in zip(reversed(x.shape[-3:]), reversed(shape)):
        if m < n:
            raise ValueError(f"shape: padded size {m} is smaller than the data size {n}")
        before = (m - n) // 2
        widths += [before, m - n - before]
    return torch.nn.functional.pad(x, widths, value=value)


def crop(x: Tensor, shape: Sequence[int]) -> Tensor:
    """Inverse of :func:`pad`: the centred block of size ``shape`` (last three dims)."""
    shape = tuple(int(s) for s in shape[-3:])
    sl = []
    for n, m in zip(x.shape[-3:], shape):
        before = (n - m) // 2
        sl.append(slice(before, before + m))
    return x[(..., *sl)]


def kspace_grid(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor]:
    """Spatial frequencies (cycles/mm) along each axis, broadcastable to ``shape`` (FFT order)."""
    vs = check_voxel_size(voxel_size)
    shape = tuple(int(s) for s in shape[-3:])
    ks = []
    for axis, (n, d) in enumerate(zip(shape, vs)):
        k = torch.fft.fftfreq(n, d=d, device=device, dtype=torch.float64).to(dtype)
        view = [1, 1, 1]
        view[axis] = n
        ks.append(k.reshape(view))
    return ks[0], ks[1], ks[2]


def dipole_kernel(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    half: bool = False,
) -> Tensor:
    """Unit dipole kernel D(k) = 1/3 − (k·b̂)²/|k|² on a grid of ``shape`` (FFT order), D(0) = 0.

    ``b0_dir`` is the B0 direction in voxel coordinates (normalised here); any direction and any
    (anisotropic) voxel size are allowed. Values lie in [−2/3, 1/3].

    >>> D = dipole_kernel((4, 4, 4), (1, 1, 1))
    >>> float(D[0, 0, 0]), float(D[1, 0, 0]), round(float(D[0, 0, 1]), 6)
    (0.0, 0.3333333432674408, -0.666667)
    """
    b = check_b0_dir(b0_dir)
    vs = check_voxel_size(voxel_size)
    shape = tuple(int(s) for s in shape[-3:])
    # 1-D frequency axes (cycles/mm); the last one is the rfft half axis when ``half``
    axes = []
    for axis, (n, d) in enumerate(zip(shape, vs)):
        last_half = half and axis == 2
        k = (torch.fft.rfftfreq if last_half else torch.fft.fftfreq)(n, d=d, device=device, dtype=torch.float64)
        # cross terms of (k·b̂)² are averaged over the sign of the Nyquist frequency (even sizes), which keeps
        # D exactly real and even, D(k) = D(−k): D∗χ of a real χ is real also for an oblique B0
        kt = k.clone()
        if n % 2 == 0 and n > 1:
            kt[n // 2] = 0.0
        view = [1, 1, 1]
        view[axis] = k.numel()
        axes.append((k.to(dtype).reshape(view), kt.to(dtype).reshape(view)))
    (kx, tx), (ky, ty), (kz, tz) = axes
    k2 = (kx * kx + ky * ky) + kz * kz
    kb2 = (kx * kx * (b[0] * b[0]) + ky * ky * (b[1] * b[1])) + kz * kz * (b[2] * b[2])
    cross = (tx * ty * (2 * b[0] * b[1]) + tx * tz * (2 * b[0] * b[2])) + ty * tz * (2 * b[1] * b[2])
    kb2 = kb2 + cross
    k2[(0,) * 3] = 1.0
    D = kb2.div_(k2).neg_().add_(1.0 / 3.0)
    D[(0,) * 3] = 0.0
    return D.to(dtype)


def sphere_kernel(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    radius: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Normalised spherical mean value (SMV) kernel in *image* space, centred at index 0 (wrapped).

    Voxels whose centre lies within ``radius`` mm of the origin get weight 1/N. At least the centre
    voxel is always included.
    """
    vs = check_voxel_size(voxel_size)
    if not (radius > 0):
        raise ValueError(f"radius: expected a positive SMV radius in mm, got {radius}")
    shape = tuple(int(s) for s in shape[-3:])
    coords = []
    for axis, (n, d) in enumerate(zip(shape, vs)):
        idx = torch.arange(n, device=device, dtype=torch.float64)
        idx = torch.where(idx > n // 2, idx - n, idx) * d
        view = [1, 1, 1]
        view[axis] = n
        coords.append(idx.reshape(view))
    r2 = coords[0] ** 2 + coords[1] ** 2 + coords[2] ** 2
    s = (r2 <= radius**2 + 1e-9).to(torch.float64)
    return (s / s.sum()).to(dtype)


def smv_kernel(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    radius: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """k-space of the normalised SMV kernel (real, FFT order): S(0) = 1. ``1 − S`` is the SHARP high-pass."""
    s = sphere_kernel(shape, voxel_size, radius, device=device, dtype=torch.float64)
    return fftn3(s).real.to(dtype)


def laplacian_kernel(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    half: bool = False,
) -> Tensor:
    """k-space symbol of the periodic 7-point discrete Laplacian: Σᵢ (2cos(2π mᵢ/Nᵢ) − 2)/hᵢ² (≤ 0).

    ``half=True`` returns only the ``rfftn`` half (last axis 0..n//2).
    """
    vs = check_voxel_size(voxel_size)
    shape = tuple(int(s) for s in shape[-3:])
    out = torch.zeros((*shape[:2], shape[2] // 2 + 1) if half else shape, dtype=torch.float64, device=device)
    for axis, (n, h) in enumerate(zip(shape, vs)):
        freq = torch.fft.rfftfreq if (half and axis == 2) else torch.fft.fftfreq
        m = freq(n, device=device, dtype=torch.float64)
        view = [1, 1, 1]
        view[axis] = m.numel()
        out = out + ((2 * torch.cos(2 * math.pi * m) - 2) / h**2).reshape(view)
    return out.to(dtype)


def gradient_kernels(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.complex64,
) -> tuple[Tensor, Tensor, Tensor]:
    """k-space symbols (e^{2πi mᵢ/Nᵢ} − 1)/hᵢ of the periodic forward differences in :func:`gradient`."""
    vs = check_voxel_size(voxel_size)
    shape = tuple(int(s) for s in shape[-3:])
    out = []
    for axis, (n, h) in enumerate(zip(shape, vs)):
        m = torch.fft.fftfreq(n, device=device, dtype=torch.float64)
        g = (torch.exp(2j * math.pi * m) - 1) / h
        view = [1, 1, 1]
        view[axis] = n
        out.append(g.reshape(view).to(dtype))
    return out[0], out[1], out[2]


# Finite differences: the one set of the package (TV, TGV, MEDI and iLSQR build on these). Periodic, like the FFTs,
# so that they are diagonal in k-space (:func:`gradient_kernels`). ``axis`` is 0..2 of the last three dims.
def forward_difference(x: Tensor, axis: int, h: float = 1.0) -> Tensor:
    """Periodic forward difference (x[j + eₐ] − x[j])/h along volume axis ``axis``."""
    return (torch.roll(x, -1, dims=_DIMS[axis]) - x) / h


def backward_difference(x: Tensor, axis: int, h: float = 1.0) -> Tensor:
    """Periodic backward difference (x[j] − x[j − eₐ])/h along volume axis ``axis``; −adjoint of the forward one."""
    return (x - torch.roll(x, 1, dims=_DIMS[axis])) / h


def forward_difference_into(x: Tensor, axis: int, out: Tensor) -> Tensor:
    """x[j + eₐ] − x[j] (periodic, unscaled) written into ``out``: no allocation, for the solvers' inner loops."""
    d = _DIMS[axis]
    n = x.shape[d]
    torch.sub(x.narrow(d, 1, n - 1), x.narrow(d, 0, n - 1), out=out.narrow(d, 0, n - 1))
    torch.sub(x.narrow(d, 0, 1), x.narrow(d, n - 1, 1), out=out.narrow(d, n - 1, 1))
    return out


def backward_difference_into(x: Tensor, axis: int, out: Tensor) -> Tensor:
    """x[j] − x[j − eₐ] (periodic, unscaled) written into ``out``: no allocation, for the solvers' inner loops."""
    d = _DIMS[axis]
    n = x.shape[d]
    torch.sub(x.narrow(d, 1, n - 1), x.narrow(d, 0, n - 1), out=out.narrow(d, 1, n - 1))
    torch.sub(x.narrow(d, 0, 1), x.narrow(d, n - 1, 1), out=out.narrow(d, 0, 1))
    return out


def gradient(x: Tensor, voxel_size: Sequence[float]) -> Tensor:
    """Periodic forward differences of the last three dims, divided by the voxel size (1/mm).

    Returns a tensor with a new dimension of size 3 inserted before the volume dims. Its adjoint is
    ``-divergence``.
    """
    vs = check_voxel_size(voxel_size)
    return torch.stack([forward_difference(x, i, h) for i, h in enumerate(vs)], dim=-4)


def divergence(g: Tensor, voxel_size: Sequence[float]) -> Tensor:
    """Periodic backward-difference divergence, the negative adjoint of :func:`gradient`."""
    vs = check_voxel_size(voxel_size)
    out = torch.zeros_like(g[..., 0, :, :, :])
    for i, h in enumerate(vs):
        out = out + backward_difference(g[..., i, :, :, :], i, h)
    return out


def laplacian(x: Tensor, voxel_size: Sequence[float]) -> Tensor:
    """Periodic 7-point Laplacian (= divergence of gradient)."""
    return divergence(gradient(x, voxel_size), voxel_size)


def convolve(x: Tensor, kernel: Tensor) -> Tensor:
    """Circular convolution of the last three dims with a k-space ``kernel`` (real result for real x)."""
    y = ifftn3(fftn3(x) * kernel)
    return y if x.is_complex() else y.real


@numpy_io
def forward_field(
    chi: Tensor,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    pad_factor: float = 1.5,
) -> Tensor:
    """Relative field perturbation δB/B0 (ppm) produced by susceptibility ``chi`` (ppm).

    Computes D ∗ χ by FFT on a grid zero-padded by ``pad_factor`` (set 1 for a circular convolution,
    which is what the inversion data terms assume).
    """
    chi = as_real(chi, "chi")
    vs = check_voxel_size(voxel_size)
    shape = tuple(chi.shape[-3:])
    if len(chi.shape) < 3:
        raise ValueError(f"chi: expected a 3-D volume, got shape {tuple(chi.shape)}")
    pshape = padded_shape(shape, pad_factor) if pad_factor > 1 else shape
    x = pad(chi, pshape)
    D = dipole_kernel(pshape, vs, b0_dir, device=chi.device, dtype=chi.dtype)
    return crop(convolve(x, D), shape).to(chi.dtype)
