"""Slow accuracy suite: every background-removal × inversion pair on the simulated multi-echo head.

The data are those of :mod:`tests.qsm.test_pipeline` (48³ phantom brain in a 72³ head with air around it,
4 echoes at 3 T, smooth φ0, noise), run through MCPC-3D-S + quality unwrapping + weighted fit, then each
background method and each inversion method with its defaults. Scores are inside the eroded mask and in its
interior (> 6 mm from the brain edge, where the edge structures' field is not lost to background removal).
The table printed with ``-s`` is the measurement behind the app's default pipeline; each bound below is the
measured value plus a margin, so that a regression in any pair fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from qsmbids.qsm import background, echoes, metrics
from qsmbids.qsm.inversion import invert
from qsmbids.qsm.phase import hz_to_ppm

from .test_pipeline import B0, TES, _simulate

pytestmark = pytest.mark.slow

# measured interior NRMSE (demeaned, %) with default parameters (SHARP's default 18 mm radius erodes this small
# brain away, so it is not in the matrix); bound = measured + 15 % (relative) + 2 points. iLSQR stops at 10 LSMR
# iterations by default (calibrated on the realistic heads, #13): more regularised, so it scores worse on this
# piecewise-constant phantom than the former 100 iterations did (vsharp 39.7 → 48.7 %).
MEASURED = {
    ("vsharp", "tkd"): 43.7, ("vsharp", "tsvd"): 53.4, ("vsharp", "tikhonov"): 46.6, ("vsharp", "ilsqr"): 48.7,
    ("vsharp", "tv"): 44.4, ("vsharp", "rts"): 52.9, ("vsharp", "medi"): 28.6, ("vsharp", "tgv"): 34.1,
    ("resharp", "tkd"): 68.3, ("resharp", "tsvd"): 65.0, ("resharp", "tikhonov"): 63.5, ("resharp", "ilsqr"):
    60.9, ("resharp", "tv"): 59.3, ("resharp", "rts"): 61.2, ("resharp", "medi"): 29.4, ("resharp", "tgv"):
    39.0, ("pdf", "tkd"): 54.4, ("pdf", "tsvd"): 58.7, ("pdf", "tikhonov"): 53.1, ("pdf", "ilsqr"): 60.0,
    ("pdf", "tv"): 46.6, ("pdf", "rts"): 57.8, ("pdf", "medi"): 35.9, ("pdf", "tgv"): 47.8, ("lbv", "tkd"):
    59.2, ("lbv", "tsvd"): 62.0, ("lbv", "tikhonov"): 56.1, ("lbv", "ilsqr"): 68.5, ("lbv", "tv"): 54.9, ("lbv",
    "rts"): 62.2, ("lbv", "medi"): 40.4, ("lbv", "tgv"): 60.8,
}


@pytest.fixture(scope="module")
def total_field():
    ph, mag, phase, vs, _ = _simulate()
    fit = echoes.combine_echoes(phase, mag, TES, ph.mask, voxel_size=vs)
    return ph, hz_to_ppm(fit.field_hz, B0), vs


@pytest.mark.parametrize(("bg_method", "inv_method"), sorted(MEASURED))
def test_pair_accuracy(total_field, bg_method, inv_method):
    ph, total, vs = total_field
    bg = background.remove_background(total, ph.mask, vs, method=bg_method)
    kw = {"magnitude": ph.magnitude} if inv_method == "medi" else {}
    chi = invert(bg.local_field, bg.mask, vs, method=inv_method, **kw)
    inner = bg.mask & (distance_transform_edt(ph.mask) > 6)
    err = metrics.nrmse(chi, ph.chi, inner, mode="demeaned")
    xs = metrics.xsim(chi * inner, ph.chi * inner, inner)
    print(f"{bg_method:8s} {inv_method:9s} interior NRMSE {err:6.1f} %  XSIM {xs:.3f}")
    measured = MEASURED[(bg_method, inv_method)]
    assert np.isfinite(err)
    assert err < measured * 1.15 + 2.0
