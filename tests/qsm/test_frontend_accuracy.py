"""Front end (offset removal, unwrapping, echo fit, background removal) against the truth of two simulators.

Bounds measured on 3 mm heads (``qsmbids-sim --preset test`` and the same head simulated by qsm-forward; see
``benchmarks/bench_accuracy.py``) with a margin; they catch regressions, they are not targets.
"""

from __future__ import annotations

import numpy as np
import pytest

from qsmbids.sim.accuracy import (
    _demeaned_nrmse,
    load_bids_run,
    local_field,
    run_pipeline,
    score_run,
    total_field_ppm,
)


@pytest.fixture(scope="module")
def ours(sim_bids):
    return load_bids_run(sim_bids, name="ours")


@pytest.fixture(scope="module")
def qsmforward(tmp_path_factory):
    pytest.importorskip("qsm_forward")
    from qsmbids.sim.phantom import make_head
    from qsmbids.sim.qsmforward import make_qsmforward_dataset

    root = tmp_path_factory.mktemp("qf-front") / "bids"
    make_qsmforward_dataset(root, make_head(3000, voxel_size=3.0), echo_times=(0.004, 0.008, 0.012),
                            voxel_size=3.0, seed=4)
    return load_bids_run(root, name="qsm-forward")


def _total_field_err(data, **unwrap_params) -> float:
    m = data.mask
    est, _ = total_field_ppm(data, m, unwrap_params=unwrap_params)
    a, ma, _ = local_field(np.where(m, est, 0).astype(np.float32), m, data)
    b, mb, _ = local_field(data.total_field, m, data)
    return _demeaned_nrmse(a, b, ma & mb)


# measured (seed 3 / 3000 heads, the default RESHARP on both sides): ours 83 %, qsm-forward 35 % (V-SHARP: 76 / 34 %).
# Our 3 mm test head is simulated on the 3 mm grid itself, without intravoxel dephasing: near the sinuses the
# first-echo phase steps by more than π between neighbours with full magnitude (aliased; no unwrapper can follow),
# and a few rim voxels carry 2π errors that the SMV kernels spread into the brain. qsm-forward's head (k-space
# cropped) has no such voxels.
@pytest.mark.parametrize("name, bound", [("ours", 120.0), ("qsmforward", 50.0)])
def test_total_field_error_bound(request, name, bound):
    data = request.getfixturevalue(name)
    assert _total_field_err(data) < bound


def test_local_linear_offset_smoothing_helps_on_qsmforward(qsmforward):
    """qsm-forward's quadratic phase offset: the plain Gaussian MCPC-3D-S smoothing is biased at the brain edge."""
    lin = _total_field_err(qsmforward)
    gauss = _total_field_err(qsmforward, offset_smoothing="gaussian")
    assert lin < gauss - 5.0


@pytest.mark.parametrize("name", ["ours", "qsmforward"])
def test_default_mask_dice(request, name):
    """The default brain mask (deepbet) on both simulators' realistic heads, before its 3 mm erosion."""
    from qsmbids.deep.brain import deepbet_mask

    data = request.getfixturevalue(name)
    m = np.asarray(deepbet_mask(data.magnitude, data.affine, erode_mm=0.0))
    dice = 2.0 * float((m & data.mask).sum()) / float(m.sum() + data.mask.sum())
    assert dice >= 0.93, dice  # measured 0.968 (ours) and 0.962 (qsm-forward); combined: 0.77 / 0.81


def test_field_estimation_deterministic(ours):
    a, _ = total_field_ppm(ours, ours.mask)
    b, _ = total_field_ppm(ours, ours.mask)
    assert np.array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ours", "qsmforward"])
def test_chain_with_true_mask(request, name):
    """Default chain with the true mask: χ end to end within reach of the inversion of the true local field."""
    data = request.getfixturevalue(name)
    s = score_run(data, run_pipeline(data, mask="true"))
    # measured (RESHARP): ours 93 / 59.9 % / 0.60 / 0.87 (true local field: 27.7 %); qsm-forward 59 / 54.4 % /
    # 0.61 / 0.87 (27.3 %). V-SHARP: 68.4 and 60.5 %.
    assert s["local_field_err"] < 130.0
    assert s["e2e_nrmse"] < 70.0
    assert s["e2e_xsim"] > 0.5
    assert abs(1 - s["e2e_dgm_slope"]) < 0.25
    assert s["e2e_nrmse"] < 3.0 * s["ideal_nrmse"]
