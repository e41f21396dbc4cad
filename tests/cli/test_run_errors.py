"""Bad input at the participant level: BIDS-Apps exit code, one line naming the file and the problem, no traceback,
nothing written to the output folder and the input untouched.

``CASES`` is the troubleshooting matrix of the README (case → exit code → message); inputs that are accepted
(integer vendor phase, unwrapped phase, a single echo, strongly oblique slabs) are in ``test_bad_input_accepted.py``,
failures while writing (full disk, read-only folders, damaged work folder) in ``test_reliability.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

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


def _all_images(ds: Path, fn) -> None:
    for p in sorted((ds / ANAT).glob("*_MEGRE.nii.gz")):
        fn(p)


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _shift_affine(path: Path) -> None:
    img = nib.load(path)
    aff = img.affine.copy()
    aff[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), aff, img.header), path)


def _scale_voxels(path: Path, factor: float) -> None:
    img = nib.load(path)
    aff = img.affine.copy()
    aff[:3, :3] *= factor
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), aff), path)


def _crop(path: Path) -> None:
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[:-1], img.affine, img.header), path)


def _one_slice(path: Path) -> None:
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, 20:21], img.affine, img.header), path)


def _not_gzip(path: Path) -> None:
    path.write_bytes(gzip.compress(b"not a nifti header at all" * 10))


def _header_only(path: Path) -> None:
    """What an interrupted export leaves: the 348-byte header and the extension flag, no voxel data."""
    path.write_bytes(gzip.compress(nib.load(path).header.binaryblock + b"\0" * 4))


def _four_d_echo(path: Path) -> None:
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), img.affine), path)


FOUR_D_PHASE = ANAT / "sub-01_part-phase_MEGRE.nii.gz"


def _write_four_d_phase(ds: Path, *, remove_echo_files: bool) -> None:
    """All phase echoes as one 4-D file with EchoTime as a list (optionally next to the per-echo files)."""
    files = [_echo(ds, e, "phase") for e in (1, 2, 3)]
    img = nib.load(files[0])
    data = np.stack([np.asanyarray(nib.load(f).dataobj) for f in files], -1)
    nib.save(nib.Nifti1Image(data, img.affine), ds / FOUR_D_PHASE)
    meta = json.loads(_sidecar(ds, 1, "phase").read_text())
    meta["EchoTime"] = [json.loads(_sidecar(ds, e, "phase").read_text())["EchoTime"] for e in (1, 2, 3)]
    meta.pop("EchoNumber", None)
    (ds / FOUR_D_PHASE).with_name("sub-01_part-phase_MEGRE.json").write_text(json.dumps(meta))
    if remove_echo_files:
        for e in (1, 2, 3):
            _echo(ds, e, "phase").unlink()
            _sidecar(ds, e, "phase").unlink()


FOUR_D_SIDECAR = ANAT / "sub-01_part-phase_MEGRE.json"


def _four_d_echo_times(tes: list) -> Callable[[Path], None]:
    """Both parts as 4-D files (accepted as such) whose sidecars' EchoTime lists are ``tes``."""
    def mutate(ds: Path) -> None:
        for part in ("mag", "phase"):
            files = [_echo(ds, e, part) for e in (1, 2, 3)]
            img = nib.load(files[0])
            data = np.stack([np.asanyarray(nib.load(f).dataobj) for f in files], -1)
            meta = json.loads(_sidecar(ds, 1, part).read_text())
            meta.pop("EchoNumber", None)
            meta["EchoTime"] = tes
            nib.save(nib.Nifti1Image(data, img.affine), ds / ANAT / f"sub-01_part-{part}_MEGRE.nii.gz")
            (ds / ANAT / f"sub-01_part-{part}_MEGRE.json").write_text(json.dumps(meta))
        _drop_echoes(ds, [1, 2, 3])
    return mutate


def _set_geometry(path: Path, *, sform=None, qform=None) -> None:
    """Rewrite the header's sform and/or qform (codes 1, scanner), leaving the voxel data alone. nibabel's
    ``set_qform`` also writes pixdim from the qform; ``set_sform`` leaves pixdim as they are."""
    img = nib.load(path)
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), None, img.header)
    out.set_qform(img.affine if qform is None else qform, 1)
    out.set_sform(img.affine if sform is None else sform, 1)
    nib.save(out, path)


