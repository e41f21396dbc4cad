"""Phase units, unit conversions, B0 direction from the affine, argument validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qsmbids.qsm import phase as ph
from qsmbids.qsm._utils import check_echo_times, check_mask, numpy_io, to_numpy


def _wrapped_field(seed=0, shape=(16, 16, 16)):
    rng = np.random.default_rng(seed)
    return ph.wrap(rng.uniform(-3 * np.pi, 3 * np.pi, shape))


def test_constants():
    assert ph.GAMMA_BAR == pytest.approx(42.5774785178e6)
    assert ph.GAMMA == pytest.approx(2 * math.pi * 42.5774785178e6)


def test_wrap_range():
    x = np.linspace(-20, 20, 1001)
    w = ph.wrap(x)
    assert w.min() >= -np.pi and w.max() < np.pi
    assert np.allclose(np.exp(1j * w), np.exp(1j * x), atol=1e-5)


@pytest.mark.parametrize(("lo", "hi"), [(-4096, 4095), (0, 4095), (-3142, 3142)])
def test_integer_vendor_round_trip(lo, hi):
    """rad → vendor integers → scale_phase recovers the phase within one integer step."""
    truth = _wrapped_field().astype(np.float64)
    if (lo, hi) == (-3142, 3142):
        ints = np.round(truth * 1000)
        step = 1e-3
    else:
        span = hi - lo + 1
        ints = np.clip(np.round((truth + np.pi) / (2 * np.pi) * span + lo), lo, hi)
        step = 2 * np.pi / span
    ints = ints.astype(np.int16)
    assert ph.detect_phase_units(ints) == "integer"
    rad = ph.scale_phase(ints)
    assert rad.dtype == np.float32
    diff = np.angle(np.exp(1j * (rad - truth)))
    assert np.abs(diff).max() <= step + 1e-5


def test_arbitrary_units_round_trip():
    """Arbitrary float units (e.g. ±0.0037) are rescaled min..max → −π..π."""
    truth = _wrapped_field(1)
    truth.flat[0], truth.flat[1] = -np.pi, np.pi - 1e-6
    arb = (truth + np.pi) / (2 * np.pi) * 0.0074 - 0.0037
    assert ph.detect_phase_units(arb) == "arbitrary"
    rad = ph.scale_phase(arb, "arbitrary")
    assert np.abs(np.angle(np.exp(1j * (rad - truth)))).max() < 1e-4


def test_rad_input_kept_and_nan_preserved():
    x = _wrapped_field(2)
    x.flat[5] = np.nan
    out = ph.scale_phase(x)
    assert np.isnan(out.flat[5]) and np.isfinite(np.delete(out.ravel(), 5)).all()
    assert np.allclose(np.delete(out.ravel(), 5), np.delete(x.ravel(), 5), atol=1e-6)
    # 0..2π radians are wrapped, not rescaled
    y = ph.scale_phase(np.mod(x, 2 * np.pi))
    assert np.allclose(np.exp(1j * np.nan_to_num(y)), np.exp(1j * np.nan_to_num(x)), atol=1e-5)


def test_scale_phase_explicit_range_and_bad_units():
    assert np.allclose(ph.scale_phase(np.array([0.0, 50.0, 99.999]), value_range=(0, 100)),
                       [-np.pi, 0, np.pi - 2e-5 * np.pi], atol=1e-5)
    with pytest.raises(ValueError, match="units"):
        ph.scale_phase(np.zeros(3), "degrees")
    with pytest.raises(ValueError, match="value_range"):
        ph.scale_phase(np.zeros(3), value_range=(1, 1))
    with pytest.raises(ValueError, match="phase"):
        ph.scale_phase(np.full(3, np.nan), "arbitrary")


@settings(max_examples=50, deadline=None)
@given(x=st.floats(-100, 100), te=st.floats(1e-4, 0.1), b0=st.floats(0.1, 11.7))
def test_unit_conversions_round_trip(x, te, b0):
    a = np.array([x])
    assert ph.hz_to_rad(ph.rad_to_hz(a, te), te)[0] == pytest.approx(x, rel=1e-5, abs=1e-6)
    assert ph.ppm_to_hz(ph.hz_to_ppm(a, b0), b0)[0] == pytest.approx(x, rel=1e-5, abs=1e-6)
    assert ph.ppm_to_rad(ph.rad_to_ppm(a, te, b0), te, b0)[0] == pytest.approx(x, rel=1e-4, abs=1e-5)


def test_conversion_values():
    # 1 ppm at 3 T is 127.73 Hz; at TE = 10 ms that is 2π·1.2773 rad
    hz = ph.ppm_to_hz(np.array([1.0]), 3.0)[0]
    assert hz == pytest.approx(127.7324, rel=1e-5)
    assert ph.ppm_to_rad(np.array([1.0]), 0.01, 3.0)[0] == pytest.approx(2 * np.pi * 1.277324, rel=1e-5)
    with pytest.raises(ValueError, match="field_strength"):
        ph.hz_to_ppm(np.ones(2), 0.0)
    with pytest.raises(ValueError, match="echo_time"):
        ph.rad_to_hz(np.ones(2), -0.01)


def _rot_x(deg):
    t = math.radians(deg)
    return np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])


@pytest.mark.parametrize("deg", [0.0, 15.0, 30.0, 60.0])
def test_b0_direction_from_oblique_affine(deg):
    A = np.eye(4)
    A[:3, :3] = _rot_x(deg) @ np.diag([0.5, 0.6, 2.0])
    A[:3, 3] = (10, -20, 5)
    b = ph.b0_direction_from_affine(A)
    assert np.allclose(b, (0, math.sin(math.radians(deg)), math.cos(math.radians(deg))), atol=1e-12)
    assert ph.b0_angle(b) == pytest.approx(deg, abs=1e-9)


def test_b0_direction_flipped_axes_and_bad_affine():
    A = np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS orientation
    assert ph.b0_direction_from_affine(A) == (0.0, 0.0, 1.0)
    sag = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])  # sagittal: 2nd voxel axis is world z
    assert ph.b0_direction_from_affine(sag) == (0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="affine"):
        ph.b0_direction_from_affine(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="affine"):
        ph.b0_direction_from_affine(np.eye(2))


def test_numpy_io_converts_nested_results():
    @numpy_io
    def f(x, xs):
        assert isinstance(x, torch.Tensor) and all(isinstance(e, torch.Tensor) for e in xs)
        return x * 2, {"sum": xs[0] + xs[1]}

    a, d = f(np.ones(3), [np.ones(3), np.ones(3)])
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and isinstance(d["sum"], np.ndarray)
    t, _ = f(torch.ones(3, dtype=torch.float64), [torch.ones(3), torch.ones(3)])
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    assert to_numpy((torch.zeros(1),))[0].shape == (1,)
    # the first (data) argument decides: torch data with NumPy auxiliaries (e.g. echo times) stays torch
    t2, _ = f(torch.ones(3), [np.ones(3), np.ones(3)])
    assert isinstance(t2, torch.Tensor)


def test_validators():
    with pytest.raises(ValueError, match="mask.*empty"):
        check_mask(np.zeros((2, 2, 2)), (2, 2, 2))
    with pytest.raises(ValueError, match="mask.*shape"):
        check_mask(np.ones((2, 2)), (2, 2, 2))
    assert check_echo_times([0.004, 0.008], 2) == (0.004, 0.008)
    with pytest.raises(ValueError, match="echo_times.*increasing"):
        check_echo_times([0.008, 0.004])
    with pytest.raises(ValueError, match="echo_times.*at least 2"):
        check_echo_times([0.004], min_echoes=2)
    with pytest.raises(ValueError, match="echo_times.*one per echo"):
        check_echo_times([0.004, 0.008], 3)
