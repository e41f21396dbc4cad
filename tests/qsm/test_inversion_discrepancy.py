"""The discrepancy principle (Morozov) for MEDI and TV (λ) and iLSQR (LSQR stopping rule).

On the 64³ head phantom with white noise of known σ added to its field: the chosen regularisation gives a data
misfit near √N·σ, moves the right way with the noise, the rule, σ and its source are recorded, and bad inputs
raise ValueError.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qsmbids.qsm.fourier import forward_field
from qsmbids.qsm.inversion import invert
from qsmbids.qsm.inversion._auto import discrepancy_search, is_discrepancy

VS = (1.0, 1.0, 1.0)


def _field(ph, sigma, seed=0):
    f = forward_field(ph.chi, VS, (0, 0, 1), pad_factor=2)
    return ((f + sigma * np.random.default_rng(seed).standard_normal(f.shape)) * ph.mask).astype(np.float32)


def _kw(method, ph):
    return {"magnitude": ph.magnitude} if method == "medi" else {}


@pytest.mark.parametrize("increasing", [True, False])
@pytest.mark.parametrize("target", [0.02, 3.0, 400.0])
def test_search_meets_the_target_of_a_monotone_misfit(increasing, target):
    calls = []

    def misfit(lam):  # a smooth monotone curve in log λ, like the solvers'
        calls.append(lam)
        t = math.log(lam)
        return math.exp(0.6 * (t if increasing else -t) + 0.05 * math.sin(t))

    lam, hist = discrepancy_search(misfit, target, 1.0, increasing=increasing, rtol=0.05, max_solves=8,
                                   bounds=(1e-6, 1e6))
    assert len(hist) == len(calls) <= 8
    assert dict(hist)[lam] == pytest.approx(target, rel=0.05)


def test_search_stops_at_the_bounds_and_returns_the_nearest():
    lam, hist = discrepancy_search(lambda lam: 1.0, 0.5, 1.0, increasing=True, bounds=(0.1, 10.0))
    assert len(hist) <= 3 and dict(hist)[lam] == 1.0


@pytest.mark.parametrize(("target", "lam0"), [(0.0, 1.0), (-1.0, 1.0), (math.nan, 1.0), (1.0, 0.0)])
def test_search_rejects_bad_targets(target, lam0):
    with pytest.raises(ValueError, match="discrepancy"):
        discrepancy_search(lambda lam: 1.0, target, lam0, increasing=True)


def test_is_discrepancy():
    assert is_discrepancy("discrepancy") and is_discrepancy(" Discrepancy ")
    assert not is_discrepancy("l-curve") and not is_discrepancy(3000.0)


@pytest.mark.parametrize("method", ["tv", "medi"])
def test_lambda_meets_morozov_and_follows_the_noise(head64, method):
    ph = head64
    n = int(np.asarray(ph.mask).sum())
    lams = {}
    for sigma in (0.002, 0.006):
        f = _field(ph, sigma)
        _, info = invert(f, ph.mask, VS, method=method, return_info=True, lambda_="discrepancy",
                         noise_std=np.full(f.shape, sigma, np.float32), **_kw(method, ph))
        p = info.params
        assert p["lambda_rule"] == "discrepancy" and p["noise_source"] == "noise_std"
        assert p["noise_sigma"] == pytest.approx(sigma, rel=1e-5)
        assert p["discrepancy_target"] == pytest.approx(math.sqrt(n) * sigma, rel=1e-4)
        assert p["discrepancy_misfit"] == pytest.approx(math.sqrt(n) * sigma, rel=0.1)
        assert 1 <= p["discrepancy_solves"] <= 6
        lams[sigma] = p["lambda_"]
    # more noise, more regularisation: λ on the prior (TV) grows, λ on the data term (MEDI) shrinks
    ratio = lams[0.006] / lams[0.002]
    assert (ratio > 1.5) if method == "tv" else (ratio < 1 / 1.5), lams


@pytest.mark.parametrize("method", ["tv", "medi"])
def test_estimated_noise_is_recorded(head64, method):
    f = _field(head64, 0.004)
    chi, info = invert(f, head64.mask, VS, method=method, return_info=True, lambda_="discrepancy",
                       **_kw(method, head64))
    assert info.params["noise_source"] == "estimated"
    assert info.params["noise_sigma"] == pytest.approx(0.004, rel=0.35)
    assert info.params["discrepancy_misfit"] == pytest.approx(info.params["discrepancy_target"], rel=0.1)
    assert np.isfinite(chi).all() and not np.any(chi[~head64.mask])


def test_fixed_lambda_records_the_fixed_rule(head64):
    f = _field(head64, 0.004)
    _, info = invert(f, head64.mask, VS, method="tv", return_info=True, max_iter=5)
    assert info.params["lambda_rule"] == "fixed" and "noise_sigma" not in info.params


def test_ilsqr_stops_at_the_discrepancy(head64):
    ph = head64
    its = {}
    for sigma in (0.001, 0.006):
        f = _field(ph, sigma)
        _, info = invert(f, ph.mask, VS, method="ilsqr", return_info=True, max_iter="discrepancy",
                         noise_std=sigma)
        p = info.params
        assert p["max_iter_rule"] == "discrepancy" and p["noise_source"] == "noise_std"
        assert p["max_iter"] == p["lsqr_iterations"]
        # stopped as soon as the weighted residual reached the target (not before: one iteration earlier it was above)
        assert p["discrepancy_misfit"] <= p["discrepancy_target"] * (1 + 1e-6)
        assert p["discrepancy_misfit"] > 0.5 * p["discrepancy_target"]
        its[sigma] = p["max_iter"]
    assert its[0.006] < its[0.001], its


def test_ilsqr_fixed_iterations_record_the_fixed_rule(head64):
    f = _field(head64, 0.002)
    _, info = invert(f, head64.mask, VS, method="ilsqr", return_info=True, max_iter=4)
    assert info.params["max_iter_rule"] == "fixed" and info.params["max_iter"] == 4


@pytest.mark.parametrize(("method", "kw", "match"), [
    ("tv", {"lambda_": "discrepancy", "noise_std": 0.0}, "noise_std"),
    ("tv", {"lambda_": "discrepancy", "noise_std": -0.01}, "noise_std"),
    ("tv", {"lambda_": "discrepancy", "noise_std": np.ones((4, 4, 4), np.float32)}, "noise_std"),
    ("tv", {"lambda_": "morozov"}, "lambda_"),
    ("medi", {"lambda_": "l-curve"}, "lambda_"),
    ("medi", {"lambda_": "discrepancy", "noise_std": np.zeros((64, 64, 64), np.float32)}, "noise_std"),
    ("ilsqr", {"max_iter": "discrepancy", "noise_std": math.inf}, "noise_std"),
    ("ilsqr", {"max_iter": "morozov"}, "max_iter"),
])
def test_bad_inputs_raise(head64, method, kw, match):
    f = _field(head64, 0.002)
    with pytest.raises(ValueError, match=match):
        invert(f, head64.mask, VS, method=method, **kw, **_kw(method, head64))


def test_noise_free_field_refused(head64):
    # a constant field inside a box mask: no measurable noise, nothing to match
    f = np.zeros((32, 32, 32), np.float32)
    m = np.zeros_like(f, dtype=bool)
    m[8:24, 8:24, 8:24] = True
    with pytest.raises(ValueError, match="no measurable noise"):
        invert(torch.from_numpy(f), torch.from_numpy(m), VS, method="tv", lambda_="discrepancy")