def _rot_x(degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    return np.array([[1, 0, 0, 0], [0, np.cos(t), -np.sin(t), 0], [0, np.sin(t), np.cos(t), 0], [0, 0, 0, 1]])


def _shear(degrees: float) -> Callable[[Path], None]:
    def mutate(ds: Path) -> None:
        s = np.eye(4)
        s[0, 1] = np.tan(np.radians(degrees))
        _all_images(ds, lambda f: _set_geometry(f, sform=nib.load(f).affine @ s, qform=nib.load(f).affine))
    return mutate


def _sform_rotated(ds: Path) -> None:
    """An SPM-style reorientation: the sform turned by 10° about x, the qform (scanner) left as it was."""
    _all_images(ds, lambda f: _set_geometry(f, sform=_rot_x(10) @ nib.load(f).affine))


def _sform_voxels_scaled(ds: Path) -> None:
    """The sform's voxels 20 % larger than pixdim (and the qform) say."""
    _all_images(ds, lambda f: _set_geometry(f, sform=nib.load(f).affine @ np.diag([1.2, 1.2, 1.2, 1.0])))


def _few_values(d: np.ndarray) -> np.ndarray:
    """What a label image or a thresholded map written as phase looks like: 7 values, −3..3."""
    return np.round(d)


def _duplicate_as_nii(ds: Path) -> None:
    img = nib.load(_echo(ds, 2, "phase"))
    nib.save(img, ds / ANAT / "sub-01_echo-2_part-phase_MEGRE.nii")


def _not_bids(ds: Path) -> None:
    """A folder of scanner exports: no dataset_description.json and no sub-<label> folders."""
    for p in list(ds.iterdir()):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    (ds / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM")
    (ds / "notes.txt").write_text("exported from the scanner\n")


def _empty(ds: Path) -> None:
    """Only the top-level files of a BIDS dataset: no subject."""
    for p in list(ds.iterdir()):
        if p.name not in ("dataset_description.json", "README"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _drop_echoes(ds: Path, echoes, parts=("mag", "phase")) -> None:
    for e in echoes:
        for part in parts:
            _echo(ds, e, part).unlink()
            _sidecar(ds, e, part).unlink()


class Paths(NamedTuple):
    ds: Path
    out: Path
    work: Path
    tmp: Path


def _blocker(p: Paths) -> Path:
    """A regular file where a folder should be created (mkdir fails below it, even for root)."""
    f = p.tmp / "a-file"
    f.write_text("a file, not a folder")
    return f


def _no_write_access(monkeypatch, p: Paths) -> None:
    """EACCES as an unprivileged user meets it (root passes any mode bits, so ``os.access`` answers for it)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: False if Path(path) == p.out else real(path, mode,
                                                                                                         *a, **k))


def _no_read_access(monkeypatch, p: Paths) -> None:
    """The dataset as a user who may not read it sees it (a container run with ``-u`` and a private folder)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: False if Path(path) == p.ds else real(path, mode,
                                                                                                        *a, **k))


def _filter_file(p: Paths) -> Path:
    f = p.tmp / "filter.json"
    f.write_text(json.dumps({"megre": {"acquisition": "nope"}}))
    return f


NO_VALIDATION = ("--skip-bids-validation",)


def _user_mask_path(p: Paths, name: str = "sub-01_desc-brain_mask.nii.gz") -> Path:
    return p.tmp / "masks" / "sub-01" / "anat" / name


def _user_mask(fn, *names: str):
    """``--derivatives`` with a brain mask made by ``fn(mask, reference image) -> (data, affine)`` from the
    simulator's true mask, written outside the dataset under one or more names."""
    def extra(p: Paths) -> tuple[str, ...]:
        src = nib.load(p.ds / "derivatives" / "qsmbids-sim" / "sub-01" / "anat" / "sub-01_desc-brain_mask.nii.gz")
        data, affine = fn(np.asanyarray(src.dataobj).astype(np.uint8), src)
        for name in names or ("sub-01_desc-brain_mask.nii.gz",):
            _user_mask_path(p, name).parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, affine), _user_mask_path(p, name))
        return ("-d", str(p.tmp / "masks"), *NO_VALIDATION)
    return extra


