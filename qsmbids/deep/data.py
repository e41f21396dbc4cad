"""Synthetic training data for the deep dipole inversions: (local field, χ, mask) pairs made on the fly.

Published networks are trained on data nobody may redistribute, so qsmbids makes its own, reproducibly:

* **random shapes** (:func:`random_chi`), the DeepQSM recipe (Bollmann et al., NeuroImage 2019): spheres,
  ellipsoids, finite cylinders and cuboids at random positions, sizes and orientations with χ uniform in
  [−0.2, 0.4] ppm, a few rare strong sources — calcifications down to −1 ppm and haemorrhages up to +1.5 ppm
  (Chen et al., Radiology 2014; Wang & Liu, MRM 2015) — on a smooth random texture. Networks trained only on such
  shapes generalise to brains; they also see susceptibility ranges no head phantom covers;
* **head patches** (:func:`head_patches`): crops of the realistic :func:`qsmbids.sim.phantom.make_head` heads at
  1 mm, with a per-region χ jitter, a global contrast scale and random flips/axis swaps (valid augmentations
  because the field is simulated *after* them, with B0 along z).

Every pair is forward-simulated (:func:`make_pair`) as the *local* field, i.e. the field of the sources inside the
mask only (what background-field removal leaves), D ∗ (χ·M) in ppm with the unit dipole kernel of
:func:`qsmbids.qsm.fourier.dipole_kernel`. The convolution runs on a χ region larger than the patch (``margin``
voxels on each side, ×1.5 by default), zero-padded by another ×1.5 against circular wrap-around, and the centre is
cropped: the patch's field contains the contributions of the sources around it, as a crop of a real brain does.
Augmentations beyond χ: field noise, B0 directions within a cone (for the unrolled models, which take the kernel)
and a thicker simulated slice (the field low-passed along z, as acquired with thick slices and interpolated to 1 mm).

Determinism: batch ``i`` of a :class:`TrainingStream` is a pure function of ``(seed, i)`` (its random generator is
``numpy.random.default_rng([seed, i, j])`` per sample ``j``), so resuming training at step ``k`` only needs
``k``, and any number of data-loader workers yields the same batches. Heads are built once per process and cached
(about 6 s and 1.8 GB transient per 1 mm head; ~40 MB kept, cropped to the brain); ``cache_dir`` also keeps them
on disk for the next process (0.1 s to load). Validation crops (:func:`validation_set`) come from heads whose
seeds lie at or above :data:`VALIDATION_SEED_BASE`, a range training never uses (:func:`training_head_seeds`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ..files import atomic_path
from ..qsm.fourier import crop, dipole_kernel, pad, padded_shape

__all__ = [
    "VALIDATION_SEED_BASE",
    "Batch",
    "TrainingStream",
    "head_patches",
    "make_pair",
    "random_b0_dir",
    "random_chi",
    "training_head_seeds",
    "validation_head_seeds",
    "validation_set",
]

#: Head seeds ≥ this value are reserved for validation; training heads use seeds below it.
VALIDATION_SEED_BASE = 1_000_000

CHI_RANGE = (-0.2, 0.4)  # ppm, ordinary tissue contrast of the random shapes
CALCIFICATION_RANGE = (-1.0, -0.3)  # ppm
HAEMORRHAGE_RANGE = (0.5, 1.5)  # ppm
_NO_JITTER = (0, 1, 22)  # air, CSF (the reference), sinus air: see qsmbids.sim.phantom


# ----------------------------------------------------------------------------------------------- random shapes
def _rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly distributed 3-D rotation matrix (QR of a Gaussian matrix with the sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _smooth_noise(shape: Sequence[int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Unit-std smooth Gaussian random field, made at half resolution and upsampled trilinearly (≈8× cheaper)."""
    small = tuple(max(2, math.ceil(n / 2)) for n in shape)
    noise = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), sigma / 2, mode="wrap")
    up = torch.nn.functional.interpolate(torch.from_numpy(noise)[None, None], size=tuple(int(n) for n in shape),
                                         mode="trilinear", align_corners=False)[0, 0].numpy()
    return up / max(float(up.std()), 1e-12)


