"""qsmbids.deep.infer: frame handling (resampling, rotation, padding), tiling, determinism, devices, threads.

Geometry is checked with stand-in models whose output is known (identity, TKD in the network frame, a local CNN
of known receptive field); the real default models (untrained, seeded) are used where the contract asks for them:
tiled vs whole-volume inference and the B0-rotation consistency of an unrolled model.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from qsmbids.deep.infer import default_overlap, infer, measure_overlap, resolve_device, tile_starts
from qsmbids.deep.models import build_model
from qsmbids.qsm.fourier import dipole_kernel, forward_field
from qsmbids.qsm.metrics import correlation
from qsmbids.qsm.phantoms import head_phantom


class Identity(torch.nn.Module):
    """Feed-forward stand-in returning the field inside the mask: infer() must then return its input."""

    name, kind, multiple = "identity", "feedforward", 16

    def __init__(self):
        super().__init__()
        self.config = {}
        self.seen: list[tuple] = []

    def forward(self, field, mask, kernel=None):
        self.seen.append((tuple(field.shape), torch.get_num_threads()))
        return field * mask


class TKDNet(torch.nn.Module):
    """Feed-forward stand-in doing exact physics in its own frame only: TKD with B0 along z of the 1 mm grid."""

    name, kind, multiple = "tkdnet", "feedforward", 8

    def __init__(self):
        super().__init__()
        self.config = {}

    def forward(self, field, mask, kernel=None):
        D = dipole_kernel(field.shape[-3:], (1, 1, 1), (0, 0, 1), half=True, device=field.device)
        K = torch.where(D.abs() > 0.15, 1 / D, torch.sign(D) / 0.15)
        x = torch.fft.irfftn(torch.fft.rfftn(field * mask, dim=(-3, -2, -1)) * K, s=field.shape[-3:], dim=(-3, -2, -1))
        return x * mask


class LocalCNN(torch.nn.Module):
    """Three 3³ convolutions (receptive radius exactly 3), fixed random weights: the tiling machinery's yardstick."""

    name, kind, multiple, receptive_field = "local", "feedforward", 1, 7

    def __init__(self):
        super().__init__()
        self.config = {}
        torch.manual_seed(0)
        self.convs = torch.nn.ModuleList(torch.nn.Conv3d(a, b, 3, padding=1) for a, b in ((1, 4), (4, 4), (4, 1)))

    def forward(self, field, mask, kernel=None):
        x = 10 * field
        for i, c in enumerate(self.convs):
            x = c(x)
            x = torch.tanh(x) if i < 2 else x
        return x / 10


def _phantom(shape=(40, 44, 36), vs=(1.0, 1.0, 1.0), b0=(0.0, 0.0, 1.0), seed=0):
    ph = head_phantom(shape, vs, seed=seed)
    field = (forward_field(ph.chi, vs, b0) * ph.mask).astype(np.float32)
    return ph.chi, ph.mask, field


def _tilt(deg: float, azimuth: float = 30.0) -> tuple[float, float, float]:
    t, a = math.radians(deg), math.radians(azimuth)
    return (math.sin(t) * math.cos(a), math.sin(t) * math.sin(a), math.cos(t))


# ------------------------------------------------------------------------------------------------------------
# frame handling
def test_isotropic_axial_input_is_not_resampled_at_all():
    _, mask, field = _phantom((23, 30, 17))  # odd sizes: padding to 16 and cropping back are integer slicing
    net = Identity()
    out, info = infer(field, mask, (1, 1, 1), (0, 0, -1), model=net, device="cpu", return_info=True)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == field.shape
    np.testing.assert_array_equal(out, field * mask)
    assert info["resampled"] is False and info["rotation_deg"] == 0.0 and info["tiles"] == 1
    assert all(n % 16 == 0 for n in info["grid"]) and net.seen[0][0][2:] == tuple(info["grid"])


def test_anisotropic_and_oblique_round_trips_return_the_field():
    """Resampling to 1 mm (and rotating B0 to z) and back is close to the identity for a smooth field."""
    vs = (0.9, 0.9, 1.6)
    _, mask, _ = _phantom((36, 40, 24), vs=vs)
    x, y, z = np.meshgrid(*[np.arange(n) * v for n, v in zip(mask.shape, vs)], indexing="ij")
    field = (0.02 * np.sin(x / 5 + y / 7) + 0.01 * np.cos(z / 6)).astype(np.float32) * mask
    inner = ndimage.binary_erosion(mask, iterations=2)
    for b0 in ((0.0, 0.0, 1.0), _tilt(25)):
        out, info = infer(field, mask, vs, b0, model=Identity(), device="cpu", return_info=True)
        assert out.shape == field.shape and info["resampled"]
        assert abs(info["rotation_deg"] - (25.0 if b0[2] < 1 else 0.0)) < 1e-6
        assert np.all(out[~mask] == 0)
        err = np.abs(out - field)
        assert err[inner].max() < 0.02 * np.abs(field).max(), b0  # trilinear there and back: O(h²) error
        assert err[mask].max() < 0.1 * np.abs(field).max(), b0  # the mask edge is extrapolated, not zeroed


