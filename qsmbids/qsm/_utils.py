"""Shared plumbing for the numerical core: array conversion and argument validation.

Every public function in :mod:`qsmbids.qsm` works on :class:`torch.Tensor` and keeps the input's
device. NumPy arrays are accepted too: :func:`numpy_io` converts them to tensors on the CPU and, when the
first (data) argument was NumPy, converts every tensor in the result back to NumPy, so callers get the
type of the data they passed in.

Precision rule: NumPy arrays are computed in float32 / complex64 (the default working precision);
torch tensors keep float64 / complex128 when the caller chose it explicitly. Integer and boolean
inputs become float32.

Bad arguments raise :class:`ValueError` with a message naming the argument and what was expected.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "SolverInfo",
    "numpy_io",
    "to_tensor",
    "to_numpy",
    "as_real",
    "as_complex",
    "check_voxel_size",
    "check_b0_dir",
    "check_finite",
    "check_same_shape",
    "check_mask",
    "check_positive",
    "check_echo_times",
]


def to_tensor(x: Any, *, device: torch.device | str | None = None) -> Tensor:
    """Return ``x`` as a tensor; NumPy float64/complex128 become float32/complex64."""
    if isinstance(x, Tensor):
        return x if device is None else x.to(device)
    arr = np.asarray(x)
    if arr.dtype == np.float64 or arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    elif arr.dtype == np.complex128:
        arr = arr.astype(np.complex64)
    elif arr.dtype.kind in "ui" and arr.dtype not in (np.int64, np.int32, np.int16, np.int8, np.uint8):
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "b":
        arr = arr.astype(bool)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t if device is None else t.to(device)


def to_numpy(x: Any) -> Any:
    """Recursively convert tensors (also inside tuples, lists, dicts and dataclasses) to NumPy."""
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # namedtuple
        return type(x)(*(to_numpy(v) for v in x))
    if isinstance(x, (tuple, list)):
        return type(x)(to_numpy(v) for v in x)
    if isinstance(x, dict):
        return {k: to_numpy(v) for k, v in x.items()}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        changes = {
            f.name: to_numpy(getattr(x, f.name))
            for f in dataclasses.fields(x)
            if f.init and isinstance(getattr(x, f.name), (Tensor, tuple, list, dict))
        }
        return dataclasses.replace(x, **changes)
    return x


def numpy_io(fn: F) -> F:
    """Decorator: accept NumPy arrays for any argument; return NumPy when the first (data) argument was NumPy.

    Lists/tuples of arrays (e.g. a list of echoes) are converted element-wise. Plain Python
    sequences of numbers (voxel sizes, B0 directions, echo times) are left alone.
    """

    def convert(v: Any) -> tuple[Any, bool]:
        if isinstance(v, np.ndarray) and v.ndim > 0:
            return to_tensor(v), True
        if isinstance(v, (list, tuple)) and v and all(isinstance(e, np.ndarray) and e.ndim > 0 for e in v):
            return type(v)(to_tensor(e) for e in v), True
        return v, False

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        flags = []
        new_args = []
        for a in args:
            a, flag = convert(a)
            flags.append(flag)
            new_args.append(a)
        new_kwargs = {}
        for k, v in kwargs.items():
            v, flag = convert(v)
            flags.append(flag)
            new_kwargs[k] = v
        out = fn(*new_args, **new_kwargs)
        # the primary (first) data argument decides the output type: torch data with NumPy echo times stays torch
        return to_numpy(out) if (flags and flags[0]) else out

    return wrapper  # type: ignore[return-value]


def as_real(x: Tensor, name: str = "input") -> Tensor:
    """Floating tensor: float64 stays float64, everything else real becomes float32."""
    if not isinstance(x, Tensor):
        x = to_tensor(x)
    if x.is_complex():
        raise ValueError(f"{name}: expected a real-valued array, got complex dtype {x.dtype}")
    if x.dtype == torch.float64:
        return x
    return x.to(torch.float32)


def as_complex(x: Tensor) -> Tensor:
    """Complex tensor: complex128 stays complex128, real float64 → complex128, else complex64."""
    if not isinstance(x, Tensor):
        x = to_tensor(x)
    if x.is_complex():
        return x if x.dtype == torch.complex128 else x.to(torch.complex64)
    return x.to(torch.complex128 if x.dtype == torch.float64 else torch.complex64)


def check_voxel_size(voxel_size: Sequence[float] | float, ndim: int = 3) -> tuple[float, ...]:
    """Validate voxel size (mm): ``ndim`` finite positive numbers (a scalar means isotropic)."""
    if isinstance(voxel_size, (int, float, np.number)):
        voxel_size = (float(voxel_size),) * ndim
    try:
        vs = tuple(float(v) for v in (voxel_size.tolist() if hasattr(voxel_size, "tolist") else voxel_size))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"voxel_size: expected {ndim} positive numbers in mm, got {voxel_size!r}") from exc
    if len(vs) != ndim:
        raise ValueError(f"voxel_size: expected {ndim} positive numbers in mm, got {len(vs)} values {vs}")
    if not all(math.isfinite(v) and v > 0 for v in vs):
        raise ValueError(f"voxel_size: expected positive finite values in mm, got {vs}")
    return vs


def check_b0_dir(b0_dir: Sequence[float]) -> tuple[float, float, float]:
    """Validate and normalise a B0 direction (3 numbers, not all zero) to a unit vector."""
    try:
        v = [float(x) for x in (b0_dir.tolist() if hasattr(b0_dir, "tolist") else b0_dir)]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"b0_dir: expected 3 numbers (a direction), got {b0_dir!r}") from exc
    if len(v) != 3 or not all(math.isfinite(x) for x in v):
        raise ValueError(f"b0_dir: expected 3 finite numbers, got {v}")
    n = math.sqrt(sum(x * x for x in v))
    if n == 0:
        raise ValueError("b0_dir: expected a non-zero direction, got (0, 0, 0)")
    return (v[0] / n, v[1] / n, v[2] / n)


def check_finite(x: Tensor, name: str, mask: Tensor | None = None) -> None:
    """Raise if ``x`` has NaN/Inf (inside ``mask`` if given)."""
    bad = ~torch.isfinite(x)
    if mask is not None:
        bad = bad & mask
    if bool(bad.any()):
        n = int(bad.sum())
        where = " inside the mask" if mask is not None else ""
        raise ValueError(f"{name}: expected finite values, found {n} NaN/Inf voxels{where}")


def check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{name_b}: expected the same shape as {name_a} {tuple(a.shape)}, got {tuple(b.shape)}"
        )


def check_mask(mask: Any, shape: Sequence[int], name: str = "mask", device: Any = None) -> Tensor:
    """Validate a mask of the given shape and return it as a boolean tensor; refuse an empty mask."""
    m = to_tensor(mask) if not isinstance(mask, Tensor) else mask
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(m.shape)}")
    if m.is_complex():
        raise ValueError(f"{name}: expected a boolean/0-1 mask, got complex dtype")
    m = m != 0 if m.dtype != torch.bool else m
    if device is not None:
        m = m.to(device)
    if not bool(m.any()):
        raise ValueError(f"{name}: mask is empty (no voxel set)")
    return m


def check_positive(value: float, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a positive number, got {value!r}") from exc
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    return v


def check_echo_times(echo_times: Sequence[float], n_echoes: int | None = None, *, min_echoes: int = 1) -> tuple[float, ...]:
    """Validate echo times (s): positive, strictly increasing, matching ``n_echoes`` when given."""
    try:
        te = tuple(float(t) for t in (echo_times.tolist() if hasattr(echo_times, "tolist") else echo_times))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"echo_times: expected a sequence of echo times in s, got {echo_times!r}") from exc
    if len(te) < min_echoes:
        raise ValueError(f"echo_times: expected at least {min_echoes} echoes, got {len(te)}")
    if n_echoes is not None and len(te) != n_echoes:
        raise ValueError(f"echo_times: expected {n_echoes} values (one per echo), got {len(te)}")
    if not all(math.isfinite(t) and t > 0 for t in te):
        raise ValueError(f"echo_times: expected positive echo times in s, got {te}")
    if any(b <= a for a, b in zip(te, te[1:])):
        raise ValueError(f"echo_times: expected strictly increasing echo times, got {te}")
    return te


@dataclasses.dataclass
class SolverInfo:
    """What an iterative solver did (returned with ``return_info=True``).

    ``iterations``: iterations run; ``residual``: final relative residual or update norm (say which in the
    solver's docstring); ``converged``: tolerance reached before ``max_iter``; ``fft_pairs``: number of
    forward+inverse 3-D FFT pairs of the working grid size performed (benchmarks compare the run time with
    this FFT bound); ``params``: the parameters used.
    """

    method: str
    iterations: int = 0
    residual: float = float("nan")
    converged: bool = True
    fft_pairs: int = 0
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