def _tiny(m: np.ndarray) -> np.ndarray:
    out = np.zeros_like(m)
    out[30:32, 30:32, 30:32] = 1
    return out


@dataclass(frozen=True)
class Case:
    """One row of the matrix: what is broken, what qsmbids must answer, and which path the line must name."""

    code: int
    needle: str
    mutate: Callable[[Path], object] | None = None
    extra: tuple[str, ...] | Callable[[Paths], tuple[str, ...]] = NO_VALIDATION
    names: Callable[[Paths], Path | str] | None = None  # default: the dataset folder
    level: str = "participant"
    where: Callable[[Paths], Paths] | None = None  # other bids/output/work folders
    patch: Callable[[pytest.MonkeyPatch, Paths], None] | None = None


CASES = {
    # the dataset as a whole: 16 not BIDS, 66 missing, 17 level, 18 nothing matched
    "missing-bids-dir": Case(66, "does not exist", where=lambda p: p._replace(ds=p.tmp / "nope")),
    "unreadable-bids-dir": Case(66, "not readable by this user", patch=_no_read_access),
    "non-bids-folder": Case(16, "not a BIDS dataset", _not_bids, (), lambda p: p.ds / "dataset_description.json"),
    "no-dataset-description": Case(16, "not a BIDS dataset", lambda ds: (ds / "dataset_description.json").unlink(),
                                   (), lambda p: p.ds / "dataset_description.json"),
    "validator-error": Case(16, "not a valid BIDS dataset", lambda ds: (ds / "stray.txt").write_text("x"), (),
                            lambda p: "stray.txt"),
    "unknown-level": Case(17, "unknown analysis level 'subject'", level="subject", names=lambda p: "'subject'"),
    "empty-dataset": Case(18, "the dataset is empty", _empty, ()),
    "unknown-label": Case(18, "no subject sub-99", extra=("--participant-label", "99")),
    "unmatched-session": Case(18, "no multi-echo GRE", extra=("--session-label", "zz", *NO_VALIDATION)),
    "empty-filter-file": Case(18, '"acquisition": "nope"',
                              extra=lambda p: ("--bids-filter-file", str(_filter_file(p)), *NO_VALIDATION)),
    # sidecars: 65
    "missing-echotime": Case(65, "EchoTime missing", lambda ds: _edit_json(_sidecar(ds, 2, "phase"), EchoTime=None),
                             names=lambda p: _sidecar(p.ds, 2, "phase")),
    "echotime-in-ms": Case(65, "milliseconds", lambda ds: [_edit_json(_sidecar(ds, e, p), EchoTime=4.0 * e)
                                                           for e in (1, 2, 3) for p in ("mag", "phase")],
                           names=lambda p: _sidecar(p.ds, 1, "phase")),
    "echotimes-not-increasing": Case(65, "not increasing", lambda ds: [_edit_json(_sidecar(ds, 2, p), EchoTime=0.002)
                                                                       for p in ("mag", "phase")],
                                     names=lambda p: _sidecar(p.ds, 1, "phase")),
    "echo-times-option-count": Case(65, "--echo-times gives 2 values for 3 echoes",
                                    extra=("--echo-times", "0.004", "0.008", *NO_VALIDATION),
                                    names=lambda p: _echo(p.ds, 1, "phase")),
    "missing-field-strength": Case(65, "MagneticFieldStrength missing",
                                   lambda ds: _all_sidecars(ds, MagneticFieldStrength=None, ImagingFrequency=None),
                                   (), lambda p: _sidecar(p.ds, 1, "phase")),
    "field-strength-in-mT": Case(65, "not a field strength in tesla",
                                 lambda ds: _all_sidecars(ds, MagneticFieldStrength=3000),
                                 names=lambda p: _sidecar(p.ds, 1, "phase")),
    "4d-echotime-null": Case(65, "EchoTime of echo 2 must be a positive number of seconds, got null",
                             _four_d_echo_times([0.004, None, 0.012]), names=lambda p: p.ds / FOUR_D_SIDECAR),
    "4d-echotime-negative": Case(65, "EchoTime of echo 2 must be a positive number of seconds, got -0.008",
                                 _four_d_echo_times([0.004, -0.008, 0.012]), names=lambda p: p.ds / FOUR_D_SIDECAR),
    "imaging-frequency-n/a": Case(65, 'ImagingFrequency "n/a" is not an imaging frequency in MHz',
                                  lambda ds: _all_sidecars(ds, ImagingFrequency="n/a"),
                                  names=lambda p: _sidecar(p.ds, 1, "phase")),
    "imaging-frequency-in-hz": Case(65, "ImagingFrequency 127732436 looks like Hz; BIDS wants MHz",
                                    lambda ds: _all_sidecars(ds, ImagingFrequency=127732436),
                                    names=lambda p: _sidecar(p.ds, 1, "phase")),
    "field-strength-bool": Case(65, "MagneticFieldStrength true is not a field strength in tesla (a JSON boolean",
                                lambda ds: _all_sidecars(ds, MagneticFieldStrength=True),
                                names=lambda p: _sidecar(p.ds, 1, "phase")),
    # images: 65
    "shape-mismatch": Case(65, "shape", lambda ds: _crop(_echo(ds, 2, "mag")), names=lambda p: _echo(p.ds, 2, "mag")),
    "affine-mismatch": Case(65, "affine", lambda ds: _shift_affine(_echo(ds, 3, "phase")),
                            names=lambda p: _echo(p.ds, 3, "phase")),
    "echo-count-mismatch": Case(65, "part-mag", lambda ds: _drop_echoes(ds, [3], ["mag"]),
                                names=lambda p: _echo(p.ds, 3, "phase")),
    "mixed-4d-3d-phase": Case(65, "4-D and 3-D files mixed", lambda ds: _write_four_d_phase(ds, remove_echo_files=False),
                              names=lambda p: p.ds / FOUR_D_PHASE),
    "4d-phase-3d-magnitude": Case(65, "4-D and 3-D files mixed",
                                  lambda ds: _write_four_d_phase(ds, remove_echo_files=True),
                                  names=lambda p: p.ds / FOUR_D_PHASE),
    "4d-file-per-echo": Case(65, "expected a 3-D image per echo", lambda ds: _four_d_echo(_echo(ds, 2, "phase")),
                             names=lambda p: _echo(p.ds, 2, "phase")),
    "single-slice": Case(65, "single-slice (2-D)", lambda ds: _all_images(ds, _one_slice),
                         names=lambda p: _echo(p.ds, 1, "phase")),
    "huge-voxels": Case(65, "voxel size 15 × 15 × 15 mm is outside 0.01–10 mm",
                        lambda ds: _all_images(ds, lambda f: _scale_voxels(f, 5.0)),
                        names=lambda p: _echo(p.ds, 1, "phase")),
    "truncated-gzip": Case(65, "corrupt or truncated", lambda ds: _truncate(_echo(ds, 2, "phase")),
                           names=lambda p: _echo(p.ds, 2, "phase")),
    "header-only-nifti": Case(65, "no image data", lambda ds: _header_only(_echo(ds, 2, "phase")),
                              names=lambda p: _echo(p.ds, 2, "phase")),
    "not-a-nifti": Case(65, "NIfTI", lambda ds: _not_gzip(_echo(ds, 1, "mag")), names=lambda p: _echo(p.ds, 1, "mag")),
    "all-zero-phase": Case(65, "all voxels are zero", lambda ds: _replace_data(_echo(ds, 1, "phase"), np.zeros_like),
                           (), lambda p: _echo(p.ds, 1, "phase")),
    "nan-phase": Case(65, "NaN", lambda ds: _replace_data(_echo(ds, 2, "phase"), lambda d: d * np.nan), (),
                      lambda p: _echo(p.ds, 2, "phase")),
    "all-zero-magnitude": Case(65, "magnitude", lambda ds: _replace_data(_echo(ds, 1, "mag"), np.zeros_like), (),
                               lambda p: _echo(p.ds, 1, "mag")),
    "constant-phase": Case(65, "every voxel holds the same value (3.14159), which cannot be phase data",
                           lambda ds: _replace_data(_echo(ds, 2, "phase"), lambda d: np.full_like(d, np.pi)),
                           names=lambda p: _echo(p.ds, 2, "phase")),
    "phase-few-values": Case(65, "only 7 distinct values", lambda ds: _replace_data(_echo(ds, 3, "phase"), _few_values),
                             names=lambda p: _echo(p.ds, 3, "phase")),
    "constant-magnitude": Case(65, "every voxel holds the same value (100), which cannot be magnitude data",
                               lambda ds: _replace_data(_echo(ds, 1, "mag"), lambda d: np.full_like(d, 100.0)),
                               names=lambda p: _echo(p.ds, 1, "mag")),
    "all-nan-magnitude": Case(65, "all voxels are NaN/Inf (magnitude)",
                              lambda ds: _replace_data(_echo(ds, 2, "mag"), lambda d: d * np.nan),
                              names=lambda p: _echo(p.ds, 2, "mag")),
    "sheared-affine": Case(65, "the affine is sheared", _shear(5.0), names=lambda p: _echo(p.ds, 1, "phase")),
    "qform-sform-rotated": Case(65, "the qform and sform orient the image differently (10.0° apart)", _sform_rotated,
                                names=lambda p: _echo(p.ds, 1, "phase")),
    "pixdim-vs-sform": Case(65, "so the voxel size is ambiguous", _sform_voxels_scaled,
                            names=lambda p: _echo(p.ds, 1, "phase")),
    "duplicate-nii-and-nii-gz": Case(65, "duplicate of sub-01_echo-2_part-phase_MEGRE.nii (the same image stored "
                                         "twice", _duplicate_as_nii, names=lambda p: _echo(p.ds, 2, "phase")),
    # the data do not suit the chosen methods: 65
    "single-echo-csf": Case(65, "at least 2", lambda ds: _drop_echoes(ds, [2, 3]),
                            ("--reference", "csf", *NO_VALIDATION), lambda p: _echo(p.ds, 1, "phase")),
    "single-echo-bipolar": Case(65, "at least 2", lambda ds: _drop_echoes(ds, [2, 3]),
                                ("--param", "unwrap.bipolar=true", *NO_VALIDATION),
                                lambda p: _echo(p.ds, 1, "phase")),
    "phase-only-medi": Case(65, "no magnitude", lambda ds: _drop_echoes(ds, [1, 2, 3], ["mag"]),
                            names=lambda p: _echo(p.ds, 1, "phase")),
    # brain masks given with --derivatives: 65 (66 for a missing folder)
    "derivatives-missing": Case(66, "--derivatives folder does not exist",
                                extra=lambda p: ("-d", str(p.tmp / "nope"), *NO_VALIDATION),
                                names=lambda p: p.tmp / "nope"),
    "user-mask-other-grid": Case(65, "must be on the run's grid", extra=_user_mask(lambda m, i: (m[:-2], i.affine)),
                                 names=_user_mask_path),
    "user-mask-shifted": Case(65, "affine differs", extra=_user_mask(
        lambda m, i: (m, i.affine + np.pad(np.full((3, 1), 3.0), ((0, 1), (3, 0))))), names=_user_mask_path),
    "user-mask-empty": Case(65, "the brain mask is empty", extra=_user_mask(lambda m, i: (0 * m, i.affine)),
                            names=_user_mask_path),
    "user-mask-too-small": Case(65, "outside 100–3000 mL", extra=_user_mask(lambda m, i: (_tiny(m), i.affine)),
                                names=_user_mask_path),
    "user-mask-whole-fov": Case(65, "outside 100–3000 mL", extra=_user_mask(lambda m, i: (1 + 0 * m, i.affine)),
                                names=_user_mask_path),
    "user-mask-ambiguous": Case(65, "several brain masks match one run", extra=_user_mask(
        lambda m, i: (m, i.affine), "sub-01_desc-brain_mask.nii.gz", "sub-01_part-mag_desc-brain_mask.nii.gz"),
        names=lambda p: _user_mask_path(p).parent),
    # the output and work folders: 73 cannot create, 64 usage
    "output-under-a-file": Case(73, "cannot create the output folder", where=lambda p: p._replace(
        out=_blocker(p) / "out"), names=lambda p: p.tmp / "a-file"),
    "work-under-a-file": Case(73, "cannot create the work folder", where=lambda p: p._replace(
        work=_blocker(p) / "work"), names=lambda p: p.tmp / "a-file"),
    "output-not-writable": Case(73, "the output folder is not writable", patch=_no_write_access,
                                names=lambda p: p.out),
    "output-inside-input": Case(64, "inside the input dataset", where=lambda p: p._replace(out=p.ds / "qsm"),
                                names=lambda p: p.ds / "qsm"),
    "work-inside-input": Case(64, "work folder lies inside the input dataset",
                              where=lambda p: p._replace(work=p.ds / "work"), names=lambda p: p.ds / "work"),
    "output-is-the-input": Case(64, "inside the input dataset", where=lambda p: p._replace(out=p.ds)),
    "output-is-input-derivatives": Case(64, "inside the input dataset",
                                        where=lambda p: p._replace(out=p.ds / "derivatives"),
                                        names=lambda p: p.ds / "derivatives"),
    # never into another pipeline's data (#14): its derivative dataset, inside it, or another tool's folder
    "output-is-foreign-derivative": Case(64, "holds the derivative dataset of qsmbids-sim",
                                         where=lambda p: p._replace(out=p.ds / SIM_TRUTH), names=lambda p: p.out),
    "output-is-foreign-derivative-outside": Case(64, "holds the derivative dataset of qsmbids-sim",
                                                 where=lambda p: p._replace(out=_copy_truth(p)), names=lambda p: p.out),
    "output-inside-foreign-derivative": Case(64, "lies inside the derivative dataset of qsmbids-sim",
                                             where=lambda p: p._replace(out=_copy_truth(p) / "qsm"),
                                             names=lambda p: p.out),
    "output-other-tool-in-derivatives": Case(64, "holds files of another tool",
                                             where=lambda p: p._replace(out=_freesurfer(p.ds)), names=lambda p: p.out),
    # the work folder is disposable, the derivatives are not (#14)
    "work-is-output": Case(64, "the work folder is the output folder", where=lambda p: p._replace(work=p.out),
                           names=lambda p: p.work),
    "work-inside-output": Case(64, "work folder lies inside the output folder",
                               where=lambda p: p._replace(work=p.out / "work"), names=lambda p: p.work),
    "output-inside-work": Case(64, "output folder lies inside the work folder",
                               where=lambda p: p._replace(out=p.work / "out"), names=lambda p: p.out),
    # --param values against the functions' types and ranges, before anything runs (#14)
    "param-not-a-number": Case(64, "expected a number or discrepancy, got 'abc'", extra=("--param", "medi.lambda_=abc",
                                                                          *NO_VALIDATION),
                               names=lambda p: "--param medi.lambda_"),
    "param-out-of-range": Case(64, "expected a value >= 1, got -5", extra=("--param", "medi.max_iter=-5",
                                                                           *NO_VALIDATION),
                               names=lambda p: "--param medi.max_iter"),
    "param-not-whole": Case(64, "expected a whole number, got 2.5", extra=("--param", "medi.cg_max_iter=2.5",
                                                                           *NO_VALIDATION),
                            names=lambda p: "--param medi.cg_max_iter"),
    "param-stage-range": Case(64, "expected a value in (0, 1), got 1.5", extra=("--bgremove", "vsharp", "--param",
                                                                                "bgremove.threshold=1.5", *NO_VALIDATION),
                              names=lambda p: "--param bgremove.threshold"),
    "param-computed-by-workflow": Case(64, "cannot be set on the command line",
                                       extra=("--param", "medi.noise_std=2", *NO_VALIDATION),
                                       names=lambda p: "--param medi.noise_std"),
}
SIM_TRUTH = Path("derivatives") / "qsmbids-sim"


