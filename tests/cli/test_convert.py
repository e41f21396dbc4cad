"""``qsmbids-convert``: DICOM → BIDS on the real Philips head and on synthetic Siemens- and Philips-style DICOM."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsmbids.cli.convert import main

from .dicom_writer import write_megre

PHILIPS = Path(__file__).resolve().parents[3] / "shared" / "data" / "philips_dualecho"
TES = [4.0, 8.0, 12.0]


def _synthetic(shape=(20, 24, 10, 3), seed=0):
    rng = np.random.default_rng(seed)
    mag = rng.uniform(100, 1000, shape)
    phase = rng.uniform(-np.pi, np.pi, shape)
    th = np.deg2rad(10)  # oblique in-plane, anisotropic 1.0 × 1.2 × 2.5 mm (a 2-D multi-slice protocol)
    aff = np.array([[np.cos(th), -1.2 * np.sin(th), 0, -10], [np.sin(th), 1.2 * np.cos(th), 0, 5],
                    [0, 0, 2.5, -7], [0, 0, 0, 1]])
    return mag, phase, aff


def _canonical(img):
    can = nib.as_closest_canonical(img)
    return can.get_fdata(), can.affine


@pytest.mark.parametrize("style,acq", [("siemens", "2D"), ("philips", "3D"), ("ge", "2D")])
def test_synthetic_round_trip(tmp_path, style, acq):
    mag, phase, aff = _synthetic()
    write_megre(tmp_path / "dicom", mag, phase, aff, TES, style=style, acq_type=acq)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "dicom").iterdir())
    assert main([str(tmp_path / "dicom"), str(tmp_path / "bids"), "--subject", "s1"]) == 0
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "dicom").iterdir()) == before
    anat = tmp_path / "bids" / "sub-s1" / "anat"
    for e in range(3):
        for part, ref in (("mag", mag), ("phase", phase)):
            name = anat / f"sub-s1_echo-{e + 1}_part-{part}_MEGRE.nii.gz"
            x, a = _canonical(nib.load(name))
            y, b = _canonical(nib.Nifti1Image(ref[..., e], aff))
            assert x.shape == y.shape and np.allclose(a, b, atol=1e-3)
            if part == "mag":
                assert np.abs(x / x.max() - y / y.max()).max() < 1e-3
            else:  # 12-bit phase: one stored step is 2π/4096
                assert np.abs(np.angle(np.exp(1j * (x - y)))).max() < 2 * np.pi / 4096 + 1e-4
                meta = json.loads(name.with_name(name.name.replace(".nii.gz", ".json")).read_text())
                assert meta["Units"] == "rad" and abs(meta["EchoTime"] - TES[e] / 1e3) < 1e-6
                assert meta["MagneticFieldStrength"] == 3
    desc = json.loads((tmp_path / "bids" / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "raw" and desc["GeneratedBy"][0]["Name"] == "qsmbids-convert"
    assert "sub-s1" in (tmp_path / "bids" / "participants.tsv").read_text()
    assert "qsmbids-convert" in (tmp_path / "bids" / "README").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".qsmbids-convert")]


def test_t1w_series_converted_beside_megre(tmp_path):
    mag, phase, aff = _synthetic()
    write_megre(tmp_path / "dicom", mag, phase, aff, TES, patient_id="P9", study_uid="1.2.3.4")
    t1 = mag[..., :1] * 2
    write_megre(tmp_path / "t1tmp", t1, phase[..., :1], aff, [3.0], patient_id="P9", series_number=2,
                study_uid="1.2.3.4",
                extra={"ScanningSequence": "GR\\IR", "SeriesDescription": "t1_mprage", "ProtocolName": "t1_mprage"})
    for p in (tmp_path / "t1tmp").glob("002_mag_*"):
        shutil.move(p, tmp_path / "dicom" / p.name)
    assert main([str(tmp_path / "dicom"), str(tmp_path / "bids")]) == 0
    anat = tmp_path / "bids" / "sub-P9" / "anat"
    x, _ = _canonical(nib.load(anat / "sub-P9_T1w.nii.gz"))
    y, _ = _canonical(nib.Nifti1Image(t1[..., 0], aff))
    assert np.abs(x / x.max() - y / y.max()).max() < 1e-3
    assert len(list(anat.glob("*_MEGRE.nii.gz"))) == 6


def test_dry_run_writes_nothing(tmp_path, capsys):
    mag, phase, aff = _synthetic()
    write_megre(tmp_path / "dicom", mag, phase, aff, TES, style="siemens")
    assert main([str(tmp_path / "dicom"), str(tmp_path / "bids"), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["series", "description", "images"]
    assert any(line.startswith("5 ") and "sub-SIM01_echo-<1..3>_part-{mag,phase}_MEGRE" in line for line in out)
    assert any(line.startswith("6 ") and "3 (4, 8, 12)" in line and "phase" in line for line in out)
    assert not (tmp_path / "bids").exists()


def test_append_subject_and_overwrite(tmp_path, capsys):
    mag, phase, aff = _synthetic()
    write_megre(tmp_path / "d1", mag, phase, aff, TES, patient_id="P01")
    write_megre(tmp_path / "d2", mag, phase, aff, TES, patient_id="P02")
    bids = tmp_path / "bids"
    assert main([str(tmp_path / "d1"), str(bids)]) == 0
    assert main([str(tmp_path / "d2"), str(bids)]) == 0
    assert (bids / "sub-P01").is_dir() and (bids / "sub-P02").is_dir()
    assert (bids / "participants.tsv").read_text().split() == ["participant_id", "sub-P01", "sub-P02"]
    capsys.readouterr()
    assert main([str(tmp_path / "d2"), str(bids)]) == 64
    assert "use --overwrite" in capsys.readouterr().err
    assert main([str(tmp_path / "d2"), str(bids), "--overwrite", "--session", "auto"]) == 0
    assert (bids / "sub-P02" / "ses-20260102" / "anat").is_dir()
    assert (bids / "sub-P02" / "anat").is_dir()  # a session added beside the session-less data, which stays


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and "Traceback" not in "\n".join(err)
    return err[-1]


def test_bad_input(tmp_path, capsys):
    mag, phase, aff = _synthetic(shape=(12, 12, 6, 3))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no DICOM here")
    assert main([str(empty), str(tmp_path / "o1")]) == 66
    assert "no DICOM files" in _err(capsys)
    assert main([str(tmp_path / "nope"), str(tmp_path / "o1")]) == 66
    # magnitude only: 18 and a hint about the phase export
    write_megre(tmp_path / "magonly", mag, phase, aff, TES)
    for p in (tmp_path / "magonly").glob("006_*"):
        p.unlink()
    assert main([str(tmp_path / "magonly"), str(tmp_path / "o1")]) == 18
    assert "enable the phase" in _err(capsys)
    # uncombined coils: two magnitude images at one position and echo
    write_megre(tmp_path / "coils", mag, phase, aff, TES)
    write_megre(tmp_path / "coils_b", mag, phase, aff, TES)
    import pydicom

    for p in sorted((tmp_path / "coils_b").glob("005_mag_e1_*")):
        ds = pydicom.dcmread(p)
        ref = pydicom.dcmread(next((tmp_path / "coils").glob("005_mag_e1_000.dcm")))
        ds.SeriesInstanceUID = ref.SeriesInstanceUID
        ds.add_new((0x0051, 0x100F), "LO", "H12")
        ds.save_as(tmp_path / "coils" / f"coil2_{p.name}")
    assert main([str(tmp_path / "coils"), str(tmp_path / "o1")]) == 65
    assert "uncombined coil" in _err(capsys)
    # a truncated file: warned and skipped, then its series is incomplete → 65
    write_megre(tmp_path / "trunc", mag, phase, aff, TES)
    victim = sorted((tmp_path / "trunc").glob("006_phase_e2_*"))[2]
    victim.write_bytes(victim.read_bytes()[:-100])
    assert main([str(tmp_path / "trunc"), str(tmp_path / "o1")]) == 65
    msgs = capsys.readouterr().err
    assert victim.name in msgs and "truncated" in msgs and "Traceback" not in msgs
    # echoes with different matrices in one series → 65
    write_megre(tmp_path / "mixed", mag, phase, aff, TES)
    small = tmp_path / "small"
    write_megre(small, mag[:10, :11], phase[:10, :11], aff, TES)
    ref = pydicom.dcmread(next((tmp_path / "mixed").glob("006_phase_e1_000.dcm")))
    for p in small.glob("006_phase_e3_*"):
        ds = pydicom.dcmread(p)
        ds.SeriesInstanceUID = ref.SeriesInstanceUID
        ds.save_as(tmp_path / "mixed" / f"x_{p.name}")
    for p in (tmp_path / "mixed").glob("006_phase_e3_*"):
        p.unlink()
    assert main([str(tmp_path / "mixed"), str(tmp_path / "o1")]) == 65
    assert "mixes image matrices" in _err(capsys)
    assert not (tmp_path / "o1").exists()
    # not a GRE: listed series in the message, 18
    write_megre(tmp_path / "se", mag, phase, aff, TES, extra={"ScanningSequence": "SE"})
    assert main([str(tmp_path / "se"), str(tmp_path / "o1")]) == 18
    assert "series found: 5 gre_qsm" in _err(capsys)


def test_unwritable_output(tmp_path, capsys):
    mag, phase, aff = _synthetic(shape=(12, 12, 6, 3))
    write_megre(tmp_path / "d", mag, phase, aff, TES)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output's parent folder should be")
    assert main([str(tmp_path / "d"), str(blocker / "bids")]) == 73
    assert "cannot create" in _err(capsys)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            assert main([str(tmp_path / "d"), str(ro / "bids")]) == 73
            assert "cannot" in _err(capsys)
        finally:
            ro.chmod(0o755)


def test_gzipped_input_and_usage(tmp_path, capsys):
    mag, phase, aff = _synthetic(shape=(12, 12, 6, 3))
    write_megre(tmp_path / "d", mag, phase, aff, TES)
    for p in (tmp_path / "d").glob("*.dcm"):
        p.with_name(p.name + ".gz").write_bytes(gzip.compress(p.read_bytes()))
        p.unlink()
    assert main([str(tmp_path / "d"), str(tmp_path / "bids"), "--series", "5", "6"]) == 0
    assert len(list((tmp_path / "bids" / "sub-SIM01" / "anat").glob("*.nii.gz"))) == 6
    assert main([str(tmp_path / "d"), str(tmp_path / "b2"), "--series", "-6"]) == 18
    assert main([str(tmp_path / "d"), str(tmp_path / "b3"), "--subject", "!!"]) == 64
    assert main(["--no-such-option"]) == 64


@pytest.fixture(scope="module")
def philips_bids(tmp_path_factory):
    if not (PHILIPS / "dicom_classic").is_dir():
        pytest.skip(f"no real data at {PHILIPS}")
    out = tmp_path_factory.mktemp("philips") / "bids"
    assert main([str(PHILIPS / "dicom_classic"), str(out), "--subject", "philips"]) == 0
    return out


def test_philips_matches_dcm2niix_reference(philips_bids):
    anat = philips_bids / "sub-philips" / "anat"
    ref = PHILIPS / "nifti_ref"
    for e, suffix in ((1, "e1"), (2, "e2")):
        for part, tag in (("mag", ""), ("phase", "_ph")):
            ours = nib.load(anat / f"sub-philips_echo-{e}_part-{part}_MEGRE.nii.gz")
            theirs = nib.load(ref / f"2001_WIP_fcMRI_Field_Mapping_cl_{suffix}{tag}.nii.gz")
            assert np.array_equal(ours.get_fdata(), theirs.get_fdata())
            assert np.allclose(ours.affine, theirs.affine, atol=1e-4)
            meta = json.loads((anat / f"sub-philips_echo-{e}_part-{part}_MEGRE.json").read_text())
            assert meta["EchoTime"] == pytest.approx([0.0023, 0.0046][e - 1])
            if part == "phase":
                assert meta["Units"] == "rad"


def test_philips_validates(philips_bids):
    exe = shutil.which("bids-validator-deno") or str(Path(os.sys.executable).with_name("bids-validator-deno"))
    if not Path(exe).is_file():
        pytest.skip("bids-validator-deno not installed")
    proc = subprocess.run([exe, "--json", str(philips_bids)], capture_output=True, text=True, timeout=300,
                          check=False)
    issues = json.loads(proc.stdout)["issues"]["issues"]
    errors = [i for i in issues if i["severity"] == "error"]
    assert errors == [], errors[:3]


def _qsmbids(bids: Path, out: Path, work: Path) -> subprocess.CompletedProcess:
    return subprocess.run([os.sys.executable, "-m", "qsmbids", str(bids), str(out), "participant", "-w", str(work),
                           "--nprocs", "2", "--omp-nthreads", "1"], capture_output=True, text=True, timeout=900,
                          check=False)


@pytest.mark.slow
@pytest.mark.parametrize("style,acq", [("siemens", "2D"), ("philips", "3D")])
def test_dicom_round_trip_recovers_chi(sim_bids, tmp_path, style, acq):
    """qsmbids-sim data written as vendor DICOM, converted and processed: χ as accurate as from the NIfTI."""
    from qsmbids.qsm import metrics

    anat = sim_bids / "sub-01" / "anat"
    mags = [nib.load(anat / f"sub-01_echo-{e}_part-mag_MEGRE.nii.gz") for e in (1, 2, 3)]
    phases = [nib.load(anat / f"sub-01_echo-{e}_part-phase_MEGRE.nii.gz") for e in (1, 2, 3)]
    tes = [json.loads((anat / f"sub-01_echo-{e}_part-phase_MEGRE.json").read_text())["EchoTime"] * 1e3
           for e in (1, 2, 3)]
    mag = np.stack([m.get_fdata() for m in mags], -1)
    phase = np.stack([p.get_fdata() for p in phases], -1)
    write_megre(tmp_path / "dicom", mag, phase, mags[0].affine, tes, style=style, acq_type=acq, patient_id="01")
    assert main([str(tmp_path / "dicom"), str(tmp_path / "bids")]) == 0
    truth = sim_bids / "derivatives" / "qsmbids-sim" / "sub-01" / "anat"
    ref = nib.load(truth / "sub-01_Chimap.nii.gz").get_fdata()
    brain = nib.load(truth / "sub-01_desc-brain_mask.nii.gz").get_fdata() > 0
    errs = {}
    for name, bids in (("nifti", sim_bids), ("dicom", tmp_path / "bids")):
        proc = _qsmbids(bids, tmp_path / f"out-{name}", tmp_path / f"work-{name}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        img = nib.load(tmp_path / f"out-{name}" / "sub-01" / "anat" / "sub-01_Chimap.nii.gz")
        can = nib.as_closest_canonical(img)  # the converted images may be stored in another axis order
        assert np.allclose(can.affine, nib.as_closest_canonical(mags[0]).affine, atol=1e-3)
        chi = can.get_fdata()
        ref_c = nib.as_closest_canonical(nib.Nifti1Image(ref, mags[0].affine)).get_fdata()
        brain_c = nib.as_closest_canonical(nib.Nifti1Image(brain.astype(np.uint8), mags[0].affine)).get_fdata() > 0
        errs[name] = metrics.nrmse(chi, ref_c, (chi != 0) & brain_c, mode="demeaned")
    # 12-bit phase and magnitude quantisation cost little: within 3 points of the NIfTI path
    assert errs["dicom"] < errs["nifti"] + 3.0, errs


@pytest.mark.slow
def test_philips_converted_participant(philips_bids, tmp_path):
    """The real head straight from its DICOM: converted, then the participant level at the defaults."""
    proc = _qsmbids(philips_bids, tmp_path / "out", tmp_path / "work")
    assert proc.returncode == 0, proc.stderr[-3000:]
    anat = tmp_path / "out" / "sub-philips" / "anat"
    mask = nib.load(anat / "sub-philips_desc-brain_mask.nii.gz")
    litres = (mask.get_fdata() > 0).sum() * float(np.prod(mask.header.get_zooms()[:3])) / 1e6
    assert 1.1 <= litres <= 1.8, litres
    assert np.isfinite(nib.load(anat / "sub-philips_Chimap.nii.gz").get_fdata()).all()
    plaus = json.loads((tmp_path / "out" / "sub-philips" / "figures" /
                        "sub-philips_desc-plausibility_Chimap.json").read_text())
    assert all(c["status"] == "ok" for c in plaus["checks"]), plaus


def test_enhanced_multiframe_headers(tmp_path):
    """Enhanced (multi-frame) MR: parts, echo times and positions are read per frame from the functional groups."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from qsmbids.utils.dicom import check_series, pair_series, scan

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "e.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.SeriesInstanceUID, ds.SeriesNumber = "MR", "E1", generate_uid(), 301
    ds.SeriesDescription, ds.EchoPulseSequence, ds.ImageType = "mGRE", "GRADIENT", ["ORIGINAL", "PRIMARY", "MIXED"]
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 4, 5, 16, 1
    frames = []
    for z in range(3):
        for te in (5.0, 10.0):
            for comp in ("MAGNITUDE", "PHASE"):
                fr = Dataset()
                fr.MREchoSequence = Sequence([Dataset()])
                fr.MREchoSequence[0].EffectiveEchoTime = te
                fr.MRImageFrameTypeSequence = Sequence([Dataset()])
                fr.MRImageFrameTypeSequence[0].ComplexImageComponent = comp
                fr.PlanePositionSequence = Sequence([Dataset()])
                fr.PlanePositionSequence[0].ImagePositionPatient = [0, 0, 2.0 * z]
                frames.append(fr)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.NumberOfFrames = len(frames)
    ds.PixelData = b"\0" * (4 * 5 * 2 * len(frames))
    ds.save_as(tmp_path / "e.dcm", enforce_file_format=True)
    (series,) = scan(tmp_path, warn=lambda m: None)
    assert series.echo_times == (5.0, 10.0) and series.parts == ("mag", "phase") and series.n_frames == 12
    assert series.kind == "megre"
    check_series(series)
    assert [r.kind for r in pair_series([series])] == ["megre"]
    # the same file cut short: skipped with a warning, and the series counts as incomplete
    raw = (tmp_path / "e.dcm").read_bytes()
    (tmp_path / "e.dcm").write_bytes(raw[:-40])
    said = []
    (series,) = scan(tmp_path, warn=said.append)
    assert series.incomplete and "truncated" in said[0]
