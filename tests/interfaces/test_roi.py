"""ROI interfaces: the atlas, registration of a moved simulated head, label resampling, statistics, segmentation
folders and the names of the ROI derivatives."""

from __future__ import annotations

import json
import math

import nibabel as nb
import numpy as np
import pytest

from qsmbids.reports.tables import (
    STAT_COLUMNS,
    SegmentationError,
    read_dseg_tsv,
    read_stats_tsv,
    roi_statistics,
)
from qsmbids.interfaces.roi import (
    ApplyAtlas,
    RegisterTemplate,
    ResampleSegmentation,
    RoiDataSink,
    RoiStats,
    atlas_label_image,
    atlas_names,
    check_segmentation_dir,
    find_segmentation,
    find_t1w,
    load_atlas,
)

# Harvard-Oxford label → simulator label (qsmbids.sim.phantom) for the four large deep grey nuclei
HO_TO_SIM = {5: 4, 16: 5, 6: 6, 17: 7, 7: 8, 18: 9, 4: 10, 15: 11}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


@pytest.fixture(scope="module")
def moved_head(tmp_path_factory):
    """A 3 mm simulated head turned by (8, −6, 5)° and shifted by (4, −3, 5) mm, as a 2-echo magnitude + mask."""
    from qsmbids.sim.phantom import make_head

    h = make_head(7, voxel_size=3.0, rotation_deg=(8.0, -6.0, 5.0), translation_mm=(4.0, -3.0, 5.0))
    d = tmp_path_factory.mktemp("head")
    e1 = np.exp(-h.r1 * 0.03)
    spgr = h.m0 * np.sin(np.radians(15)) * (1 - e1) / (1 - np.cos(np.radians(15)) * e1)
    mag = np.stack([spgr * np.exp(-h.r2star * te) for te in (0.004, 0.012)], -1).astype(np.float32)
    nb.save(nb.Nifti1Image(mag, h.affine), d / "mag.nii.gz")
    nb.save(nb.Nifti1Image(h.brain_mask.astype(np.uint8), h.affine), d / "mask.nii.gz")
    nb.save(nb.Nifti1Image(h.labels.astype(np.int16), h.affine), d / "truth.nii.gz")
    return {"dir": d, "head": h, "mag": str(d / "mag.nii.gz"), "mask": str(d / "mask.nii.gz")}


def test_atlas_description_and_labels():
    assert atlas_names() == ("HarvardOxford",)
    from qsmbids.config import ATLASES

    assert ATLASES == atlas_names()
    a = load_atlas("HarvardOxford")
    assert a.template.name == "MNI152_T1_1mm_brain.nii.gz" and a.space == "MNI152NLin6Asym"
    assert a.threshold == 50 and "non-commercial" in a.license
    img = atlas_label_image(a)
    lab = np.asanyarray(img.dataobj)
    assert set(np.unique(lab).tolist()) == {0, *a.labels}
    ijk = np.argwhere(lab == 6)  # Left_Putamen: left of the midline, 3.5–6.5 mL at a 50 % threshold
    x = (img.affine @ np.c_[ijk, np.ones(len(ijk))].T)[0]
    assert (x < 0).all() and 3500 < len(ijk) < 6500
    with pytest.raises(ValueError, match="atlas: expected one of HarvardOxford"):
        load_atlas("Talairach")


def test_roi_statistics_numbers():
    rng = np.random.default_rng(1)
    chi = rng.normal(0.1, 0.02, (20, 20, 20))
    lab = np.zeros(chi.shape, int)
    lab[:10] = 1
    lab[10:, :5] = 2
    support = np.ones(chi.shape, bool)
    support[:10, :, :10] = False  # half of region 1 outside the support
    rows = roi_statistics(chi, lab, {1: "one", 2: "two", 9: "absent"}, support, 0.5)
    r1 = rows[0]
    v = chi[(lab == 1) & support]
    assert (r1["voxels"], r1["volume_mm3"], r1["coverage"]) == (2000, 1000.0, 0.5)
    assert r1["mean"] == pytest.approx(v.mean()) and r1["std"] == pytest.approx(v.std(ddof=1))
    assert r1["iqr"] == pytest.approx(np.subtract(*np.percentile(v, [75, 25])))
    assert r1["p5"] < r1["median"] < r1["p95"] and r1["p95"] - r1["p5"] == pytest.approx(2 * 1.645 * 0.02, rel=0.1)
    assert rows[2]["voxels"] == 0 and math.isnan(rows[2]["mean"])


