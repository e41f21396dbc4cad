"""Tests for the realistic MNI-template head phantom (qsmbids.sim.phantom); 2 mm grids keep them fast."""

from __future__ import annotations

import numpy as np
import pytest

from qsmbids.sim.phantom import GRID_BOX_MM, LABEL_NAMES, HeadModel, make_head

NO_MOTION = {"rotation_deg": (0.0, 0.0, 0.0), "translation_mm": (0.0, 0.0, 0.0)}

# Stated MNI centres (mm) of the deep nuclei (left side; right = mirrored x).
CENTRES = {
    "caudate": (-13.0, 12.0, 10.0),
    "putamen": (-25.0, 2.0, 0.0),
    "globus_pallidus": (-19.0, -3.0, -1.0),
    "thalamus": (-11.0, -18.0, 7.0),
    "substantia_nigra": (-11.0, -18.0, -12.0),
    "red_nucleus": (-5.0, -20.0, -8.0),
    "dentate": (-15.0, -57.0, -35.0),
}


@pytest.fixture(scope="module")
def head() -> HeadModel:
    return make_head(0, voxel_size=2.0, **NO_MOTION)


@pytest.fixture(scope="module")
def head_lesions() -> HeadModel:
    return make_head(3, voxel_size=2.0, lesions=True)


def _index(h: HeadModel, name: str) -> int:
    inv = {v: k for k, v in h.names.items()}
    assert name in inv, f"{name} missing from {sorted(inv)}"
    return inv[name]


def _means(h: HeadModel) -> dict[str, dict]:
    return {r["name"]: r for r in h.labels_table()}


