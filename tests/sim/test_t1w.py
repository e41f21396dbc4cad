"""T1-weighted image of the simulated head: MPRAGE-like contrast, noise level, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from qsmbids.sim.forward import t1w_image
from qsmbids.sim.phantom import make_head


def test_t1w_contrast_and_noise():
    head = make_head(0, voxel_size=2.0)
    names = {v: k for k, v in head.names.items()}
    clean = t1w_image(head.m0, head.r1, snr=None)
    wm, gm, csf = (float(np.median(clean[head.labels == names[n]])) for n in ("wm", "gm", "csf"))
    assert wm > 1.15 * gm and gm > 1.15 * csf  # inversion recovery at TI 0.9 s: WM > GM > CSF
    noisy = t1w_image(head.m0, head.r1, snr=20.0, seed=1)
    assert np.array_equal(noisy, t1w_image(head.m0, head.r1, snr=20.0, seed=1))
    wm_mask = head.labels == names["wm"]
    # Rician magnitude at high SNR: std ≈ σ = mean tissue signal / SNR (WM texture-free in M0/R1)
    sigma = float(clean[head.m0 > 0].mean()) / 20.0
    assert np.std(noisy[wm_mask] - clean[wm_mask]) == pytest.approx(sigma, rel=0.1)
    with pytest.raises(ValueError, match="snr"):
        t1w_image(head.m0, head.r1, snr=-1.0)
    with pytest.raises(ValueError, match="r1"):
        t1w_image(head.m0, head.r1[:-1])
