"""Synthetic training data: closed-form physics, shapes, reproducibility, validation seeds disjoint from training."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from qsmbids.deep.data import (
    CALCIFICATION_RANGE,
    HAEMORRHAGE_RANGE,
    VALIDATION_SEED_BASE,
    Batch,
    TrainingStream,
    head_patches,
    make_pair,
    random_b0_dir,
    random_chi,
    training_head_seeds,
    validation_head_seeds,
    validation_set,
)
from qsmbids.qsm.phantoms import sphere, sphere_field

FAST_HEADS = {"head_voxel_size": 3.0, "heads": 2}  # 3 mm heads (0.4 s each) treated as 1 mm: tests only


def _radius(shape, center_offset=(0.0, 0.0, 0.0)):
    axes = [np.arange(n) - (n - 1) / 2 - c for n, c in zip(shape, center_offset)]
    X, Y, Z = np.meshgrid(*axes, indexing="ij")
    return np.sqrt(X**2 + Y**2 + Z**2)


@pytest.mark.parametrize("b0", [(0.0, 0.0, 1.0), (0.0, math.sin(0.5), math.cos(0.5))])
def test_sphere_pair_matches_closed_form(b0):
    """A centred sphere: the cropped, padded simulation equals the analytic field away from the surface.

    (For an oblique B0 the sampled k-space kernel is not periodic across the Nyquist boundary, which leaves ~1 %
    of the peak field as slowly decaying error near the sphere; qsmbids.qsm.fourier.forward_field does the same.)
    """
    chi = 0.4 * sphere((64,) * 3, (1, 1, 1), 5.0, n_sub=3)
    field, chi_out, mask = make_pair(chi, np.ones_like(chi), np.random.default_rng(0), b0_dir=b0, crop_size=48)
    assert field.shape == chi_out.shape == mask.shape == (48, 48, 48)
    assert field.dtype == np.float32 and np.array_equal(chi_out, chi[8:56, 8:56, 8:56]) and mask.min() == 1
    ref = sphere_field((48,) * 3, (1, 1, 1), 5.0, 0.4, b0)
    far = _radius((48,) * 3) >= 10
    err = np.abs(field - ref)[far]
    assert err.max() < 0.01 * np.abs(ref).max()  # < 1 % of the peak field (~0.2 ppm)
    if b0[1] == 0:
        assert err.max() < 0.003 * np.abs(ref).max()
        for idx, sign in (((24, 24, 34), 1), ((34, 24, 24), -1)):  # along B0: positive lobe; across: negative
            assert sign * ref[idx] > 0.01 and abs(field[idx] - ref[idx]) < 0.02 * abs(ref[idx])


def test_sources_outside_the_crop_contribute():
    """A sphere in the margin (outside the kept patch) still produces the analytic field inside the patch."""
    chi = 0.4 * sphere((64,) * 3, (1, 1, 1), 4.0, center=(0.0, 0.0, 29.0), n_sub=3)
    field, chi_out, _ = make_pair(chi, np.ones_like(chi), np.random.default_rng(0), crop_size=48)
    assert np.abs(chi_out).max() < 1e-6  # no source inside the patch…
    ref = sphere_field((64, 64, 122), (1, 1, 1), 4.0, 0.4)[8:56, 8:56, 8:56]  # sphere centre at z index 60.5
    assert field.max() > 0.05  # …but its field is there
    far = _radius((48,) * 3, (0.0, 0.0, 29.0)) >= 7
    assert np.abs(field - ref)[far].max() < 0.01 * np.abs(ref).max()
    # simulating the patch alone would miss it entirely
    alone, _, _ = make_pair(chi[8:56, 8:56, 8:56], np.ones((48,) * 3), np.random.default_rng(0))
    assert np.abs(alone).max() < 1e-6


def test_make_pair_masks_sources_and_adds_noise_inside_the_mask():
    rng = np.random.default_rng(3)
    chi = np.zeros((40,) * 3, np.float32)
    chi[5:10, 5:10, 5:10] = 1.0  # a source outside the mask: not part of the local field
    mask = np.zeros((40,) * 3, bool)
    mask[:, :, 20:] = True
    field, chi_out, m = make_pair(chi, mask, rng, noise_ppm=0.01)
    assert np.all(field[:, :, :20] == 0) and np.all(chi_out[:, :, :20] == 0)
    assert set(np.unique(m)) == {0.0, 1.0}
    assert 0.0097 < field[:, :, 20:].std() < 0.0103  # only noise: the masked-out source left no field
    with pytest.raises(ValueError, match="crop"):
        make_pair(chi, mask, rng, crop_size=41)
    with pytest.raises(ValueError, match="same shape"):
        make_pair(chi, mask[:-1], rng)


def test_slice_thickness_low_passes_the_field_along_z_only():
    chi = random_chi((32,) * 3, np.random.default_rng(2))
    ones = np.ones_like(chi)
    sharp, _, _ = make_pair(chi, ones, np.random.default_rng(0), pad_factor=1.0)
    thick, _, _ = make_pair(chi, ones, np.random.default_rng(0), pad_factor=1.0, slice_mm=3.0)
    S, T = np.fft.rfft(sharp, axis=2), np.fft.rfft(thick, axis=2)
    kz = np.fft.rfftfreq(32)
    assert np.abs(T[:, :, kz > 1 / 6 + 1e-9]).max() < 1e-5 * np.abs(S).max()
    assert np.allclose(T[:, :, kz <= 1 / 6], S[:, :, kz <= 1 / 6], atol=1e-5 * np.abs(S).max())
    assert np.abs(S[:, :, kz > 1 / 6]).max() > 0.01 * np.abs(S).max()  # there was something to remove
    with pytest.raises(ValueError, match="slice_mm"):
        TrainingStream(patch=16, slice_mm=(0.5, 2.0))


def test_random_chi_reproducible_and_in_range():
    a = random_chi((48, 40, 32), np.random.default_rng(5))
    b = random_chi((48, 40, 32), np.random.default_rng(5))
    c = random_chi((48, 40, 32), np.random.default_rng(6))
    assert a.shape == (48, 40, 32) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert -0.3 < a.min() < a.max() < 0.5 and a.std() > 0.03  # ordinary contrast (+ texture) only by default
    assert len(np.unique(np.round(a, 2))) > 20  # many different values: shapes plus texture
    strong = random_chi((48,) * 3, np.random.default_rng(1), n_shapes=30, strong_prob=1.0, texture_ppm=0.0)
    assert strong.min() < CALCIFICATION_RANGE[1] and strong.max() > HAEMORRHAGE_RANGE[0]
    assert strong.min() >= CALCIFICATION_RANGE[0] - 1e-6 and strong.max() <= HAEMORRHAGE_RANGE[1] + 1e-6
    with pytest.raises(ValueError, match="shape"):
        random_chi((8, 8), np.random.default_rng(0))


def test_b0_directions_within_the_tilt():
    rng = np.random.default_rng(0)
    assert random_b0_dir(rng, 0) == (0.0, 0.0, 1.0)
    dirs = np.array([random_b0_dir(rng, 30.0) for _ in range(500)])
    assert np.allclose(np.linalg.norm(dirs, axis=1), 1.0)
    tilt = np.degrees(np.arccos(dirs[:, 2]))
    assert tilt.max() <= 30.0 + 1e-9 and tilt.max() > 25.0 and np.percentile(tilt, 50) > 15.0  # fills the cap


def test_stream_batches_shapes_and_determinism():
    s = TrainingStream(patch=16, batch=3, seed=7, mix=0.5, **FAST_HEADS)
    b = s.batch(4)
    assert isinstance(b, Batch) and len(b) == 3
    field, chi, mask = b
    for t in b:
        assert t.shape == (3, 1, 16, 16, 16) and t.dtype == torch.float32
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0} and mask.sum() > 0
    assert torch.all(field[mask == 0] == 0) and torch.all(chi[mask == 0] == 0)
    assert field.abs().max() > 1e-3 and b.b0_dir == (0.0, 0.0, 1.0)
    again = TrainingStream(patch=16, batch=3, seed=7, mix=0.5, **FAST_HEADS).batch(4)
    assert all(torch.equal(x, y) for x, y in zip(b, again))
    assert not torch.equal(s.batch(5)[0], field)
    assert not torch.equal(TrainingStream(patch=16, batch=3, seed=8, mix=0.5, **FAST_HEADS).batch(4)[0], field)
    it = s.iterate(4)
    assert torch.equal(next(it)[1], chi) and torch.equal(next(it)[1], s.batch(5)[1])
    restored = pickle.loads(pickle.dumps(b))  # data-loader workers send batches through pickle
    assert restored.b0_dir == b.b0_dir and torch.equal(restored.chi, chi)


def test_stream_mix_tilt_and_recipe():
    tilted = TrainingStream(patch=16, batch=2, seed=1, mix=0.0, b0_tilt_deg=20.0)
    dirs = {tilted.batch(i).b0_dir for i in range(4)}
    assert len(dirs) == 4 and all(math.degrees(math.acos(d[2])) <= 20.0 + 1e-9 for d in dirs)
    heads_only = TrainingStream(patch=16, batch=2, seed=1, mix=1.0, **FAST_HEADS)
    rec = heads_only.recipe()
    assert rec["head_seeds"] == training_head_seeds(1, 2) and rec["mix_head_fraction"] == 1.0 and rec["margin"] == 4
    for bad in ({"patch": 4}, {"batch": 0}, {"mix": 1.5}, {"noise": (0.02, 0.01)}):
        with pytest.raises(ValueError):
            TrainingStream(**{"patch": 16, **bad})


def test_head_patches_reproducible_with_brain_inside():
    a = head_patches(3, 16, seed=2, **FAST_HEADS)
    b = head_patches(3, 16, seed=2, **FAST_HEADS)
    assert len(a) == 3
    for (fa, ca, ma), (fb, cb, mb) in zip(a, b):
        assert fa.shape == (16, 16, 16) and np.array_equal(fa, fb) and np.array_equal(ca, cb)
        assert ma[7:9, 7:9, 7:9].any() and ma.mean() > 0.2  # centred on a brain voxel (flips move it by one)
        assert np.abs(ca).max() > 0.01 and np.abs(fa).max() > 1e-3


def test_validation_seeds_never_used_for_training():
    train_seeds = {s for seed in range(2000) for s in training_head_seeds(seed, 16)}
    val_seeds = {s for seed in (0, 1, 1234, 99999) for s in validation_head_seeds(seed, 8)}
    assert max(train_seeds) < VALIDATION_SEED_BASE <= min(val_seeds)
    assert not train_seeds & val_seeds
    val = validation_set(n=3, size=16, seed=1234, head_voxel_size=3.0)
    again = validation_set(n=3, size=16, seed=1234, head_voxel_size=3.0)
    assert [v["index"] for v in val] == [0, 1, 2]
    assert len({v["head_seed"] for v in val}) == 2  # two crops per head
    for v, w in zip(val, again):
        assert v["head_seed"] not in train_seeds and v["head_seed"] == w["head_seed"]
        assert v["field"].shape == v["chi"].shape == v["mask"].shape == (16, 16, 16)
        assert np.array_equal(v["field"], w["field"]) and np.array_equal(v["chi"], w["chi"])
        assert v["mask"].mean() > 0.3
    assert not np.array_equal(val[0]["chi"], val[1]["chi"])
