"""Bad input at the participant level: BIDS-Apps exit code, one line naming the file and the problem, no traceback,
nothing written to the output folder and the input untouched."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsmbids.cli.run import _main

ANAT = Path("sub-01") / "anat"


def _echo(ds: Path, echo: int, part: str) -> Path:
    return ds / ANAT / f"sub-01_echo-{echo}_part-{part}_MEGRE.nii.gz"


def _sidecar(ds: Path, echo: int, part: str) -> Path:
    return ds / ANAT / f"sub-01_echo-{echo}_part-{part}_MEGRE.json"


def _edit_json(path: Path, **changes) -> None:
    doc = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    path.write_text(json.dumps(doc))


def _replace_data(path: Path, fn) -> None:
    img = nib.load(path)
    data = fn(np.asanyarray(img.dataobj).astype(np.float32))
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)


def _all_sidecars(ds: Path, **changes) -> None:
    for p in (ds / ANAT).glob("*_MEGRE.json"):
        _edit_json(p, **changes)


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _shift_affine(path: Path) -> None:
    img = nib.load(path)
    aff = img.affine.copy()
    aff[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), aff, img.header), path)


def _crop(path: Path) -> None:
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[:-1], img.affine, img.header), path)


def _not_gzip(path: Path) -> None:
    path.write_bytes(gzip.compress(b"not a nifti header at all" * 10))


# case id → (mutation of the dataset copy, extra arguments, exit code, text that must appear in the message)
CASES = {
    "no-dataset-description": (lambda ds: (ds / "dataset_description.json").unlink(), [], 16,
                               "dataset_description.json"),
    "validator-error": (lambda ds: (ds / "stray.txt").write_text("x"), [], 16, "not a valid BIDS dataset"),
    "unknown-label": (None, ["--participant-label", "99"], 18, "sub-99"),
    "empty-filter": (None, ["--session-label", "zz", "--skip-bids-validation"], 18, "no multi-echo GRE"),
    "missing-echotime": (lambda ds: _edit_json(_sidecar(ds, 2, "phase"), EchoTime=None),
                         ["--skip-bids-validation"], 65, "EchoTime missing"),
    "echotime-in-ms": (lambda ds: [_edit_json(_sidecar(ds, e, p), EchoTime=4.0 * e) for e in (1, 2, 3)
                                   for p in ("mag", "phase")], ["--skip-bids-validation"], 65, "milliseconds"),
    "missing-field-strength": (lambda ds: _all_sidecars(ds, MagneticFieldStrength=None, ImagingFrequency=None),
                               [], 65, "MagneticFieldStrength missing"),
    "shape-mismatch": (lambda ds: _crop(_echo(ds, 2, "mag")), ["--skip-bids-validation"], 65, "shape"),
    "affine-mismatch": (lambda ds: _shift_affine(_echo(ds, 3, "phase")), ["--skip-bids-validation"], 65, "affine"),
    "echo-count-mismatch": (lambda ds: [_echo(ds, 3, "mag").unlink(), _sidecar(ds, 3, "mag").unlink()],
                            ["--skip-bids-validation"], 65, "part-mag"),
    "truncated-gzip": (lambda ds: _truncate(_echo(ds, 2, "phase")), ["--skip-bids-validation"], 65,
                       "corrupt or truncated"),
    "not-a-nifti": (lambda ds: _not_gzip(_echo(ds, 1, "mag")), ["--skip-bids-validation"], 65, "NIfTI"),
    "all-zero-phase": (lambda ds: _replace_data(_echo(ds, 1, "phase"), np.zeros_like), [], 65, "all voxels are zero"),
    "nan-phase": (lambda ds: _replace_data(_echo(ds, 2, "phase"), lambda d: d * np.nan), [], 65, "NaN"),
    "all-zero-magnitude": (lambda ds: _replace_data(_echo(ds, 1, "mag"), np.zeros_like), [], 65, "magnitude"),
    "single-echo-csf": (lambda ds: [p.unlink() for e in (2, 3) for p in (_echo(ds, e, "mag"), _echo(ds, e, "phase"),
                                                                        _sidecar(ds, e, "mag"),
                                                                        _sidecar(ds, e, "phase"))],
                        ["--reference", "csf", "--skip-bids-validation"], 65, "at least 2"),
    "phase-only-medi": (lambda ds: [p.unlink() for e in (1, 2, 3) for p in (_echo(ds, e, "mag"),
                                                                           _sidecar(ds, e, "mag"))],
                        ["--skip-bids-validation"], 65, "no magnitude"),
}


def _checksums(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def dataset(sim_bids, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(sim_bids, ds)
    return ds


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, dataset, tmp_path, capsys):
    mutate, extra, code, needle = CASES[case]
    if mutate is not None:
        mutate(dataset)
    before = _checksums(dataset)
    out = tmp_path / "out"
    rc = _main([str(dataset), str(out), "participant", "-w", str(tmp_path / "work"), *extra])
    err = capsys.readouterr().err
    assert rc == code, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("qsmbids: error: ")
    assert needle in lines[0]
    assert "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*.nii*"))
    assert _checksums(dataset) == before


def test_unknown_level(dataset, tmp_path, capsys):
    rc = _main([str(dataset), str(tmp_path / "out"), "subject"])
    err = capsys.readouterr().err
    assert rc == 17 and "unknown analysis level 'subject'" in err and len(err.strip().splitlines()) == 1


def test_missing_bids_dir(tmp_path, capsys):
    rc = _main([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"])
    err = capsys.readouterr().err
    assert rc == 66 and "does not exist" in err


@pytest.mark.parametrize("which", ["output", "work"])
def test_unwritable_output(dataset, tmp_path, capsys, which):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    out = blocker / "out" if which == "output" else tmp_path / "out"
    work = blocker / "work" if which == "work" else tmp_path / "work"
    rc = _main([str(dataset), str(out), "participant", "-w", str(work), "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert rc == 73, err
    assert str(blocker) in err and len(err.strip().splitlines()) == 1


def test_output_inside_input(dataset, capsys):
    rc = _main([str(dataset), str(dataset / "qsm"), "participant", "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert rc == 64 and "inside the input dataset" in err
    assert not (dataset / "qsm").exists()


def test_cuda_requested_without_gpu(dataset, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    rc = _main([str(dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"), "--device", "cuda",
                "--boilerplate-only", "--skip-bids-validation"])
    assert rc == 64 and "no CUDA device" in capsys.readouterr().err


def test_unknown_param_is_usage_error(dataset, tmp_path, capsys):
    rc = _main([str(dataset), str(tmp_path / "out"), "participant", "--param", "medi.bogus=1",
                "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert rc == 64 and "--param medi.bogus" in err and "lambda_" in err
    assert not (tmp_path / "out").exists()


def test_node_crash_is_one_line_with_crash_file(sim_bids, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "qsmbids", str(sim_bids), str(out), "participant", "-w",
                           str(tmp_path / "work"), "--inversion", "tkd", "--param", "tkd.threshold=-1",
                           "--outputs", "chimap", "--skip-bids-validation", "--nprocs", "1"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 70
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "processing failed in invert" in lines[0] and "Traceback" not in proc.stderr
    crashes = list(out.glob("sub-01/log/*/crash-*invert*.txt"))
    assert len(crashes) == 1 and crashes[0].as_posix() in lines[0]
    assert "threshold" in crashes[0].read_text()
    assert not (out / "sub-01" / "anat").exists()


@pytest.mark.parametrize(("damage", "code", "needle"), [("missing", 66, "missing"), ("corrupt", 65, "corrupt")])
def test_deep_weight_file_problems(dataset, tmp_path, capsys, monkeypatch, damage, code, needle):
    import torch

    from qsmbids.deep import weights
    from qsmbids.deep.models import build_model

    wdir = tmp_path / "weights"
    wdir.mkdir()
    torch.manual_seed(0)
    weights.save_weights(build_model("modl", width=4, iterations=1), wdir / "modl.pt", {"name": "modl"})
    if damage == "missing":
        (wdir / "modl.pt").unlink()
    else:
        raw = bytearray((wdir / "modl.pt").read_bytes())
        raw[-100] ^= 0xFF
        (wdir / "modl.pt").write_bytes(bytes(raw))
    monkeypatch.setattr(weights, "WEIGHTS_DIR", wdir)
    rc = _main([str(dataset), str(tmp_path / "out"), "participant", "--inversion", "modl", "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert rc == code, err
    assert str(wdir / "modl.pt") in err and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
