"""Small analytic susceptibility phantoms with known geometry, for tests, docs and benchmarks.

These are not the realistic head of :mod:`qsmbids.sim`; they are quick, resolution-independent shapes:
a uniformly magnetised sphere and infinite cylinder (with closed-form fields) and a piecewise-smooth
"head" made of ellipsoids with literature-like χ values (ppm, relative to water) for deep grey nuclei,
a vein, a calcification and a haemorrhage on a slowly varying background.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ._utils import check_b0_dir, check_voxel_size

__all__ = [
    "coordinates",
    "sphere",
    "cylinder",
    "sphere_field",
    "cylinder_field",
    "HeadPhantom",
    "head_phantom",
]


def coordinates(shape: Sequence[int], voxel_size: Sequence[float], center: Sequence[float] | None = None):
    """Physical coordinates (mm) of voxel centres relative to ``center`` (default: the grid centre)."""
    vs = check_voxel_size(voxel_size)
    shape = tuple(int(s) for s in shape)
    if center is None:
        center = tuple((n - 1) / 2 * d for n, d in zip(shape, vs))
    axes = [np.arange(n) * d - c for n, d, c in zip(shape, vs, center)]
    return np.meshgrid(*axes, indexing="ij")


def _supersampled(fn, shape, voxel_size, n_sub: int) -> np.ndarray:
    """Partial-volume fraction of an indicator function by n_sub³ sub-voxel sampling."""
    vs = check_voxel_size(voxel_size)
    acc = np.zeros(tuple(shape), dtype=np.float64)
    offs = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    X, Y, Z = coordinates(shape, vs)
    for ox in offs:
        for oy in offs:
            for oz in offs:
                acc += fn(X + ox * vs[0], Y + oy * vs[1], Z + oz * vs[2])
    return (acc / n_sub**3).astype(np.float32)


def sphere(shape, voxel_size, radius: float, center=None, n_sub: int = 4) -> np.ndarray:
    """Partial-volume indicator (0..1) of a sphere of ``radius`` mm at ``center`` (mm offset from grid centre)."""
    c = np.zeros(3) if center is None else np.asarray(center, dtype=np.float64)
    return _supersampled(
        lambda x, y, z: ((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) <= radius**2,
        shape, voxel_size, n_sub,
    )


def cylinder(shape, voxel_size, radius: float, axis: Sequence[float], n_sub: int = 4) -> np.ndarray:
    """Partial-volume indicator of an infinite cylinder through the grid centre along unit vector ``axis``."""
    a = np.asarray(check_b0_dir(axis))

    def inside(x, y, z):
        along = x * a[0] + y * a[1] + z * a[2]
        r2 = x**2 + y**2 + z**2 - along**2
        return r2 <= radius**2

    return _supersampled(inside, shape, voxel_size, n_sub)


def sphere_field(shape, voxel_size, radius: float, chi: float, b0_dir=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Closed-form field (ppm) of a uniformly magnetised sphere with the Lorentz correction.

    Inside: 0. Outside: χ·(a/r)³·(3cos²θ − 1)/3, θ the angle between r and B0.
    """
    b = np.asarray(check_b0_dir(b0_dir))
    X, Y, Z = coordinates(shape, voxel_size)
    r2 = X**2 + Y**2 + Z**2
    r = np.sqrt(r2)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos2 = np.where(r > 0, (X * b[0] + Y * b[1] + Z * b[2]) ** 2 / np.where(r2 > 0, r2, 1), 0.0)
        out = chi * (radius / np.where(r > 0, r, 1)) ** 3 * (3 * cos2 - 1) / 3
    return np.where(r <= radius, 0.0, out).astype(np.float32)


