"""Scanner nuisances for the GRE forward model: shim fields, structured receive phase, fat shift, intravoxel dephasing.

What real multi-echo GRE phase contains besides the tissue field, and what the pipeline must therefore cope with:

* **shim fields** — the scanner's own shim coils add fields that are spherical harmonics up to second order
  (Romeo & Hoult, Magn Reson Med 1984, "Magnet field profiling: analysis and correcting coil design"): harmonic
  inside the head (∇²B = 0), so background-field removal must remove them like any field of outside sources;
* **receive-phase offsets** φ0 — the phase of the combined coil sensitivities, TE-independent, smooth but with
  structure near the coils (Robinson et al., NMR Biomed 2017, "Combining phase images from array coils using a
  short echo time reference scan (COMPOSER)"; Eckstein et al., Magn Reson Med 2018, MCPC-3D-S);
* **fat chemical shift** — the main methylene peak of fat resonates −3.4 ppm from water (≈ −434 Hz at 3 T), a
  phase linear in TE in fat voxels that looks like a field and is not one (e.g. Hernando et al., Magn Reson Med
  2008); a single-peak fat model;
* **intravoxel dephasing** — a field gradient G across a voxel of size Δ multiplies the signal by
  sinc(γ̄·B0·G·Δ·TE) per axis (Fernández-Seara & Wehrli, Magn Reson Med 2000; Yablonskiy, Magn Reson Med 1998),
  the dominant R2* near air/tissue and bone interfaces that darkens the brain edge at the sinuses and skull base.

Units: fields in ppm, φ in rad, Hz only for the shim amplitude given by the user, mm for positions, s for TE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..qsm.phase import GAMMA_BAR

__all__ = ["FAT_SHIFT_PPM", "fat_phasor", "intravoxel_dephasing", "nuisances", "receive_phase_offset",
           "shim_field", "solid_harmonics"]

#: Chemical shift of the main (methylene) fat peak relative to water, ppm.
FAT_SHIFT_PPM: float = -3.4


def _coords(shape: Sequence[int], voxel_size: Sequence[float], centre_vox: Sequence[float] | None):
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape: expected 3 positive sizes, got {shape}")
    c = [(n - 1) / 2 for n in shape] if centre_vox is None else [float(v) for v in centre_vox]
    out = []
    for ax, (n, d, cc) in enumerate(zip(shape, voxel_size, c)):
        v = [1, 1, 1]
        v[ax] = n
        out.append(((np.arange(n, dtype=np.float64) - cc) * float(d)).reshape(v))
    return out


def solid_harmonics(x, y, z, order: int = 2) -> list[np.ndarray]:
    """Real regular solid harmonics r^l·Y_lm (unnormalised) for l = 0..order (≤ 2): 1, 3 and 5 terms.

    l = 0: 1; l = 1: x, y, z; l = 2: xy, yz, xz, x² − y², 2z² − x² − y² — each satisfies ∇²f = 0.
    """
    if order not in (0, 1, 2):
        raise ValueError(f"order: expected 0, 1 or 2, got {order!r}")
    terms = [np.ones_like(x * y * z)]
    if order >= 1:
        terms += [np.broadcast_to(t, terms[0].shape) for t in (x, y, z)]
    if order >= 2:
        terms += [x * y + 0 * z, y * z + 0 * x, x * z + 0 * y, x * x - y * y + 0 * z, 2 * z * z - x * x - y * y]
    return terms


def shim_field(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    *,
    amplitude_hz: float = 40.0,
    field_strength: float = 3.0,
    order: int = 2,
    mask: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """A random shim field (ppm): Σ c_lm·(r/R)^l·Y_lm up to ``order``, with peak |Δf| = ``amplitude_hz`` in ``mask``.

    Coordinates r are in mm from the centroid of ``mask`` (the FOV centre without one), R = 80 mm (a head
    radius), so every term is of order one over the head; the coefficients are standard normal from ``seed``
    and the sum is scaled so that its largest |value| inside ``mask`` (the whole FOV without one) is
    ``amplitude_hz`` Hz, i.e. amplitude_hz/(γ̄·B0) ppm (40 Hz ≈ 0.31 ppm at 3 T: the size of the second-order
    residuals a volume shim leaves over a head; Juchem & de Graaf, Anal Biochem 2017). Harmonic, so it is a
    background field: background removal has to remove it. Returns float32 of ``shape``.
    """
    if not (math.isfinite(amplitude_hz) and amplitude_hz >= 0):
        raise ValueError(f"amplitude_hz: expected a finite value >= 0, got {amplitude_hz!r}")
    if not (math.isfinite(field_strength) and field_strength > 0):
        raise ValueError(f"field_strength: expected a positive value in T, got {field_strength!r}")
    centre = None
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != tuple(shape) or not mask.any():
            raise ValueError(f"mask: expected a non-empty mask of shape {tuple(shape)}")
        centre = np.argwhere(mask).mean(0)
    x, y, z = (c / 80.0 for c in _coords(shape, voxel_size, centre))
    terms = solid_harmonics(x, y, z, order)
    coef = np.random.default_rng(seed).standard_normal(len(terms))
    f = sum(float(c) * t for c, t in zip(coef, terms))
    f = np.broadcast_to(f, tuple(shape)).astype(np.float64)
    peak = float(np.abs(f[mask] if mask is not None else f).max())
    ppm = amplitude_hz / (GAMMA_BAR * field_strength * 1e-6)
    return (f * (ppm / peak) if peak > 0 else f * 0).astype(np.float32)


def receive_phase_offset(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    *,
    amplitude: float = 2.0,
    n_coils: int = 8,
    coil_radius_mm: float = 130.0,
    seed: int = 0,
) -> np.ndarray:
    """A structured receive-phase offset φ0 (rad), TE-independent, peak |φ0| = ``amplitude``.

    φ0 = P(r) + Σ_j a_j·exp(−|r − p_j|²/(2·s_j²)): a random second-order polynomial P (the smooth part a coil
    combination leaves, cf. MCPC-3D-S) plus one bump per coil element, p_j on a cylinder of radius
    ``coil_radius_mm`` around the FOV's z axis (random angle and height), s_j 40–80 mm, a_j uniform in ±1 — the
    local structure near the elements that a plain polynomial misses. Smooth (no phase singularities, unlike an
    unaligned complex sum), not constant and not linear in position; scaled to max |φ0| = ``amplitude``.
    """
    if not (math.isfinite(amplitude) and amplitude >= 0):
        raise ValueError(f"amplitude: expected a finite value >= 0 (rad), got {amplitude!r}")
    if int(n_coils) < 0:
        raise ValueError(f"n_coils: expected a number >= 0, got {n_coils!r}")
    rng = np.random.default_rng(seed)
    x, y, z = _coords(shape, voxel_size, None)
    half = max(int(n) * float(d) for n, d in zip(shape, voxel_size)) / 2
    u, v, w = x / half, y / half, z / half
    poly = [np.ones((1, 1, 1)), u, v, w, u * u, v * v, w * w, u * v, u * w, v * w]
    phi = sum(float(c) * t for c, t in zip(rng.standard_normal(len(poly)), poly))
    for _ in range(int(n_coils)):
        ang = rng.uniform(0, 2 * math.pi)
        pz = rng.uniform(-0.5, 0.5) * half
        px, py = coil_radius_mm * math.cos(ang), coil_radius_mm * math.sin(ang)
        s = rng.uniform(40.0, 80.0)
        a = rng.uniform(-1.0, 1.0) * 2.0
        phi = phi + a * np.exp(-((x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2) / (2 * s * s))
    phi = np.broadcast_to(phi, tuple(int(n) for n in shape)).astype(np.float64)
    phi = phi - float(phi.mean())
    peak = float(np.abs(phi).max())
    return (phi * (amplitude / peak) if peak > 0 else phi * 0).astype(np.float32)


def fat_phasor(fat_fraction, echo_time: float, field_strength: float, shift_ppm: float = FAT_SHIFT_PPM):
    """Complex factor (1 − ff) + ff·exp(i·2π·γ̄·B0·shift·TE) of a water/fat voxel (single-peak fat, ff = signal
    fraction of fat); multiplies the voxel's signal. Works on NumPy arrays and torch tensors.
    """
    theta = 2 * math.pi * GAMMA_BAR * field_strength * shift_ppm * 1e-6 * echo_time  # GAMMA_BAR in Hz/T
    return (1 - fat_fraction) + fat_fraction * complex(math.cos(theta), math.sin(theta))


def intravoxel_dephasing(field_ppm, voxel_size: Sequence[float], echo_time, field_strength: float, support=None):
    """Real factor Π_axes sinc(γ̄·B0·∂_a δB·Δ_a·TE) of a voxel with a linear field across it (numpy sinc).

    ∂_a δB (ppm/mm) is the mean of the forward and backward differences towards neighbours inside ``support``
    (e.g. M0 > 0; all voxels when None): the field jumps across a tissue/air interface, and a difference that
    straddles it would dephase the tissue voxel by a gradient it does not contain. The factor is ≤ 1 in magnitude
    and can be negative (a π phase flip), as the integral of a linear phase over the voxel is. Torch in and out;
    ``echo_time`` a number (one factor) or a sequence (a list of factors, the gradients computed once).
    """
    import torch

    f = field_ppm
    s = torch.ones_like(f, dtype=torch.bool) if support is None else support.to(torch.bool)
    hz_per_ppm = GAMMA_BAR * field_strength * 1e-6  # Hz per ppm
    steps = []  # field change across the voxel (Hz) per axis
    for ax, d in enumerate(voxel_size):
        n = f.shape[ax]
        if n < 2:
            continue
        df = torch.diff(f, dim=ax)  # between i and i+1 (ppm)
        ok = torch.narrow(s, ax, 0, n - 1) & torch.narrow(s, ax, 1, n - 1)
        df = torch.where(ok, df, torch.zeros_like(df))
        okf = ok.to(f.dtype)
        zero = torch.zeros_like(torch.narrow(df, ax, 0, 1))
        # forward difference at i = df[i], backward difference at i = df[i − 1]; mean of those that exist
        summed = torch.cat([df, zero], dim=ax) + torch.cat([zero, df], dim=ax)
        count = torch.cat([okf, zero], dim=ax) + torch.cat([zero, okf], dim=ax)
        steps.append(summed / torch.clamp(count, min=1.0) * hz_per_ppm)
    single = not isinstance(echo_time, (list, tuple))
    out = []
    for te in ([echo_time] if single else echo_time):
        fac = torch.ones_like(f)
        for st in steps:
            fac = fac * torch.sinc(st * float(te))
        out.append(fac)
    return out[0] if single else out


def nuisances(head, *, seed: int, fat_shift: bool = False, shim_hz: float = 40.0, phase_amplitude: float = 2.0
              ) -> dict:
    """Keyword arguments for :func:`qsmbids.sim.forward.simulate_gre` that add a real scanner's nuisances to a
    :class:`qsmbids.sim.phantom.HeadModel`: structured φ0 (peak ``phase_amplitude`` rad), a second-order shim
    field (peak ``shim_hz`` Hz in the brain), intravoxel dephasing and, with ``fat_shift``, the fat chemical shift
    from the head's fat fraction. Seeded (φ0 with ``seed``, the shim with ``seed + 1``).
    """
    shape, vs = head.chi.shape, head.voxel_size
    fat = head.fat_fraction if fat_shift else None
    if fat_shift and fat is None:
        raise ValueError("fat_shift: the head has no fat fraction (simple anatomy)")
    return {
        "phase_offset": receive_phase_offset(shape, vs, amplitude=phase_amplitude, seed=seed),
        "shim_field": shim_field(shape, vs, amplitude_hz=shim_hz, field_strength=head.field_strength,
                                 mask=head.brain_mask, seed=seed + 1),
        "fat_fraction": fat,
        "intravoxel_dephasing": True,
    }