def test_shapes_dtypes_affine(head):
    expected = tuple(int((b - a) // 2.0) + 1 for a, b in GRID_BOX_MM)
    assert head.chi.shape == expected == (105, 128, 109)
    for arr in (head.chi, head.m0, head.r1, head.r2star):
        assert arr.dtype == np.float32 and arr.shape == expected and np.isfinite(arr).all()
    assert head.labels.dtype == np.int16 and head.brain_mask.dtype == bool and head.head_mask.dtype == bool
    np.testing.assert_allclose(head.affine[:3, :3], 2.0 * np.eye(3))
    np.testing.assert_allclose(head.affine[:3, 3], [b[0] for b in GRID_BOX_MM])
    assert head.voxel_size == (2.0, 2.0, 2.0) and head.field_strength == 3.0


def test_label_set_and_names_complete(head, head_lesions):
    # realistic anatomy (the default): the extracranial tissues of qsmbids.sim.anatomy instead of one "scalp"
    base = {"air", "csf", "gm", "wm", "superior_sagittal_sinus", "straight_sinus", "skull", "sinus_air", "dura",
            "diploe", "fat", "skin", "muscle", "vitreous", "optic_nerve", "mucosa", "spinal_cord"}
    for n in CENTRES:
        base |= {f"{n}_left", f"{n}_right"}
    assert set(head.names.values()) == base
    simple = make_head(0, voxel_size=2.0, anatomy="simple", **NO_MOTION)
    assert set(simple.names.values()) == (base - {"dura", "diploe", "fat", "skin", "muscle", "vitreous",
                                                  "optic_nerve", "mucosa", "spinal_cord"}) | {"scalp"}
    assert set(head_lesions.names.values()) == base | {"calcification", "haemorrhage", "ms_lesion"}
    assert set(np.unique(head.labels).tolist()) == set(head.names)
    assert head.names[0] == "air" and set(LABEL_NAMES.values()) >= set(head_lesions.names.values())
    rows = head.labels_table()
    assert [r["index"] for r in rows] == sorted(head.names)
    assert all(set(r) == {"index", "name", "chi_ppm", "m0", "r1", "r2star"} for r in rows)


@pytest.mark.parametrize("nucleus", sorted(CENTRES))
def test_deep_nuclei_at_mni_positions(head, nucleus):
    for side, sx in (("left", 1.0), ("right", -1.0)):
        lab = _index(head, f"{nucleus}_{side}")
        idx = np.argwhere(head.labels == lab)
        assert len(idx) > 5
        centroid = head.affine[:3, :3] @ idx.mean(0) + head.affine[:3, 3]
        target = np.array(CENTRES[nucleus]) * [sx, 1.0, 1.0]
        assert np.linalg.norm(centroid - target) < 5.0, (nucleus, side, centroid, target)
        assert head.brain_mask[head.labels == lab].all()


def test_chi_values_and_signs(head, head_lesions):
    m = _means(head)
    chi = {k: v["chi_ppm"] for k, v in m.items()}
    for side in ("left", "right"):
        assert chi[f"globus_pallidus_{side}"] > chi[f"putamen_{side}"] > chi[f"caudate_{side}"] > 0
        assert 0.10 < chi[f"globus_pallidus_{side}"] < 0.30
        assert 0.05 < chi[f"substantia_nigra_{side}"] < 0.25
    assert -0.08 < chi["wm"] < 0 < chi["gm"] < 0.06
    # intracranial CSF is the reference; the thin extracranial CSF layer of the realistic head shares voxels with
    # bone (partial volume), so the label mean over the whole head is not ≈ 0 any more
    assert abs(float(head.chi[(head.labels == 1) & head.brain_mask].mean())) < 0.01
    assert chi["superior_sagittal_sinus"] > 0.2 and chi["straight_sinus"] > 0.2
    # skull: cortical bone −2 ppm; the realistic skull's thin tables share voxels with marrow, CSF and soft tissue
    assert -3.0 < chi["skull"] < -1.0 and -3.0 < float(head.chi[head.labels == _index(head, "skull")].min()) < -1.5
    # sinus air (+9.4 ppm) is lined by mucosa: partial volume lowers the label mean, the core keeps the value
    sinus = head.chi[head.labels == _index(head, "sinus_air")]
    assert chi["air"] == pytest.approx(9.4, abs=0.05) and float(sinus.max()) == pytest.approx(9.4) and sinus.mean() > 7
    ml = {k: v["chi_ppm"] for k, v in _means(head_lesions).items()}
    assert ml["calcification"] < -0.1 and ml["haemorrhage"] > 0.4 and 0 < ml["ms_lesion"] < 0.1
    # texture is small: χ std inside the thalamus core stays below 0.02 ppm
    assert float(head.chi[head.labels == _index(head, "thalamus_left")].std()) < 0.02


@pytest.mark.parametrize("anatomy", ["realistic", "simple"])
def test_brain_inside_head_air_outside(head, anatomy):
    if anatomy == "simple":
        head = make_head(0, voxel_size=2.0, anatomy="simple", **NO_MOTION)
    assert head.brain_mask.sum() * 8 > 1.0e6  # > 1 L of intracranial volume (mm³)
    assert not (head.brain_mask & ~head.head_mask).any()
    air = head.labels == 0
    assert (head.m0[~head.head_mask] == 0).all()
    if anatomy == "simple":
        assert not (air & head.head_mask).any()
    else:  # partial volume: a voxel labelled air (its largest fraction) may hold a little skin
        assert float(head.m0[air].max()) < 0.5
    # grid corners and faces away from the neck are air
    assert air[0].all() and air[-1].all() and air[:, 0].all() and air[:, -1].all() and air[:, :, -1].all()
    # the brain is enclosed: every brain voxel is ≥ 8 mm (CSF + skull) from air in x
    xs = np.where(head.brain_mask.any((1, 2)))[0]
    hx = np.where(head.head_mask.any((1, 2)))[0]
    assert xs[0] - hx[0] >= 4 and hx[-1] - xs[-1] >= 4
    # internal air pockets exist inside the head outline
    assert (head.labels == _index(head, "sinus_air")).sum() > 100
    assert (head.m0[head.brain_mask] > 0).all() and (head.r1[head.head_mask] > 0).all()


def test_r2star_scales_with_field(head):
    h7 = make_head(0, voxel_size=2.0, field_strength=7.0, **NO_MOTION)
    np.testing.assert_array_equal(h7.labels, head.labels)
    np.testing.assert_array_equal(h7.chi, head.chi)
    np.testing.assert_allclose(h7.r2star, head.r2star * (7.0 / 3.0), rtol=1e-5, atol=1e-4)
    wm = _means(head)["wm"]["r2star"]
    assert 15.0 < wm < 25.0 and h7.field_strength == 7.0


def test_seed_determinism_and_variation():
    a = make_head(5, voxel_size=2.5)
    b = make_head(5, voxel_size=2.5)
    c = make_head(6, voxel_size=2.5)
    for f in ("chi", "labels", "m0", "r1", "r2star", "brain_mask", "head_mask"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert a.rotation_deg == b.rotation_deg and a.rotation_deg != c.rotation_deg
    assert all(abs(r) <= 10 for r in a.rotation_deg) and all(abs(t) <= 5 for t in a.translation_mm)
    assert not np.array_equal(a.chi, c.chi) and not np.array_equal(a.labels, c.labels)


def test_motion_moves_the_nuclei():
    h = make_head(0, voxel_size=2.0, rotation_deg=(0.0, 0.0, 0.0), translation_mm=(4.0, 0.0, -6.0),
                  jitter=0.0, texture_ppm=0.0)
    idx = np.argwhere(h.labels == _index(h, "thalamus_right"))
    centroid = h.affine[:3, :3] @ idx.mean(0) + h.affine[:3, 3]
    np.testing.assert_allclose(centroid, [11 + 4, -18, 7 - 6], atol=1.5)
    # jitter=0, no texture: χ reaches exactly the nominal value in the core of a nucleus
    assert float(h.chi[h.labels == _index(h, "globus_pallidus_left")].max()) == pytest.approx(0.19, abs=1e-6)


@pytest.mark.parametrize("kw, arg", [
    ({"voxel_size": 0.2}, "voxel_size"), ({"voxel_size": 6.0}, "voxel_size"),
    ({"voxel_size": float("nan")}, "voxel_size"), ({"field_strength": 0.0}, "field_strength"),
    ({"field_strength": -3.0}, "field_strength"), ({"jitter": -0.1}, "jitter"),
    ({"texture_ppm": -1.0}, "texture_ppm"), ({"rotation_deg": (1.0, 2.0)}, "rotation_deg"),
    ({"translation_mm": (0.0, float("inf"), 0.0)}, "translation_mm"),
])
def test_bad_input(kw, arg):
    with pytest.raises(ValueError, match=f"^{arg}"):
        make_head(0, **kw)
