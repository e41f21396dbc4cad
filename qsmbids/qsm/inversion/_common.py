"""Shared pieces of the dipole-inversion solvers: input validation, padding, solver report."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from .._utils import SolverInfo, as_real, check_b0_dir, check_finite, check_mask, check_same_shape, check_voxel_size
from ..fourier import crop, dipole_kernel, pad, padded_shape

__all__ = ["SolverInfo", "Problem", "prepare"]


@dataclasses.dataclass
class Problem:
    """A validated inversion problem on the (padded) FFT grid.

    ``field`` and ``mask`` are padded to ``shape``; ``D`` is the dipole kernel on that grid and ``D_half``
    its ``rfftn`` half (both built on first use); :meth:`unpad` crops a padded volume back to the input shape.
    """

    field: Tensor
    mask: Tensor
    voxel_size: tuple[float, float, float]
    b0_dir: tuple[float, float, float]
    shape: tuple[int, int, int]
    orig_shape: tuple[int, int, int]
    magnitude: Tensor | None = None

    @functools.cached_property
    def D(self) -> Tensor:
        return dipole_kernel(self.shape, self.voxel_size, self.b0_dir, device=self.field.device, dtype=self.field.dtype)

    @functools.cached_property
    def D_half(self) -> Tensor:
        return dipole_kernel(
            self.shape, self.voxel_size, self.b0_dir, device=self.field.device, dtype=self.field.dtype, half=True
        )

    def unpad(self, x: Tensor) -> Tensor:
        return crop(x, self.orig_shape)

    def pad(self, x: Tensor) -> Tensor:
        return pad(x, self.shape)


def prepare(
    local_field: Tensor,
    mask: Tensor,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float],
    *,
    pad_factor: float = 1.0,
    magnitude: Tensor | None = None,
    need_magnitude: bool = False,
) -> Problem:
    """Validate inputs and pad them to FFT-friendly sizes (``pad_factor`` ≥ 1 adds zero margin).

    The local field must be finite inside the mask; outside it is ignored (set to 0).
    """
    field = as_real(local_field, "local_field")
    if field.dim() != 3:
        raise ValueError(f"local_field: expected a 3-D volume, got shape {tuple(field.shape)}")
    m = check_mask(mask, field.shape, device=field.device)
    vs = check_voxel_size(voxel_size)
    b0 = check_b0_dir(b0_dir)
    check_finite(field, "local_field", m)
    field = torch.where(m, field, torch.zeros((), dtype=field.dtype, device=field.device))
    mag = None
    if magnitude is not None:
        mag = as_real(magnitude, "magnitude").to(field.device)
        check_same_shape(field, mag, "local_field", "magnitude")
        check_finite(mag, "magnitude", m)
        mag = torch.where(m, mag, torch.zeros((), dtype=field.dtype, device=field.device)).to(field.dtype)
    elif need_magnitude:
        raise ValueError("magnitude: this method needs the magnitude image (pass magnitude=...)")
    orig = tuple(int(s) for s in field.shape)
    shape = padded_shape(orig, pad_factor)
    return Problem(
        field=pad(field, shape),
        mask=pad(m, shape),
        voxel_size=vs,  # type: ignore[arg-type]
        b0_dir=b0,
        shape=shape,  # type: ignore[arg-type]
        orig_shape=orig,  # type: ignore[arg-type]
        magnitude=None if mag is None else pad(mag, shape),
    )
