"""Dipole inversion: local field (ppm) → susceptibility χ (ppm).

Public contract (stable; workflows and evaluations rely on it)::

    invert(local_field, mask, voxel_size, b0_direction=(0, 0, 1), method="rts", **params) -> chi

``local_field`` in ppm (relative field δB/B0), ``mask`` the region where it is valid, ``voxel_size`` in mm,
``b0_direction`` the unit B0 vector in voxel coordinates. Returns χ in ppm with the same type (NumPy or
torch, same device) and shape as ``local_field``, zero outside the mask. ``magnitude=`` is passed to methods
that use it (MEDI). ``return_info=True`` returns ``(chi, SolverInfo)`` with iteration count and residual.

Every method is also importable by name from this package (``from qsmbids.qsm.inversion import rts``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from ._common import SolverInfo

__all__ = ["METHODS", "invert", "SolverInfo", "get_method"]

#: Method name → module (inside this package) that defines a function of the same name.
_MODULES: dict[str, str] = {
    "tkd": "direct",
    "tsvd": "direct",
    "tikhonov": "direct",
    "ilsqr": "ilsqr",
    "tv": "tv",
    "rts": "rts",
    "medi": "medi",
    "tgv": "tgv",
}

#: Names accepted by :func:`invert`, in order of increasing cost.
METHODS: tuple[str, ...] = tuple(_MODULES)


def get_method(method: str):
    """The solver function for a method name (see :data:`METHODS`)."""
    key = str(method).lower()
    if key not in _MODULES:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}; got {method!r}")
    module = importlib.import_module(f"{__name__}.{_MODULES[key]}")
    return getattr(module, key)


def invert(
    local_field: Any,
    mask: Any,
    voxel_size: Sequence[float],
    b0_direction: Sequence[float] = (0.0, 0.0, 1.0),
    method: str = "rts",
    **params: Any,
) -> Any:
    """Susceptibility (ppm) from the local field (ppm) with the chosen dipole-inversion ``method``.

    ``params`` go to the method (see each function's docstring for names and defaults), e.g.
    ``invert(f, m, (1, 1, 1), method="tkd", threshold=0.19)``.
    """
    return get_method(method)(local_field, mask, voxel_size, b0_direction, **params)


def __getattr__(name: str):
    if name in _MODULES:
        return get_method(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