def test_register_and_apply_atlas_on_a_moved_head(moved_head, tmp_path):
    """Affine + SyN bring Harvard-Oxford onto the simulator's nuclei of a turned and shifted head."""
    reg = RegisterTemplate(in_file=moved_head["mag"], in_mask=moved_head["mask"]).run(cwd=str(tmp_path))
    assert reg.outputs.invert == [False] and reg.outputs.out_meta["grid_mm"] == 3.0
    app = ApplyAtlas(reference=moved_head["mag"], transforms=reg.outputs.transforms,
                     invert=reg.outputs.invert).run(cwd=str(tmp_path))
    out = nb.load(app.outputs.out_dseg)
    lab = np.asanyarray(out.dataobj)
    assert out.shape == moved_head["head"].labels.shape and out.get_data_dtype() == np.int16
    assert np.allclose(out.affine, moved_head["head"].affine)
    truth = moved_head["head"].labels
    d = {ho: dice(lab == ho, truth == sim) for ho, sim in HO_TO_SIM.items()}
    # the simulator's ellipsoids are smaller than the atlas's nuclei: perfect alignment gives Dice ≈ 0.49 (README)
    assert np.mean(list(d.values())) > 0.40 and min(d.values()) > 0.30, d
    # without the registration (atlas placed by world coordinates) the turned head scores far lower
    (tmp_path / "id").mkdir()
    ident = ApplyAtlas(reference=moved_head["mag"]).run(cwd=str(tmp_path / "id"))
    lab0 = np.asanyarray(nb.load(ident.outputs.out_dseg).dataobj)
    d0 = {ho: dice(lab0 == ho, truth == sim) for ho, sim in HO_TO_SIM.items()}
    assert np.mean(list(d.values())) > np.mean(list(d0.values())) + 0.1, (d, d0)
    assert read_dseg_tsv(app.outputs.out_tsv)[17] == "Right_Putamen"


def test_registration_is_deterministic(moved_head, tmp_path):
    """Fixed seed and one ITK thread: the same transform twice (coarse 6 mm grid to keep the test short)."""
    xfms = []
    for k in (1, 2):
        (tmp_path / str(k)).mkdir()
        reg = RegisterTemplate(in_file=moved_head["mag"], in_mask=moved_head["mask"], resolution_mm=6.0,
                               syn_iterations=[10, 0]).run(cwd=str(tmp_path / str(k)))
        xfms.append(reg.outputs.xfm_from_template)
    import ants

    pts = np.array([[0.0, 0.0, 0.0], [20.0, -30.0, 10.0], [-25.0, 5.0, -5.0]])
    import pandas as pd

    moved = [ants.apply_transforms_to_points(3, pd.DataFrame(pts, columns=list("xyz")), [x]).to_numpy() for x in xfms]
    assert np.array_equal(moved[0], moved[1])
    assert not np.allclose(moved[0], pts, atol=1.0)  # and it is not the identity


def test_resample_segmentation_rigid_vs_world(moved_head, tmp_path):
    """A segmentation on another grid, with its anatomy shifted by 9 mm: the rigid registration recovers it,
    plain world-coordinate resampling cannot."""
    h = moved_head["head"]
    shift = h.affine.copy()
    shift[:3, 3] += (9.0, -6.0, 3.0)
    seg = tmp_path / "sub-01_desc-test_dseg.nii.gz"
    nb.save(nb.Nifti1Image(h.labels.astype(np.int16), shift), seg)
    tsv = tmp_path / "sub-01_desc-test_dseg.tsv"
    tsv.write_text("index\tname\n" + "".join(f"{k}\t{v}\n" for k, v in h.names.items()))
    anat = tmp_path / "anat.nii.gz"
    nb.save(nb.Nifti1Image(np.asanyarray(nb.load(moved_head["mag"]).dataobj)[..., 0], shift), anat)
    scores = {}
    for how, extra in (("rigid", {"anat": str(anat)}), ("world", {})):
        wd = tmp_path / how
        wd.mkdir()
        res = ResampleSegmentation(in_dseg=str(seg), in_tsv=str(tsv), reference=moved_head["mag"], **extra).run(
            cwd=str(wd))
        out = np.asanyarray(nb.load(res.outputs.out_dseg).dataobj)
        scores[how] = np.mean([dice(out == k, h.labels == k) for k in (3, 6, 10)])  # WM, putamen, thalamus
    assert scores["rigid"] > 0.85 and scores["world"] < 0.6, scores
    nb.save(nb.Nifti1Image(h.labels.astype(np.int16), h.affine), tmp_path / "same.nii.gz")
    res = ResampleSegmentation(in_dseg=str(tmp_path / "same.nii.gz"), in_tsv=str(tsv),
                               reference=moved_head["mag"]).run(cwd=str(tmp_path))
    assert np.array_equal(np.asanyarray(nb.load(res.outputs.out_dseg).dataobj), h.labels)
    assert "as is" in res.outputs.out_meta["how"]


