"""``qsmbids-sim``: usage errors, the test preset end to end, read-back, determinism, validator."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

from qsmbids.cli.exit_codes import EX_USAGE
from qsmbids.cli.sim import main
from qsmbids.qsm.phase import b0_direction_from_affine

VALIDATOR = shutil.which("bids-validator-deno")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--echo-times", "8", "4"], "--echo-times"),
        (["--echo-times", "4", "4"], "--echo-times"),
        (["--snr", "-3"], "--snr"),
        (["--field-strength", "0"], "--field-strength"),
        (["--field-strength", "-3"], "--field-strength"),
        (["--voxel-size", "0.2"], "--voxel-size"),
        (["--voxel-size", "6"], "--voxel-size"),
        (["--subjects", "0"], "--subjects"),
        (["--b0-tilt", "95"], "--b0-tilt"),
        (["--anatomy", "simple", "--fat-shift"], "--fat-shift"),
    ],
)
def test_usage_errors_exit_64_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "ds"
    assert main([str(out), "--preset", "test", *args]) == EX_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_non_empty_output_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main([str(out), "--preset", "test"]) == EX_USAGE
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def test_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    out = root / "a"
    assert main([str(out), "--preset", "test", "--subjects", "2", "--b0-tilt", "15", "--seed", "7",
                 "--echo-times", "3", "7", "11", "--field-strength", "7"]) == 0
    return root, out


def test_read_back_echo_times_field_strength_b0(test_dataset):
    _, out = test_dataset
    anat = out / "sub-01" / "anat"
    for i, te in enumerate((0.003, 0.007, 0.011), start=1):
        side = json.loads((anat / f"sub-01_echo-{i}_part-phase_MEGRE.json").read_text())
        assert side["EchoTime"] == pytest.approx(te) and side["MagneticFieldStrength"] == 7.0
        assert side["Units"] == "rad"
    img = nib.load(anat / "sub-01_echo-1_part-phase_MEGRE.nii.gz")
    b0 = b0_direction_from_affine(img.affine)
    t = math.radians(15)
    assert np.allclose(b0, (0.0, math.sin(t), math.cos(t)), atol=1e-6)
    assert np.allclose(img.header.get_zooms()[:3], (3.0, 3.0, 3.0), atol=1e-4)
    ph = np.asarray(img.dataobj)
    assert ph.min() >= -math.pi - 1e-6 and ph.max() <= math.pi + 1e-6
    parts = (out / "participants.tsv").read_text().splitlines()
    assert parts[0].split("\t") == ["participant_id", "age", "sex"] and len(parts) == 3
    truth = out / "derivatives" / "qsmbids-sim" / "sub-02" / "anat"
    chi = nib.load(truth / "sub-02_Chimap.nii.gz")
    assert chi.shape == img.shape and np.allclose(chi.affine, img.affine)
    assert (truth / "sub-02_dseg.tsv").read_text().startswith("index\tname")


def test_same_seed_identical_bytes_other_seed_differs(test_dataset):
    root, out = test_dataset
    again, other = root / "b", root / "c"
    common = ["--preset", "test", "--subjects", "2", "--b0-tilt", "15", "--echo-times", "3", "7", "11",
              "--field-strength", "7"]
    assert main([str(again), *common, "--seed", "7"]) == 0
    assert main([str(other), *common, "--seed", "8"]) == 0
    assert _files(out) == _files(again)
    for rel in _files(out):
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    rel = _files(out)[[str(f) for f in _files(out)].index("sub-01/anat/sub-01_echo-1_part-mag_MEGRE.nii.gz")]
    assert (out / rel).read_bytes() != (other / rel).read_bytes()
    chi_a = nib.load(out / "derivatives/qsmbids-sim/sub-01/anat/sub-01_Chimap.nii.gz").get_fdata()
    chi_c = nib.load(other / "derivatives/qsmbids-sim/sub-01/anat/sub-01_Chimap.nii.gz").get_fdata()
    assert not np.allclose(chi_a, chi_c)  # different heads


@pytest.mark.skipif(VALIDATOR is None, reason="bids-validator-deno is a test dependency; install .[test]")
def test_validator_clean(test_dataset):
    _, out = test_dataset
    for path in (out, out / "derivatives" / "qsmbids-sim"):
        proc = subprocess.run([VALIDATOR, str(path), "--json"], capture_output=True, text=True, timeout=300,
                              check=False)
        errors = [i for i in json.loads(proc.stdout)["issues"]["issues"] if i["severity"] == "error"]
        assert errors == [], errors[:3]


def test_console_script_usage_error_is_one_line(tmp_path):
    exe = shutil.which("qsmbids-sim")
    if exe is None:
        pytest.skip("qsmbids-sim console script not installed (pip install -e .)")
    proc = subprocess.run([exe, str(tmp_path / "x"), "--snr", "0"], capture_output=True, text=True, check=False)
    assert proc.returncode == 64 and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(VALIDATOR is None, reason="bids-validator-deno is a test dependency; install .[test]")
def test_sessions_t1w_lesions_arbitrary_units_validator_clean(tmp_path):
    out = tmp_path / "ds"
    assert main([str(out), "--preset", "test", "--sessions", "2", "--runs", "2", "--t1w", "--lesions",
                 "--phase-units", "arbitrary"]) == 0
    anat = out / "sub-01" / "ses-02" / "anat"
    assert (anat / "sub-01_ses-02_T1w.nii.gz").exists()
    ph = nib.load(anat / "sub-01_ses-02_run-2_echo-1_part-phase_MEGRE.nii.gz")
    assert ph.get_data_dtype() == np.int16
    assert json.loads((anat / "sub-01_ses-02_run-2_echo-1_part-phase_MEGRE.json").read_text())["Units"] == "arbitrary"
    tsv = (out / "derivatives/qsmbids-sim/sub-01/ses-02/anat/sub-01_ses-02_run-2_dseg.tsv").read_text()
    assert "calcification" in tsv and "haemorrhage" in tsv
    for path in (out, out / "derivatives" / "qsmbids-sim"):
        proc = subprocess.run([VALIDATOR, str(path), "--json"], capture_output=True, text=True, timeout=300,
                              check=False)
        errors = [i for i in json.loads(proc.stdout)["issues"]["issues"] if i["severity"] == "error"]
        assert errors == [], errors[:3]


def test_anatomy_simple_and_fat_shift(tmp_path):
    """--anatomy simple writes the earlier head (one 'scalp' label); --fat-shift changes only the phase of fat."""
    assert main([str(tmp_path / "s"), "--preset", "test", "--anatomy", "simple"]) == 0
    tsv = (tmp_path / "s/derivatives/qsmbids-sim/sub-01/anat/sub-01_dseg.tsv").read_text()
    assert "\tscalp\n" in tsv and "\tfat\n" not in tsv
    assert main([str(tmp_path / "r"), "--preset", "test"]) == 0
    assert main([str(tmp_path / "f"), "--preset", "test", "--fat-shift"]) == 0
    tsv = (tmp_path / "r/derivatives/qsmbids-sim/sub-01/anat/sub-01_dseg.tsv").read_text()
    assert "\tfat\n" in tsv and "\tdiploe\n" in tsv and "\tscalp\n" not in tsv
    name = "sub-01/anat/sub-01_echo-2_part-phase_MEGRE.nii.gz"
    a = nib.load(tmp_path / "r" / name).get_fdata()
    b = nib.load(tmp_path / "f" / name).get_fdata()
    fat = nib.load(tmp_path / "r/derivatives/qsmbids-sim/sub-01/anat/sub-01_dseg.nii.gz").get_fdata() == 28
    brain = nib.load(tmp_path / "r/derivatives/qsmbids-sim/sub-01/anat/sub-01_desc-brain_mask.nii.gz").get_fdata() > 0
    assert np.abs(np.angle(np.exp(1j * (a - b))))[fat].mean() > 0.5
    assert np.abs(np.angle(np.exp(1j * (a - b))))[brain].max() < 1e-5