def _paint_shape(chi: np.ndarray, rng: np.random.Generator, value: float, radius: float, kind: int) -> None:
    """Blend one randomly oriented shape of the given ``kind`` and size into ``chi`` (1-voxel soft edge)."""
    shape = chi.shape
    c = rng.uniform(0, 1, 3) * np.asarray(shape)
    rot = _rotation(rng)
    if kind == 0:  # sphere
        semi = np.full(3, radius)
    elif kind == 1:  # ellipsoid
        semi = radius * rng.uniform(0.3, 1.0, 3)
    elif kind == 2:  # finite cylinder: (radius, radius, half length)
        rr = radius * rng.uniform(0.15, 0.6)
        semi = np.array([rr, rr, radius * rng.uniform(0.8, 3.0)])
    else:  # cuboid half sides
        semi = radius * rng.uniform(0.3, 1.0, 3)
    ext = float(np.linalg.norm(semi)) + 1.0
    lo = np.clip(np.floor(c - ext).astype(int), 0, shape)
    hi = np.clip(np.ceil(c + ext).astype(int) + 1, 0, shape)
    if np.any(hi <= lo):
        return
    d = [np.arange(a, b, dtype=np.float32) - np.float32(cc) for a, b, cc in zip(lo, hi, c)]
    dx, dy, dz = d[0][:, None, None], d[1][None, :, None], d[2][None, None, :]
    u = [rot[0, i] * dx + rot[1, i] * dy + rot[2, i] * dz for i in range(3)]  # coordinates in the shape's frame
    if kind in (0, 1):
        rho = np.sqrt(sum((ui / s) ** 2 for ui, s in zip(u, semi)))
        depth = (1.0 - rho) * float(semi.min())
    elif kind == 2:
        depth = np.minimum(semi[0] - np.sqrt(u[0] ** 2 + u[1] ** 2), semi[2] - np.abs(u[2]))
    else:
        depth = np.minimum(np.minimum(semi[0] - np.abs(u[0]), semi[1] - np.abs(u[1])), semi[2] - np.abs(u[2]))
    w = np.clip(0.5 + depth, 0.0, 1.0).astype(np.float32)
    blk = chi[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    blk += w * (np.float32(value) - blk)


def random_chi(
    shape: Sequence[int],
    rng: np.random.Generator,
    *,
    n_shapes: int | None = None,
    strong_prob: float = 0.05,
    texture_ppm: float | None = None,
) -> np.ndarray:
    """Random-shape susceptibility volume (ppm, float32): the DeepQSM training recipe with a wider range.

    ``n_shapes`` (default: Poisson with mean 40 per 64³ voxels) spheres, ellipsoids, cylinders and cuboids with
    random centres, orientations, sizes (radius 2 voxels up to a quarter of the smallest side) and χ uniform in
    :data:`CHI_RANGE`; each is, with probability ``strong_prob``, instead a small strong source: a calcification
    (χ in :data:`CALCIFICATION_RANGE`) or a haemorrhage (:data:`HAEMORRHAGE_RANGE`). Later shapes occlude earlier
    ones. A smooth texture (std ``texture_ppm``, default uniform in 0–0.03 ppm, ~3 voxel correlation) is added.

    >>> chi = random_chi((32, 32, 32), np.random.default_rng(0))
    >>> chi.shape, chi.dtype, bool(-1.05 < chi.min() < chi.max() < 1.6)
    ((32, 32, 32), dtype('float32'), True)
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"shape: expected 3 sizes ≥ 2, got {shape}")
    if n_shapes is None:
        n_shapes = 1 + int(rng.poisson(40.0 * math.prod(shape) / 64**3))
    chi = np.zeros(shape, np.float32)
    r_max = max(3.0, min(shape) / 4)
    for _ in range(int(n_shapes)):
        kind = int(rng.integers(4))
        if rng.random() < strong_prob:
            lo_hi = CALCIFICATION_RANGE if rng.random() < 0.5 else HAEMORRHAGE_RANGE
            value, radius = rng.uniform(*lo_hi), rng.uniform(1.0, 5.0)
        else:
            value, radius = rng.uniform(*CHI_RANGE), rng.uniform(2.0, r_max)
        _paint_shape(chi, rng, float(value), float(radius), kind)
    tex = rng.uniform(0.0, 0.03) if texture_ppm is None else float(texture_ppm)
    if tex > 0:
        chi += np.float32(tex) * _smooth_noise(shape, rng, 3.0)
    return chi


def _random_mask(shape: Sequence[int], rng: np.random.Generator, p_full: float = 0.5) -> np.ndarray:
    """Region of interest for a random-shape pair: the whole region (p_full) or a large rotated ellipsoid with a
    rough edge, so that the networks also learn the brain-edge situation (no sources outside the mask)."""
    shape = tuple(shape)
    if rng.random() < p_full:
        return np.ones(shape, bool)
    n = np.asarray(shape, dtype=np.float64)
    c = n / 2 + rng.uniform(-0.25, 0.25, 3) * n
    semi = rng.uniform(0.35, 0.8, 3) * n
    rot = _rotation(rng)
    d = [np.arange(s, dtype=np.float32) - np.float32(cc) for s, cc in zip(shape, c)]
    dx, dy, dz = d[0][:, None, None], d[1][None, :, None], d[2][None, None, :]
    u = [rot[0, i] * dx + rot[1, i] * dy + rot[2, i] * dz for i in range(3)]
    rho = np.sqrt(sum((ui / s) ** 2 for ui, s in zip(u, semi)))
    rough = 0.08 * _smooth_noise(shape, rng, 4.0)
    return (rho + rough) < 1.0


# ----------------------------------------------------------------------------------------------- forward model
@functools.lru_cache(maxsize=16)
def _kernel(shape: tuple[int, int, int], b0_dir: tuple[float, float, float]) -> torch.Tensor:
    return dipole_kernel(shape, (1.0, 1.0, 1.0), b0_dir, half=True)


def _dipole_field(src: np.ndarray, b0_dir: Sequence[float], pad_factor: float, slice_mm: float = 1.0) -> np.ndarray:
    """D ∗ src (ppm) on a zero-padded grid (real FFTs), cropped back to ``src.shape``.

    ``slice_mm`` > 1 keeps only the z frequencies an acquisition with that slice thickness samples (|k_z| ≤
    1/(2·slice_mm)): the field as measured at lower through-plane resolution and interpolated back to 1 mm.
    """
    x = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32))
    shape = tuple(x.shape)
    pshape = padded_shape(shape, pad_factor) if pad_factor > 1 else shape
    xp = pad(x, pshape)
    D = _kernel(tuple(pshape), tuple(float(b) for b in b0_dir))
    if slice_mm > 1.0:
        kz = torch.fft.rfftfreq(pshape[2], d=1.0, dtype=torch.float64)
        D = D * (kz <= 0.5 / slice_mm + 1e-9).to(D.dtype)
    y = torch.fft.irfftn(torch.fft.rfftn(xp, dim=(-3, -2, -1)) * D, s=pshape, dim=(-3, -2, -1))
    return crop(y, shape).numpy()


def _centre_slices(shape: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
    out = []
    for n, m in zip(shape, size):
        if m > n:
            raise ValueError(f"crop: size {tuple(size)} larger than the region {tuple(shape)}")
        a = (n - m) // 2
        out.append(slice(a, a + m))
    return tuple(out)


def _draw(value, rng: np.random.Generator) -> float:
    """A number, or a (low, high) range to draw uniformly from."""
    if isinstance(value, (tuple, list)):
        lo, hi = (float(v) for v in value)
        return float(rng.uniform(lo, hi)) if hi > lo else lo
    return float(value)


def make_pair(
    chi: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    noise_ppm: float | tuple[float, float] = 0.0,
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    crop_size: int | Sequence[int] | None = None,
    pad_factor: float = 1.5,
    slice_mm: float | tuple[float, float] = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward-simulate one training pair: the local field of the in-mask sources, cropped, with noise.

    ``chi`` (ppm) and ``mask`` cover a region larger than the patch; the field D ∗ (χ·M) is computed on that region
    zero-padded by ``pad_factor`` (no wrap-around), then the centred ``crop_size`` block (default: the whole region)
    is kept, so sources around the patch contribute to its field. Gaussian noise of std ``noise_ppm`` (a number or a
    (low, high) range drawn uniformly) is added inside the mask; outside the mask the field is 0.
    ``b0_dir``: unit B0 direction in voxel coordinates (1 mm isotropic voxels). ``slice_mm`` (a number or a range):
    through-plane resolution of the simulated acquisition — above 1 mm the field keeps only the z frequencies such
    slices sample, while χ stays the 1 mm truth (resolution augmentation). Returns float32 arrays
    ``(field, chi·mask, mask)``.
    """
    chi = np.asarray(chi, dtype=np.float32)
    m = np.asarray(mask) > 0
    if chi.ndim != 3 or m.shape != chi.shape:
        raise ValueError(f"chi, mask: expected two 3-D volumes of the same shape, got {chi.shape} and {m.shape}")
    src = np.where(m, chi, np.float32(0.0))
    field = _dipole_field(src, b0_dir, pad_factor, _draw(slice_mm, rng))
    if crop_size is not None:
        size = (int(crop_size),) * 3 if np.isscalar(crop_size) else tuple(int(s) for s in crop_size)
        sl = _centre_slices(chi.shape, size)
        field, src, m = field[sl], src[sl], m[sl]
    sigma = _draw(noise_ppm, rng)
    if sigma > 0:
        field = field + np.float32(sigma) * rng.standard_normal(field.shape, dtype=np.float32)
    field = np.where(m, field, np.float32(0.0)).astype(np.float32)
    return field, np.ascontiguousarray(src, dtype=np.float32), m.astype(np.float32)


def random_b0_dir(rng: np.random.Generator, max_tilt_deg: float) -> tuple[float, float, float]:
    """Unit vector uniformly distributed on the spherical cap within ``max_tilt_deg`` of +z ((0, 0, 1) when 0)."""
    if max_tilt_deg <= 0:
        return (0.0, 0.0, 1.0)
    cos_t = rng.uniform(math.cos(math.radians(min(float(max_tilt_deg), 180.0))), 1.0)
    phi = rng.uniform(0.0, 2 * math.pi)
    s = math.sqrt(max(0.0, 1.0 - cos_t**2))
    return (s * math.cos(phi), s * math.sin(phi), float(cos_t))


# ----------------------------------------------------------------------------------------------- heads
def training_head_seeds(seed: int, heads: int) -> list[int]:
    """Seeds of the ``heads`` training heads of a run with ``seed``; all < :data:`VALIDATION_SEED_BASE`."""
    return [(int(seed) * 1009 + i) % VALIDATION_SEED_BASE for i in range(int(heads))]


def validation_head_seeds(seed: int, n_heads: int) -> list[int]:
    """Seeds of the validation heads; all ≥ :data:`VALIDATION_SEED_BASE`, so never used in training."""
    return [VALIDATION_SEED_BASE + abs(int(seed)) * 101 + i for i in range(int(n_heads))]


class _Head:
    """What patches need from a :class:`qsmbids.sim.phantom.HeadModel`, cropped to the brain (+8 voxels)."""

    def __init__(self, chi: np.ndarray, labels: np.ndarray, mask: np.ndarray):
        self.chi, self.labels, self.mask = chi, labels, mask
        idx = np.argwhere(mask)
        self.lo, self.hi = idx.min(0), idx.max(0) + 1

    def region(self, centre: Sequence[int], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(χ, labels, mask) of the ``size``³ block centred on ``centre``, zero outside the stored volume."""
        lo = np.asarray(centre, dtype=int) - size // 2
        src, dst = [], []
        for a, n in zip(lo, self.chi.shape):
            s0, s1 = max(a, 0), min(a + size, n)
            src.append(slice(s0, max(s0, s1)))
            dst.append(slice(s0 - a, s0 - a + max(0, s1 - s0)))
        out = []
        for arr in (self.chi, self.labels, self.mask):
            block = np.zeros((size,) * 3, arr.dtype)
            block[tuple(dst)] = arr[tuple(src)]
            out.append(block)
        return out[0], out[1], out[2]

    def random_centre(self, rng: np.random.Generator) -> np.ndarray:
        """A voxel inside the brain (rejection sampling in the brain's bounding box)."""
        for _ in range(1000):
            c = rng.integers(self.lo, self.hi)
            if self.mask[tuple(c)]:
                return c
        return (self.lo + self.hi) // 2


@functools.lru_cache(maxsize=12)
def _load_head(seed: int, lesions: bool, voxel_size: float, cache_dir: str | None) -> _Head:
    path = None
    if cache_dir:
        path = Path(cache_dir) / f"head-{seed}-{int(lesions)}-{voxel_size:g}mm.npz"
        if path.is_file():
            with np.load(path) as z:
                return _Head(z["chi"], z["labels"], z["mask"])
    from ..sim.phantom import make_head

    h = make_head(seed, lesions=lesions, voxel_size=voxel_size)
    idx = np.argwhere(h.brain_mask)
    lo = np.maximum(idx.min(0) - 8, 0)
    hi = idx.max(0) + 9
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    chi = np.ascontiguousarray(h.chi[sl], dtype=np.float32)
    labels = np.ascontiguousarray(h.labels[sl], dtype=np.int16)
    mask = np.ascontiguousarray(h.brain_mask[sl], dtype=bool)
    if path is not None:
        with atomic_path(path) as tmp, open(tmp, "xb") as fh:  # a file object: np.savez would append ".npz"
            np.savez(fh, chi=chi, labels=labels, mask=mask)
    return _Head(chi, labels, mask)


def _jittered(chi: np.ndarray, labels: np.ndarray, rng: np.random.Generator, jitter: float,
              scale: tuple[float, float]) -> np.ndarray:
    """χ with a multiplicative factor per tissue label (N(1, jitter²), clipped to ±2σ) and a global scale."""
    f = 1.0 + jitter * np.clip(rng.standard_normal(int(labels.max()) + 1), -2.0, 2.0)
    f[[i for i in _NO_JITTER if i < f.size]] = 1.0
    f *= _draw(scale, rng)
    return (chi * f.astype(np.float32)[labels]).astype(np.float32)


def _augment(arrays: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Same random flips (each axis) and x↔y swap for every array; B0 stays along z, the field comes later."""
    flips = rng.random(3) < 0.5
    swap = rng.random() < 0.5
    out = []
    for a in arrays:
        for ax in np.flatnonzero(flips):
            a = np.flip(a, int(ax))
        if swap:
            a = a.transpose(1, 0, 2)
        out.append(np.ascontiguousarray(a))
    return out


def _head_sample(head: _Head, patch: int, margin: int, rng: np.random.Generator, *, jitter: float,
                 scale: tuple[float, float], noise_ppm, b0_dir, augment: bool, centre=None, slice_mm=1.0):
    c = head.random_centre(rng) if centre is None else np.asarray(centre, dtype=int)
    chi, labels, mask = head.region(c, patch + 2 * margin)
    chi = _jittered(chi, labels, rng, jitter, scale) if (jitter > 0 or scale != (1.0, 1.0)) else chi
    if augment:
        chi, mask = _augment((chi, mask), rng)
    return make_pair(chi, mask, rng, noise_ppm=noise_ppm, b0_dir=b0_dir, crop_size=patch, slice_mm=slice_mm)


def head_patches(
    n: int,
    patch: int = 48,
    *,
    seed: int = 0,
    heads: int = 4,
    margin: int | None = None,
    jitter: float = 0.15,
    scale: tuple[float, float] = (0.8, 1.25),
    noise_ppm: float | tuple[float, float] = (0.0, 0.01),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    head_voxel_size: float = 1.0,
    cache_dir: str | Path | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``n`` simulated (field, χ, mask) pairs of ``patch``³ voxels cut from the training heads of ``seed``.

    Heads: :func:`training_head_seeds` (``heads`` of them, odd ones with lesions). Each patch is centred on a
    random brain voxel, its χ jittered per tissue (relative std ``jitter``) and scaled globally (``scale`` range),
    randomly flipped/swapped, and forward-simulated by :func:`make_pair` on a region ``margin`` voxels larger on
    each side (default patch/4). ``head_voxel_size`` other than 1 mm is only meant for quick tests (the voxels are
    then treated as 1 mm). Patch ``k`` uses ``default_rng([seed, k])``: reproducible.
    """
    margin = patch // 4 if margin is None else int(margin)
    seeds = training_head_seeds(seed, heads)
    out = []
    for k in range(int(n)):
        rng = np.random.default_rng([int(seed), k])
        i = int(rng.integers(len(seeds)))
        head = _load_head(seeds[i], bool(i % 2), float(head_voxel_size), _str(cache_dir))
        out.append(_head_sample(head, patch, margin, rng, jitter=jitter, scale=scale, noise_ppm=noise_ppm,
                                b0_dir=b0_dir, augment=True))
    return out


def _str(p) -> str | None:
    return None if p is None else str(p)


# ----------------------------------------------------------------------------------------------- stream
class Batch(tuple):
    """A training batch ``(field, chi, mask)``: float32 tensors (B, 1, X, Y, Z) in ppm, mask in {0, 1}.

    Unpacks like a 3-tuple; ``b0_dir`` is the unit B0 direction (voxel coordinates) shared by the whole batch, which
    the unrolled models need for their dipole kernel.
    """

    def __new__(cls, field: torch.Tensor, chi: torch.Tensor, mask: torch.Tensor, b0_dir=(0.0, 0.0, 1.0)):
        obj = super().__new__(cls, (field, chi, mask))
        obj.b0_dir = tuple(float(b) for b in b0_dir)
        return obj

    def __getnewargs__(self):  # pickling through data-loader workers
        return (*self, self.b0_dir)

    field = property(lambda self: self[0])
    chi = property(lambda self: self[1])
    mask = property(lambda self: self[2])


class TrainingStream:
    """Endless, reproducible stream of training batches mixing random shapes and head patches.

    ``patch``: cube side (voxels, 1 mm); ``batch``: samples per batch; ``seed``: everything random;
    ``mix``: probability that a sample is a head patch (else random shapes); ``noise``: (low, high) range of the
    field noise std in ppm, drawn per sample; ``b0_tilt_deg``: B0 directions drawn per batch within this angle of z
    (0: always z, the frame feed-forward models work in); ``heads``: number of training heads;
    ``margin``: extra χ around the patch for the forward simulation (default patch/4 → region 1.5× the patch);
    ``slice_mm``: (low, high) range of the simulated slice thickness in mm, drawn per sample (see
    :func:`make_pair`; (1, 1) = off);
    ``jitter``/``scale``: head χ augmentation (see :func:`head_patches`); ``p_full_mask``: probability that a
    random-shape sample's mask is the whole patch (else a large rough ellipsoid); ``head_voxel_size``: tests only;
    ``cache_dir``: keep built heads on disk.

    ``stream.batch(i)`` is batch ``i`` (a pure function of ``seed`` and ``i``); iterating yields batches 0, 1, …;
    ``stream.iterate(start)`` from batch ``start``. :meth:`recipe` describes the data for model cards.
    """

    def __init__(self, patch: int = 48, batch: int = 2, seed: int = 0, mix: float = 0.5,
                 noise: tuple[float, float] = (0.0, 0.01), b0_tilt_deg: float = 0.0, *, heads: int = 4,
                 margin: int | None = None, jitter: float = 0.15, scale: tuple[float, float] = (0.8, 1.25),
                 p_full_mask: float = 0.5, slice_mm: tuple[float, float] = (1.0, 1.0), head_voxel_size: float = 1.0,
                 cache_dir: str | Path | None = None):
        if int(patch) < 8:
            raise ValueError(f"patch: expected a cube side of at least 8 voxels, got {patch}")
        if int(batch) < 1:
            raise ValueError(f"batch: expected at least 1 sample per batch, got {batch}")
        if not 0.0 <= float(mix) <= 1.0:
            raise ValueError(f"mix: expected a probability in [0, 1], got {mix}")
        if float(mix) > 0 and int(heads) < 1:
            raise ValueError(f"heads: expected at least 1 training head when mix > 0, got {heads}")
        lo, hi = (float(v) for v in noise)
        if not 0.0 <= lo <= hi:
            raise ValueError(f"noise: expected a (low, high) range of field noise std in ppm, got {noise}")
        s_lo, s_hi = (float(v) for v in slice_mm)
        if not 1.0 <= s_lo <= s_hi <= 6.0:
            raise ValueError(f"slice_mm: expected a (low, high) slice-thickness range within 1–6 mm, got {slice_mm}")
        self.slice_mm = (s_lo, s_hi)
        self.patch, self.batch_size, self.seed = int(patch), int(batch), int(seed)
        self.mix, self.noise, self.b0_tilt_deg = float(mix), (lo, hi), float(b0_tilt_deg)
        self.heads = int(heads)
        self.margin = self.patch // 4 if margin is None else int(margin)
        self.jitter, self.scale = float(jitter), tuple(float(s) for s in scale)
        self.p_full_mask, self.head_voxel_size = float(p_full_mask), float(head_voxel_size)
        self.cache_dir = _str(cache_dir)
        self.head_seeds = training_head_seeds(self.seed, self.heads)

    def recipe(self) -> dict:
        """JSON-able description of the data (model cards, checkpoints)."""
        return {
            "generator": "qsmbids.deep.data.TrainingStream",
            "patch": self.patch, "batch": self.batch_size, "seed": self.seed, "mix_head_fraction": self.mix,
            "noise_ppm": list(self.noise), "b0_tilt_deg": self.b0_tilt_deg, "margin": self.margin,
            "head_seeds": self.head_seeds, "head_lesions": [bool(i % 2) for i in range(self.heads)],
            "head_voxel_size_mm": self.head_voxel_size, "jitter": self.jitter, "scale": list(self.scale),
            "p_full_mask": self.p_full_mask, "slice_mm": list(self.slice_mm),
            "random_shapes": {"chi_ppm": list(CHI_RANGE), "calcification_ppm": list(CALCIFICATION_RANGE),
                              "haemorrhage_ppm": list(HAEMORRHAGE_RANGE), "strong_prob": 0.05},
            "forward_model": "local field D*(chi*mask), unit dipole kernel, 1 mm, region (patch + 2*margin) "
                             "zero-padded x1.5, centre crop",
        }

    def _sample(self, i: int, j: int, b0_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(i), int(j)])
        if rng.random() < self.mix:
            h = int(rng.integers(self.heads))
            head = _load_head(self.head_seeds[h], bool(h % 2), self.head_voxel_size, self.cache_dir)
            return _head_sample(head, self.patch, self.margin, rng, jitter=self.jitter, scale=self.scale,
                                noise_ppm=self.noise, b0_dir=b0_dir, augment=True, slice_mm=self.slice_mm)
        size = self.patch + 2 * self.margin
        chi = random_chi((size,) * 3, rng)
        mask = _random_mask((size,) * 3, rng, self.p_full_mask)
        return make_pair(chi, mask, rng, noise_ppm=self.noise, b0_dir=b0_dir, crop_size=self.patch,
                         slice_mm=self.slice_mm)

    def prepare(self) -> TrainingStream:
        """Build (or load from ``cache_dir``) every training head now, e.g. before forking data-loader workers."""
        if self.mix > 0:
            for h, seed in enumerate(self.head_seeds):
                _load_head(seed, bool(h % 2), self.head_voxel_size, self.cache_dir)
        return self

    def batch(self, i: int) -> Batch:
        """Batch number ``i`` (deterministic)."""
        b0_dir = random_b0_dir(np.random.default_rng([self.seed, int(i)]), self.b0_tilt_deg)
        samples = [self._sample(i, j, b0_dir) for j in range(self.batch_size)]
        stack = [torch.from_numpy(np.stack([s[k] for s in samples])[:, None]) for k in range(3)]
        return Batch(*stack, b0_dir=b0_dir)

    def __getitem__(self, i: int) -> Batch:  # map-style access for torch data-loader workers
        return self.batch(i)

    def iterate(self, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
        i = int(start)
        while stop is None or i < stop:
            yield self.batch(i)
            i += 1

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate(0)


# ----------------------------------------------------------------------------------------------- validation
def validation_set(n: int = 2, size: int = 64, seed: int = 1234, *, noise_ppm: float = 0.002,
                   head_voxel_size: float = 1.0, cache_dir: str | Path | None = None) -> list[dict]:
    """Fixed held-out crops (``size``³, 1 mm, B0 along z) of heads never used in training.

    Crops come two per head from :func:`validation_head_seeds` (heads with lesions, so that a calcification and a
    haemorrhage are scored too): even crops are centred on the deep grey nuclei, odd crops on a random brain voxel
    where the crop is at least half brain. Fields are simulated like the training data (region size + size/2,
    zero-padded) with a fixed noise of ``noise_ppm``. Returns dicts with NumPy float32 ``field``, ``chi``, ``mask``
    and ``head_seed``, ``centre`` (voxel of the cropped head), ``index``.
    """
    if int(n) < 1 or int(size) < 8:
        raise ValueError(f"n, size: expected n ≥ 1 crops of size ≥ 8, got n={n}, size={size}")
    seeds = validation_head_seeds(seed, (int(n) + 1) // 2)
    margin = int(size) // 4
    out = []
    for i in range(int(n)):
        rng = np.random.default_rng([VALIDATION_SEED_BASE, int(seed), i])
        head_seed = seeds[i // 2]
        head = _load_head(head_seed, True, float(head_voxel_size), _str(cache_dir))
        if i % 2 == 0:
            deep = (head.labels >= 4) & (head.labels <= 17)
            centre = np.round(np.argwhere(deep).mean(0)).astype(int) if deep.any() else (head.lo + head.hi) // 2
        else:
            best, centre = -1.0, None
            for _ in range(50):
                c = head.random_centre(rng)
                frac = float(head.region(c, int(size))[2].mean())
                if frac > best:
                    best, centre = frac, c
                if frac >= 0.5:
                    break
        field, chi, mask = _head_sample(head, int(size), margin, rng, jitter=0.0, scale=(1.0, 1.0),
                                        noise_ppm=noise_ppm, b0_dir=(0.0, 0.0, 1.0), augment=False, centre=centre)
        out.append({"field": field, "chi": chi, "mask": mask, "head_seed": int(head_seed),
                    "centre": [int(c) for c in centre], "index": i})
    return out