def test_roi_stats_interface(tmp_path):
    chi = np.zeros((8, 8, 8), np.float32)
    chi[2:6, 2:6, 2:6] = 0.05
    chi[2:4, 2:6, 2:6] = 0.15
    lab = np.zeros(chi.shape, np.int16)
    lab[2:4, 2:6, 2:6] = 1
    lab[4:6, 2:6, 2:6] = 2
    lab[7, 7, 7] = 3  # outside the support (χ = 0)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    nb.save(nb.Nifti1Image(chi, aff), tmp_path / "chi.nii.gz")
    nb.save(nb.Nifti1Image(lab, aff), tmp_path / "lab.nii.gz")
    (tmp_path / "lab.tsv").write_text("index\tname\n1\tA\n2\tB\n3\tC\n")
    res = RoiStats(in_chimap=str(tmp_path / "chi.nii.gz"), in_dseg=str(tmp_path / "lab.nii.gz"),
                   in_tsv=str(tmp_path / "lab.tsv"), atlas="Test", method="medi", reference="mean").run(
        cwd=str(tmp_path))
    rows = read_stats_tsv(res.outputs.out_tsv)
    assert [r["name"] for r in rows] == ["A", "B", "C"]
    assert rows[0]["mean"] == pytest.approx(0.15) and rows[1]["mean"] == pytest.approx(0.05)
    assert rows[0]["voxels"] == 32 and rows[0]["volume_mm3"] == 256.0 and rows[0]["std"] == pytest.approx(0, abs=1e-7)
    assert rows[2]["voxels"] == 0 and math.isnan(rows[2]["mean"]) and rows[2]["coverage"] == 0.0
    meta = res.outputs.out_meta
    assert meta["Method"] == "medi" and meta["Atlas"] == "Test" and meta["mean"]["Units"] == "ppm"
    assert set(STAT_COLUMNS) <= set(meta)
    assert "<table" in (tmp_path / "roistats.html").read_text() and "C" in (tmp_path / "roistats.html").read_text()


def _seg_tree(root, tsv_text: str | None = "index\tname\n4\tLeft-Thalamus\n5\tLeft-Caudate\n",
              values=(0, 4, 5)):
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    data = np.zeros((4, 4, 4), np.int16)
    data.flat[: len(values)] = values
    nb.save(nb.Nifti1Image(data, np.eye(4)), anat / "sub-01_desc-aseg_dseg.nii.gz")
    if tsv_text is not None:
        (anat / "sub-01_desc-aseg_dseg.tsv").write_text(tsv_text)
    return anat


def test_segmentation_dir_checks(tmp_path):
    ok = tmp_path / "ok"
    _seg_tree(ok)
    assert check_segmentation_dir(ok) == 1
    inherited = tmp_path / "inherited"  # dataset-level desc-aseg_dseg.tsv (BIDS inheritance, fMRIPrep style)
    _seg_tree(inherited, tsv_text=None)
    (inherited / "desc-aseg_dseg.tsv").write_text("index\tname\n4\tA\n5\tB\n")
    assert check_segmentation_dir(inherited) == 1
    cases = {
        "missing": (None, (0, 4, 5), "no labels TSV"),
        "inconsistent": ("index\tname\n4\tA\n", (0, 4, 5, 7), r"inconsistent .* label value\(s\) 5, 7 have no row"),
        "columns": ("label\tregion\n4\tA\n", (0, 4), "needs 'index' and 'name' columns"),
        "index": ("index\tname\nfour\tA\n", (0, 4), "index 'four' is not an integer"),
        "twice": ("index\tname\n4\tA\n4\tB\n", (0, 4), "index 4 appears twice"),
    }
    for name, (text, values, match) in cases.items():
        root = tmp_path / name
        _seg_tree(root, text, values)
        with pytest.raises(SegmentationError, match=match) as exc:
            check_segmentation_dir(root)
        assert "\n" not in str(exc.value)
    with pytest.raises(SegmentationError, match="no sub-"):
        check_segmentation_dir(ok, ["02"])
    with pytest.raises(SegmentationError, match="not a folder"):
        check_segmentation_dir(tmp_path / "nowhere")


