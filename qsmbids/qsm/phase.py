"""Phase units, unit conversions (rad ↔ Hz ↔ ppm) and the B0 direction of a scan.

Physics: the GRE phase at echo time TE (s) is φ(TE) = φ0 + 2π·γ̄·B0·TE·δB, with γ̄ = γ/2π =
42.5774785178 MHz/T for ¹H (CODATA 2018), B0 in tesla and δB the relative field perturbation
(δB = ΔB/B0, 1 ppm = 1e-6). The core works in ppm; Hz and rad appear only at the edges.

Vendor phase images come in several units (BIDS sidecar ``Units``): radians, integers such as the
Siemens range −4096..4095 (= −π..π), GE's −3142..3142 milliradians, or arbitrary floats. Rescaling
follows QSMxT/ROMEO practice: known integer ranges are mapped exactly, anything else min..max → −π..π.
Nothing is ever filled with random values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..constants import GAMMA_BAR_HZ_T
from ._utils import as_real, check_positive, numpy_io, to_tensor

__all__ = [
    "GAMMA_BAR",
    "GAMMA",
    "wrap",
    "detect_phase_units",
    "scale_phase",
    "rad_to_hz",
    "hz_to_rad",
    "hz_to_ppm",
    "ppm_to_hz",
    "rad_to_ppm",
    "ppm_to_rad",
    "b0_direction_from_affine",
    "b0_angle",
]

#: γ/2π for ¹H in Hz/T (CODATA 2018; :data:`qsmbids.constants.GAMMA_BAR_HZ_T`).
GAMMA_BAR: float = GAMMA_BAR_HZ_T
#: γ for ¹H in rad/s/T.
GAMMA: float = 2 * math.pi * GAMMA_BAR

PhaseUnits = Literal["rad", "integer", "arbitrary"]

#: Known integer vendor ranges (min, max) and the value that corresponds to −π and +π.
_INTEGER_RANGES: tuple[tuple[float, float, float, float], ...] = (
    # data min, data max, value at -pi, value at +pi; narrowest first, a range matches when the data
    # lie inside it and span at least 90 % of it
    (-2048, 2047, -2048, 2048),  # 12-bit signed halves
    (-3142, 3142, -1000 * math.pi, 1000 * math.pi),  # GE milliradians
    (0, 4095, 0, 4096),  # Siemens (12-bit unsigned)
    (-4096, 4095, -4096, 4096),  # Siemens (dcm2niix, signed)
    (-32768, 32767, -32768, 32768),  # 16-bit signed full range
    (0, 65535, 0, 65536),
)


@numpy_io
def wrap(phase: Tensor) -> Tensor:
    """Wrap phase (rad) to [−π, π).

    >>> round(float(wrap(torch.tensor(3 * math.pi))), 5)
    -3.14159
    """
    phase = as_real(phase, "phase")
    return torch.remainder(phase + math.pi, 2 * math.pi) - math.pi


def _finite_range(phase: Tensor) -> tuple[float, float]:
    finite = phase[torch.isfinite(phase)]
    if finite.numel() == 0:
        raise ValueError("phase: no finite values")
    return float(finite.min()), float(finite.max())


def detect_phase_units(phase: Tensor | np.ndarray) -> PhaseUnits:
    """Guess the unit of a phase image from its values.

    * ``"rad"``: values within [−π, π] (or [0, 2π]) spanning at least 90 % of 2π (a real phase image
      with noise or wraps always does);
    * ``"integer"``: integer-valued data outside that range (vendor scaling, e.g. −4096..4095);
    * ``"arbitrary"``: anything else (e.g. floats in ±0.0037); rescaled min..max by :func:`scale_phase`.

    >>> detect_phase_units(np.array([-4096, 0, 4095]))
    'integer'
    >>> detect_phase_units(np.array([-3.1, 0.0, 3.1]))
    'rad'
    >>> detect_phase_units(np.array([-0.003, 0.001, 0.0037]))
    'arbitrary'
    """
    t = to_tensor(phase)
    if t.is_complex():
        raise ValueError("phase: expected real phase values, got a complex array")
    lo, hi = _finite_range(t.to(torch.float64))
    eps = 1e-3
    span = hi - lo
    in_pm_pi = lo >= -math.pi - eps and hi <= math.pi + eps
    in_0_2pi = lo >= -eps and hi <= 2 * math.pi + eps
    if (in_pm_pi or in_0_2pi) and span >= 0.9 * 2 * math.pi:
        return "rad"
    finite = t[torch.isfinite(t.to(torch.float64))]
    if not torch.is_floating_point(t) or bool(torch.all(finite == torch.round(finite))):
        if span > 2 * math.pi + eps:
            return "integer"
    return "arbitrary"


@numpy_io
def scale_phase(
    phase: Tensor,
    units: str = "auto",
    *,
    value_range: tuple[float, float] | None = None,
) -> Tensor:
    """Scale a phase image to radians in [−π, π).

    Parameters
    ----------
    phase
        Phase image in any unit; NaN stays NaN (masked downstream, never filled).
    units
        ``"auto"`` (detect with :func:`detect_phase_units`), ``"rad"``, ``"integer"``, or
        ``"arbitrary"`` (BIDS ``Units`` value). ``"integer"`` uses a known vendor range when the data fit
        one (Siemens −4096..4095 → x·π/4096), otherwise min..max.
    value_range
        Explicit (value at −π, value at +π) overriding detection.
    """
    x = as_real(phase, "phase").to(torch.float64)
    unit = units.lower() if isinstance(units, str) else units
    if unit in ("radian", "radians"):
        unit = "rad"
    if unit not in ("auto", "rad", "integer", "arbitrary"):
        raise ValueError(f"units: expected one of auto, rad, integer, arbitrary; got {units!r}")
    if value_range is None:
        if unit == "auto":
            unit = detect_phase_units(x)
        if unit == "rad":
            return wrap(x).to(torch.float32 if phase.dtype != torch.float64 else torch.float64)
        lo, hi = _finite_range(x)
        value_range = (lo, hi)
        for dmin, dmax, at_mpi, at_ppi in _INTEGER_RANGES:
            if lo >= dmin and hi <= dmax and (hi - lo) >= 0.9 * (dmax - dmin):
                value_range = (at_mpi, at_ppi)
                break
    a, b = (float(v) for v in value_range)
    if not (math.isfinite(a) and math.isfinite(b)) or b <= a:
        raise ValueError(f"value_range: expected (low, high) with high > low, got {value_range}")
    rad = (x - a) / (b - a) * (2 * math.pi) - math.pi
    out = wrap(rad)
    return out.to(torch.float64 if phase.dtype == torch.float64 else torch.float32)


def _te(te: float, name: str = "echo_time") -> float:
    return check_positive(te, name)


@numpy_io
def rad_to_hz(phase: Tensor, echo_time: float) -> Tensor:
    """Field (Hz) = φ / (2π·TE), TE in s."""
    return as_real(phase, "phase") / (2 * math.pi * _te(echo_time))


@numpy_io
def hz_to_rad(field_hz: Tensor, echo_time: float) -> Tensor:
    """Phase (rad, not wrapped) = 2π·TE·f."""
    return as_real(field_hz, "field_hz") * (2 * math.pi * _te(echo_time))


@numpy_io
def hz_to_ppm(field_hz: Tensor, field_strength: float) -> Tensor:
    """Relative field (ppm) = f / (γ̄·B0) · 1e6, B0 in T."""
    b0 = check_positive(field_strength, "field_strength")
    return as_real(field_hz, "field_hz") * (1e6 / (GAMMA_BAR * b0))


@numpy_io
def ppm_to_hz(field_ppm: Tensor, field_strength: float) -> Tensor:
    """Field (Hz) = δB(ppm)·1e-6·γ̄·B0."""
    b0 = check_positive(field_strength, "field_strength")
    return as_real(field_ppm, "field_ppm") * (GAMMA_BAR * b0 * 1e-6)


@numpy_io
def rad_to_ppm(phase: Tensor, echo_time: float, field_strength: float) -> Tensor:
    """Relative field (ppm) from unwrapped phase (rad) at one echo time (s) and B0 (T)."""
    return hz_to_ppm(rad_to_hz(phase, echo_time), field_strength)


@numpy_io
def ppm_to_rad(field_ppm: Tensor, echo_time: float, field_strength: float) -> Tensor:
    """Phase (rad, not wrapped) accrued at TE (s) by a relative field (ppm) at B0 (T)."""
    return hz_to_rad(ppm_to_hz(field_ppm, field_strength), echo_time)


def b0_direction_from_affine(
    affine: Sequence[Sequence[float]] | np.ndarray,
    b0_world: Sequence[float] = (0.0, 0.0, 1.0),
) -> tuple[float, float, float]:
    """B0 direction as a unit vector in voxel coordinates from a NIfTI voxel-to-world affine.

    NIfTI world coordinates are the scanner's (RAS+), in which B0 points along +z. The voxel axes are the
    columns of the 3×3 part of the affine; with the columns normalised (voxel size removed) to R, the
    direction in voxel axes is b̂ = R⁻¹·ẑ (= Rᵀ·ẑ for the usual orthonormal R). Oblique slabs thus give
    b̂ ≠ (0, 0, 1). The sign is irrelevant to the dipole kernel.

    >>> b0_direction_from_affine(np.diag([0.5, 0.5, 2.0, 1.0]))
    (0.0, 0.0, 1.0)
    """
    A = np.asarray(affine, dtype=np.float64)
    if A.shape not in ((4, 4), (3, 3)) or not np.all(np.isfinite(A)):
        raise ValueError(f"affine: expected a finite 4x4 (or 3x3) matrix, got shape {A.shape}")
    M = A[:3, :3]
    norms = np.linalg.norm(M, axis=0)
    if np.any(norms == 0) or abs(np.linalg.det(M)) < 1e-12:
        raise ValueError("affine: the 3x3 part is singular (zero voxel size or degenerate axes)")
    R = M / norms
    z = np.asarray(b0_world, dtype=np.float64)
    if z.shape != (3,) or not np.any(z):
        raise ValueError(f"b0_world: expected a non-zero 3-vector, got {b0_world!r}")
    b = np.linalg.solve(R, z / np.linalg.norm(z))
    b = b / np.linalg.norm(b)
    b[np.abs(b) < 1e-12] = 0.0
    return (float(b[0]) + 0.0, float(b[1]) + 0.0, float(b[2]) + 0.0)


def b0_angle(b0_dir: Sequence[float]) -> float:
    """Angle in degrees between a B0 direction (voxel coordinates) and the slice axis (third voxel axis)."""
    b = np.asarray(b0_dir, dtype=np.float64)
    n = np.linalg.norm(b)
    if b.shape != (3,) or n == 0:
        raise ValueError(f"b0_dir: expected a non-zero 3-vector, got {b0_dir!r}")
    return float(np.degrees(np.arccos(min(1.0, abs(b[2]) / n))))
