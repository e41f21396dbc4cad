"""Multi-echo spoiled gradient-echo (GRE) forward model: χ → field → complex multi-echo signal → target grid.

Chain (all on the fine input grid first, then reduced to the target voxel size by k-space cropping):

1. field: δB = D ∗ χ (ppm) with zero padding, any B0 direction (:func:`total_field`, Marques & Bowtell,
   Concepts Magn Reson B 2005); for an oblique B0 the field of a voxelised sharp edge aliases at native
   resolution, so compute it on a finer grid (the 1 mm head) or with ``oversample=2``;
2. phase: φ_e = φ0 + 2π·γ̄·B0·TE_e·δB·1e-6 (+ ±bipolar readout term), φ0 spatially smooth
   (:func:`smooth_phase_offset`);
3. magnitude: spoiled-GRE steady state with T2* decay (:func:`spgr_signal`);
4. the complex signal is brought to the target voxel size by cropping (or zero-filling) its k-space
   (:func:`resample_kspace`), as a scanner acquires only the centre of k-space; then complex Gaussian noise
   at the requested SNR is added; optional conversion of the phase to vendor integers (Siemens −4096..4095).

Units: χ and fields in ppm, times in s, rates in 1/s, voxel sizes in mm, phase in rad.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from qsmbids.qsm._utils import (
    as_complex,
    as_real,
    check_b0_dir,
    check_echo_times,
    check_positive,
    check_voxel_size,
    numpy_io,
    to_tensor,
)
from qsmbids.qsm.fourier import forward_field
from qsmbids.qsm.phase import GAMMA_BAR, wrap
from qsmbids.sim.scanner import fat_phasor
from qsmbids.sim.scanner import intravoxel_dephasing as _dephasing

__all__ = [
    "t1w_image",
    "OUT_VOXEL_RANGE",
    "PHASE_INT_SCALE",
    "GreData",
    "phase_to_integer",
    "resample_kspace",
    "simulate_gre",
    "smooth_phase_offset",
    "spgr_signal",
    "total_field",
]

#: Allowed target voxel sizes (mm): anything a clinical/research GRE protocol uses.
OUT_VOXEL_RANGE: tuple[float, float] = (0.3, 5.0)
#: Siemens-like integer phase: −π ↦ −4096, +π ↦ +4096 (stored values −4096..4095).
PHASE_INT_SCALE: int = 4096
#: Default bipolar readout phase gradient when ``bipolar=True`` (rad/mm along the readout axis 0).
BIPOLAR_DEFAULT_RAD_PER_MM: float = 0.01


@dataclasses.dataclass
class GreData:
    """Simulated multi-echo GRE acquisition at the target resolution (all NumPy).

    ``magnitude``/``phase`` are (E, X, Y, Z) float32; ``phase`` is rad in [−π, π) or, with
    ``phase_units == "arbitrary"``, int16 values −4096..4095 (= x·π/4096 rad). ``total_field_ppm`` is the
    field of all sources, ``local_field_ppm`` that of the sources inside the brain mask only (both
    without φ0), ``phase_offset`` is φ0 (rad), all at the target grid described by ``affine``.
    """

    magnitude: np.ndarray
    phase: np.ndarray
    echo_times: tuple[float, ...]
    field_strength: float
    b0_dir: tuple[float, float, float]
    voxel_size: tuple[float, float, float]
    affine: np.ndarray
    total_field_ppm: np.ndarray
    local_field_ppm: np.ndarray
    phase_offset: np.ndarray
    phase_units: str


def _check_volume(x: Tensor, name: str) -> Tensor:
    if x.dim() != 3:
        raise ValueError(f"{name}: expected a 3-D volume, got shape {tuple(x.shape)}")
    return x


def _check_oversample(oversample: int) -> int:
    if isinstance(oversample, bool) or not isinstance(oversample, (int, np.integer)) or oversample < 1:
        raise ValueError(f"oversample: expected an integer >= 1, got {oversample!r}")
    return int(oversample)


@numpy_io
def total_field(
    chi: Tensor,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    pad_factor: float = 1.5,
    oversample: int = 1,
) -> Tensor:
    """Relative field perturbation δB = D ∗ χ (ppm) of a susceptibility map χ (ppm), zero-padded.

    D(k) = 1/3 − (k·b̂)²/|k|² (Salomir et al., Concepts Magn Reson B 2003; Marques & Bowtell, Concepts
    Magn Reson B 2005), evaluated by :func:`qsmbids.qsm.fourier.forward_field` on a grid padded by
    ``pad_factor`` (default ×1.5, as in qsm.fourier). ``b0_dir`` is in voxel coordinates, any direction.

    ``oversample`` = o > 1 computes the field on an o× finer grid — χ upsampled by repeating each voxel o³
    times (nearest neighbour, preserves labels/partial volumes) — and block-averages it back to the input
    grid. This removes most of the aliasing of a voxelised sharp edge with an oblique B0 (measured on a
    sphere: 5.6 % → 0.3 % of the peak field two voxels outside the edge). Memory grows as o³.
    """
    chi = _check_volume(as_real(chi, "chi"), "chi")
    vs = check_voxel_size(voxel_size)
    check_b0_dir(b0_dir)
    o = _check_oversample(oversample)
    if not (pad_factor >= 1):
        raise ValueError(f"pad_factor: expected a padding factor >= 1, got {pad_factor}")
    if o == 1:
        return forward_field(chi, vs, b0_dir, pad_factor=pad_factor)
    fine = chi
    for d in (-3, -2, -1):
        fine = torch.repeat_interleave(fine, o, dim=d)
    f = forward_field(fine, tuple(v / o for v in vs), b0_dir, pad_factor=pad_factor)
    nx, ny, nz = chi.shape
    return f.reshape(nx, o, ny, o, nz, o).mean(dim=(1, 3, 5))


def _resample_axis(F: Tensor, dim: int, m: int, shift: float, length: float) -> Tensor:
    """Crop/zero-fill the spectrum ``F`` (FFT order along ``dim``) to ``m`` bins, shifted by ``shift`` mm.

    The Nyquist bin of an even grid is split/averaged symmetrically so that a real signal stays real.
    """
    n = F.shape[dim]
    dev = F.device
    f_out = torch.round(torch.fft.fftfreq(m, device=dev, dtype=torch.float64) * m).long()  # integer freqs
    phase = torch.exp(2j * math.pi * f_out.to(torch.float64) * shift / length).to(F.dtype)
    view = [1] * F.dim()
    view[dim] = m
    keep = (f_out > -(n / 2)) & (f_out < n / 2)  # frequencies present on both grids (strictly inside Nyquist)
    idx = torch.remainder(f_out, n)
    out = torch.index_select(F, dim, idx) * keep.reshape(view).to(F.dtype)
    h_in, h_out = n // 2, m // 2
    if m > n and n % 2 == 0:
        # input Nyquist split half to +n/2 and half to −n/2 (the shift phases are applied below)
        a = 0.5 * torch.index_select(F, dim, torch.tensor([h_in], device=dev))
        out = out.index_copy(dim, torch.tensor([h_in], device=dev), a)  # +n/2
        out = out.index_copy(dim, torch.tensor([m - h_in], device=dev), a)  # −n/2
    out = out * phase.reshape(view)
    if m < n and m % 2 == 0:
        # output Nyquist (index m/2, frequency −m/2): average of the ±m/2 input bins, each with its shift phase
        a = torch.index_select(F, dim, torch.tensor([(-h_out) % n], device=dev))
        b = torch.index_select(F, dim, torch.tensor([h_out], device=dev))
        ph = 2 * math.pi * h_out * shift / length
        nyq = 0.5 * (a * complex(math.cos(ph), -math.sin(ph)) + b * complex(math.cos(ph), math.sin(ph)))
        out = out.index_copy(dim, torch.tensor([h_out], device=dev), nyq)
    return out * (m / n)


@numpy_io
def resample_kspace(
    x: Tensor,
    in_voxel_size: Sequence[float],
    out_voxel_size: Sequence[float] | float,
) -> tuple[Tensor, tuple[float, float, float]]:
    """Resample the last three dims to ``out_voxel_size`` by cropping / zero-filling k-space (same FOV).

    Band-limited (sinc) interpolation: x_out(p) = (1/N) Σ_k X(k) e^{2πi k·p/L} over the frequencies both
    grids hold; the field of view L = N·Δ_in is kept, so the output size is round(L/Δ_out) per axis and the
    returned voxel size is L/N_out (can differ slightly from the request). Voxel *edges* of the FOV are
    kept aligned (the FOV centre does not move): output voxel j is centred at (j + ½)Δ_out from the FOV edge.
    The mean is preserved. Real input → real output, complex → complex. Leading (echo) dims are kept.
    """
    vin = check_voxel_size(in_voxel_size)
    vout = check_voxel_size(out_voxel_size)
    if x.dim() < 3:
        raise ValueError(f"x: expected at least 3 dims (volume last), got shape {tuple(x.shape)}")
    real = not x.is_complex()
    y = as_complex(x)
    actual = []
    for ax, (dv_in, dv_out) in enumerate(zip(vin, vout)):
        dim = x.dim() - 3 + ax
        n = x.shape[dim]
        length = n * dv_in
        m = max(1, round(length / dv_out))
        actual.append(length / m)
        if m == n:
            continue
        shift = 0.5 * (length / m - dv_in)  # centre of output voxel 0 relative to input voxel 0 (mm)
        F = torch.fft.fft(y, dim=dim)
        y = torch.fft.ifft(_resample_axis(F, dim, m, shift, length), dim=dim)
    return (y.real if real else y), tuple(actual)  # type: ignore[return-value]


def smooth_phase_offset(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    *,
    amplitude: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """A smooth receive-phase offset φ0 (rad): a random 2nd-order polynomial in position, max |φ0| = amplitude.

    φ0(r) = Σ c_{ijk} uⁱvʲwᵏ over i+j+k ≤ 2, with u, v, w the physical coordinates (mm) from the FOV centre
    divided by the largest half-extent (so φ0 is smooth in mm for any voxel size), coefficients standard
    normal from ``seed``. Real coil phases are dominated by such low orders (cf. the φ0 estimation in
    MCPC-3D-S, Eckstein et al., Magn Reson Med 2018). ``amplitude = 0`` gives zeros.
    """
    vs = check_voxel_size(voxel_size)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape: expected 3 positive sizes, got {shape}")
    if not (math.isfinite(amplitude) and amplitude >= 0):
        raise ValueError(f"amplitude: expected a finite value >= 0 (rad), got {amplitude}")
    half = max(n * d for n, d in zip(shape, vs)) / 2
    axes = []
    for ax, (n, d) in enumerate(zip(shape, vs)):
        c = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * d / half
        view = [1, 1, 1]
        view[ax] = n
        axes.append(c.reshape(view))
    u, v, w = axes
    terms = [torch.ones(1, 1, 1, dtype=torch.float64), u, v, w, u * u, v * v, w * w, u * v, u * w, v * w]
    coef = np.random.default_rng(seed).standard_normal(len(terms))
    phi = sum(float(c) * t for c, t in zip(coef, terms))
    phi = torch.broadcast_to(phi, shape).clone()
    peak = float(phi.abs().max())
    phi = phi * (amplitude / peak) if peak > 0 else phi * 0
    return phi.to(torch.float32).numpy()


@numpy_io
def spgr_signal(
    m0: Tensor,
    r1: Tensor,
    r2star: Tensor,
    *,
    tr: float,
    flip_angle_deg: float,
    echo_times: Sequence[float],
) -> Tensor:
    """Spoiled-GRE steady-state magnitude per echo, shape (E, ...).

    S(TE) = M0·sin α·(1 − E1)/(1 − cos α·E1)·exp(−R2*·TE), E1 = exp(−TR·R1) (Ernst & Anderson, Rev Sci
    Instrum 1966; e.g. Bernstein, King & Zhou, Handbook of MRI Pulse Sequences 2004, ch. 14). R1, R2* in 1/s,
    TR and TE in s, α in degrees.
    """
    m0 = as_real(m0, "m0")
    r1 = as_real(r1, "r1")
    r2star = as_real(r2star, "r2star")
    if r1.shape != m0.shape:
        raise ValueError(f"r1: expected the same shape as m0 {tuple(m0.shape)}, got {tuple(r1.shape)}")
    if r2star.shape != m0.shape:
        raise ValueError(f"r2star: expected the same shape as m0 {tuple(m0.shape)}, got {tuple(r2star.shape)}")
    te = check_echo_times(echo_times)
    tr = check_positive(tr, "tr")
    if not (0 < flip_angle_deg <= 180):
        raise ValueError(f"flip_angle_deg: expected a flip angle in (0, 180] degrees, got {flip_angle_deg}")
    a = math.radians(flip_angle_deg)
    e1 = torch.exp(-tr * r1)
    s0 = m0 * math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1)
    tes = torch.tensor(te, dtype=m0.dtype, device=m0.device).reshape((-1,) + (1,) * m0.dim())
    return s0.unsqueeze(0) * torch.exp(-tes * r2star.unsqueeze(0))


def t1w_image(
    m0: np.ndarray,
    r1: np.ndarray,
    *,
    inversion_time: float = 0.9,
    repetition_time: float = 2.3,
    snr: float | None = 50.0,
    seed: int = 0,
) -> np.ndarray:
    """T1-weighted (MPRAGE-like) magnitude: |M0·(1 − 2·e^{−TI·R1} + e^{−TR·R1})| with Rician-like noise.

    The ideal inversion-recovery magnitude (Bloch; see e.g. Deichmann et al., NeuroImage 2000 for MPRAGE
    contrast) with TI = 0.9 s and TR = 2.3 s (typical 3 T MPRAGE) gives WM brighter than GM brighter than CSF.
    ``snr``: mean signal in tissue (M0 > 0) over the noise σ per channel; None for no noise. Seeded.
    """
    m0 = np.asarray(m0, dtype=np.float64)
    r1 = np.asarray(r1, dtype=np.float64)
    if m0.shape != r1.shape:
        raise ValueError(f"r1: expected the shape of m0 {m0.shape}, got {r1.shape}")
    if not (inversion_time > 0 and repetition_time > inversion_time):
        raise ValueError("inversion_time: expected 0 < inversion_time < repetition_time")
    s = m0 * (1.0 - 2.0 * np.exp(-inversion_time * r1) + np.exp(-repetition_time * r1))
    s = np.abs(s)
    if snr is not None:
        if not (snr > 0):
            raise ValueError(f"snr: expected a positive value or None, got {snr}")
        tissue = m0 > 0
        sigma = float(s[tissue].mean()) / snr if tissue.any() else 0.0
        rng = np.random.default_rng(seed)
        s = np.abs(s + sigma * (rng.standard_normal(s.shape) + 1j * rng.standard_normal(s.shape)))
    return s.astype(np.float32)


def phase_to_integer(phase: np.ndarray) -> np.ndarray:
    """Phase (rad, [−π, π)) → Siemens-like int16 −4096..4095: round(φ·4096/π), +π wraps to −4096.

    Undo with ``qsmbids.qsm.phase.scale_phase(x, "arbitrary")`` (→ x·π/4096); quantisation error ≤ π/8192 rad.
    """
    q = np.round(np.asarray(phase, dtype=np.float64) * (PHASE_INT_SCALE / math.pi))
    q = np.where(q >= PHASE_INT_SCALE, q - 2 * PHASE_INT_SCALE, q)
    return np.clip(q, -PHASE_INT_SCALE, PHASE_INT_SCALE - 1).astype(np.int16)


def _resampled_affine(affine: np.ndarray, shape_in, vin, shape_out, vout) -> np.ndarray:
    """Affine of the resampled grid: same orientation, same FOV centre, new voxel size."""
    a = np.asarray(affine, dtype=np.float64)
    scale = np.asarray(vout) / np.asarray(vin)
    out = a.copy()
    out[:3, :3] = a[:3, :3] * scale[None, :]
    centre = a[:3, :3] @ ((np.asarray(shape_in) - 1) / 2) + a[:3, 3]
    out[:3, 3] = centre - out[:3, :3] @ ((np.asarray(shape_out) - 1) / 2)
    return out


def simulate_gre(
    chi,
    m0,
    r1,
    r2star,
    brain_mask,
    affine,
    voxel_size,
    *,
    echo_times: Sequence[float],
    field_strength: float = 3.0,
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    out_voxel_size: Sequence[float] | float | None = None,
    snr: float | None = 100.0,
    tr: float = 0.03,
    flip_angle_deg: float = 15.0,
    phase_offset: bool | float | np.ndarray = True,
    bipolar: bool | float = False,
    phase_units: str = "rad",
    seed: int = 0,
    oversample: int = 1,
    shim_field=None,
    fat_fraction=None,
    fat_shift_ppm: float = -3.4,
    intravoxel_dephasing: bool = False,
) -> GreData:
    """Simulate a multi-echo 3-D spoiled GRE acquisition of a susceptibility/relaxation model.

    Signal at echo e (s = 1, 2, …), on the input grid:
        S_e = M_spgr(TE_e)·exp(i·[φ0 + (−1)^{e+1}·g·x + 2π·γ̄·B0·TE_e·δB·1e-6])
    with δB = D ∗ χ (ppm, :func:`total_field`), γ̄ = 42.577 MHz/T, M_spgr from :func:`spgr_signal` and x the
    readout (axis 0) coordinate in mm from the FOV centre. S_e is then resampled to ``out_voxel_size`` by
    k-space cropping (:func:`resample_kspace`) and complex Gaussian noise is added.

    Parameters
    ----------
    chi, m0, r1, r2star, brain_mask
        3-D arrays on the fine input grid: χ (ppm), proton density (a.u.), R1 and R2* (1/s), brain mask.
    affine, voxel_size
        4×4 voxel→world affine of the input grid and its voxel size (mm).
    echo_times
        Strictly increasing TEs (s). ``field_strength``: B0 in T (1.5, 3, 7 or any positive value).
    b0_dir
        B0 direction in voxel coordinates (any, oblique allowed).
    out_voxel_size
        Target voxel size (mm, each in 0.3–5); ``None`` keeps the input grid. The FOV is kept, so the actual
        voxel size is FOV/round(FOV/requested) (returned in ``GreData.voxel_size``); the affine keeps the FOV
        centre.
    snr
        Mean first-echo magnitude inside the brain (target grid, before noise) divided by the noise standard
        deviation σ of *each* of the real and imaginary channels. ``None`` (or ``inf``) = no noise.
    tr, flip_angle_deg
        Repetition time (s) and flip angle (°); defaults 30 ms / 15° (typical 3 T QSM protocols, QSM
        consensus, Magn Reson Med 2024).
    phase_offset
        φ0: ``True`` → :func:`smooth_phase_offset` with amplitude 1 rad, a float → that amplitude (rad),
        ``False``/0 → none, an array → used as φ0 (rad, input grid).
    bipolar
        Bipolar (alternating-polarity) readout: a gradient-delay phase ramp ±g·x along the readout axis 0,
        + on odd echoes (1st, 3rd, …), − on even ones (Lu et al., Magn Reson Med 2008, bipolar multi-echo).
        ``True`` → g = 0.01 rad/mm; a float → g in rad/mm.
    phase_units
        ``"rad"`` (float32 in [−π, π)) or ``"arbitrary"`` (int16 −4096..4095 = φ·4096/π, Siemens-like,
        the BIDS ``Units: arbitrary`` case).
    seed
        Seeds φ0 and the noise: the same seed gives identical arrays.
    oversample
        Passed to :func:`total_field` (use 2 when the target grid equals the input grid and B0 is oblique).
    shim_field
        A field (ppm, input grid) added to δB, e.g. :func:`qsmbids.sim.scanner.shim_field`; it is part of the
        returned ``total_field_ppm`` (a background field) and not of ``local_field_ppm``. ``None``: none.
    fat_fraction, fat_shift_ppm
        Fat signal fraction ff (0–1, input grid): each voxel's signal is multiplied by
        (1 − ff) + ff·exp(i·2π·γ̄·B0·shift·TE) (single-peak fat at ``fat_shift_ppm``, default −3.4 ppm;
        :func:`qsmbids.sim.scanner.fat_phasor`). Not part of the returned fields. ``None``: no fat shift.
    intravoxel_dephasing
        Multiply each input voxel's signal by Π sinc(γ̄·B0·∂δB·Δ·TE) (its own field gradient,
        :func:`qsmbids.sim.scanner.intravoxel_dephasing`); the k-space resampling to a coarser target adds the
        dephasing between input voxels. Off by default.
    """
    chi = _check_volume(as_real(to_tensor(chi), "chi"), "chi")
    shape = tuple(chi.shape)
    dev = chi.device
    vols = {}
    for name, arr in (("m0", m0), ("r1", r1), ("r2star", r2star)):
        t = as_real(to_tensor(arr), name).to(dev)
        if tuple(t.shape) != shape:
            raise ValueError(f"{name}: expected the same shape as chi {shape}, got {tuple(t.shape)}")
        vols[name] = t
    mask = to_tensor(brain_mask).to(dev)
    if tuple(mask.shape) != shape:
        raise ValueError(f"brain_mask: expected the same shape as chi {shape}, got {tuple(mask.shape)}")
    mask = mask != 0
    if not bool(mask.any()):
        raise ValueError("brain_mask: mask is empty (no voxel set)")
    for name, t in (("chi", chi), *vols.items()):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: expected finite values, found NaN/Inf")
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise ValueError(f"affine: expected a finite 4x4 matrix, got shape {aff.shape}")
    vin = check_voxel_size(voxel_size)
    te = check_echo_times(echo_times)
    b0 = check_positive(field_strength, "field_strength")
    bdir = check_b0_dir(b0_dir)
    if snr is not None and not (isinstance(snr, (int, float)) and (snr > 0)):
        raise ValueError(f"snr: expected a positive number (or None for no noise), got {snr!r}")
    noisy = snr is not None and math.isfinite(snr)
    if phase_units not in ("rad", "arbitrary"):
        raise ValueError(f"phase_units: expected 'rad' or 'arbitrary', got {phase_units!r}")
    o = _check_oversample(oversample)
    if out_voxel_size is None:
        vreq = vin
    else:
        vreq = check_voxel_size(out_voxel_size)
        lo, hi = OUT_VOXEL_RANGE
        if not all(lo <= v <= hi for v in vreq):
            raise ValueError(f"out_voxel_size: expected values in {lo}–{hi} mm, got {vreq}")

    # φ0 and bipolar slope on the input grid
    if isinstance(phase_offset, (bool, np.bool_)):
        phi0 = to_tensor(smooth_phase_offset(shape, vin, amplitude=1.0 if phase_offset else 0.0, seed=seed))
    elif isinstance(phase_offset, (int, float)):
        phi0 = to_tensor(smooth_phase_offset(shape, vin, amplitude=float(phase_offset), seed=seed))
    else:
        phi0 = as_real(to_tensor(phase_offset), "phase_offset")
        if tuple(phi0.shape) != shape:
            raise ValueError(f"phase_offset: expected shape {shape}, got {tuple(phi0.shape)}")
    phi0 = phi0.to(dev)
    g = (BIPOLAR_DEFAULT_RAD_PER_MM if bipolar is True else float(bipolar or 0.0))
    if not math.isfinite(g):
        raise ValueError(f"bipolar: expected True/False or a finite slope in rad/mm, got {bipolar!r}")
    x_ro = ((torch.arange(shape[0], device=dev, dtype=torch.float32) - (shape[0] - 1) / 2) * vin[0]).reshape(-1, 1, 1)

    # fields (ppm) on the input grid, the model's signal, then the target grid
    extra = {}
    for name, arr in (("shim_field", shim_field), ("fat_fraction", fat_fraction)):
        if arr is not None:
            t = as_real(to_tensor(arr), name).to(dev)
            if tuple(t.shape) != shape or not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name}: expected finite values of shape {shape}, got {tuple(t.shape)}")
            extra[name] = t
    if "fat_fraction" in extra and not bool(((extra["fat_fraction"] >= 0) & (extra["fat_fraction"] <= 1)).all()):
        raise ValueError("fat_fraction: expected values within 0–1")
    field = total_field(chi, vin, bdir, oversample=o)
    if "shim_field" in extra:
        field = field + extra["shim_field"]
    local = total_field(chi * mask, vin, bdir, oversample=o)
    mag = spgr_signal(vols["m0"], vols["r1"], vols["r2star"], tr=tr, flip_angle_deg=flip_angle_deg, echo_times=te)
    w = 2 * math.pi * GAMMA_BAR * b0 * 1e-6  # rad/s per ppm
    phases = []
    for e, t in enumerate(te):
        sign = 1.0 if e % 2 == 0 else -1.0
        phases.append(phi0 + sign * g * x_ro + (w * t) * field)
    sig = torch.polar(mag, torch.stack(phases))
    dephase = _dephasing(field, vin, list(te), b0, support=vols["m0"] > 0) if intravoxel_dephasing else None
    for e, t in enumerate(te):
        if dephase is not None:
            sig[e] = sig[e] * dephase[e]
        if "fat_fraction" in extra:
            sig[e] = sig[e] * fat_phasor(extra["fat_fraction"], t, b0, float(fat_shift_ppm))
    if vreq != vin:
        sig, vout = resample_kspace(sig, vin, vreq)
        field, _ = resample_kspace(field, vin, vreq)
        local, _ = resample_kspace(local, vin, vreq)
        phi0_out, _ = resample_kspace(phi0, vin, vreq)
        mask_out = resample_kspace(mask.to(torch.float32), vin, vreq)[0] > 0.5
        if not bool(mask_out.any()):
            raise ValueError("out_voxel_size: the brain mask vanishes at this resolution")
    else:
        vout, phi0_out, mask_out = vin, phi0, mask
    shape_out = tuple(sig.shape[-3:])
    if noisy:
        sigma = float(sig[0].abs()[mask_out].mean()) / float(snr)
        gen = torch.Generator().manual_seed(int(seed) + 7919)
        nr = torch.randn(sig.shape, generator=gen, dtype=torch.float32)
        ni = torch.randn(sig.shape, generator=gen, dtype=torch.float32)
        sig = sig + sigma * torch.complex(nr, ni).to(dev)
    magnitude = sig.abs().to(torch.float32).cpu().numpy()
    phase = wrap(torch.angle(sig)).to(torch.float32).cpu().numpy()
    if phase_units == "arbitrary":
        phase = phase_to_integer(phase)
    return GreData(
        magnitude=magnitude,
        phase=phase,
        echo_times=te,
        field_strength=b0,
        b0_dir=bdir,
        voxel_size=tuple(float(v) for v in vout),  # type: ignore[arg-type]
        affine=_resampled_affine(aff, shape, vin, shape_out, vout),
        total_field_ppm=field.to(torch.float32).cpu().numpy(),
        local_field_ppm=local.to(torch.float32).cpu().numpy(),
        phase_offset=phi0_out.to(torch.float32).cpu().numpy(),
        phase_units=phase_units,
    )