def cylinder_field(shape, voxel_size, radius: float, chi: float, axis, b0_dir=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Closed-form field (ppm) of an infinite cylinder (axis unit vector ``axis``) with the Lorentz correction.

    With θ the angle between the cylinder axis and B0: inside χ·(3cos²θ − 1)/6; outside
    χ/2·sin²θ·(a/ρ)²·cos 2φ, where ρ is the distance to the axis and φ the azimuth of the point measured
    from the projection of B0 onto the plane perpendicular to the axis.
    """
    a = np.asarray(check_b0_dir(axis))
    b = np.asarray(check_b0_dir(b0_dir))
    cos_t = float(np.dot(a, b))
    sin2 = 1 - cos_t**2
    X, Y, Z = coordinates(shape, voxel_size)
    P = np.stack([X, Y, Z], axis=-1)
    along = P @ a
    perp = P - along[..., None] * a
    rho2 = np.sum(perp**2, axis=-1)
    inside = rho2 <= radius**2
    b_perp = b - cos_t * a
    nb = np.linalg.norm(b_perp)
    if nb < 1e-12:  # cylinder parallel to B0: no field outside
        outside = np.zeros_like(rho2)
    else:
        e1 = b_perp / nb
        x1 = perp @ e1
        with np.errstate(invalid="ignore", divide="ignore"):
            cos2phi = np.where(rho2 > 0, (2 * x1**2 - rho2) / np.where(rho2 > 0, rho2, 1), 0.0)
            outside = chi / 2 * sin2 * radius**2 / np.where(rho2 > 0, rho2, 1) * cos2phi
    inside_val = chi * (3 * cos_t**2 - 1) / 6
    return np.where(inside, inside_val, outside).astype(np.float32)


@dataclasses.dataclass
class HeadPhantom:
    """Piecewise-smooth head phantom: χ (ppm), brain mask, integer labels and their names, magnitude."""

    chi: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    names: dict[int, str]
    magnitude: np.ndarray
    voxel_size: tuple[float, float, float]


#: (name, centre as fraction of the half-axes, semi-axes as fraction, χ in ppm, magnitude)
_STRUCTURES: tuple[tuple[str, tuple[float, float, float], tuple[float, float, float], float, float], ...] = (
    ("ventricles", (0.0, 0.05, 0.15), (0.10, 0.28, 0.12), 0.0, 1.0),
    ("caudate_l", (-0.16, 0.22, 0.12), (0.06, 0.12, 0.08), 0.06, 0.85),
    ("caudate_r", (0.16, 0.22, 0.12), (0.06, 0.12, 0.08), 0.06, 0.85),
    ("putamen_l", (-0.34, 0.05, 0.0), (0.07, 0.18, 0.10), 0.05, 0.8),
    ("putamen_r", (0.34, 0.05, 0.0), (0.07, 0.18, 0.10), 0.05, 0.8),
    ("pallidus_l", (-0.24, 0.0, -0.02), (0.05, 0.09, 0.07), 0.12, 0.65),
    ("pallidus_r", (0.24, 0.0, -0.02), (0.05, 0.09, 0.07), 0.12, 0.65),
    ("thalamus_l", (-0.12, -0.18, 0.02), (0.08, 0.13, 0.09), 0.02, 0.85),
    ("thalamus_r", (0.12, -0.18, 0.02), (0.08, 0.13, 0.09), 0.02, 0.85),
    ("red_nucleus", (0.0, -0.25, -0.22), (0.1, 0.05, 0.05), 0.10, 0.7),
    ("vein", (0.0, -0.65, 0.3), (0.03, 0.25, 0.03), 0.35, 0.5),
    ("calcification", (0.45, -0.45, 0.35), (0.05, 0.05, 0.05), -0.25, 0.3),
    ("haemorrhage", (-0.5, -0.4, -0.3), (0.07, 0.07, 0.07), 0.45, 0.4),
)


def head_phantom(
    shape: Sequence[int] = (64, 64, 64),
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    seed: int = 0,
    texture: float = 0.005,
) -> HeadPhantom:
    """An ellipsoidal brain (GM rim χ 0.02, WM −0.02 ppm) with deep grey nuclei, a vein, a calcification and a haemorrhage.

    ``texture`` (ppm) adds smooth random variation (seeded). Sizes scale with the grid, so any shape works.
    Values are typical of 3 T in-vivo reports (e.g. Deistung et al. 2013; Lim et al. 2013).
    """
    vs = check_voxel_size(voxel_size)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape: expected 3 sizes >= 8, got {shape}")
    X, Y, Z = coordinates(shape, vs)
    half = [n * d / 2 for n, d in zip(shape, vs)]
    # brain ellipsoid filling ~80 % of the field of view
    ax = [0.78 * h for h in half]
    rb = (X / ax[0]) ** 2 + (Y / ax[1]) ** 2 + (Z / ax[2]) ** 2
    mask = rb <= 1.0
    labels = np.zeros(shape, dtype=np.int16)
    names = {0: "background", 1: "white_matter", 2: "grey_matter"}
    labels[mask] = 1
    labels[mask & (rb > 0.72)] = 2
    chi = np.where(labels == 1, -0.02, 0.0) + np.where(labels == 2, 0.02, 0.0)
    mag = np.where(labels == 1, 0.9, 0.0) + np.where(labels == 2, 0.75, 0.0)
    for i, (name, c, s, value, m) in enumerate(_STRUCTURES, start=3):
        r = sum(((P - ci * a) / (si * a)) ** 2 for P, ci, si, a in zip((X, Y, Z), c, s, ax))
        region = (r <= 1.0) & mask
        labels[region] = i
        names[i] = name
        chi = np.where(region, value, chi)
        mag = np.where(region, m, mag)
    rng = np.random.default_rng(seed)
    if texture > 0:
        from scipy.ndimage import gaussian_filter

        noise = gaussian_filter(rng.standard_normal(shape), sigma=3.0 / min(vs) * 1.0)
        noise /= noise.std() + 1e-12
        chi = chi + texture * noise * mask
    chi = (chi * mask).astype(np.float32)
    return HeadPhantom(
        chi=chi,
        mask=mask,
        labels=labels,
        names=names,
        magnitude=(mag * mask).astype(np.float32),
        voxel_size=vs,  # type: ignore[arg-type]
    )
