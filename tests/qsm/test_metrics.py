"""Tests for qsmbids.qsm.metrics: closed forms, cross-checks against QSM-CI's scorer and scipy/skimage, bad input.

Cross-check tolerances are relative 1e-8 unless said otherwise (measured differences are ~1e-15 to 1e-13:
both sides compute in float64 from identical float32-representable inputs).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from qsmbids.qsm import metrics as M

qsm_eval = pytest.importorskip("qsm_ci.qsm_eval")  # the QSM-CI scorer (numpy/scipy only)

REL = 1e-8
N = 40


def _smooth(rng, shape, sigma=2.0, scale=0.1):
    v = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (scale * v / v.std()).astype(np.float32).astype(np.float64)


def _ball(shape, radius, center=None):
    c = [(n - 1) / 2 for n in shape] if center is None else center
    g = np.meshgrid(*[np.arange(n) - ci for n, ci in zip(shape, c)], indexing="ij")
    return sum(a * a for a in g) <= radius * radius


@pytest.fixture(scope="module")
def pair():
    """Random smooth reference, a distorted estimate (scaled, offset, blurred, noisy) and two masks."""
    rng = np.random.default_rng(42)
    ref = _smooth(rng, (N, N, N)) + 0.02
    est = 0.8 * ndimage.gaussian_filter(ref, 0.8) + 0.01 + 0.3 * _smooth(rng, (N, N, N), 1.0, 0.02)
    est = est.astype(np.float32).astype(np.float64)
    interior = _ball((N, N, N), 12.0)  # ≥ 7 voxels from every edge
    edge = _ball((N, N, N), 18.0, center=(8.0, 20.0, 20.0))  # touches the volume boundary
    return est, ref, interior, edge


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


# ------------------------------------------------------------------------------------------------ known values


def test_identical_images_are_perfect(pair):
    _, ref, interior, _ = pair
    r = torch.from_numpy(ref)
    for mode in ("plain", "demeaned", "detrended"):
        assert M.nrmse(r, r, interior, mode=mode) == pytest.approx(0.0, abs=1e-12)
    assert M.hfen(r, r, interior) == pytest.approx(0.0, abs=1e-12)
    assert M.xsim(r, r, interior) == pytest.approx(1.0, abs=1e-12)
    assert M.xsim(r, r, interior, window="uniform") == pytest.approx(1.0, abs=1e-12)
    assert M.ssim(r, r, interior) == pytest.approx(1.0, abs=1e-12)
    assert M.correlation(r, r, interior) == pytest.approx(1.0, abs=1e-12)
    assert M.psnr(r, r, interior) == math.inf


def test_scaled_copy(pair):
    _, ref, interior, _ = pair
    r = torch.from_numpy(ref)
    x = 2.0 * r
    assert M.nrmse(x, r, interior) == pytest.approx(100.0, rel=1e-12)
    assert M.nrmse(x, r, interior, mode="demeaned") == pytest.approx(100.0, rel=1e-12)
    assert M.nrmse(x, r, interior, mode="detrended") == pytest.approx(0.0, abs=1e-10)
    assert M.hfen(x, r, interior) == pytest.approx(100.0, rel=1e-10)  # LoG is linear
    assert M.correlation(x, r, interior) == pytest.approx(1.0, abs=1e-12)
    assert M.correlation(-r, r, interior) == pytest.approx(-1.0, abs=1e-12)
    assert M.nrmse(-r, r, interior) == pytest.approx(200.0, rel=1e-12)


def test_shifted_copy(pair):
    _, ref, interior, _ = pair
    r = torch.from_numpy(ref)
    c = 0.05
    rv = ref[interior]
    expected = 100.0 * c * math.sqrt(rv.size) / np.linalg.norm(rv)
    assert M.nrmse(r + c, r, interior) == pytest.approx(expected, rel=1e-10)
    assert M.nrmse(r + c, r, interior, mode="demeaned") == pytest.approx(0.0, abs=1e-10)
    assert M.nrmse(3.0 * r - c, r, interior, mode="detrended") == pytest.approx(0.0, abs=1e-10)
    # the zero-mean 15³ LoG kills constants away from the edge; the raw sampled LoG does not
    assert M.hfen(r + c, r, interior) == pytest.approx(0.0, abs=1e-9)
    assert M.hfen(r + c, r, interior, zero_mean=False) > 1e-4
    # PSNR with a constant error: 10·log10(range² / c²)
    rng_ = rv.max() - rv.min()
    assert M.psnr(r + c, r, interior) == pytest.approx(10 * math.log10(rng_**2 / c**2), rel=1e-12)
    assert M.psnr(r + c, r, interior, peak=1.0) == pytest.approx(10 * math.log10(1.0 / c**2), rel=1e-12)


def test_detrended_equals_correlation_form(pair):
    est, ref, interior, _ = pair
    rho = M.correlation(est, ref, interior)
    want = 100.0 * math.sqrt(1.0 - rho**2) / abs(rho)
    assert M.nrmse(est, ref, interior, mode="detrended") == pytest.approx(want, rel=1e-6)
    # and a global scale/offset of the estimate does not change it
    x = torch.from_numpy(est)
    assert M.nrmse(2.5 * x - 0.3, torch.from_numpy(ref), interior, mode="detrended") == pytest.approx(
        M.nrmse(x, torch.from_numpy(ref), interior, mode="detrended"), rel=1e-10
    )


def test_numpy_in_float_out(pair):
    est, ref, interior, _ = pair
    v = M.nrmse(est.astype(np.float32), ref.astype(np.float32), interior)
    assert type(v) is float
    d = M.all_metrics(est.astype(np.float32), ref.astype(np.float32), interior)
    assert all(type(val) is float for val in d.values())
    assert set(d) == {
        "nrmse", "nrmse_demeaned", "nrmse_detrended", "hfen", "xsim", "xsim_uniform", "ssim", "psnr", "correlation"
    }


def test_batch_dims_pool_voxels(pair):
    est, ref, interior, _ = pair
    x = torch.from_numpy(np.stack([est, 2 * est]))
    r = torch.from_numpy(np.stack([ref, ref]))
    e2 = np.sum((est - ref)[interior] ** 2) + np.sum((2 * est - ref)[interior] ** 2)
    want = 100.0 * math.sqrt(e2 / (2 * np.sum(ref[interior] ** 2)))
    assert M.nrmse(x, r, interior) == pytest.approx(want, rel=1e-12)  # 3-D mask broadcast over the batch


def test_dgm_linearity_closed_form(head64):
    chi = head64.chi.astype(np.float64)
    rois = [k for k, v in head64.names.items() if v.split("_")[0] in ("caudate", "putamen", "pallidus", "thalamus")]
    assert len(rois) == 8
    for a in (0.7, 1.0, 1.4):
        got = M.dgm_linearity(torch.from_numpy(a * chi + 0.02), torch.from_numpy(chi), head64.labels, rois)
        assert got == pytest.approx(abs(1.0 - a), abs=1e-10)


def test_streaking_closed_form():
    shape = (32, 32, 32)
    calc = _ball(shape, 2.0)
    ref = np.where(calc, -0.5, 0.02)
    rng = np.random.default_rng(3)
    pattern = rng.choice([-0.01, 0.01], size=shape)
    x = np.where(calc, -0.4, 0.9 * ref + 0.005 + pattern)
    rim = M._dilate_mm(torch.from_numpy(calc), 7.0, (1.0, 1.0, 1.0)).numpy()
    rim &= ~M._dilate_mm(torch.from_numpy(calc), 3.0, (1.0, 1.0, 1.0)).numpy()
    want = np.std(pattern[rim]) / 0.4  # truth constant in the rim: the fit is the rim mean
    got = M.calcification_streaking(torch.from_numpy(x), torch.from_numpy(ref), calc)
    assert got == pytest.approx(want, rel=1e-10)
    # a perfect linear relation in the rim has no streaking
    assert M.calcification_streaking(torch.from_numpy(0.7 * ref), torch.from_numpy(ref), calc) == pytest.approx(
        0.0, abs=1e-12
    )


@pytest.mark.parametrize("voxel_size", [(1.0, 1.0, 1.0), (0.8, 1.0, 1.7)])
def test_default_rim_is_euclidean_shell(voxel_size):
    shape = (36, 36, 30)
    calc = _ball(shape, 2.5) | _ball(shape, 1.5, center=(20.0, 17.0, 16.0))
    d = ndimage.distance_transform_edt(~calc, sampling=voxel_size)
    want = (d > 3.0 + 1e-9) & (d <= 7.0 + 1e-9)
    got = M._dilate_mm(torch.from_numpy(calc), 7.0, voxel_size) & ~M._dilate_mm(torch.from_numpy(calc), 3.0, voxel_size)
    assert int(want.sum()) > 500
    assert np.array_equal(got.numpy(), want)


# ---------------------------------------------------------------------------------------- QSM-CI cross-checks


def test_nrmse_and_correlation_match_qsm_ci(pair, head64):
    est, ref, interior, edge = pair
    chi = head64.chi.astype(np.float64)
    rec = (0.9 * ndimage.gaussian_filter(chi, 1.0) + 0.01).astype(np.float32).astype(np.float64)
    for x, r, m in ((est, ref, interior), (est, ref, edge), (rec, chi, head64.mask)):
        dm, dt = qsm_eval.nrmse_challenge(x, r, m)
        xt, rt = torch.from_numpy(x), torch.from_numpy(r)
        assert _rel(M.nrmse(xt, rt, m, mode="demeaned"), dm) < REL
        assert _rel(M.nrmse(xt, rt, m, mode="detrended"), dt) < REL
        assert _rel(M.correlation(xt, rt, m), qsm_eval.correlation(x, r, m)) < REL
        # plain NRMSE is not in QSM-CI: numpy
        assert _rel(M.nrmse(xt, rt, m), 100 * np.linalg.norm((x - r)[m]) / np.linalg.norm(r[m])) < REL


def test_xsim_uniform_matches_qsm_ci(pair, head64):
    est, ref, interior, edge = pair
    chi = head64.chi.astype(np.float64)
    rec = (0.9 * ndimage.gaussian_filter(chi, 1.0) + 0.01).astype(np.float32).astype(np.float64)
    for x, r, m in ((est, ref, interior), (est, ref, edge), (rec, chi, head64.mask)):
        want = qsm_eval.xsim(x, r, m)  # 5³ box, windows truncated at the volume edge
        got = M.xsim(torch.from_numpy(x), torch.from_numpy(r), m, window="uniform")
        assert _rel(got, want) < REL
    # QSM-CI's score_arrays zeroes both maps outside the mask; all_metrics does the same
    got = M.all_metrics(torch.from_numpy(rec), torch.from_numpy(chi), head64.mask)
    scored, _ = qsm_eval.score_arrays(rec, chi, head64.mask.astype(np.uint8))
    assert _rel(got["xsim_uniform"], scored["xsim"]) < REL
    assert _rel(got["nrmse_demeaned"], scored["nrmse"]) < REL
    assert _rel(got["nrmse_detrended"], scored["nrmse_detrend"]) < REL
    assert _rel(got["correlation"], scored["correlation"]) < REL
    # HFEN: QSM-CI uses scipy's 17³ LoG; ours the 2016 challenge's zero-mean 15³ one (documented, ~1e-4 apart)
    assert _rel(got["hfen"], scored["hfen"]) < 1e-4


def test_hfen_matches_qsm_ci_with_its_kernel(pair, head64):
    est, ref, interior, edge = pair
    chi = head64.chi.astype(np.float64)
    rec = (0.9 * ndimage.gaussian_filter(chi, 1.0) + 0.01).astype(np.float32).astype(np.float64)
    for x, r, m in ((est, ref, interior), (est, ref, edge), (rec, chi, head64.mask)):
        want = qsm_eval.hfen(x, r, m)  # scipy gaussian_laplace(σ=1.5, truncate=5), mode "reflect"
        got = M.hfen(torch.from_numpy(x), torch.from_numpy(r), m, truncate=5.0, zero_mean=False, boundary="symmetric")
        assert _rel(got, want) < REL


def test_dgm_linearity_matches_qsm_ci(head64):
    chi = head64.chi.astype(np.float64)
    rng = np.random.default_rng(7)
    rec = (0.85 * chi + 0.01 + 0.01 * _smooth(rng, chi.shape, 3.0, 1.0)).astype(np.float32).astype(np.float64)
    names = ("caudate_l", "putamen_l", "pallidus_l", "thalamus_l", "red_nucleus", "putamen_r")
    ours = [k for k, v in head64.names.items() if v in names]
    seg = np.zeros_like(head64.labels)
    for new, old in enumerate(ours, start=1):  # QSM-CI reads DGM regions as labels 1–6
        seg[head64.labels == old] = new
    want = qsm_eval.dgm_linearity(rec, chi, seg)
    got = M.dgm_linearity(torch.from_numpy(rec), torch.from_numpy(chi), head64.labels, ours)
    assert _rel(got, want) < REL
    assert 0.05 < got < 0.3


def test_streaking_matches_qsm_ci():
    shape = (40, 40, 40)
    rng = np.random.default_rng(11)
    calc = _ball(shape, 2.2, center=(18.0, 21.0, 19.0))
    truth = np.where(calc, -0.6, 0.05 + _smooth(rng, shape, 3.0, 0.01).clip(-0.02, 0.02))
    streaks = 0.01 * np.cos(np.arange(40) * 0.9)[None, None, :] * np.ones(shape)
    rec = np.where(calc, -0.45 + 0.02 * rng.standard_normal(shape), 0.8 * truth + 0.01 + streaks)
    rec = rec.astype(np.float32).astype(np.float64)
    assert rec[~calc].min() > 0  # so QSM-CI's adaptive threshold is 0 and its calcification set is `calc`
    seg = np.where(calc, 16, 0)
    _, want = qsm_eval.calcification_metrics(rec, truth, seg)
    # QSM-CI's rim: the bounding box grown by 3 + 4 voxels minus the box grown by 3 (clipped to the volume)
    idx = np.nonzero(calc)
    inner = np.zeros(shape, bool)
    outer = np.zeros(shape, bool)
    inner[tuple(slice(max(i.min() - 3, 0), i.max() + 4) for i in idx)] = True
    outer[tuple(slice(max(i.min() - 7, 0), i.max() + 8) for i in idx)] = True
    got = M.calcification_streaking(torch.from_numpy(rec), torch.from_numpy(truth), calc, outer & ~inner)
    assert _rel(got, want) < REL
    assert 0.005 < got < 0.05


# ------------------------------------------------------------------------------- scipy / skimage cross-checks


def _ssim_map_scipy(x, r, c1, c2, **filt):
    f = lambda v: ndimage.gaussian_filter(v, **filt)  # noqa: E731
    mx, mr = f(x), f(r)
    vx, vr, cxr = f(x * x) - mx * mx, f(r * r) - mr * mr, f(x * r) - mx * mr
    return (2 * mx * mr + c1) * (2 * cxr + c2) / ((mx * mx + mr * mr + c1) * (vx + vr + c2))


def test_xsim_gaussian_matches_scipy(pair):
    est, ref, interior, edge = pair
    for m in (interior, edge):
        # Milovic's compute_xsim: imgaussfilt3(σ = 1.5, FilterSize 7), replicate padding
        smap = _ssim_map_scipy(est, ref, 1e-4, 1e-6, sigma=1.5, truncate=2.0, mode="nearest")
        got = M.xsim(torch.from_numpy(est), torch.from_numpy(ref), m)
        assert _rel(got, smap[m].mean()) < REL
    assert 0.3 < got < 0.99


def test_ssim_matches_skimage(pair):
    est, ref, interior, edge = pair
    L = float(ref[edge].max() - ref[edge].min())
    _, smap = structural_similarity(
        ref, est, data_range=L, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True
    )
    got = M.ssim(torch.from_numpy(est), torch.from_numpy(ref), edge)
    assert _rel(got, smap[edge].mean()) < REL
    _, umap = structural_similarity(ref, est, data_range=0.5, win_size=7, use_sample_covariance=False, full=True)
    got = M.ssim(torch.from_numpy(est), torch.from_numpy(ref), interior, window="uniform", data_range=0.5)
    assert _rel(got, umap[interior].mean()) < REL


def test_psnr_matches_skimage(pair):
    est, ref, interior, _ = pair
    rv, xv = ref[interior], est[interior]
    want = peak_signal_noise_ratio(rv, xv, data_range=rv.max() - rv.min())
    assert _rel(M.psnr(torch.from_numpy(est), torch.from_numpy(ref), interior), want) < REL


def test_hfen_matches_2016_challenge_kernel(pair):
    est, ref, interior, edge = pair
    # the 2016 challenge LoG written out: 15³ grid, normalised Gaussian times (|r|²/σ⁴ − 3/σ²), minus its mean
    s = 1.5
    g = np.mgrid[-7:8, -7:8, -7:8].astype(np.float64)
    r2 = (g**2).sum(0)
    h = np.exp(-r2 / (2 * s * s))
    h /= h.sum()
    H = h * (r2 / s**4 - 3 / s**2)
    H -= H.mean()
    lx = ndimage.convolve(est, H, mode="constant")
    lr = ndimage.convolve(ref, H, mode="constant")
    for m in (interior, edge):
        want = 100 * np.linalg.norm((lx - lr)[m]) / np.linalg.norm(lr[m])
        assert _rel(M.hfen(torch.from_numpy(est), torch.from_numpy(ref), m), want) < REL
    # challenge form: pre-masked maps, norms over the whole volume
    xm, rm = np.where(interior, est, 0), np.where(interior, ref, 0)
    lx, lr = ndimage.convolve(xm, H, mode="constant"), ndimage.convolve(rm, H, mode="constant")
    want = 100 * np.linalg.norm(lx - lr) / np.linalg.norm(lr)
    assert _rel(M.hfen(torch.from_numpy(xm), torch.from_numpy(rm)), want) < REL


# ------------------------------------------------------------------------------------------------- bad input


def test_bad_inputs(pair):
    est, ref, interior, _ = pair
    x, r = torch.from_numpy(est), torch.from_numpy(ref)
    with pytest.raises(ValueError, match="ref"):
        M.nrmse(x, r[:-1], interior)
    with pytest.raises(ValueError, match="mask"):
        M.xsim(x, r, np.zeros_like(interior))
    with pytest.raises(ValueError, match="mask"):
        M.nrmse(x, r, interior[:-1])
    bad = x.clone()
    bad[20, 20, 20] = float("nan")
    for fn in (M.nrmse, M.hfen, M.xsim, M.ssim, M.psnr, M.correlation):
        with pytest.raises(ValueError, match="x"):
            fn(bad, r, interior)
        with pytest.raises(ValueError, match="ref"):
            fn(r, bad, interior)
    outside = x.clone()
    outside[0, 0, 0] = float("nan")  # NaN outside the mask is ignored (set to 0 before filtering)
    assert math.isfinite(M.xsim(outside, r, interior)) and math.isfinite(M.hfen(outside, r, interior))
    with pytest.raises(ValueError, match="ref"):
        M.nrmse(x, torch.zeros_like(r), interior)
    with pytest.raises(ValueError, match="ref"):
        M.nrmse(x, torch.full_like(r, 0.1), interior, mode="demeaned")
    with pytest.raises(ValueError, match="ref"):
        M.correlation(x, torch.full_like(r, 0.1), interior)
    with pytest.raises(ValueError, match="x"):
        M.nrmse(torch.full_like(r, 0.1), r, interior, mode="detrended")
    with pytest.raises(ValueError, match="ref"):
        M.hfen(x, torch.zeros_like(r), interior)
    with pytest.raises(ValueError, match="x"):
        M.nrmse(x.to(torch.complex128), r)
    with pytest.raises(ValueError, match="x"):
        M.nrmse(x[0], r[0])
    with pytest.raises(ValueError, match="mode"):
        M.nrmse(x, r, mode="relative")
    with pytest.raises(ValueError, match="window"):
        M.xsim(x, r, window="box")
    with pytest.raises(ValueError, match="size"):
        M.xsim(x, r, size=4)
    with pytest.raises(ValueError, match="boundary"):
        M.hfen(x, r, boundary="truncate")
    with pytest.raises(ValueError, match="peak"):
        M.psnr(x, r, peak=-1.0)
    with pytest.raises(ValueError, match="data_range"):
        M.ssim(x, r, data_range=0.0)
    with pytest.raises(ValueError, match="sigma"):
        M.hfen(x, r, sigma=0.0)


def test_bad_region_inputs(head64):
    chi = torch.from_numpy(head64.chi.astype(np.float64))
    with pytest.raises(ValueError, match="labels"):
        M.dgm_linearity(chi, chi, head64.labels[:-1])
    with pytest.raises(ValueError, match="roi_labels"):
        M.dgm_linearity(chi, chi, head64.labels, [5, 99])
    calc = head64.labels == 14
    with pytest.raises(ValueError, match="calc_mask"):
        M.calcification_streaking(chi, chi, np.zeros_like(calc))
    with pytest.raises(ValueError, match="voxel_size"):
        M.calcification_streaking(chi, chi, calc, voxel_size=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="rim_mm"):
        M.calcification_streaking(chi, chi, calc, rim_mm=0.0)
    with pytest.raises(ValueError, match="rim_mask"):
        M.calcification_streaking(chi, chi, calc, calc)  # a rim inside the calcification is empty
    with pytest.raises(ValueError, match="x"):
        M.calcification_streaking(torch.zeros_like(chi), chi, calc)


# ---------------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_gpu_parity(head64):
    chi = head64.chi.astype(np.float64)
    rec = 0.9 * ndimage.gaussian_filter(chi, 1.0) + 0.01
    kw = dict(labels=head64.labels, calc_mask=head64.labels == 14)
    cpu = M.all_metrics(torch.from_numpy(rec), torch.from_numpy(chi), head64.mask, **kw)
    dev = torch.device("cuda")
    gpu = M.all_metrics(
        torch.from_numpy(rec).to(dev),
        torch.from_numpy(chi).to(dev),
        torch.from_numpy(head64.mask).to(dev),
        labels=torch.from_numpy(head64.labels).to(dev),
        calc_mask=torch.from_numpy(head64.labels == 14).to(dev),
    )
    assert set(cpu) == set(gpu)
    for k in cpu:
        assert gpu[k] == pytest.approx(cpu[k], rel=1e-4, abs=1e-6), k
    # float32 inputs on the GPU (TF32 must not leak in: the metrics run in float64)
    gpu32 = M.xsim(torch.from_numpy(rec).float().to(dev), torch.from_numpy(chi).float().to(dev), head64.mask)
    cpu32 = M.xsim(torch.from_numpy(rec).float(), torch.from_numpy(chi).float(), head64.mask)
    assert gpu32 == pytest.approx(cpu32, rel=1e-4)
