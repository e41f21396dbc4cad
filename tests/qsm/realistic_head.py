"""Realistic dipole-inversion test data: a true local field with realistic noise from the simulated head.

Used by the inversion tests and by ``benchmarks/bench_inversion.py`` (which imports it from here).

* χ: :func:`qsmbids.sim.phantom.make_head` at 1 mm (textured χ, deep grey nuclei, veins), kept inside the brain
  (χ relative to CSF; the brain's surroundings do not contribute to the *local* field).
* Local field: D ∗ (χ·brain) at 1 mm on a grid zero-padded to twice the brain's bounding box (no wrap-around),
  with our dipole kernel or, with ``forward="qsm-forward"``, with :func:`qsm_forward.generate_field` (an
  independent implementation). Coarser conditions block-average χ, the field and the magnitude from 1 mm
  (partial volume as in a real acquisition, and the inversion's discrete kernel is not the one that made the
  data, which avoids the "inverse crime" that flatters k-space division).
* Noise: multi-echo fit of the field, TE = 4, 8, …, 20 ms, per-echo magnitude SNR ``snr`` (mean over the brain at
  the first echo) with R2* decay; the least-squares field fit through the origin has per-voxel standard deviation

      σ(x) = 1 / (SNR(x) · 2π · γ̄ · B0 · √Σₙ TEₙ² e^{−2 R2*(x) TEₙ} / e^{−2 R2*(x) TE₁}) · 1e6   (ppm),

  SNR(x) = snr · M0(x)e^{−R2*(x)TE₁} / mean_brain(M0 e^{−R2* TE₁}). With snr = 50 at 3 T this is
  ≈ 0.001 ppm in white matter; it is larger in the iron-rich nuclei and veins (short T2*), smaller at 7 T.
  White Gaussian noise with that per-voxel σ is added to the field; σ is returned as ``noise_std``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

GAMMA_BAR_HZ_PER_T = 42.5774785178e6
ECHO_TIMES_S = (0.004, 0.008, 0.012, 0.016, 0.020)


@dataclasses.dataclass
class InversionCase:
    """One inversion test case (all arrays float32 on one grid; χ and field in ppm)."""

    name: str
    field: np.ndarray          # noisy local field (ppm)
    field_clean: np.ndarray    # noise-free local field (ppm)
    chi: np.ndarray            # true χ (ppm, zero outside the brain)
    mask: np.ndarray           # brain mask (bool)
    magnitude: np.ndarray      # first-echo magnitude
    noise_std: np.ndarray      # per-voxel noise σ of the field (ppm)
    labels: np.ndarray         # tissue labels (majority of the 1 mm block)
    voxel_size: tuple[float, float, float]
    b0_dir: tuple[float, float, float]
    field_strength: float
    snr: float


def _block_mean(x: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return x
    s = [n // k * k for n in x.shape]
    x = x[: s[0], : s[1], : s[2]].astype(np.float64)
    return x.reshape(s[0] // k, k, s[1] // k, k, s[2] // k, k).mean(axis=(1, 3, 5))


def _block_mode(lab: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return lab
    s = [n // k * k for n in lab.shape]
    x = lab[: s[0], : s[1], : s[2]].reshape(s[0] // k, k, s[1] // k, k, s[2] // k, k)
    x = x.transpose(0, 2, 4, 1, 3, 5).reshape(s[0] // k, s[1] // k, s[2] // k, k**3)
    n = int(lab.max()) + 1
    counts = np.zeros((*x.shape[:3], n), dtype=np.int16)
    for v in range(n):
        counts[..., v] = (x == v).sum(-1)
    return counts.argmax(-1).astype(np.int16)


@functools.lru_cache(maxsize=4)
def _fine(seed: int, field_strength: float, b0_dir: tuple[float, float, float], forward: str, bfr: bool):
    """χ·brain, field, M0, R2*, labels at 1 mm, cropped to the brain's bounding box + 12 mm."""
    import torch

    from qsmbids.qsm.fourier import forward_field
    from qsmbids.sim.phantom import make_head

    h = make_head(seed, voxel_size=1.0, field_strength=field_strength, rotation_deg=(0.0, 0.0, 0.0),
                  translation_mm=(0.0, 0.0, 0.0))
    idx = np.nonzero(h.brain_mask)
    box = tuple(slice(max(0, int(i.min()) - 12), int(i.max()) + 13) for i in idx)
    # crop to a multiple of 6 voxels so that 2 and 3 mm blocks tile it
    box = tuple(slice(b.start, b.start + (b.stop - b.start) // 6 * 6) for b in box)
    brain = h.brain_mask[box]
    chi = (h.chi[box] * brain).astype(np.float32)
    if forward == "qsm-forward":
        import qsm_forward

        field = qsm_forward.generate_field(chi.astype(np.float64), voxel_size=[1.0, 1.0, 1.0],
                                           B0_dir=list(b0_dir)).astype(np.float32)
    else:
        field = forward_field(torch.from_numpy(chi).double(), (1.0, 1.0, 1.0), b0_dir,
                              pad_factor=2.0).float().numpy()
    total = None
    if bfr:
        # the whole head's field (air 9.4 ppm, skull −2 ppm vs CSF) on a zero-padded grid: pad with air by
        # shifting χ by −χ_air (a constant only changes k = 0), so the FOV edge is no susceptibility jump
        air = float(h.chi[0, 0, 0])
        full = forward_field(torch.from_numpy(h.chi - air), (1.0, 1.0, 1.0), b0_dir, pad_factor=1.5).numpy()
        total = full[box].astype(np.float32)
        del full
    return chi, field, brain, h.m0[box], h.r2star[box], h.labels[box], total


def make_case(seed: int = 0, *, voxel_size: int = 3, field_strength: float = 3.0, snr: float = 50.0,
              b0_dir: tuple[float, float, float] = (0.0, 0.0, 1.0), forward: str = "qsmbids",
              noise_seed: int | None = None, bfr: str | None = None) -> InversionCase:
    """A realistic inversion case at ``voxel_size`` mm (1, 2 or 3) — see the module docstring.

    ``bfr`` (e.g. ``"vsharp"``): instead of the true local field, simulate the whole head's total field
    (brain plus skull, scalp and air), add the noise, and remove the background with that method of
    :func:`qsmbids.qsm.background.remove_background` on the true brain mask; the case then holds its local
    field and (eroded) mask, with the errors background removal leaves near the brain edge, as real data do.
    """
    k = int(voxel_size)
    b0 = tuple(float(v) for v in np.asarray(b0_dir, dtype=float) / np.linalg.norm(b0_dir))
    chi1, field1, brain1, m01, r21, lab1, total1 = _fine(int(seed), float(field_strength), b0, forward, bool(bfr))
    te = np.asarray(ECHO_TIMES_S)
    mag1 = m01 * np.exp(-r21 * te[0])
    # effective echo-time sum for each voxel (R2* decay weights the later echoes down)
    decay = np.exp(-2.0 * r21[..., None] * (te - te[0]))
    te_eff1 = np.sqrt((te**2 * decay).sum(-1))
    chi = _block_mean(chi1, k).astype(np.float32)
    field_clean = _block_mean(field1, k).astype(np.float32)
    frac = _block_mean(brain1.astype(np.float32), k)
    mask = frac >= 0.5
    mag = _block_mean(mag1, k).astype(np.float32)
    te_eff = _block_mean(te_eff1, k)
    labels = _block_mode(lab1, k)
    snr_map = snr * mag / max(float(mag[mask].mean()), 1e-12)
    sigma = 1e6 / (np.clip(snr_map, 0.05 * snr, None) * 2 * math.pi * GAMMA_BAR_HZ_PER_T * field_strength * te_eff)
    sigma = np.where(mask, sigma, 0.0).astype(np.float32)
    rng = np.random.default_rng(1000 + int(seed) if noise_seed is None else noise_seed)
    field = (field_clean + sigma * rng.standard_normal(field_clean.shape)).astype(np.float32) * mask
    if bfr:
        from qsmbids.qsm.background import remove_background

        total = _block_mean(total1, k).astype(np.float32)
        total = total + sigma * rng.standard_normal(total.shape).astype(np.float32)
        res = remove_background(total, mask, (float(k),) * 3, b0, method=bfr)
        field, mask = np.asarray(res.local_field, dtype=np.float32), np.asarray(res.mask, dtype=bool)
        field = field * mask
    sigma = np.where(mask, sigma, np.float32(sigma[mask].mean())).astype(np.float32)
    name = f"{k}mm_{field_strength:g}T_snr{snr:g}_seed{seed}" + ("_qsmforward" if forward != "qsmbids" else "") + (
        f"_{bfr}" if bfr else "")
    return InversionCase(name=name, field=field, field_clean=field_clean * mask, chi=chi * mask, mask=mask,
                         magnitude=mag, noise_std=sigma, labels=labels, voxel_size=(float(k),) * 3, b0_dir=b0,
                         field_strength=float(field_strength), snr=float(snr))


def score(chi_hat, case: InversionCase) -> dict[str, float]:
    """Demeaned NRMSE (%), HFEN (%, 2016 challenge LoG) and XSIM (Gaussian 7³ window) inside the brain mask."""
    from qsmbids.qsm import metrics

    x = np.asarray(chi_hat, dtype=np.float32) * case.mask
    ref = case.chi
    return {"nrmse": metrics.nrmse(x, ref, case.mask, mode="demeaned"), "hfen": metrics.hfen(x, ref, case.mask),
            "xsim": metrics.xsim(x, ref, case.mask)}
