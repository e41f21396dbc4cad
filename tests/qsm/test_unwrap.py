"""Phase unwrapping: exact recovery of wrapped phantoms, congruence, NaN handling, multi-echo, bad inputs.

"Correct" voxel: result − truth equals the most frequent integer multiple of 2π over the mask (a global 2πk
offset is allowed) within 1e-3 rad. Measured on this machine (noise-free phantoms): 100.000 % of the mask
voxels for every method on the smooth and on the sphere field; the tests require ≥ 99.9 %.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from qsmbids.qsm._utils import SolverInfo
from qsmbids.qsm.phantoms import coordinates, sphere_field
from qsmbids.qsm.phase import scale_phase, wrap
from qsmbids.qsm.unwrap import (
    UNWRAP_METHODS,
    unwrap,
    unwrap_laplacian,
    unwrap_multi_echo,
    unwrap_quality,
    unwrap_skimage,
)

TWO_PI = 2 * math.pi
SHAPE = (48, 48, 40)
ROMEO = Path(__file__).resolve().parents[3] / "shared" / "data" / "romeo_small"  # ../shared beside the checkout



def correct_fraction(result, truth, mask) -> float:
    d = (np.asarray(result, dtype=np.float64) - np.asarray(truth, dtype=np.float64))[mask] / TWO_PI
    k = np.round(d)
    assert np.all(np.isfinite(k))
    values, counts = np.unique(k, return_counts=True)
    mode = values[np.argmax(counts)]
    return float(np.mean((k == mode) & (np.abs(d - k) * TWO_PI < 1e-3)))


def congruent(result, phase, mask, atol=1e-4) -> bool:
    d = (np.asarray(result, dtype=np.float64) - np.asarray(phase, dtype=np.float64))[mask] / TWO_PI
    return bool(np.all(np.abs(d - np.round(d)) * TWO_PI < atol))


def ellipsoid(shape, frac=0.8):
    X, Y, Z = coordinates(shape, (1, 1, 1))
    half = np.array(shape) / 2
    return (X / (frac * half[0])) ** 2 + (Y / (frac * half[1])) ** 2 + (Z / (frac * half[2])) ** 2 <= 1


def smooth_truth(shape):
    """Gaussian bump (peak 7π) + a quadratic, several wraps, max neighbour difference ≈ 1.3 rad."""
    X, Y, Z = coordinates(shape, (1, 1, 1))
    f = 7 * np.pi * np.exp(-((X - 4) ** 2 + (Y + 3) ** 2 + (1.2 * Z) ** 2) / (2 * 11.0**2))
    f += 0.004 * X**2 - 0.05 * Y + 0.002 * X * Z
    return f.astype(np.float32)


def sphere_truth(shape, radius=12.0):
    """Sphere field scaled to 6π at its poles; the sphere and a 3-voxel shell (aliased) are outside the mask."""
    X, Y, Z = coordinates(shape, (1, 1, 1))
    f = (6 * np.pi / (2 / 3)) * sphere_field(shape, (1, 1, 1), radius, 1.0)
    mask = ellipsoid(shape, 0.9) & (np.sqrt(X**2 + Y**2 + Z**2) > radius + 3)
    return f.astype(np.float32), mask


def max_neighbour_difference(f, mask):
    out = 0.0
    for a in range(3):
        both = np.take(mask, range(f.shape[a] - 1), axis=a) & np.take(mask, range(1, f.shape[a]), axis=a)
        out = max(out, float(np.abs(np.diff(f, axis=a))[both].max()))
    return out


@pytest.fixture(scope="module")
def smooth():
    truth = smooth_truth(SHAPE)
    mask = ellipsoid(SHAPE)
    return wrap(truth), truth, mask


@pytest.fixture(scope="module")
def sphere():
    truth, mask = sphere_truth(SHAPE)
    return wrap(truth), truth, mask


def test_phantoms_wrap_several_times_without_aliasing(smooth, sphere):
    for wrapped, truth, mask in (smooth, sphere):
        assert np.ptp(truth[mask]) > 4 * TWO_PI / 2  # at least ~2 wraps across the mask
        assert max_neighbour_difference(truth, mask) < 0.9 * math.pi
        assert np.all(wrapped >= -math.pi) and np.all(wrapped < math.pi)


@pytest.mark.parametrize("method", UNWRAP_METHODS)
def test_restores_smooth_field(method, smooth):
    wrapped, truth, mask = smooth
    res = unwrap(wrapped, method, mask=mask)
    assert correct_fraction(res, truth, mask) >= 0.999
    assert congruent(res, wrapped, mask)
    assert np.all(res[~mask] == 0)


@pytest.mark.parametrize("method", UNWRAP_METHODS)
def test_restores_sphere_field(method, sphere):
    wrapped, truth, mask = sphere
    res = unwrap(wrapped, method, mask=mask, voxel_size=(1, 1, 1))
    assert correct_fraction(res, truth, mask) >= 0.999
    assert congruent(res, wrapped, mask)


@pytest.mark.parametrize("method", ["laplacian", "quality"])
def test_global_correction_brings_mean_into_range(method, smooth):
    wrapped, truth, mask = smooth
    res = unwrap(wrapped, method, mask=mask)
    assert -math.pi <= float(res[mask].mean()) < math.pi
    # the result is the truth shifted by one global multiple of 2π
    shift = np.round((truth[mask].mean() - res[mask].mean()) / TWO_PI)
    np.testing.assert_allclose(res[mask], truth[mask] - TWO_PI * shift, atol=1e-4)


def test_quality_without_global_correction_keeps_seed_value(smooth):
    wrapped, truth, mask = smooth
    res = unwrap_quality(wrapped, mask=mask, correct_global=False)
    assert correct_fraction(res, truth, mask) >= 0.999
    # some voxel (the highest-quality seed) keeps its wrapped value: the offset is 0 there
    assert np.any(np.abs(res - wrapped)[mask] < 1e-6)


def test_anisotropic_voxels(smooth):
    wrapped, truth, mask = smooth
    for cg in (True, False):
        res = unwrap_quality(wrapped, mask=mask, voxel_size=(0.5, 1.0, 2.0), correct_global=cg)
        assert correct_fraction(res, truth, mask) >= 0.999
    res = unwrap_laplacian(wrapped, (0.5, 1.0, 2.0), mask=mask)
    assert correct_fraction(res, truth, mask) >= 0.999


def test_laplacian_smooth_estimate_and_info(smooth):
    wrapped, truth, mask = smooth
    est, info = unwrap_laplacian(wrapped, mask=mask, congruent=False, return_info=True, tol=1e-4)
    assert isinstance(info, SolverInfo) and info.converged and info.residual <= 1e-4
    assert 1 <= info.iterations <= 50 and info.fft_pairs >= info.iterations
    # least squares from exact gradients = truth up to a constant (no wraps are aliased)
    err = (est - truth)[mask]
    assert np.abs(err - err.mean()).max() < 0.05
    # max_iter=0: the plain FFT solve (Schofield & Zhu) ignores the mask boundary; still congruent, but here
    # only ≈ 94 % of the voxels get the right multiple of 2π — the CG refinement is what makes it exact
    res0, info0 = unwrap_laplacian(wrapped, mask=mask, max_iter=0, return_info=True)
    assert info0.iterations == 0 and info0.fft_pairs == 1
    assert congruent(res0, wrapped, mask)
    assert correct_fraction(res0, truth, mask) < 0.99


def test_laplacian_without_mask_whole_volume(smooth):
    wrapped, truth, _ = smooth
    full = np.ones(SHAPE, dtype=bool)
    res = unwrap_laplacian(wrapped)
    assert correct_fraction(res, truth, full) >= 0.999


@pytest.mark.parametrize("use_mag", [True, False])
def test_quality_noisy_phase_with_random_blob(use_mag):
    """Noise σ = 0.5 rad on the phase and a dark blob of random phase inside the mask (measured: 100 %)."""
    rng = np.random.default_rng(3)
    truth = smooth_truth(SHAPE) + 0.5 * rng.standard_normal(SHAPE).astype(np.float32)
    mask = ellipsoid(SHAPE)
    X, Y, Z = coordinates(SHAPE, (1, 1, 1))
    blob = (X - 8) ** 2 + (Y - 6) ** 2 + Z**2 <= 16
    wrapped = wrap(truth)
    wrapped[blob] = rng.uniform(-math.pi, math.pi, int(blob.sum())).astype(np.float32)
    mag = np.where(blob, 0.05, 1.0).astype(np.float32) * mask
    good = mask & ~blob
    res = unwrap_quality(wrapped, mag if use_mag else None, mask)
    assert correct_fraction(res, truth, good) >= 0.999
    assert congruent(res, wrapped, mask)


@pytest.mark.parametrize("method", UNWRAP_METHODS)
def test_nan_voxels_are_masked_out(method, smooth):
    wrapped, truth, mask = smooth
    rng = np.random.default_rng(0)
    bad = (rng.random(SHAPE) < 0.01) & mask
    bad[20:24, 20:24, 18:22] = True  # a block of NaN inside the brain
    phase = wrapped.copy()
    phase[bad] = np.nan
    phase[0, 0, 0] = np.inf
    res = unwrap(phase, method, mask=mask)
    assert np.all(np.isfinite(res))
    assert np.all(res[bad] == 0)
    good = mask & ~bad
    assert correct_fraction(res, truth, good) >= 0.999
    assert congruent(res, wrapped, good)


def test_nan_without_mask(smooth):
    wrapped, truth, mask = smooth
    phase = wrapped.copy()
    phase[10:14, 10:14, 10:14] = np.nan
    for method in UNWRAP_METHODS:
        res = unwrap(phase, method)
        assert np.all(np.isfinite(res)) and np.all(res[10:14, 10:14, 10:14] == 0)
        assert correct_fraction(res, truth, mask & np.isfinite(phase)) >= 0.999


def test_several_components_each_unwrapped(smooth):
    wrapped, truth, _ = smooth
    X, Y, Z = coordinates(SHAPE, (1, 1, 1))
    a = (X + 12) ** 2 + Y**2 + Z**2 <= 81
    b = (X - 12) ** 2 + Y**2 + Z**2 <= 81
    for method in UNWRAP_METHODS:
        res = unwrap(wrapped, method, mask=a | b)
        for part in (a, b):
            assert correct_fraction(res, truth, part) >= 0.999
            if method != "skimage":
                assert -math.pi <= float(res[part].mean()) < math.pi


def test_torch_in_torch_out_and_batch(smooth):
    wrapped, truth, mask = smooth
    t = torch.from_numpy(wrapped)
    res = unwrap_quality(t, mask=torch.from_numpy(mask))
    assert isinstance(res, torch.Tensor) and res.dtype == torch.float32
    batch = np.stack([wrapped, wrap(-truth)])
    out = unwrap_quality(batch, mask=mask)
    assert out.shape == (2, *SHAPE)
    np.testing.assert_allclose(out[0], res.numpy(), atol=1e-5)
    assert correct_fraction(out[1], -truth, mask) >= 0.999
    lap = unwrap_laplacian(batch, mask=mask)
    assert correct_fraction(lap[1], -truth, mask) >= 0.999


def test_skimage_adapter_matches_skimage(smooth):
    from skimage.restoration import unwrap_phase

    wrapped, _, mask = smooth
    ref = np.ma.filled(unwrap_phase(np.ma.masked_array(wrapped.astype(np.float64), ~mask), rng=0), 0.0)
    np.testing.assert_allclose(unwrap_skimage(wrapped, mask), ref, atol=1e-5)


# ------------------------------------------------------------------------------------------------ multi-echo
def multi_echo(te, shape=SHAPE):
    """Field f (Hz) with φ_e = 2π·f·TE_e (φ0 = 0); echo 1 wraps ~2 times, the last echo is spatially aliased."""
    f = smooth_truth(shape) / (TWO_PI * te[0])
    mask = ellipsoid(shape)
    f = f - f[mask].mean()  # mean phase 0 → the template's global correction has k = 0
    truth = np.stack([TWO_PI * f * t for t in te]).astype(np.float32)
    return wrap(truth), truth, mask


@pytest.mark.parametrize("method", UNWRAP_METHODS)
@pytest.mark.parametrize("te", [(0.004, 0.008, 0.012), (0.003, 0.0075, 0.012, 0.02)])
def test_multi_echo_recovers_all_echoes(method, te):
    wrapped, truth, mask = multi_echo(te)
    # later echoes alias spatially (neighbour differences > π), so only temporal unwrapping can recover them
    assert max_neighbour_difference(truth[-1], mask) > math.pi
    res = unwrap_multi_echo(wrapped, None, te, mask, method=method)
    assert res.shape == truth.shape
    for e in range(len(te)):
        assert correct_fraction(res[e], truth[e], mask) >= 0.999
        assert congruent(res[e], wrapped[e], mask)
    np.testing.assert_allclose(res[:, mask], truth[:, mask], atol=1e-3)


def test_multi_echo_template_and_magnitude():
    te = (0.004, 0.008, 0.012)
    wrapped, truth, mask = multi_echo(te)
    mag = np.stack([np.exp(-t / 0.03) * mask for t in te]).astype(np.float32)
    res = unwrap_multi_echo(wrapped, mag, te, mask, template=1)
    assert correct_fraction(res[2], truth[2], mask) >= 0.999
    assert correct_fraction(res[0], truth[0], mask) >= 0.999


def test_multi_echo_single_echo_is_spatial(smooth):
    wrapped, truth, mask = smooth
    res = unwrap_multi_echo(wrapped, mask=mask)
    np.testing.assert_allclose(res, unwrap_quality(wrapped, mask=mask), atol=1e-6)
    res1 = unwrap_multi_echo(wrapped[None], echo_times=[0.005], mask=mask)
    assert res1.shape == (1, *SHAPE) and correct_fraction(res1[0], truth, mask) >= 0.999


def test_multi_echo_nan_in_one_echo():
    te = (0.004, 0.008, 0.012)
    wrapped, truth, mask = multi_echo(te)
    wrapped = wrapped.copy()
    wrapped[2, 20, 20, 20] = np.nan
    res = unwrap_multi_echo(wrapped, None, te, mask)
    assert np.all(np.isfinite(res)) and np.all(res[:, 20, 20, 20] == 0)
    good = mask.copy()
    good[20, 20, 20] = False
    assert correct_fraction(res[2], truth[2], good) >= 0.999


# ------------------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_raise(smooth):
    wrapped, _, mask = smooth
    with pytest.raises(ValueError, match="phase"):
        unwrap_quality(wrapped[0])
    with pytest.raises(ValueError, match="phase"):
        unwrap_laplacian(wrapped.astype(np.complex64))
    with pytest.raises(ValueError, match="mask"):
        unwrap_quality(wrapped, mask=mask[:-1])
    with pytest.raises(ValueError, match="mask"):
        unwrap_laplacian(wrapped, mask=np.zeros(SHAPE, bool))
    with pytest.raises(ValueError, match="voxel_size"):
        unwrap_laplacian(wrapped, (1, 0, 1))
    with pytest.raises(ValueError, match="voxel_size"):
        unwrap_quality(wrapped, voxel_size=(1, 1))
    with pytest.raises(ValueError, match="method"):
        unwrap(wrapped, "goldstein")
    with pytest.raises(ValueError, match="magnitude"):
        unwrap_quality(wrapped, np.ones((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="echo_times"):
        unwrap_quality(wrapped, phase2=wrapped)
    with pytest.raises(ValueError, match="echo_times"):
        unwrap_quality(wrapped, phase2=wrapped, echo_times=(0.008, 0.004))
    with pytest.raises(ValueError, match="bands"):
        unwrap_quality(wrapped, bands=2)
    with pytest.raises(ValueError, match="tol"):
        unwrap_laplacian(wrapped, tol=0)
    with pytest.raises(ValueError, match="max_iter"):
        unwrap_laplacian(wrapped, max_iter=-1)
    with pytest.raises(ValueError, match="pad_factor"):
        unwrap_laplacian(wrapped, pad_factor=0.5)
    with pytest.raises(ValueError, match="phase"):
        unwrap_skimage(np.full(SHAPE, np.nan, np.float32))


def test_multi_echo_bad_inputs():
    te = (0.004, 0.008, 0.012)
    wrapped, _, mask = multi_echo(te)
    with pytest.raises(ValueError, match="echo_times"):
        unwrap_multi_echo(wrapped, None, None, mask)
    with pytest.raises(ValueError, match="echo_times"):
        unwrap_multi_echo(wrapped, None, (0.004, 0.012, 0.008), mask)
    with pytest.raises(ValueError, match="echo_times"):
        unwrap_multi_echo(wrapped, None, (0.004, 0.008), mask)
    with pytest.raises(ValueError, match="template"):
        unwrap_multi_echo(wrapped, None, te, mask, template=3)
    with pytest.raises(ValueError, match="method"):
        unwrap_multi_echo(wrapped, None, te, mask, method="prelude")
    with pytest.raises(ValueError, match="magnitude"):
        unwrap_multi_echo(wrapped, np.ones((2, *SHAPE), np.float32), te, mask)
    with pytest.raises(ValueError, match="phase"):
        unwrap_multi_echo(wrapped[None], None, te, mask)


# ------------------------------------------------------------------------------------------------ real data
@pytest.mark.skipif(not (ROMEO / "Phase.nii").exists(), reason="shared romeo_small data not present")
def test_romeo_small_smoke():
    """Real 7 T patch (ROMEO.jl test data, MIT): arbitrary phase units, nominal TE 4/8/12 ms (not stored)."""
    nib = pytest.importorskip("nibabel")
    phase = np.asarray(nib.load(ROMEO / "Phase.nii").dataobj, dtype=np.float32)
    mag = np.asarray(nib.load(ROMEO / "Mag.nii").dataobj, dtype=np.float32)
    phase = np.moveaxis(scale_phase(phase, "arbitrary"), -1, 0)
    mag = np.moveaxis(mag, -1, 0)
    te = (0.004, 0.008, 0.012)
    mask = np.ones(phase.shape[1:], dtype=bool)
    for method in UNWRAP_METHODS:
        res = unwrap_multi_echo(phase, mag, te, mask, voxel_size=(0.469, 0.469, 1.0), method=method)
        assert np.all(np.isfinite(res))
        for e in range(3):
            assert congruent(res[e], phase[e], mask)
    res = unwrap_quality(phase[0], mag[0], voxel_size=(0.469, 0.469, 1.0))
    assert np.all(np.isfinite(res)) and congruent(res, phase[0], mask)
    # plausibility: the spatially unwrapped first echo is smooth — its neighbour differences are mostly small
    assert np.mean(np.abs(np.diff(res, axis=0)) < math.pi) > 0.99


@pytest.mark.skipif(not (ROMEO / "phase_with_nan.nii").exists(), reason="shared romeo_small data not present")
def test_romeo_phase_with_nan():
    nib = pytest.importorskip("nibabel")
    phase = np.moveaxis(np.asarray(nib.load(ROMEO / "phase_with_nan.nii").dataobj, dtype=np.float32), -1, 0)
    for method in UNWRAP_METHODS:
        res = unwrap(phase, method)
        assert np.all(np.isfinite(res))
        assert np.all(res[~np.isfinite(phase)] == 0)
        ok = np.isfinite(phase)
        assert congruent(res[ok], phase[ok], np.ones(int(ok.sum()), bool))


# ------------------------------------------------------------------------------------------------ GPU parity
@pytest.mark.gpu
@pytest.mark.parametrize("method", ["laplacian", "quality"])
def test_gpu_parity(method, smooth):
    wrapped, _, mask = smooth
    cpu = unwrap(torch.from_numpy(wrapped), method, mask=torch.from_numpy(mask))
    gpu = unwrap(torch.from_numpy(wrapped).cuda(), method, mask=torch.from_numpy(mask).cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


@pytest.mark.gpu
def test_gpu_parity_multi_echo():
    te = (0.004, 0.008, 0.012)
    wrapped, _, mask = multi_echo(te)
    w, m = torch.from_numpy(wrapped), torch.from_numpy(mask)
    cpu = unwrap_multi_echo(w, None, te, m)
    gpu = unwrap_multi_echo(w.cuda(), None, te, m.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
