"""Plausibility checks of the report (real data have no truth): the verdicts, the regions and the interface."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from qsmbids.interfaces.plausibility import Plausibility, plausibility_checks, plausibility_html, white_matter_prior


def _head(pallidum_ppm: float = 0.12):
    chi = np.zeros((20, 20, 20))
    lab = np.zeros((20, 20, 20), np.int64)
    lab[2:6, 2:8, 2:8] = 7  # pallidum
    lab[2:6, 10:16, 2:8] = 5  # caudate
    lab[10:18, 2:18, 2:18] = 2  # white matter (FreeSurfer-style label)
    chi[lab == 7] = pallidum_ppm
    chi[lab == 5] = 0.05
    chi[lab == 2] = -0.03
    return chi, lab


NAMES = {7: "Left-Pallidum", 5: "Left-Caudate", 2: "Left-Cerebral-White-Matter"}


def _status(d):
    return {c["name"]: c["status"] for c in d["checks"]}


def test_plausible_head_passes_every_check():
    chi, lab = _head()
    d = plausibility_checks(chi, np.ones_like(chi, bool), brain_volume_ml=1350.0, poor_fit_fraction=0.02,
                            labels=lab, names=NAMES)
    assert _status(d) == {"brain_volume": "ok", "echo_fit": "ok", "nuclei_above_white_matter": "ok"}
    assert d["checks"][2]["value"] == pytest.approx(0.15)
    assert d["regions"]["white_matter"]["source"] == "the segmentation's white-matter labels"
    assert d["warnings"] == []


@pytest.mark.parametrize(("volume", "poor", "pallidum", "failing"), [
    (2800.0, 0.02, 0.12, "brain_volume"),  # the whole head
    (500.0, 0.02, 0.12, "brain_volume"),  # a slab or a mask that lost brain
    (1400.0, 0.35, 0.12, "echo_fit"),  # unwrapping errors
    (1400.0, 0.02, -0.08, "nuclei_above_white_matter"),  # χ with the wrong sign or contrast
])
def test_implausible_maps_warn(volume, poor, pallidum, failing):
    chi, lab = _head(pallidum)
    d = plausibility_checks(chi, np.ones_like(chi, bool), brain_volume_ml=volume, poor_fit_fraction=poor,
                            labels=lab, names=NAMES)
    assert [c["name"] for c in d["checks"] if c["status"] == "warn"] == [failing]
    assert len(d["warnings"]) == 1 and d["warnings"][0].startswith(failing)
    assert "&#9888;" in plausibility_html(d)


def test_missing_inputs_are_not_applicable():
    chi, _ = _head()
    d = plausibility_checks(chi, np.ones_like(chi, bool), brain_volume_ml=None, poor_fit_fraction=None)
    assert set(_status(d).values()) == {"n/a"}
    assert "ROI step off" in plausibility_html(d)


def test_prior_white_matter_excludes_labelled_nuclei():
    chi, lab = _head()
    names = {7: "Left_Pallidum", 5: "Left_Caudate"}  # Harvard-Oxford: no white matter label
    lab[lab == 2] = 0
    wm = np.zeros_like(lab, bool)
    wm[:, :, :] = True  # a prior that overlaps the nuclei: they must not count as white matter
    d = plausibility_checks(chi, chi != 0, brain_volume_ml=1400.0, poor_fit_fraction=0.0, labels=lab, names=names,
                            white_matter=wm, white_matter_source="prior")
    assert d["regions"]["white_matter"]["mean_ppm"] == pytest.approx(-0.03)
    assert d["regions"]["white_matter"]["source"] == "prior"


def test_white_matter_prior_is_deep_white_matter():
    img = white_matter_prior()
    vox_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    ml = float(np.asanyarray(img.dataobj).sum()) * vox_ml
    assert 50.0 < ml < 500.0, ml  # the core of ~450 mL of cerebral white matter, eroded


def test_interface_reads_stage_metadata(tmp_path):
    chi, lab = _head()
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(chi.astype(np.float32), aff), tmp_path / "chi.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(chi.shape, np.uint8), aff), tmp_path / "mask.nii.gz")
    nib.save(nib.Nifti1Image(lab.astype(np.int16), aff), tmp_path / "dseg.nii.gz")
    (tmp_path / "dseg.tsv").write_text("index\tname\n" + "".join(f"{k}\t{v}\n" for k, v in NAMES.items()))
    (tmp_path / "mask.json").write_text(json.dumps({"stage": "mask", "info": {"volume_ml": 2600.0}}))
    (tmp_path / "combine.json").write_text(json.dumps({"stage": "combine", "info": {"poor_fit_fraction": 0.01}}))
    res = Plausibility(in_chimap=str(tmp_path / "chi.nii.gz"), in_mask=str(tmp_path / "mask.nii.gz"),
                       meta=[str(tmp_path / "mask.json"), str(tmp_path / "combine.json")],
                       in_dseg=str(tmp_path / "dseg.nii.gz"), in_tsv=str(tmp_path / "dseg.tsv")).run(cwd=tmp_path)
    d = json.loads(open(res.outputs.out_metrics).read())
    assert _status(d) == {"brain_volume": "warn", "echo_fit": "ok", "nuclei_above_white_matter": "ok"}
    html = open(res.outputs.out_report).read()
    assert "2.60 L" in html and "1.0 %" in html and "+0.1500 ppm" in html
