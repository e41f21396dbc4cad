"""Realistic numerical head phantom built from the MNI152 2009 templates shipped inside ``nilearn``.

No download: the T1, grey-matter and white-matter probability maps
``<nilearn>/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz`` (1 mm, 197×233×189,
origin (−98, −134, −72) mm, RAS) are read with nibabel (Fonov et al., NeuroImage 2011, "Unbiased average
age-appropriate atlases for pediatric studies"). The T1 template is skull-stripped (zero outside the brain), so the
brain mask is the filled T1 support and the extracranial layers are built as shells around it.

Tissues (labels, see :data:`LABEL_NAMES`):

* CSF / cortical GM / WM: partial-volume mixture of the template probabilities (CSF = 1 − GM − WM in the brain),
  label = the largest fraction.
* Deep grey nuclei (caudate, putamen, globus pallidus, thalamus, substantia nigra, red nucleus, dentate; left and
  right): ellipsoids with a 1 mm soft edge at approximate literature MNI centres/extents (read from the ICBM/
  Harvard-Oxford atlases and Lim et al., NeuroImage 2013, "Human brain atlas for automated region of interest
  selection in quantitative susceptibility mapping").
* Superior sagittal and straight sinus: tubes along a polyline following their midline MNI course.
* Optional lesions: a calcification (χ < 0), a haemorrhage (χ > 0) and four small MS-like WM lesions.
* Outside the brain (``anatomy="realistic"``, the default): skull of varying thickness with marrow, dura, scalp
  fat, skin, muscle, eyes, optic nerves, sinuses, face, neck and spinal cord with partial volume, built by
  :func:`qsmbids.sim.anatomy.extracranial` (tissue values and sources there). ``anatomy="simple"``: the earlier
  2 mm CSF layer, 6 mm skull, 5 mm scalp/soft tissue, a soft-tissue face and neck, air pockets
  (frontal/ethmoid/sphenoid/maxillary sinuses, ear canals). Either way air lies outside the head, so a realistic
  background field exists once the forward model is applied.

χ (ppm, relative to CSF ≈ water, the QSM convention) — nominal values (ranges seen in the literature):
WM −0.03 (−0.06…−0.01), GM 0.02 (0…0.05), caudate 0.05 (0.03…0.09), putamen 0.09 (0.03…0.12),
globus pallidus 0.19 (0.12…0.25), thalamus 0.02 (0…0.05), substantia nigra 0.15 (0.09…0.20), red nucleus 0.11
(0.06…0.15), dentate 0.11 (0.06…0.16) — Deistung et al., NeuroImage 2013 ("Toward in vivo histology: a comparison of
QSM with magnitude-, phase-, and R2*-imaging at ultra-high magnetic field strength"), Lim et al. 2013 and the QSM
challenge 2.0 head (Marques et al., MRM 2021); venous blood 0.45 (Hct 0.4, Y ≈ 0.6: Δχ = Hct·(1−Y)·3.39 ppm,
Spees et al., MRM 2001); calcification −0.4 (Chen et al., Radiology 2014: −0.1…−2); haemorrhage +0.8
(0.5…1.5; Wang & Liu, MRM 2015); MS lesion 0.04 (iron-rim lesions; Wisnieff et al., MRM 2015); skull (cortical
bone) −2.0 (Hopkins & Wehrli, MRM 1997; Dimov et al., MRM 2018: ≈ −2…−2.5 vs water); scalp/soft tissue 0 (water-like,
fat ignored); air +9.4 (χ_air ≈ +0.36 ppm SI, χ_water ≈ −9.05 ppm SI, Schenck, Med Phys 1996).

M0 (proton density, CSF = 1), R1 (1/s, 3 T; Wansapura et al., JMRI 1999; Stanisz et al., MRM 2005) and R2* (1/s, 3 T;
Peters et al., MRI 2007; Deistung 2013) per tissue are listed in :data:`_TISSUE`. R2* scales with the field as
R2*(B0) = R2*(3 T)·B0/3 T — the static-dephasing regime (Yablonskiy & Haacke, MRM 1994), roughly what Peters et
al. 2007 measured between 1.5, 3 and 7 T. R1 is kept at its 3 T value (documented simplification).

Per subject (controlled by ``seed``): multiplicative χ jitter per region (N(1, jitter²), clipped to ±2σ; CSF and air
are the reference and not jittered), a smooth Gaussian random texture in the brain (std ``texture_ppm``, 2 mm
correlation) and a rigid head motion. Motion is applied by **resampling** all maps onto a fixed axis-aligned scanner
grid (linear interpolation for the template probabilities; the labelled shapes are evaluated analytically at each
voxel's MNI position, so labels are never interpolated). The affine stays a plain scaled grid, which keeps the B0
geometry simple for the forward model (B0 direction is given separately there).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..qsm._utils import check_positive
from .anatomy import EXTRA_TISSUE, extracranial

__all__ = ["ANATOMIES", "GRID_BOX_MM", "LABEL_NAMES", "HeadModel", "make_head"]

# label -> (name, chi ppm, M0, R1 1/s @3T, R2* 1/s @3T)
_TISSUE: dict[int, tuple[str, float, float, float, float]] = {
    0: ("air", 9.4, 0.0, 0.0, 0.0),
    1: ("csf", 0.0, 1.0, 0.25, 2.0),
    2: ("gm", 0.02, 0.80, 0.75, 15.0),
    3: ("wm", -0.03, 0.69, 1.20, 21.0),
    4: ("caudate_left", 0.05, 0.80, 0.80, 20.0),
    5: ("caudate_right", 0.05, 0.80, 0.80, 20.0),
    6: ("putamen_left", 0.09, 0.80, 0.85, 25.0),
    7: ("putamen_right", 0.09, 0.80, 0.85, 25.0),
    8: ("globus_pallidus_left", 0.19, 0.75, 1.00, 40.0),
    9: ("globus_pallidus_right", 0.19, 0.75, 1.00, 40.0),
    10: ("thalamus_left", 0.02, 0.75, 0.95, 20.0),
    11: ("thalamus_right", 0.02, 0.75, 0.95, 20.0),
    12: ("substantia_nigra_left", 0.15, 0.75, 1.00, 38.0),
    13: ("substantia_nigra_right", 0.15, 0.75, 1.00, 38.0),
    14: ("red_nucleus_left", 0.11, 0.75, 1.00, 30.0),
    15: ("red_nucleus_right", 0.11, 0.75, 1.00, 30.0),
    16: ("dentate_left", 0.11, 0.75, 0.95, 30.0),
    17: ("dentate_right", 0.11, 0.75, 0.95, 30.0),
    18: ("superior_sagittal_sinus", 0.45, 0.85, 0.60, 35.0),
    19: ("straight_sinus", 0.45, 0.85, 0.60, 35.0),
    20: ("skull", -2.0, 0.05, 3.0, 500.0),
    21: ("scalp", 0.0, 0.80, 1.50, 30.0),
    22: ("sinus_air", 9.4, 0.0, 0.0, 0.0),
    23: ("calcification", -0.4, 0.30, 1.50, 60.0),
    24: ("haemorrhage", 0.8, 0.80, 1.20, 100.0),
    25: ("ms_lesion", 0.04, 0.80, 0.90, 22.0),
}
LABEL_NAMES: dict[int, str] = {k: v[0] for k, v in _TISSUE.items()} | {k: v[0] for k, v in EXTRA_TISSUE.items()}
#: Extracranial anatomies: ``"realistic"`` (:mod:`qsmbids.sim.anatomy`) or ``"simple"`` (uniform shells).
ANATOMIES = ("realistic", "simple")
_NO_JITTER = {0, 1, 22}  # references / air

# Deep nuclei: (label_left, label_right, |x| centre, y, z, radii x, y, z) in MNI mm.
_NUCLEI = [
    (6, 7, 25.0, 2.0, 0.0, 6.0, 15.0, 9.0),       # putamen
    (4, 5, 13.0, 12.0, 10.0, 5.0, 12.0, 8.0),     # caudate (head + body)
    (8, 9, 19.0, -3.0, -1.0, 4.0, 8.0, 5.0),      # globus pallidus (painted over the medial putamen)
    (10, 11, 11.0, -18.0, 7.0, 7.0, 13.0, 8.0),   # thalamus
    (12, 13, 11.0, -18.0, -12.0, 3.0, 7.0, 3.0),  # substantia nigra
    (14, 15, 5.0, -20.0, -8.0, 3.0, 4.0, 4.0),    # red nucleus
    (16, 17, 15.0, -57.0, -35.0, 7.0, 9.0, 6.0),  # dentate
]
# Veins: (label, radius mm, polyline points MNI mm)
_VEINS = [
    (18, 4.0, [(0, 60, 30), (0, 50, 50), (0, 30, 68), (0, 0, 76), (0, -30, 76), (0, -60, 66),
               (0, -85, 45), (0, -100, 20), (0, -102, 0)]),
    (19, 2.5, [(0, -48, 6), (0, -75, 3), (0, -100, 0)]),
]
# Air pockets (ellipsoids, MNI centre, radii), carved only outside the intracranial space.
_AIR = [
    ((0, 62, 12), (14, 6, 10)),          # frontal sinus
    ((0, 40, -20), (10, 12, 10)),        # ethmoid
    ((0, 12, -32), (12, 10, 9)),         # sphenoid
    ((-32, 42, -55), (11, 14, 14)),      # maxillary L
    ((32, 42, -55), (11, 14, 14)),       # maxillary R
    ((-72, -22, -38), (16, 4, 4)),       # ear canal L
    ((72, -22, -38), (16, 4, 4)),        # ear canal R
]
# Soft-tissue face and neck (ellipsoids), so the head does not end at the template's lower edge.
_SOFT = [((0, 40, -50), (55, 40, 40)), ((0, -25, -110), (55, 60, 60))]
# Lesions: (label, MNI centre, radius mm)
_LESIONS = [
    (23, (-22, 2, 4), 3.0),
    (24, (28, -30, 25), 6.0),
    (25, (-20, -25, 25), 2.5), (25, (22, -45, 20), 2.0), (25, (-25, 10, 24), 2.0), (25, (24, 5, 28), 2.5),
]
# Fixed scanner box (mm, world = MNI when no motion): roomy enough for ±10°/±5 mm motion.
GRID_BOX_MM = ((-104.0, 104.0), (-144.0, 110.0), (-96.0, 120.0))
_CSF_SHELL, _SKULL, _SCALP = 2.0, 6.0, 5.0  # mm


@dataclass
class HeadModel:
    """Realistic head: χ (ppm, vs CSF), labels, M0, R1 (1/s), R2* (1/s at ``field_strength``) on one grid."""

    chi: np.ndarray
    labels: np.ndarray
    names: dict[int, str]
    m0: np.ndarray
    r1: np.ndarray
    r2star: np.ndarray
    brain_mask: np.ndarray
    head_mask: np.ndarray
    affine: np.ndarray
    voxel_size: tuple[float, float, float]
    field_strength: float
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    #: fat signal fraction (0–1; M0-weighted) per voxel, for the fat chemical shift; None for the simple head
    fat_fraction: np.ndarray | None = None
    anatomy: str = "realistic"

    def labels_table(self) -> list[dict]:
        """One row per label present: index, name, and the mean χ (ppm), M0, R1 (1/s), R2* (1/s) over its voxels."""
        lab = self.labels.ravel()
        n = int(lab.max()) + 1
        counts = np.bincount(lab, minlength=n)
        means = {k: np.bincount(lab, weights=getattr(self, k).ravel().astype(np.float64), minlength=n)
                 for k in ("chi", "m0", "r1", "r2star")}
        rows = []
        for idx in sorted(self.names):
            if idx >= n or counts[idx] == 0:
                continue
            c = counts[idx]
            rows.append({"index": int(idx), "name": self.names[idx],
                         "chi_ppm": float(means["chi"][idx] / c), "m0": float(means["m0"][idx] / c),
                         "r1": float(means["r1"][idx] / c), "r2star": float(means["r2star"][idx] / c)})
        return rows


def _template_path(kind: str) -> str:
    import nilearn

    return os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data",
                        f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz")


@functools.lru_cache(maxsize=3)
def _templates(k: int):
    """(t1, gm, wm) as float32 in [0, 1], block-averaged by integer factor ``k``, and their voxel->MNI affine."""
    import nibabel as nib

    out, affine = [], None
    for kind in ("t1", "gm", "wm"):
        img = nib.load(_template_path(kind))
        d = np.asarray(img.dataobj, dtype=np.float32) / 255.0
        affine = np.asarray(img.affine, dtype=np.float64)
        if k > 1:
            sh = [(s // k) * k for s in d.shape]
            d = d[: sh[0], : sh[1], : sh[2]].reshape(sh[0] // k, k, sh[1] // k, k, sh[2] // k, k).mean((1, 3, 5))
        out.append(np.ascontiguousarray(d, dtype=np.float32))
    if k > 1:  # block centre of the first k voxels
        affine = affine.copy()
        affine[:3, 3] += affine[:3, :3] @ np.full(3, (k - 1) / 2)
        affine[:3, :3] *= k
    return tuple(out), affine


def _rotation(deg) -> np.ndarray:
    ax, ay, az = (math.radians(float(a)) for a in deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _triple(value, name: str) -> tuple[float, float, float]:
    try:
        t = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected 3 finite numbers, got {value!r}") from exc
    if len(t) != 3 or not all(math.isfinite(v) for v in t):
        raise ValueError(f"{name}: expected 3 finite numbers, got {value!r}")
    return t


class _Grid:
    """Output grid + rigid motion: world = R·mni + t; gives MNI coordinates of any sub-block of voxels."""

    def __init__(self, vs: float, rot: np.ndarray, trans: np.ndarray):
        self.vs = vs
        lo = np.array([b[0] for b in GRID_BOX_MM])
        self.shape = tuple(math.floor((b[1] - b[0]) / vs) + 1 for b in GRID_BOX_MM)
        self.affine = np.eye(4)
        self.affine[:3, :3] *= vs
        self.affine[:3, 3] = lo
        self.rot, self.trans = rot, trans
        # voxel -> MNI: m = R^T (A v + o - t)
        self.vox2mni = np.eye(4)
        self.vox2mni[:3, :3] = rot.T @ self.affine[:3, :3]
        self.vox2mni[:3, 3] = rot.T @ (self.affine[:3, 3] - trans)

    def block(self, lo_mni, hi_mni):
        """Slices of the output grid covering the MNI box [lo, hi] after motion, and the MNI coordinates there."""
        corners = np.array([[a, b, c] for a in (lo_mni[0], hi_mni[0]) for b in (lo_mni[1], hi_mni[1])
                            for c in (lo_mni[2], hi_mni[2])], dtype=np.float64)
        world = corners @ self.rot.T + self.trans
        idx = (world - self.affine[:3, 3]) / self.vs
        i0 = np.clip(np.floor(idx.min(0)).astype(int) - 1, 0, self.shape)
        i1 = np.clip(np.ceil(idx.max(0)).astype(int) + 2, 0, self.shape)
        sl = tuple(slice(a, b) for a, b in zip(i0, i1))
        if any(b <= a for a, b in zip(i0, i1)):
            return sl, None
        ax = [np.arange(a, b, dtype=np.float64) for a, b in zip(i0, i1)]
        V = np.meshgrid(*ax, indexing="ij")
        M = self.vox2mni
        mni = [M[r, 0] * V[0] + M[r, 1] * V[1] + M[r, 2] * V[2] + M[r, 3] for r in range(3)]
        return sl, mni


def _ellipsoid_depth(mni, center, radii):
    """Approximate signed depth (mm, > 0 inside) below the surface of an axis-aligned ellipsoid."""
    rho = np.sqrt(sum(((m - c) / r) ** 2 for m, c, r in zip(mni, center, radii)))
    return (1.0 - rho) * min(radii)


def _tube_depth(mni, points, radius):
    """Signed depth (mm, > 0 inside) of a tube of ``radius`` around a polyline."""
    d2 = None
    P = np.asarray(points, dtype=np.float64)
    for a, b in itertools.pairwise(P):
        ab = b - a
        t = np.clip(sum((m - a[i]) * ab[i] for i, m in enumerate(mni)) / float(ab @ ab), 0.0, 1.0)
        dd = sum((m - (a[i] + t * ab[i])) ** 2 for i, m in enumerate(mni))
        d2 = dd if d2 is None else np.minimum(d2, dd)
    return radius - np.sqrt(d2)


def make_head(seed: int = 0, *, field_strength: float = 3.0, lesions: bool = False, voxel_size: float = 1.0,
              rotation_deg: tuple[float, float, float] | None = None,
              translation_mm: tuple[float, float, float] | None = None,
              jitter: float = 0.1, texture_ppm: float = 0.005, anatomy: str = "realistic") -> HeadModel:
    """Build a realistic head phantom (χ in ppm relative to CSF; see the module docstring for all sources).

    Parameters: ``seed`` drives every random choice (motion when not given, χ jitter, lesion offsets, texture);
    ``field_strength`` (T, > 0) scales R2* linearly from its 3 T value; ``voxel_size`` (mm, isotropic, 0.3–5) of
    the output grid (a fixed scanner box :data:`GRID_BOX_MM`; 2 mm gives 105×128×109 voxels);
    ``rotation_deg`` (about x, y, z, applied Rz·Ry·Rx around the MNI origin) and ``translation_mm``: rigid motion,
    ``None`` → uniform random in ±10° / ±5 mm; ``jitter``: relative std of the per-region χ; ``texture_ppm``: std
    of the smooth χ texture in the brain; ``anatomy``: what lies outside the intracranial space,
    ``"realistic"`` (default: varying skull with marrow, scalp fat, muscle, eyes, sinuses, neck, with partial
    volume; :mod:`qsmbids.sim.anatomy`) or ``"simple"`` (the earlier uniform CSF/skull/scalp shells, kept to
    reproduce old datasets: same brain, same seed use). Returns a :class:`HeadModel` (float32 maps, int16 labels).
    """
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy: expected one of {', '.join(ANATOMIES)}; got {anatomy!r}")
    try:
        vs = float(voxel_size)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"voxel_size: expected an isotropic size in mm (0.3–5), got {voxel_size!r}") from exc
    if not (math.isfinite(vs) and 0.3 <= vs <= 5.0):
        raise ValueError(f"voxel_size: expected an isotropic size in mm within 0.3–5, got {voxel_size!r}")
    b0 = check_positive(field_strength, "field_strength")
    for name, val in (("jitter", jitter), ("texture_ppm", texture_ppm)):
        if not (math.isfinite(float(val)) and float(val) >= 0):
            raise ValueError(f"{name}: expected a non-negative finite number, got {val!r}")

    rng = np.random.default_rng(seed)
    rnd_rot = rng.uniform(-10.0, 10.0, 3)
    rnd_trans = rng.uniform(-5.0, 5.0, 3)
    rot_deg = _triple(rotation_deg, "rotation_deg") if rotation_deg is not None else tuple(map(float, rnd_rot))
    trans = _triple(translation_mm, "translation_mm") if translation_mm is not None else tuple(map(float, rnd_trans))
    factors = np.clip(rng.standard_normal(len(_TISSUE)), -2.0, 2.0)
    lesion_offsets = rng.uniform(-2.0, 2.0, (len(_LESIONS), 3))

    props = {}  # label -> (chi, m0, r1, r2s at B0)
    for k, (_, chi, m0, r1, r2s) in _TISSUE.items():
        f = 1.0 if k in _NO_JITTER else 1.0 + float(jitter) * factors[k]
        props[k] = (chi * f, m0, r1, r2s * b0 / 3.0)

    grid = _Grid(vs, _rotation(rot_deg), np.asarray(trans, dtype=np.float64))
    shape = grid.shape

    # Template probabilities resampled onto the moved grid (linear).
    k = max(1, int(vs // 1.0))
    (t1, gm, wm), taff = _templates(k)
    M = np.linalg.inv(taff) @ grid.vox2mni
    rs = [ndimage.affine_transform(t, M[:3, :3], M[:3, 3], output_shape=shape, order=1, cval=0.0)
          for t in (t1, gm, wm)]
    t1r, gmr, wmr = rs
    brain = ndimage.binary_fill_holes(t1r > 0.25)
    gmr = np.where(brain, gmr, 0.0)
    wmr = np.where(brain, wmr, 0.0)
    s = gmr + wmr
    scale = np.where(s > 1.0, 1.0 / np.maximum(s, 1e-6), 1.0)
    frac = {2: gmr * scale, 3: wmr * scale}
    frac[1] = np.where(brain, 1.0 - frac[2] - frac[3], 0.0)

    maps = [np.zeros(shape, np.float32) for _ in range(4)]
    for lab, fr in frac.items():
        for i in range(4):
            maps[i] += (fr * props[lab][i]).astype(np.float32)
    labels = np.zeros(shape, np.int16)
    labels[brain] = (np.argmax(np.stack([frac[1], frac[2], frac[3]]), 0) + 1)[brain]

    def paint(label, sl, depth, allowed=None):
        w = np.clip(0.5 + depth / max(1.0, vs), 0.0, 1.0)
        if allowed is not None:
            w = w * allowed[sl]
        sel = w > 0
        if not sel.any():
            return
        for i in range(4):
            blk = maps[i][sl]
            blk[sel] = (blk[sel] * (1 - w[sel]) + props[label][i] * w[sel]).astype(np.float32)
        lb = labels[sl]
        lb[w >= 0.5] = label

    # Deep nuclei (inside the brain only).
    for lab_l, lab_r, cx, cy, cz, rx, ry, rz in _NUCLEI:
        for lab, x in ((lab_l, -cx), (lab_r, cx)):
            c, r = (x, cy, cz), (rx, ry, rz)
            sl, mni = grid.block(np.subtract(c, r) - 2, np.add(c, r) + 2)
            if mni is not None:
                paint(lab, sl, _ellipsoid_depth(mni, c, r), brain)
    # Veins (may lie at the brain surface; they join the intracranial space).
    for lab, rad, pts in _VEINS:
        P = np.asarray(pts, float)
        sl, mni = grid.block(P.min(0) - rad - 2, P.max(0) + rad + 2)
        if mni is not None:
            paint(lab, sl, _tube_depth(mni, pts, rad))
    if lesions:
        for (lab, c, rad), off in zip(_LESIONS, lesion_offsets):
            c = np.add(c, off)
            sl, mni = grid.block(c - rad - 2, c + rad + 2)
            if mni is not None:
                paint(lab, sl, _ellipsoid_depth(mni, c, (rad,) * 3), brain)

    brain_mask = brain | (labels == 18) | (labels == 19)
    # Texture: smooth Gaussian random field (unit std) in the brain.
    if texture_ppm > 0:
        noise = rng.standard_normal(shape).astype(np.float32)
        noise = ndimage.gaussian_filter(noise, 2.0 / vs)
        noise /= max(float(noise.std()), 1e-12)
        maps[0] += np.where(brain_mask, float(texture_ppm) * noise, 0.0).astype(np.float32)

    if anatomy == "realistic":
        # own random stream, so that the brain is the same as with the simple anatomy for a given seed
        chi_x, m0_x, r1_x, r2_x, fat_x, lab_x, _ = extracranial(grid, brain_mask,
                                                              np.random.default_rng([int(seed), 13]))
        outside = ~brain_mask
        for arr, val in zip(maps, (chi_x, m0_x, r1_x, r2_x * np.float32(b0 / 3.0))):
            arr[outside] = val[outside]
        labels[outside] = lab_x[outside]
        fat_fraction = np.where(outside, fat_x, np.float32(0.0)).astype(np.float32)
        head_mask = brain_mask | (maps[1] > 0)
    else:
        _simple_extracranial(grid, brain_mask, maps, labels, props, vs)
        fat_fraction = None
        head_mask = (labels != 0) & (labels != 22)

    present = sorted(int(v) for v in np.unique(labels))
    return HeadModel(
        chi=maps[0], labels=labels, names={i: LABEL_NAMES[i] for i in present},
        m0=maps[1], r1=maps[2], r2star=maps[3], brain_mask=brain_mask,
        head_mask=head_mask, affine=grid.affine.copy(), voxel_size=(vs, vs, vs),
        field_strength=b0, rotation_deg=rot_deg, translation_mm=trans, fat_fraction=fat_fraction, anatomy=anatomy,
    )


def _simple_extracranial(grid, brain_mask, maps, labels, props, vs) -> None:
    """The simple head: 2 mm CSF, 6 mm skull, 5 mm scalp shells, ellipsoid face/neck and air pockets (in place)."""
    # Extracranial layers from the distance (mm) to the intracranial space.
    dist = ndimage.distance_transform_edt(~brain_mask, sampling=(vs, vs, vs))
    outside = ~brain_mask
    layers = np.zeros(brain_mask.shape, np.int16)
    layers[outside & (dist <= _CSF_SHELL)] = 1
    layers[outside & (dist > _CSF_SHELL) & (dist <= _CSF_SHELL + _SKULL)] = 20
    layers[outside & (dist > _CSF_SHELL + _SKULL) & (dist <= _CSF_SHELL + _SKULL + _SCALP)] = 21
    for c, r in _SOFT:
        sl, mni = grid.block(np.subtract(c, r), np.add(c, r))
        if mni is not None:
            blk = layers[sl]
            blk[(_ellipsoid_depth(mni, c, r) >= 0) & (blk == 0)] = 21
    for c, r in _AIR:
        sl, mni = grid.block(np.subtract(c, r), np.add(c, r))
        if mni is not None:
            blk = layers[sl]
            blk[(_ellipsoid_depth(mni, c, r) >= 0) & (dist[sl] > _CSF_SHELL)] = 22
    for lab in (0, 1, 20, 21, 22):
        sel = outside & (layers == lab)
        for i in range(4):
            maps[i][sel] = props[lab][i]
        labels[sel] = lab