def test_oblique_b0_is_rotated_into_the_model_frame():
    """A model that knows only B0 ∥ z inverts an oblique-B0 field correctly when infer() rotates it; with the
    wrong (axial) direction it cannot."""
    b0 = _tilt(35)
    chi, mask, field = _phantom(b0=b0)
    right = infer(field, mask, (1, 1, 1), b0, model=TKDNet(), device="cpu")
    wrong = infer(field, mask, (1, 1, 1), (0, 0, 1), model=TKDNet(), device="cpu")
    _, _, axial_field = _phantom()
    axial = infer(axial_field, mask, (1, 1, 1), (0, 0, 1), model=TKDNet(), device="cpu")
    assert correlation(right, chi, mask) > 0.88  # exact TKD with the oblique kernel: 0.95; trilinear blur costs a bit
    assert correlation(right, axial, mask) > 0.85
    assert correlation(wrong, chi, mask) < correlation(right, chi, mask) - 0.1


def test_unrolled_model_gets_the_true_kernel_and_is_consistent_across_b0():
    """modl (untrained = projected gradient descent on the dipole model): same χ for axial and oblique B0."""
    torch.manual_seed(0)
    net = build_model("modl", iterations=3, width=4, depth=2)
    chi, mask, axial_field = _phantom((32, 36, 28))
    _, _, oblique_field = _phantom((32, 36, 28), b0=_tilt(30))
    axial = infer(axial_field, mask, (1, 1, 1), (0, 0, 1), model=net, device="cpu")
    oblique, info = infer(oblique_field, mask, (1, 1, 1), _tilt(30), model=net, device="cpu", return_info=True)
    blind = infer(oblique_field, mask, (1, 1, 1), (0, 0, 1), model=net, device="cpu")
    assert info["rotation_deg"] == 0.0 and not info["resampled"]  # kernel, not rotation
    assert correlation(oblique, chi, mask) > 0.85 and correlation(axial, chi, mask) > 0.85  # both 0.89
    assert correlation(oblique, axial, mask) > 0.8  # 3 unconverged steps: streaks differ with B0 (0.84)
    assert correlation(blind, chi, mask) < correlation(oblique, chi, mask) - 0.2  # kernel for the wrong B0: 0.59


def test_real_models_odd_sizes_anisotropic_voxels_numpy_and_torch():
    _, mask, field = _phantom((21, 26, 15), vs=(1.1, 1.0, 1.5))
    torch.manual_seed(0)
    for name, cfg in (("unet", {}), ("nsidl", {"width": 4, "depth": 2, "iterations": 2})):
        net = build_model(name, **cfg)
        out = infer(field, mask, (1.1, 1.0, 1.5), _tilt(10), model=net, device="cpu")
        assert isinstance(out, np.ndarray) and out.shape == field.shape and out.dtype == np.float32
        assert np.isfinite(out).all() and np.all(out[~mask] == 0) and np.abs(out[mask]).max() > 0
        t = infer(torch.from_numpy(field), torch.from_numpy(mask), (1.1, 1.0, 1.5), _tilt(10), model=net, device="cpu")
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
        np.testing.assert_array_equal(t.numpy(), out)


def test_deterministic_and_empty_mask():
    _, mask, field = _phantom((24, 28, 20))
    torch.manual_seed(0)
    net = build_model("unet")
    a = infer(field, mask, (1, 1, 1), _tilt(20), model=net, device="cpu")
    b = infer(field.copy(), mask.copy(), (1, 1, 1), _tilt(20), model=net, device="cpu")
    np.testing.assert_array_equal(a, b)
    z = infer(field, np.zeros_like(mask), (1, 1, 1), (0, 0, 1), model=net, device="cpu")
    assert z.shape == field.shape and not z.any()