def _copy_truth(p: Paths) -> Path:
    """The simulator's truth dataset (GeneratedBy qsmbids-sim) copied outside the input dataset."""
    dst = p.tmp / "truth"
    if not dst.exists():
        shutil.copytree(p.ds / SIM_TRUTH, dst)
    return dst


def _freesurfer(ds: Path) -> Path:
    """A folder of another tool in the input's derivatives, without a dataset description (as FreeSurfer's)."""
    fs = ds / "derivatives" / "freesurfer"
    (fs / "sub-01" / "mri").mkdir(parents=True)
    (fs / "sub-01" / "mri" / "aseg.mgz").write_bytes(b"\0" * 64)
    return fs


def _checksums(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _written(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
def dataset(sim_bids, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(sim_bids, ds)
    return ds


def test_matrix_is_large_enough():
    assert len(CASES) >= 25
    assert {c.code for c in CASES.values()} == {16, 17, 18, 64, 65, 66, 73}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, dataset, tmp_path, capsys, monkeypatch):
    c = CASES[case]
    p = Paths(dataset, tmp_path / "out", tmp_path / "work", tmp_path)
    if c.mutate is not None:
        c.mutate(dataset)
    if c.where is not None:
        p = c.where(p)
    if c.patch is not None:
        c.patch(monkeypatch, p)
    extra = c.extra(p) if callable(c.extra) else c.extra
    before, out_before, work_before = _checksums(dataset), _checksums(p.out), _checksums(p.work)
    rc = _main([str(p.ds), str(p.out), c.level, "-w", str(p.work), *extra])
    captured = capsys.readouterr()
    err = captured.err
    assert rc == c.code, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("qsmbids: error: ")
    assert c.needle in lines[0]
    named = c.names(p) if c.names is not None else p.ds
    assert str(named) in lines[0]
    assert "Traceback" not in err + captured.out
    # nothing written: no output or work folder at all, or, where one existed (another pipeline's dataset), the
    # same files with the same bytes; the input untouched
    assert _written(p.out) == [] or _checksums(p.out) == out_before != {}
    assert _written(p.work) == [] or _checksums(p.work) == work_before != {}
    assert _checksums(dataset) == before


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
                           str(tmp_path / "work"), "--inversion", "tgv", "--param", "tgv.erosions=500",
                           "--outputs", "chimap", "--skip-bids-validation", "--no-roi", "--nprocs", "1"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 70
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "processing failed in invert" in lines[0] and "Traceback" not in proc.stderr
    crashes = list(out.glob("sub-01/log/*/crash-*invert*.txt"))
    assert len(crashes) == 1 and crashes[0].as_posix() in lines[0]
    assert "erosions" in crashes[0].read_text()  # data-dependent: no check before running can foresee it
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


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_unreadable_input_as_an_unprivileged_user(dataset, tmp_path):
    """A real user without access (not a patched ``os.access``): 66 and one line, both for a private dataset folder
    and for one unreadable image inside a readable one; nothing written."""
    import sys
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="qsmbids-perm-"))  # pytest's own folders are private to root
    root.chmod(0o755)
    dataset = Path(shutil.copytree(dataset, root / "ds"))
    out, scratch = root / "out", root / "scratch"  # the work folder may not lie inside the output folder
    for folder in (out, scratch):
        folder.mkdir()
        folder.chmod(0o777)
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "qsmbids.cli.run",
           str(root / "ds"), str(out), "participant", "-w", str(scratch / "work"), "--skip-bids-validation"]
    env = {**os.environ, "HOME": str(scratch), "MPLCONFIGDIR": str(scratch / "mpl")}
    try:
        _check_unreadable(cmd, env, dataset, out)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _check_unreadable(cmd, env, dataset, out):
    import subprocess

    for private in (dataset, _echo(dataset, 2, "phase")):
        for q in (dataset, *dataset.rglob("*")):
            q.chmod(0o755 if q.is_dir() else 0o644)
        private.chmod(0o700 if private.is_dir() else 0o600)
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 66, res.stderr
        assert len(lines) == 1 and str(private) in lines[0] and "Traceback" not in res.stderr, res.stderr
        assert sorted(p.name for p in out.iterdir() if p.name not in ("mpl", ".cache", ".config")) == []
