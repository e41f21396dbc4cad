"""BIDS writer: validator-clean raw and ground-truth datasets, deterministic bytes, naming, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsmbids.sim import bids as B

VALIDATOR = shutil.which("bids-validator-deno")


def _write(root: Path, seed: int = 0, phase_units: str = "rad", ses: str | None = None, run: int | None = None):
    rng = np.random.default_rng(seed)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = (-8, -8, -8)
    mag = rng.random((3, 8, 8, 8)).astype(np.float32)
    if phase_units == "rad":
        ph = rng.uniform(-np.pi, np.pi, (3, 8, 8, 8)).astype(np.float32)
    else:
        ph = rng.integers(-4096, 4096, (3, 8, 8, 8)).astype(np.int16)
    B.write_dataset_description(root, name="test")
    (root / "README").write_text("Simulated test dataset written by the qsmbids test-suite.\n" * 5)
    B.write_participants(root, [{"participant_id": "sub-01", "age": 31, "sex": "F"}])
    files = B.write_megre_run(root, "01", magnitude=mag, phase=ph, affine=aff, echo_times=[0.004, 0.008, 0.012],
                              field_strength=3.0, flip_angle_deg=15.0, repetition_time=0.03,
                              phase_units=phase_units, ses=ses, run=run)
    labels = (mag[0] * 3).astype(np.int16)
    B.write_ground_truth(root, "01", chi=mag[0] - 0.5, brain_mask=labels > 0, labels=labels,
                         label_rows=[{"index": i, "name": n} for i, n in enumerate(["air", "csf", "gm", "wm"])],
                         total_field_ppm=mag[1], local_field_ppm=mag[2], affine=aff,
                         raw_files=[str(f.relative_to(root)) for f in files], ses=ses, run=run)
    return files, mag, ph, aff


def _errors(path: Path) -> list[dict]:
    proc = subprocess.run([VALIDATOR, str(path), "--json"], capture_output=True, text=True, timeout=300,
                          check=False)
    report = json.loads(proc.stdout)
    return [i for i in report["issues"]["issues"] if i["severity"] == "error"]


@pytest.mark.skipif(VALIDATOR is None, reason="bids-validator-deno is a test dependency; install .[test]")
@pytest.mark.parametrize(("phase_units", "ses", "run"), [("rad", None, None), ("arbitrary", "02", 1)])
def test_validator_reports_no_errors(tmp_path, phase_units, ses, run):
    _write(tmp_path, phase_units=phase_units, ses=ses, run=run)
    assert _errors(tmp_path) == []
    assert _errors(tmp_path / "derivatives" / "qsmbids-sim") == []


def test_names_sidecars_and_round_trip(tmp_path):
    files, mag, ph, aff = _write(tmp_path, phase_units="arbitrary", ses="02", run=1)
    names = sorted(f.name for f in files)
    assert names[0] == "sub-01_ses-02_run-1_echo-1_part-mag_MEGRE.nii.gz"
    assert len(names) == 6
    side = json.loads((files[1].parent / "sub-01_ses-02_run-1_echo-2_part-phase_MEGRE.json").read_text())
    assert side["EchoTime"] == 0.008 and side["EchoNumber"] == 2 and side["MagneticFieldStrength"] == 3.0
    assert side["Units"] == "arbitrary" and side["ImageType"][-1] == "P"
    assert side["ImagingFrequency"] == pytest.approx(127.7324, abs=1e-4)
    img = nib.load(files[1].parent / "sub-01_ses-02_run-1_echo-2_part-phase_MEGRE.nii.gz")
    assert img.get_data_dtype() == np.int16 and np.array_equal(np.asarray(img.dataobj), ph[1])
    assert np.allclose(img.affine, aff) and img.header.get_xyzt_units() == ("mm", "sec")
    deriv = tmp_path / "derivatives" / "qsmbids-sim"
    desc = json.loads((deriv / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "qsmbids-sim"
    tsv = (deriv / "sub-01" / "ses-02" / "anat" / "sub-01_ses-02_run-1_dseg.tsv").read_text().splitlines()
    assert tsv[0] == "index\tname" and tsv[3] == "2\tgm"
    chi = nib.load(deriv / "sub-01" / "ses-02" / "anat" / "sub-01_ses-02_run-1_Chimap.nii.gz")
    assert np.allclose(chi.get_fdata(), mag[0] - 0.5, atol=1e-6)


def test_same_inputs_give_identical_bytes(tmp_path):
    _write(tmp_path / "a", seed=3)
    _write(tmp_path / "b", seed=3)
    _write(tmp_path / "c", seed=4)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    rel = Path("sub-01/anat/sub-01_echo-1_part-mag_MEGRE.nii.gz")
    assert (tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes()


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="magnitude/phase"):
        B.write_megre_run(tmp_path, "01", magnitude=np.zeros((2, 4, 4, 4)), phase=np.zeros((3, 4, 4, 4)),
                          affine=np.eye(4), echo_times=[0.004, 0.008], field_strength=3, flip_angle_deg=15,
                          repetition_time=0.03)
    with pytest.raises(ValueError, match="phase_units"):
        B.write_megre_run(tmp_path, "01", magnitude=np.zeros((1, 4, 4, 4)), phase=np.zeros((1, 4, 4, 4)),
                          affine=np.eye(4), echo_times=[0.004], field_strength=3, flip_angle_deg=15,
                          repetition_time=0.03, phase_units="degrees")