def test_bad_input_is_refused():
    _, mask, field = _phantom((16, 16, 16))
    with pytest.raises(ValueError, match="same shape"):
        infer(field, mask[:-1], (1, 1, 1), model=Identity(), device="cpu")
    bad = field.copy()
    bad[tuple(np.argwhere(mask)[0])] = np.nan
    with pytest.raises(ValueError, match="finite"):
        infer(bad, mask, (1, 1, 1), model=Identity(), device="cpu")
    with pytest.raises(ValueError, match="voxel_size"):
        infer(field, mask, (1, 0, 1), model=Identity(), device="cpu")


# ------------------------------------------------------------------------------------------------------------
# tiling
def test_tile_starts_cover_on_the_pooling_grid():
    for n, tile, ov, m in ((240, 224, 96, 16), (100, 40, 10, 4), (64, 64, 8, 8), (50, 20, 3, 1)):
        starts = tile_starts(n, tile, ov, m)
        assert all(s % m == 0 for s in starts) and starts[0] == 0 and starts[-1] + tile >= n
        covered = np.zeros(n, bool)
        for s in starts:  # kept centres must cover every voxel
            covered[(0 if s == 0 else s + ov) : (n if s + tile >= n else s + tile - ov)] = True
        assert covered.all()
    with pytest.raises(ValueError, match="tile"):
        tile_starts(100, 30, 14, 4)


def test_tiled_3d_equals_whole_for_a_known_receptive_field():
    _, mask, field = _phantom((40, 44, 36))
    net = LocalCNN()
    whole = infer(field, mask, (1, 1, 1), model=net, device="cpu")
    assert default_overlap(net) == 3
    tiled, info = infer(field, mask, (1, 1, 1), model=net, device="cpu", tile=16, return_info=True)
    assert info["tiles"] >= 27 and info["overlap"] == 3
    assert np.abs(tiled - whole).max() < 1e-6
    short, _ = infer(field, mask, (1, 1, 1), model=net, device="cpu", tile=16, overlap=1, return_info=True)
    assert np.abs(short - whole).max() > 1e-4  # too little context: the comparison above can fail
    assert measure_overlap(net, tol=1e-6, length=24, width=8)["overlap"] == 3


@pytest.mark.parametrize(("name", "overlap"), [("unet", None), ("xqsm", None), ("ir2qsm", 64)])
def test_tiled_equals_whole_for_the_default_models(name, overlap):
    """Slab-shaped volume tiled along z. unet/xqsm use the default overlap (half the theoretical receptive field,
    exact for any weights); ir2qsm's theoretical field (509 voxels) is impractical: 64 is its measured effective
    radius for these (seeded, untrained) weights, as measure_overlap reports."""
    torch.manual_seed(0)
    net = build_model(name)
    rng = np.random.default_rng(0)
    nz = 264 if overlap is None else 152
    mask = np.zeros((12, 12, nz), bool)
    mask[2:-2, 2:-2, 2:-2] = True
    field = (
        torch.nn.functional.avg_pool3d(
            torch.from_numpy(rng.standard_normal(mask.shape).astype(np.float32))[None, None], 5, 1, 2
        )[0, 0].numpy()
        * 0.2
        * mask
    )
    whole, wi = infer(field, mask, (1, 1, 1), model=net, device="cpu", return_info=True)
    tiled, ti = infer(
        field,
        mask,
        (1, 1, 1),
        model=net,
        device="cpu",
        tile=(64, 64, wi["grid"][2] - net.multiple),
        overlap=overlap,
        return_info=True,
    )
    assert wi["tiles"] == 1 and ti["tiles"] == 2 and ti["overlap"] == (overlap or default_overlap(net))
    assert np.abs(whole).max() > 2e-3  # the 1e-4 ppm bound is small against the output
    assert np.abs(tiled - whole).max() < 1e-4


# ------------------------------------------------------------------------------------------------------------
# devices and threads
def test_threads_are_applied_and_restored():
    _, mask, field = _phantom((16, 16, 16))
    net = Identity()
    before = torch.get_num_threads()
    infer(field, mask, (1, 1, 1), model=net, device="cpu", threads=2)
    assert net.seen[-1][1] == 2 and torch.get_num_threads() == before


def test_device_resolution():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            resolve_device("cuda")


@pytest.mark.gpu
def test_cuda_matches_cpu():
    _, mask, field = _phantom((32, 36, 28))
    torch.manual_seed(0)
    net = build_model("unet")
    cpu = infer(field, mask, (1, 1, 1), _tilt(15), model=net, device="cpu")
    gpu, info = infer(field, mask, (1, 1, 1), _tilt(15), model=net, device="auto", return_info=True)
    assert info["device"].startswith("cuda")
    assert np.abs(gpu - cpu).max() < 1e-4
