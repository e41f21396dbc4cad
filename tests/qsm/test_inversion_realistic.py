"""Dipole inversion on realistic data: calibrated defaults and the automatic regularisation rules.

The slow tests use :mod:`tests.qsm.realistic_head` (textured χ of the simulated head, field from the 1 mm grid
block-averaged to 3 mm, noise of a 5-echo fit at SNR 50, 3 T). Numbers in comments were measured with torch CPU
float32; bounds leave margin for other CPUs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qsmbids.qsm.fourier import forward_field
from qsmbids.qsm.inversion import METHODS, invert
from qsmbids.qsm.inversion._auto import estimate_noise, lcurve_corner

from .realistic_head import make_case, score


def _field(ph, sigma, seed=0):
    f = forward_field(ph.chi, (1.0, 1.0, 1.0), (0, 0, 1), pad_factor=2)
    return ((f + sigma * np.random.default_rng(seed).standard_normal(f.shape)) * ph.mask).astype(np.float32)


@pytest.mark.parametrize(("method", "key"), [("tkd", "threshold"), ("tsvd", "threshold"), ("tikhonov", "lambda_")])
def test_lcurve_value_in_info_and_scale_invariant(head64, method, key):
    f = _field(head64, 0.002)
    _, info = invert(f, head64.mask, (1, 1, 1), method=method, return_info=True, **{key: "l-curve"})
    chosen = info.params[key]
    assert info.params[key.rstrip("_") + "_rule"] == "l-curve"
    assert 0.0 < chosen < 1.0
    # the L-curve's corner does not move when the field is multiplied by a constant
    _, info10 = invert(10.0 * f, head64.mask, (1, 1, 1), method=method, return_info=True, **{key: "auto"})
    assert info10.params[key] == pytest.approx(chosen, rel=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_default_regularisation_recorded(head64, method):
    f = _field(head64, 0.002)
    kw = {"magnitude": head64.magnitude, "max_iter": 2} if method == "medi" else {}
    if method in ("tgv", "tv", "ilsqr", "rts"):
        kw["max_iter"] = 2
    _, info = invert(f, head64.mask, (1, 1, 1), method=method, return_info=True, **kw)
    assert {"threshold", "lambda_", "alpha", "delta", "max_iter"} & set(info.params)


def test_lcurve_corner_of_an_l():
    p = np.logspace(-4, 0, 41)
    res = 1.0 + p * 10          # flat, then rising
    sol = 1.0 + 1e-3 / p        # falling, then flat
    i = lcurve_corner(p, res, sol)
    assert 1e-3 < p[i] < 1e-1


def test_noise_estimate_scales_with_noise(head64):
    m = torch.from_numpy(np.asarray(head64.mask))
    est = {s: estimate_noise(torch.from_numpy(_field(head64, s)), m) for s in (0.002, 0.004)}
    assert est[0.002] == pytest.approx(0.002, rel=0.35)
    assert 1.6 < est[0.004] / est[0.002] < 2.2
    # multiplying the field by a constant multiplies the estimate by it
    f = torch.from_numpy(_field(head64, 0.002))
    assert estimate_noise(3.0 * f, m) == pytest.approx(3.0 * est[0.002], rel=1e-4)


@pytest.fixture(scope="module")
def vsharp_case():
    """3 mm, 3 T, SNR 50, local field from V-SHARP on the simulated total field (errors at the brain edge)."""
    return make_case(1, voxel_size=3, field_strength=3.0, snr=50, bfr="vsharp")


@pytest.mark.slow
def test_every_default_within_1p3_of_the_best(vsharp_case):
    # measured NRMSE (%): MEDI 52.4, TV ≈ 60, TGV 60.7, TKD 62.7, iLSQR 62.7, RTS 63.1, Tikhonov 63.4, TSVD 64.7
    c = vsharp_case
    errs = {}
    for m in METHODS:
        kw = {"magnitude": c.magnitude} if m == "medi" else {}
        errs[m] = score(invert(c.field, c.mask, c.voxel_size, c.b0_dir, method=m, **kw), c)["nrmse"]
    best = min(errs.values())
    print({k: round(v, 1) for k, v in errs.items()})
    assert best < 60.0
    for m, e in errs.items():
        assert e < 1.3 * best, (m, e, best)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured: on realistic heads the L-curve has no clear corner and picks "
                   "λ ≈ 2e-4, 50× below the best λ (1e-2); the fixed default is kept")
def test_lcurve_near_best_lambda(vsharp_case):
    c = vsharp_case
    _, info = invert(c.field, c.mask, c.voxel_size, c.b0_dir, method="tikhonov", lambda_="l-curve",
                     return_info=True)
    assert 1e-3 < info.params["lambda_"] < 1e-1