def test_find_segmentation_and_t1w(tmp_path):
    anat = _seg_tree(tmp_path / "seg")
    nb.save(nb.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), anat / "sub-01_desc-aparcaseg_dseg.nii.gz")
    nb.save(nb.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)),
            anat / "sub-01_space-MNI152NLin2009cAsym_desc-aseg_dseg.nii.gz")
    dseg, tsv = find_segmentation(tmp_path / "seg", {"subject": "01"})
    assert dseg.name == "sub-01_desc-aseg_dseg.nii.gz" and tsv.name == "sub-01_desc-aseg_dseg.tsv"
    ses = tmp_path / "seg" / "sub-01" / "ses-b" / "anat"
    ses.mkdir(parents=True)
    nb.save(nb.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), ses / "sub-01_ses-b_dseg.nii.gz")
    assert find_segmentation(tmp_path / "seg", {"subject": "01", "session": "b"})[0].parent == ses
    assert find_segmentation(tmp_path / "seg", {"subject": "02"}) is None
    raw = tmp_path / "raw"
    for p in ("sub-01/anat/sub-01_T1w.nii.gz", "sub-01/ses-b/anat/sub-01_ses-b_T1w.nii.gz"):
        (raw / p).parent.mkdir(parents=True, exist_ok=True)
        (raw / p).write_bytes(b"")
    assert find_t1w(raw, {"subject": "01", "session": "b"}).endswith("sub-01_ses-b_T1w.nii.gz")
    assert find_t1w(raw, {"subject": "01", "session": "c"}).endswith("sub-01/anat/sub-01_T1w.nii.gz")
    assert find_t1w(raw, {"subject": "02"}) is None


def test_roi_sink_names(tmp_path):
    raw = tmp_path / "raw" / "sub-01" / "ses-2" / "anat"
    raw.mkdir(parents=True)
    src = raw / "sub-01_ses-2_acq-fast_run-1_echo-1_part-phase_MEGRE.nii.gz"
    src.write_bytes(b"")
    nb.save(nb.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), tmp_path / "d.nii.gz")
    for name, text in (("x.h5", "h5"), ("s.tsv", "index\tname\n"), ("r.mat", "m")):
        (tmp_path / name).write_text(text)
    cases = [
        ({"in_file": str(tmp_path / "d.nii.gz"), "desc": "HarvardOxford", "suffix": "dseg", "compress": True},
         "sub-01_ses-2_acq-fast_run-1_desc-HarvardOxford_dseg.nii.gz"),
        ({"in_file": str(tmp_path / "s.tsv"), "desc": "HarvardOxford", "suffix": "dseg"},
         "sub-01_ses-2_acq-fast_run-1_desc-HarvardOxford_dseg.tsv"),
        ({"in_file": str(tmp_path / "x.h5"), "suffix": "xfm", "to": "MNI152NLin6Asym", "mode": "image",
          "from": "MEGRE"}, "sub-01_ses-2_acq-fast_run-1_from-MEGRE_to-MNI152NLin6Asym_mode-image_xfm.h5"),
        ({"in_file": str(tmp_path / "r.mat"), "suffix": "xfm", "to": "T1w", "mode": "image", "from": "MEGRE"},
         "sub-01_ses-2_acq-fast_run-1_from-MEGRE_to-T1w_mode-image_xfm.mat"),
        ({"in_file": str(tmp_path / "s.tsv"), "segmentation": "HarvardOxford", "desc": "tkd", "suffix": "stats",
          "meta_dict": {"Method": "tkd"}}, "sub-01_ses-2_acq-fast_run-1_seg-HarvardOxford_desc-tkd_stats.tsv"),
    ]
    for kw, expected in cases:
        res = RoiDataSink(base_directory=str(tmp_path / "out"), source_file=str(src), **kw).run(cwd=str(tmp_path))
        assert res.outputs.out_file == str(tmp_path / "out" / "sub-01" / "ses-2" / "anat" / expected)
    side = tmp_path / "out/sub-01/ses-2/anat/sub-01_ses-2_acq-fast_run-1_seg-HarvardOxford_desc-tkd_stats.json"
    assert json.loads(side.read_text())["Method"] == "tkd"
