"""Deep dipole inversion of a local field of any size, voxel size and B0 direction.

The networks were trained in one frame only (see :mod:`qsmbids.deep.models`): 1 mm isotropic voxels and, for the
feed-forward models, B0 along +z of the grid. :func:`infer` brings the data into that frame and back, following the
AFTER-QSM idea (rotate into the B0-aligned frame and resample to isotropic voxels around a network trained only
there):

1. the field is zeroed outside the mask and cut to the mask's bounding box plus a margin;
2. one affine resampling (trilinear, mask-normalised so that the brain edge is not pulled towards 0; nearest for
   the mask) maps it to a 1 mm grid whose z axis is B0 (feed-forward models) or that keeps the voxel axes (unrolled
   models, which get the true dipole kernel for the B0 direction instead: a rotation would only add blur). The grid
   is sized to a multiple of ``model.multiple`` here, which is the padding; no padding step is needed after it.
   Data that are already 1 mm isotropic with B0 along z are cropped and padded by integer slicing: no interpolation
   at all, so resampling is then exactly the identity;
3. the network runs on the whole grid, or on overlapping tiles whose origins are multiples of ``model.multiple`` (so
   every tile sees the same pooling grid as the whole volume) and from which only the centre is kept: each tile
   discards ``overlap`` voxels of context at every face it shares with a neighbour and the kept centres are blended
   with a smooth (sin²) ramp. With ``overlap`` at least the model's effective receptive radius
   (:func:`measure_overlap`) the tiled result equals the whole-volume one to within 1e-4 ppm. The default
   (:func:`default_overlap`) is half the theoretical receptive field, exact for any weights (unet/xqsm: 112 voxels),
   unless the model card gives a measured ``tile_overlap``; for the untrained default models the measured radius is
   96 (unet, difference 0), 96 (xqsm, 2e-6 ppm) and 64 (ir2qsm, 3e-6 ppm, theoretical 256);
4. the result is resampled back onto the input grid and masked.

Inference is deterministic: models are in eval mode and have no randomness; on CUDA, cuDNN is asked for
deterministic algorithms for the duration of the call.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..qsm._utils import check_b0_dir, check_voxel_size
from ..qsm.fourier import dipole_kernel
from .weights import WeightsError, load_model, resolve_weights, sha256_file

__all__ = ["FALLBACK_OVERLAP", "default_overlap", "infer", "measure_overlap", "resolve_device", "tile_starts"]

#: Context (voxels at 1 mm) each tile discards at a shared face for a model without a known receptive field and
#: without a ``tile_overlap`` in its card.
FALLBACK_OVERLAP = 64
_BLEND = 4  # width (voxels) of the sin² ramp between the kept centres of neighbouring tiles
#: zero margin (mm) around the mask's bounding box in the network grid; wider for unrolled models, whose FFT-based
#: data steps are circular (sources near one edge would otherwise act on the field at the opposite edge)
_MARGIN_MM = {"feedforward": 4.0, "unrolled": 8.0}
#: peak bytes per voxel of the network grid in eval mode, used to decide tiling: about twice what the default models
#: need on the CPU (0.3–0.5 kB per voxel measured by benchmarks/bench_deep.py)
_BYTES_PER_VOXEL = {"feedforward": 1000, "unrolled": 800}
_CACHE: dict[tuple, tuple[torch.nn.Module, dict]] = {}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else as given (``"cpu"``, ``"cuda"``, ``"cuda:1"``)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device (use 'auto' or 'cpu')")
    return dev


def _model_for(model: Any, device: torch.device, weights_dir) -> tuple[torch.nn.Module, dict]:
    """A ready model and its card (weights verified once per file version and device, then cached)."""
    if isinstance(model, torch.nn.Module):
        return model.to(device).eval(), {"name": getattr(model, "name", type(model).__name__), "sha256": None}
    pt = resolve_weights(model, weights_dir)
    try:
        st = pt.stat()
    except OSError:
        st = None
    key = (str(pt.resolve()) if st else str(pt), st.st_mtime_ns if st else 0, st.st_size if st else 0, str(device))
    if st is None or key not in _CACHE:
        net, card = load_model(pt, device=device, return_card=True)
        _CACHE.clear()  # keep at most one model in memory
        _CACHE[key] = (net, card)
    elif sha256_file(pt) != _CACHE[key][1]["sha256"]:  # cheap insurance against a file changed in place
        _CACHE.clear()
        raise WeightsError(f"{pt}: checksum mismatch (file changed since it was loaded)")
    return _CACHE[key]


# ------------------------------------------------------------------------------------------------------------
# geometry: one affine map from the input voxel grid to the network grid (1 mm, B0 along z when rotated)

@dataclass
class _Frame:
    R: np.ndarray  # 3×3 rotation, network-frame mm = R · (input index · voxel size)
    y0: np.ndarray  # network-frame mm of network voxel (0, 0, 0)
    shape: tuple[int, int, int]  # network grid
    vs: np.ndarray
    integer: bool  # pure integer shift (1 mm isotropic, no rotation): slicing instead of interpolation

    def net_to_input_index(self, j: Tensor) -> Tensor:
        """(…, 3) network indices → (…, 3) fractional input indices."""
        R = torch.as_tensor(self.R, dtype=j.dtype, device=j.device)
        y = j + torch.as_tensor(self.y0, dtype=j.dtype, device=j.device)
        return (y @ R) / torch.as_tensor(self.vs, dtype=j.dtype, device=j.device)  # Rᵀ·y, row vectors

    def input_to_net_index(self, i: Tensor) -> Tensor:
        R = torch.as_tensor(self.R, dtype=i.dtype, device=i.device)
        x = i * torch.as_tensor(self.vs, dtype=i.dtype, device=i.device)
        return x @ R.T - torch.as_tensor(self.y0, dtype=i.dtype, device=i.device)


def _rotation_to_z(b: Sequence[float]) -> np.ndarray:
    """Smallest rotation R with R·b = +z (b and −b are the same B0 for the dipole kernel: pick b_z ≥ 0)."""
    b = np.asarray(b, dtype=np.float64)
    b = b / np.linalg.norm(b)
    if b[2] < 0:
        b = -b
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(b, z)
    s, c = np.linalg.norm(v), float(b @ z)
    if s < 1e-12:
        return np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx * ((1 - c) / s**2)


def _smooth7(n: int) -> bool:
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n == 1


def _grid_len(n: int, multiple: int, fft: bool) -> int:
    """Smallest multiple of ``multiple`` ≥ n; for FFT grids (unrolled models) also with prime factors ≤ 7."""
    m = max(1, int(multiple))
    n = int(math.ceil(n / m) * m)
    while fft and not _smooth7(n):
        n += m
    return n


def _frame(shape, vs, b, lo, hi, *, rotate: bool, multiple: int, fft: bool, margin: float) -> _Frame:
    R = _rotation_to_z(b) if rotate else np.eye(3)
    vs = np.asarray(vs, dtype=np.float64)
    integer = bool(np.allclose(R, np.eye(3), atol=1e-12) and np.allclose(vs, 1.0, atol=1e-6))
    corners = np.array([[a, b_, c] for a in (lo[0], hi[0]) for b_ in (lo[1], hi[1]) for c in (lo[2], hi[2])], float)
    y = (corners * vs) @ R.T
    ymin, ymax = y.min(0) - margin, y.max(0) + margin
    if integer:
        ymin, ymax = np.floor(ymin + 1e-9), np.ceil(ymax - 1e-9)
    n = np.floor(ymax - ymin + 1e-6).astype(int) + 1
    out = np.array([_grid_len(k, multiple, fft) for k in n])
    extra = out - n
    y0 = ymin - (extra // 2 if integer else extra / 2.0)
    return _Frame(R, y0, tuple(int(k) for k in out), vs, integer)


def _sample(vol: Tensor, idx: Tensor, mode: str) -> Tensor:
    """Values of ``vol`` (X, Y, Z) at fractional indices ``idx`` (…, 3); 0 outside (grid_sample, align_corners)."""
    size = torch.tensor(vol.shape, dtype=idx.dtype, device=idx.device)
    norm = 2.0 * idx / (size - 1).clamp(min=1) - 1.0
    grid = norm.flip(-1).reshape(1, *idx.shape[:-1], 3).to(vol.dtype)
    return F.grid_sample(vol[None, None], grid, mode=mode, padding_mode="zeros", align_corners=True)[0, 0]


def _index_grid(shape, offset, device, dtype) -> Tensor:
    axes = [torch.arange(n, device=device, dtype=dtype) + float(o) for n, o in zip(shape, offset)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def _to_net(field: Tensor, mask: Tensor, fr: _Frame) -> tuple[Tensor, Tensor]:
    """Field (normalised trilinear) and mask (nearest) on the network grid."""
    if fr.integer:
        f = torch.zeros(fr.shape, dtype=field.dtype, device=field.device)
        m = torch.zeros(fr.shape, dtype=mask.dtype, device=mask.device)
        src, dst = _overlap_slices(field.shape, fr.shape, fr.y0.astype(int))
        f[dst], m[dst] = field[src], mask[src]
        return f, m
    idx = fr.net_to_input_index(_index_grid(fr.shape, (0, 0, 0), field.device, torch.float64))
    num = _sample(field * mask, idx, "bilinear")
    den = _sample(mask, idx, "bilinear")
    m = (_sample(mask, idx, "nearest") > 0.5).to(field.dtype)
    f = torch.where(den > 1e-6, num / den.clamp(min=1e-6), torch.zeros_like(num)) * m
    return f, m


def _from_net(chi: Tensor, m_net: Tensor, fr: _Frame, shape, lo, hi) -> Tensor:
    """Network-grid χ back onto the input grid (only the mask's bounding box is computed; the rest is 0)."""
    out = torch.zeros(shape, dtype=chi.dtype, device=chi.device)
    if fr.integer:
        src, dst = _overlap_slices(shape, fr.shape, fr.y0.astype(int))
        out[src] = chi[dst]
        return out
    box = tuple(int(h - l + 1) for l, h in zip(lo, hi))
    j = fr.input_to_net_index(_index_grid(box, lo, chi.device, torch.float64))
    num = _sample(chi * m_net, j, "bilinear")
    den = _sample(m_net, j, "bilinear")
    plain = _sample(chi, j, "bilinear")
    out[tuple(slice(int(l), int(h) + 1) for l, h in zip(lo, hi))] = torch.where(
        den > 0.05, num / den.clamp(min=0.05), plain)
    return out


def _overlap_slices(in_shape, net_shape, y0) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices of the input and of the network grid that coincide when network index j ↔ input index j + y0."""
    src, dst = [], []
    for n_in, n_net, o in zip(in_shape, net_shape, y0):
        a, b = max(0, int(o)), min(n_in, int(o) + n_net)
        src.append(slice(a, b))
        dst.append(slice(a - int(o), b - int(o)))
    return tuple(src), tuple(dst)


# ------------------------------------------------------------------------------------------------------------
# tiling

def tile_starts(n: int, tile: int, overlap: int, multiple: int = 1, blend: int = _BLEND) -> list[int]:
    """Tile origins along an axis of length ``n`` (a multiple of ``multiple``) for tiles of length ``tile``.

    Origins are multiples of ``multiple``; the kept centre of a tile, ``[s + overlap, s + tile − overlap)`` (up to
    the volume edge for the first and last tile), overlaps the next tile's by at least ``blend`` voxels, so every
    voxel is covered by a centre. ``ValueError`` when ``tile`` is too small for ``overlap``.
    """
    m = max(1, int(multiple))
    if tile >= n:
        return [0]
    step = (tile - 2 * overlap - blend) // m * m
    if step < m:
        raise ValueError(f"tile: {tile} voxels leave no centre after discarding overlap={overlap} on both sides "
                         f"(need tile ≥ {2 * overlap + blend + m})")
    starts = [0]
    while starts[-1] + tile < n:
        starts.append(min(starts[-1] + step, n - tile))
    return starts


def _ramp_weights(n: int, start: int, tile: int, overlap: int, blend: int, dtype, device) -> Tensor:
    """1-D weight of one tile: 0 on discarded context, sin² ramps of ``blend`` voxels, 1 in the middle."""
    w = torch.zeros(tile, dtype=dtype, device=device)
    a = 0 if start == 0 else overlap
    b = tile if start + tile >= n else tile - overlap
    w[a:b] = 1.0
    r = torch.sin(0.5 * math.pi * (torch.arange(blend, dtype=dtype, device=device) + 0.5) / blend) ** 2
    k = min(blend, b - a)
    if start > 0:
        w[a:a + k] = r[:k]
    if start + tile < n:
        w[b - k:b] = torch.minimum(w[b - k:b], r[:k].flip(0))
    return w


def _run_tiled(net, field: Tensor, mask: Tensor, tile: tuple[int, int, int], overlap: int, multiple: int) -> tuple[
        Tensor, int]:
    shape = field.shape
    starts = [tile_starts(n, t, overlap, multiple) for n, t in zip(shape, tile)]
    acc = torch.zeros(shape, dtype=torch.float32, device=field.device)
    wsum = torch.zeros(shape, dtype=torch.float32, device=field.device)
    count = 0
    for sx in starts[0]:
        for sy in starts[1]:
            for sz in starts[2]:
                sl = tuple(slice(s, s + min(t, n)) for s, t, n in zip((sx, sy, sz), tile, shape))
                out = net(field[sl][None, None], mask[sl][None, None])[0, 0]
                ws = [_ramp_weights(n, s, min(t, n), overlap, _BLEND, torch.float32, field.device)
                      for n, s, t in zip(shape, (sx, sy, sz), tile)]
                w = ws[0][:, None, None] * ws[1][None, :, None] * ws[2][None, None, :]
                acc[sl] += w * out
                wsum[sl] += w
                count += 1
    return acc / wsum.clamp(min=1e-12), count


def default_overlap(net: torch.nn.Module, card: dict | None = None) -> int:
    """Tile context for a model: the card's ``tile_overlap`` (measured for those weights), else half the model's
    theoretical receptive field rounded up to ``multiple`` — exact for any weights — else :data:`FALLBACK_OVERLAP`."""
    m = max(1, int(getattr(net, "multiple", 1)))
    if card and card.get("tile_overlap"):
        return int(card["tile_overlap"])
    rf = getattr(net, "receptive_field", None)
    radius = math.ceil((int(rf) - 1) / 2) if rf else FALLBACK_OVERLAP
    return int(math.ceil(radius / m) * m)


def _auto_tile(shape, kind: str, device: torch.device, multiple: int, overlap: int) -> int | None:
    """A cubic tile size when the whole network grid would not fit comfortably in memory, else ``None``.

    ``None`` too when no tile smaller than the grid can keep a centre after discarding ``overlap``: then the whole
    volume is the only way to get the exact result.
    """
    per_voxel = _BYTES_PER_VOXEL.get(kind, 1000)
    need = per_voxel * float(np.prod(shape))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = 0.6 * free
    else:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 8 * 1024**3
        budget = min(0.5 * avail, 6 * 1024**3)
    if need <= budget:
        return None
    side = int((budget / per_voxel) ** (1 / 3)) // multiple * multiple
    if side < 2 * overlap + _BLEND + multiple or side >= max(shape):
        return None
    return side


# ------------------------------------------------------------------------------------------------------------

def infer(
    local_field: Any,
    mask: Any,
    voxel_size: Sequence[float],
    b0_direction: Sequence[float] = (0.0, 0.0, 1.0),
    model: Any = "unet",
    device: str | torch.device = "auto",
    *,
    tile: int | Sequence[int] | None = None,
    overlap: int | None = None,
    threads: int | None = None,
    return_info: bool = False,
    weights_dir: str | os.PathLike | None = None,
):
    """Susceptibility χ (ppm) from the local field (ppm) with a trained network.

    ``local_field`` and ``mask``: 3-D NumPy arrays or tensors of the same shape (field values outside the mask are
    ignored); ``voxel_size`` in mm; ``b0_direction`` in voxel coordinates (any unit or non-unit vector; ±b are the
    same). ``model``: a model name (weights from :data:`qsmbids.deep.weights.WEIGHTS_DIR` or ``weights_dir``), the
    path of a .pt file with its card, or a model object. ``device``: ``"auto"`` (CUDA when available), ``"cpu"`` or
    ``"cuda"``. ``tile``: tile edge in 1 mm voxels (one int or three) to force tiled inference of feed-forward
    models; ``None`` tiles only when the grid would not fit in memory. Unrolled models always run on the whole
    volume (their FFT-based data steps couple every voxel). ``overlap``: voxels of context each tile
    discards at a shared face (default: the card's ``tile_overlap``, else :func:`default_overlap`). ``threads``:
    torch CPU threads for the call (restored afterwards).

    Returns χ like the input (NumPy in → NumPy float32 out; a tensor → a tensor on its device), zero outside the
    mask. ``return_info=True`` returns ``(chi, info)`` with ``model``, ``sha256`` (``None`` for an in-memory
    model), ``device``, ``tiles`` (1 = whole volume), ``seconds``, ``grid`` (network grid shape), ``tile``,
    ``overlap``, ``rotation_deg`` and ``resampled``.
    """
    t0 = time.perf_counter()
    is_numpy = not isinstance(local_field, Tensor)
    out_device = local_field.device if isinstance(local_field, Tensor) else torch.device("cpu")
    f_in = torch.as_tensor(np.asarray(local_field) if is_numpy else local_field)
    m_in = torch.as_tensor(np.asarray(mask)) if not isinstance(mask, Tensor) else mask
    if f_in.ndim != 3 or tuple(m_in.shape) != tuple(f_in.shape):
        raise ValueError(f"local_field, mask: expected two 3-D volumes of the same shape, got {tuple(f_in.shape)} "
                         f"and {tuple(m_in.shape)}")
    if f_in.is_complex():
        raise ValueError("local_field: expected a real field in ppm, got complex values")
    vs = check_voxel_size(voxel_size)
    b = check_b0_dir(b0_direction)
    dev = resolve_device(device)
    old_threads = torch.get_num_threads()
    old_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        net, card = _model_for(model, dev, weights_dir)
        kind = getattr(net, "kind", "feedforward")
        multiple = int(getattr(net, "multiple", 1))
        name = card.get("name", getattr(net, "name", "model"))

        rdtype = torch.float64 if dev.type == "cpu" else torch.float32  # resampling precision
        msk = (m_in.to(dev) != 0)
        fld = f_in.to(device=dev, dtype=rdtype)
        if not bool(torch.isfinite(fld[msk]).all()):
            raise ValueError("local_field: expected finite values inside the mask, got NaN/Inf")
        fld = torch.where(msk, fld, torch.zeros((), dtype=rdtype, device=dev))
        info: dict[str, Any] = {"model": name, "sha256": card.get("sha256"), "device": str(dev), "tiles": 0,
                                "grid": None, "tile": None, "overlap": None, "rotation_deg": 0.0, "resampled": False}
        if not bool(msk.any()):
            chi = torch.zeros(f_in.shape, dtype=torch.float32, device=dev)
        else:
            nz = torch.nonzero(msk)
            lo, hi = nz.min(0).values.cpu().numpy(), nz.max(0).values.cpu().numpy()
            unrolled = kind == "unrolled"
            fr = _frame(tuple(f_in.shape), vs, b, lo, hi, rotate=not unrolled, multiple=multiple, fft=unrolled,
                        margin=_MARGIN_MM["unrolled" if unrolled else "feedforward"])
            info["grid"] = list(fr.shape)
            info["rotation_deg"] = float(np.degrees(np.arccos(np.clip((np.trace(fr.R) - 1) / 2, -1, 1))))
            info["resampled"] = not fr.integer
            f_net, m_net = _to_net(fld, msk.to(rdtype), fr)
            f32, m32 = f_net.to(torch.float32), m_net.to(torch.float32)
            with torch.inference_mode():
                if unrolled:
                    # the network grid keeps the voxel axes: B0 has the same components there, at 1 mm
                    kernel = dipole_kernel(fr.shape, (1.0, 1.0, 1.0), b, device=dev, half=True)
                    chi_net = net(f32[None, None], m32[None, None], kernel)[0, 0]
                    info["tiles"] = 1
                else:
                    ov = int(overlap) if overlap is not None else default_overlap(net, card)
                    t = tile if tile is not None else _auto_tile(fr.shape, kind, dev, multiple, ov)
                    if t is None:
                        chi_net = net(f32[None, None], m32[None, None])[0, 0]
                        info["tiles"] = 1
                    else:
                        t3 = (int(t),) * 3 if np.ndim(t) == 0 else tuple(int(v) for v in t)
                        t3 = tuple(min(n, max(multiple, math.ceil(v / multiple) * multiple))
                                   for v, n in zip(t3, fr.shape))
                        chi_net, info["tiles"] = _run_tiled(net, f32, m32, t3, ov, multiple)
                        info["tile"], info["overlap"] = list(t3), ov
            chi = _from_net(chi_net.to(rdtype), m_net, fr, tuple(f_in.shape), lo, hi)
            chi = (chi * msk).to(torch.float32)
        info["seconds"] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old_cudnn
    out = chi.cpu().numpy() if is_numpy else chi.to(out_device)
    return (out, info) if return_info else out


def measure_overlap(model: Any, *, tol: float = 1e-5, length: int | None = None, width: int = 32,
                    field_ppm: float = 0.05, seed: int = 0, device: str | torch.device = "cpu",
                    candidates: Sequence[int] | None = None) -> dict:
    """Smallest tile ``overlap`` (voxels) for which a tile's kept centre matches the whole-volume output.

    The effective receptive field of trained weights is usually far smaller than the theoretical one that
    :func:`default_overlap` falls back to; this measures it. For each axis, a slab of ``length`` voxels along it and
    ``width`` across holds a smooth random field (std ``field_ppm``, full mask) and is run whole; then the part of
    the slab within ``overlap`` of the middle block (origins on the pooling grid) is run alone, and the largest
    absolute difference over the middle block is recorded. The score of an overlap is the sum over the three
    axes (a tile loses context on all faces at once). Returns ``{"overlap": the smallest candidate whose score is
    ≤ tol or None, "tol", "diffs": {overlap: score (ppm)}}``. Store ``overlap`` as the card's ``tile_overlap``.
    """
    dev = resolve_device(device)
    net, _ = _model_for(model, dev, None)
    m = max(1, int(getattr(net, "multiple", 1)))
    radius = default_overlap(net)
    n = int(math.ceil((length or min(2 * radius + 4 * m, 512)) / m) * m)
    w = int(math.ceil(width / m) * m)
    cands = list(candidates) if candidates is not None else list(range(m, radius + m, m))
    g = torch.Generator().manual_seed(seed)
    diffs = {int(ov): 0.0 for ov in cands}
    c0 = (n // 2) // m * m  # middle block [c0, c0 + m) along the slab
    for axis in range(3):
        shape = [w, w, w]
        shape[axis] = n
        x = torch.randn((1, 1, *shape), generator=g)
        for _ in range(3):  # fields are smooth: white noise would over-weight the first layers
            x = F.avg_pool3d(x, 3, stride=1, padding=1, count_include_pad=False)
        x = (x / x.std() * field_ppm).to(dev)
        ones = torch.ones_like(x)
        with torch.inference_mode():
            whole = net(x, ones)
        for ov in cands:
            a = max(0, (c0 - ov) // m * m)
            b = min(n, math.ceil((c0 + m + ov) / m) * m)
            with torch.inference_mode():
                part = net(x.narrow(2 + axis, a, b - a), ones.narrow(2 + axis, a, b - a))
            d = (part.narrow(2 + axis, c0 - a, m) - whole.narrow(2 + axis, c0, m)).abs().max()
            diffs[int(ov)] += float(d)
    best = next((ov for ov in cands if diffs[int(ov)] <= tol), None)
    return {"overlap": best, "tol": tol, "diffs": diffs}
