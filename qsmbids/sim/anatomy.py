"""Extracranial anatomy that looks like a real head in gradient-echo (GRE) magnitude at short echo times.

Used by :func:`qsmbids.sim.phantom.make_head` (``anatomy="realistic"``, the default) for every voxel outside the
intracranial space. What a real 3 T GRE shows, and what an intensity (Otsu) or phase-quality mask therefore meets:

* **Scalp fat is the brightest tissue** at short TE (short T1, high proton density), and the skull is not one
  uniform dark shell: two thin dark tables of cortical bone hold a **bright fatty marrow layer (diploë)**; the skull
  is thick frontally and occipitally (6–9 mm) and thin over the temporal lobes (≈ 2 mm, the squama), where brain,
  CSF, dura, bone, temporalis muscle and fat share voxels (Lynnerup et al., Forensic Sci Int 2005, "Cranial
  thickness in relation to age, sex and general body build": 5–7 mm vault, thinnest temporal).
* **Eyes** (vitreous: long T1, water-like), **orbital fat** and **optic nerves** below a thin orbital roof, the
  **nasal cavity and sinuses** with their mucosa, the **face and neck** (muscle with a fat rim and skin), a
  **spinal cord** in its CSF-filled canal leaving the skull through the foramen magnum, and the vertebral marrow.

Geometry: layers are stacked by distance (mm) from the intracranial mask — CSF, dura, inner table, diploë, outer
table, temporalis muscle — and by distance from the outer head surface inwards — skin, subcutaneous fat, then
muscle. Thicknesses vary smoothly with the direction from the head centre (temporal thinning, occipital/frontal
thickening) plus a seeded smooth random term (a few low-frequency cosines of the direction). Each voxel gets the
**fractions** of the layers that overlap it (a voxel of size h at distance d covers [d − h/2, d + h/2]), so thin
layers show up through partial volume at any grid size, as on a scanner. Organs (eyes, orbits, nerves, sinuses,
cord, vertebrae) are painted on top with a one-voxel soft edge and never inside the intracranial mask.

Mixing a voxel: χ and M0 are fraction-weighted; R1, R2* and the fat signal fraction are M0-weighted, so that the
mixed voxel's signal has the right value and initial slope at short TE (the signal is Σ f·M0·e^{−R2*·TE}).

Tissue values at 3 T (χ in ppm vs water/CSF; M0 relative to CSF; R1, R2* in 1/s; fat = signal fraction of fat):

========================  =====  ====  =====  =====  ====  ==========================================================
tissue                    χ      M0    R1     R2*    fat   sources
========================  =====  ====  =====  =====  ====  ==========================================================
cortical bone (skull)     −2.0   0.05  3.0    500    0     Hopkins & Wehrli MRM 1997; Dimov et al. MRM 2018 (χ);
                                                           bone T2* < 1 ms (Du & Bydder, NMR Biomed 2013)
diploë (fatty marrow)     −0.03  0.80  2.7    120    0.8   75 % fat (+0.7) / 25 % trabecular bone (−2.2); marrow T1
                                                           ≈ 370 ms at 3 T (Gold et al., AJR 2004); R2* high from
                                                           the trabeculae (Wehrli et al., MRM 1998)
subcutaneous fat          +0.7   0.90  2.6    30     1.0   χ fat 0.6–0.8 ppm (Sharma et al., MRM 2015); T1 382 ms,
                                                           T2 68 ms (de Bazelaire et al., Radiology 2004)
skin                      0.0    0.70  1.0    60     0     short T2 dermis (collagen)
muscle                    0.0    0.75  0.71   30     0     T1 1412 ms, T2 50 ms (Stanisz et al., MRM 2005); χ small
                                                           and anisotropic, ignored
dura / meninges           0.0    0.60  1.0    50     0     collagenous, short T2
vitreous (eye)            0.0    1.00  0.28   3      0     CSF-like (T1 ≈ 3.6 s, long T2)
optic nerve, spinal cord  −0.03  0.69  1.2    25     0     white-matter-like (Stanisz 2005)
mucosa                    0.0    0.85  0.8    40     0     water-rich, long T2
air                       +9.4   0     0      0      0     Schenck, Med Phys 1996
========================  =====  ====  =====  =====  ====  ==========================================================

R2* is given at 3 T and scaled linearly with B0 by the caller, as for the brain.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["EXTRA_TISSUE", "extracranial"]

#: label -> (name, χ ppm, M0, R1 1/s, R2* 1/s at 3 T, fat signal fraction); labels 1, 20, 22 are shared with
#: the simple head (CSF, cortical bone, sinus air).
EXTRA_TISSUE: dict[int, tuple[str, float, float, float, float, float]] = {
    0: ("air", 9.4, 0.0, 0.0, 0.0, 0.0),
    1: ("csf", 0.0, 1.0, 0.25, 2.0, 0.0),
    20: ("skull", -2.0, 0.05, 3.0, 500.0, 0.0),
    22: ("sinus_air", 9.4, 0.0, 0.0, 0.0, 0.0),
    26: ("dura", 0.0, 0.60, 1.0, 50.0, 0.0),
    27: ("diploe", -0.03, 0.80, 2.7, 120.0, 0.8),
    28: ("fat", 0.7, 0.90, 2.6, 30.0, 1.0),
    29: ("skin", 0.0, 0.70, 1.0, 60.0, 0.0),
    30: ("muscle", 0.0, 0.75, 0.71, 30.0, 0.0),
    31: ("vitreous", 0.0, 1.00, 0.28, 3.0, 0.0),
    32: ("optic_nerve", -0.03, 0.69, 1.2, 25.0, 0.0),
    33: ("mucosa", 0.0, 0.85, 0.8, 40.0, 0.0),
    34: ("spinal_cord", -0.03, 0.69, 1.2, 25.0, 0.0),
}

_CENTRE = np.array([0.0, -18.0, 5.0])  # MNI mm, roughly the centre of the cranial vault
_SKIN = 1.5  # mm
_DURA = 0.7  # mm
_SHELL_MM = 34.0  # no cranial layer or vault soft tissue lies farther from the intracranial surface
_CORE_FAT = 0.4  # mean fat fraction between the muscles of the face and neck
# Face and neck (MNI centre, radii), filled with muscle under a fat rim and skin.
_BODY = [((0.0, 45.0, -50.0), (60.0, 42.0, 42.0)), ((0.0, -25.0, -115.0), (55.0, 58.0, 62.0))]
# Organs painted in this order: (label, kind, geometry, grow mm). kind "ell": centre, radii; "tube": radius, points.
_ORGANS: list[tuple[int, str, tuple, float]] = [
    # vertebral column: marrow with a cortical shell, then the canal (CSF) and the cord
    (20, "tube", (10.0, [(0, -22, -78), (0, -26, -160)]), 0.0),
    (27, "tube", (8.5, [(0, -22, -78), (0, -26, -160)]), 0.0),
    (1, "tube", (7.0, [(0, -40, -58), (0, -44, -90), (0, -46, -160)]), 0.0),
    (34, "tube", (4.5, [(0, -38, -62), (0, -44, -90), (0, -46, -160)]), 0.0),
    # orbits: fat cone, eyes, optic nerves (through the optic canal towards the chiasm)
    (28, "ell", ((-29, 44, -34), (15, 22, 13)), 0.0),
    (28, "ell", ((29, 44, -34), (15, 22, 13)), 0.0),
    (31, "ell", ((-32, 58, -34), (12, 12, 12)), 0.0),
    (31, "ell", ((32, 58, -34), (12, 12, 12)), 0.0),
    (32, "tube", (2.5, [(-31, 47, -34), (-22, 30, -30), (-10, 12, -22), (0, 6, -16)]), 0.0),
    (32, "tube", (2.5, [(31, 47, -34), (22, 30, -30), (10, 12, -22), (0, 6, -16)]), 0.0),
]
# Air spaces (MNI centre, radii), each lined by 2 mm of mucosa: sinuses, nasal cavity, pharynx, ear canals.
_AIRWAYS = [
    ((0, 64, 10), (13, 5, 9)),            # frontal sinus
    ((0, 42, -22), (9, 12, 9)),           # ethmoid
    ((0, 14, -32), (11, 9, 8)),           # sphenoid
    ((-30, 44, -56), (11, 14, 13)),       # maxillary L
    ((30, 44, -56), (11, 14, 13)),        # maxillary R
    ((0, 50, -52), (7, 26, 16)),          # nasal cavity
    ((0, 5, -95), (10, 9, 40)),           # pharynx / airway
    ((-70, -22, -38), (14, 4, 4)),        # ear canal L
    ((70, -22, -38), (14, 4, 4)),         # ear canal R
]


def _overlap(d: np.ndarray, a, b, h: float) -> np.ndarray:
    """Fraction of the interval [d − h/2, d + h/2] inside [a, b] (a, b scalars or arrays)."""
    lo = np.maximum(d - h / 2, a)
    hi = np.minimum(d + h / 2, b)
    return np.clip((hi - lo) / h, 0.0, 1.0).astype(np.float32)


def _mni_at(grid, ii) -> list[np.ndarray]:
    """MNI coordinates (float32, mm) of the voxels with indices ``ii`` (a tuple from np.nonzero) of the moved grid."""
    M = grid.vox2mni.astype(np.float32)
    v = [a.astype(np.float32) for a in ii]
    return [M[r, 0] * v[0] + M[r, 1] * v[1] + M[r, 2] * v[2] + M[r, 3] for r in range(3)]


def _random_surface(u: list[np.ndarray], rng: np.random.Generator, n: int = 6, freq: float = 2.5) -> np.ndarray:
    """Smooth random function of the unit direction u (unit std): Σ cos(k·u + φ) with random k, |k| ≈ freq."""
    out = np.zeros(u[0].shape, np.float32)
    for _ in range(n):
        k = rng.standard_normal(3)
        k = [float(v) for v in k * (freq * rng.uniform(0.6, 1.4) / max(np.linalg.norm(k), 1e-9))]
        ph = np.float32(rng.uniform(0, 2 * math.pi))
        out += np.cos(k[0] * u[0] + k[1] * u[1] + k[2] * u[2] + ph)
    return out * np.float32(math.sqrt(2.0 / n))


class _Mixer:
    """Accumulates fraction-weighted χ, M0 and M0-weighted R1, R2* and fat per voxel, and the dominant label."""

    def __init__(self, shape):
        self.acc = {k: np.zeros(shape, np.float32) for k in ("chi", "m0", "m0r1", "m0r2", "m0fat")}
        self.best = np.zeros(shape, np.float32)
        self.labels = np.zeros(shape, np.int16)

    def add(self, label: int, frac: np.ndarray, sl=(), sel: np.ndarray | None = None) -> None:
        """Add ``frac`` of tissue ``label`` in the block ``sl`` (fractions of layers that tile a voxel)."""
        _, chi, m0, r1, r2, fat = EXTRA_TISSUE[label]
        vals = {"chi": chi, "m0": m0, "m0r1": m0 * r1, "m0r2": m0 * r2, "m0fat": m0 * fat}
        if sel is None:
            sel = frac > 0
        f = frac[sel]
        for k, v in vals.items():
            self.acc[k][sl][sel] += f * np.float32(v)
        best, lab = self.best[sl], self.labels[sl]
        win = f > best[sel]
        idx = tuple(a[win] for a in np.nonzero(sel))
        best[idx] = f[win]
        lab[idx] = label

    def paint(self, label: int, w: np.ndarray, sl) -> None:
        """Replace the fraction ``w`` of each voxel of block ``sl`` by tissue ``label``."""
        sel = w > 0
        if not sel.any():
            return
        keep = 1.0 - w[sel]
        for arr in (*self.acc.values(), self.best):
            blk = arr[sl]
            blk[sel] *= keep
        self.add(label, w, sl, sel)

    def maps(self):
        a = self.acc
        m0 = a["m0"]
        safe = np.where(m0 > 0, m0, np.float32(1.0))
        r1 = np.where(m0 > 0, a["m0r1"] / safe, 0.0).astype(np.float32)
        r2 = np.where(m0 > 0, a["m0r2"] / safe, 0.0).astype(np.float32)
        fat = np.where(m0 > 0, a["m0fat"] / safe, 0.0).astype(np.float32)
        return a["chi"], m0, r1, r2, fat


def _ellipsoid_depth(mni, center, radii):
    rho = np.sqrt(sum(((m - c) / r) ** 2 for m, c, r in zip(mni, center, radii)))
    return (1.0 - rho) * min(radii)


def _tube_depth(mni, points, radius):
    P = np.asarray(points, dtype=np.float64)
    d2 = None
    for a, b in zip(P[:-1], P[1:]):
        ab = b - a
        t = np.clip(sum((m - a[i]) * ab[i] for i, m in enumerate(mni)) / float(ab @ ab), 0.0, 1.0)
        dd = sum((m - (a[i] + t * ab[i])) ** 2 for i, m in enumerate(mni))
        d2 = dd if d2 is None else np.minimum(d2, dd)
    return radius - np.sqrt(d2)


def _shape_block(grid, kind: str, geom, grow: float):
    """(slices, signed depth in mm) of an ellipsoid or tube on the moved grid, or (None, None) when outside."""
    if kind == "ell":
        c, r = np.asarray(geom[0], float), np.asarray(geom[1], float) + grow
        sl, mni = grid.block(c - r - 2, c + r + 2)
        return (sl, None) if mni is None else (sl, _ellipsoid_depth(mni, c, r))
    rad, pts = geom[0] + grow, np.asarray(geom[1], float)
    sl, mni = grid.block(pts.min(0) - rad - 2, pts.max(0) + rad + 2)
    return (sl, None) if mni is None else (sl, _tube_depth(mni, pts, rad))


def extracranial(grid, brain: np.ndarray, rng: np.random.Generator):
    """Maps of everything outside the intracranial mask ``brain`` on the (moved) grid ``grid``.

    Returns (χ ppm, M0, R1 1/s, R2* 1/s at 3 T, fat signal fraction, labels int16, thickness summary dict); values
    inside ``brain`` are zero/meaningless and are to be replaced by the caller's brain maps.
    """
    h = float(grid.vs)
    shape = brain.shape
    out = ~brain
    # intermuscular fat planes of the face and neck: a smooth random field of ≈ 25 mm wavelength (drawn first)
    waves = []
    for _ in range(8):
        k = rng.standard_normal(3)
        k *= (2 * math.pi / 25.0) / max(np.linalg.norm(k), 1e-9)
        waves.append((*map(float, k), float(rng.uniform(0, 2 * math.pi))))
    # distance (mm) of each outside voxel from the intracranial surface (half a voxel outside the last inside centre)
    d_b = ndimage.distance_transform_edt(out, sampling=(h, h, h)).astype(np.float32) - np.float32(h / 2)
    d_b[brain] = -1.0
    # thickness fields, evaluated only in the shell where cranial layers and the vault's soft tissue can lie
    ii = np.nonzero(out & (d_b < _SHELL_MM))
    rel = [m - np.float32(c) for m, c in zip(_mni_at(grid, ii), _CENTRE)]
    norm = np.sqrt(rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2) + np.float32(1e-6)
    u = [r / norm for r in rel]
    del rel, norm
    ux, uy, uz = u
    temporal = np.abs(ux) ** 3 * np.exp(-(((uz + 0.15) / 0.45) ** 2)) * (uy > -0.75)  # squama: thin
    temporalis = np.abs(ux) ** 2 * np.exp(-(((uz - 0.05) / 0.35) ** 2)) * np.exp(-(((uy - 0.1) / 0.6) ** 2))
    n1, n2, n3 = (_random_surface(u, rng) for _ in range(3))
    skull = (6.0 + 2.0 * np.maximum(-uy, 0) ** 2 + 1.0 * np.maximum(uy, 0) ** 2 - 4.8 * temporal + 0.8 * n1)
    skull = np.clip(skull, 1.2, 10.0).astype(np.float32)
    csf = np.clip(1.6 + 0.6 * n2 - 0.9 * temporal, 0.4, 3.0).astype(np.float32)
    fat_shell = np.clip(4.5 + 1.2 * n3, 2.0, 7.0).astype(np.float32)
    muscle = (9.0 * temporalis).astype(np.float32)
    table = np.clip(0.3 * skull, 0.6, 2.0).astype(np.float32)
    del u, ux, uy, uz, n1, n2, n3, temporal, temporalis
    b1 = csf
    b2 = b1 + np.float32(_DURA)
    b3 = b2 + table
    b4 = b2 + skull - table
    b5 = b2 + skull
    b6 = b5 + muscle
    db = d_b[ii]
    vault = np.zeros(shape, bool)  # the head's vault including its soft covering
    vault[ii] = db < b6 + fat_shell + np.float32(_SKIN)
    fat = np.full(shape, 4.5, np.float32)
    fat[ii] = fat_shell
    body = vault.copy()
    for c, r in _BODY:
        sl, dep = _shape_block(grid, "ell", (c, r), 0.0)
        if dep is not None:
            body[sl] |= dep >= 0
    body |= brain
    d_s = ndimage.distance_transform_edt(body, sampling=(h, h, h)).astype(np.float32) - np.float32(h / 2)
    jj = np.nonzero(body & ~vault & out)
    mj = _mni_at(grid, jj)
    marbling = sum(np.cos(a * mj[0] + b * mj[1] + c * mj[2] + np.float32(p)) for a, b, c, p in waves)
    fat_core = np.zeros(shape, np.float32)
    fat_core[jj] = np.clip(_CORE_FAT + 0.5 * marbling * np.float32(math.sqrt(2.0 / 8)), 0.0, 1.0)
    del mj, marbling

    mix = _Mixer(shape)
    layers = [(1, 0.0, b1), (26, b1, b2), (20, b2, b3), (27, b3, b4), (20, b4, b5)]
    cranial = np.zeros(shape, np.float32)
    for lab, a, b in layers:
        f = np.zeros(shape, np.float32)
        f[ii] = _overlap(db, a, b, h)
        cranial += f
        mix.add(lab, f)
    rest = np.clip(1.0 - cranial, 0.0, 1.0) * out
    del cranial
    # what remains of each voxel: skin, fat, then muscle, measured from the outer surface inwards; air outside
    f_skin = _overlap(d_s, 0.0, _SKIN, h)
    f_fat = _overlap(d_s, _SKIN, _SKIN + fat, h)
    f_core = np.clip(1.0 - f_skin - f_fat, 0.0, 1.0)
    f_core_fat = f_core * fat_core  # zero in the vault: temporalis is plain muscle
    for lab, f in ((29, f_skin), (28, f_fat + f_core_fat), (30, f_core - f_core_fat)):
        mix.add(lab, (rest * f * body).astype(np.float32))
    del f_skin, f_fat, f_core, f_core_fat, fat_core, d_s
    mix.add(0, (rest * ~body).astype(np.float32))
    del rest

    # organs and air spaces, never inside the intracranial mask nor in its innermost CSF millimetre
    allowed = (d_b > 1.0) & body
    for lab, kind, geom, grow in _ORGANS:
        sl, dep = _shape_block(grid, kind, geom, grow)
        if dep is not None:
            w = (np.clip(0.5 + dep / h, 0.0, 1.0) * allowed[sl]).astype(np.float32)
            mix.paint(lab, w, sl)
    for grow, lab in ((2.0, 33), (0.0, 22)):
        for c, r in _AIRWAYS:
            sl, dep = _shape_block(grid, "ell", (c, r), grow)
            if dep is not None:
                w = (np.clip(0.5 + dep / h, 0.0, 1.0) * allowed[sl]).astype(np.float32)
                mix.paint(lab, w, sl)
    chi, m0, r1, r2, fatf = mix.maps()
    labels = mix.labels
    labels[brain] = 0
    summary = {"skull_mm": (float(skull.min()), float(skull.max())), "fat_mm": (float(fat.min()), float(fat.max()))}
    return chi, m0, r1, r2, fatf, labels, summary
