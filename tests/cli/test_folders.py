"""Where a run may write (#14): :func:`qsmbids.cli.folders.check_folders` accepts our own folders and refuses
foreign data, folders inside datasets and a work folder mixed with the output (exit 64, one line naming it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qsmbids.cli.exit_codes import Refusal
from qsmbids.cli.folders import check_folders


def _dataset(folder: Path, generator: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"Name": "x", "BIDSVersion": "1.10.0"}
    if generator is not None:
        doc |= {"DatasetType": "derivative", "GeneratedBy": [{"Name": generator}]}
    (folder / "dataset_description.json").write_text(json.dumps(doc))
    return folder


@pytest.fixture
def ds(tmp_path) -> Path:
    return _dataset(tmp_path / "ds")


def _ours_with_settings_only(folder: Path) -> Path:
    """What --boilerplate-only leaves: settings and citations, no dataset description yet."""
    (folder / "sub-01" / "log" / "20240101-000000_x").mkdir(parents=True)
    (folder / "sub-01" / "log" / "20240101-000000_x" / "qsmbids.toml").write_text("")
    return folder


def _with_a_file(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    return folder


@pytest.mark.parametrize("where", [
    lambda ds, tmp: tmp / "out",  # new, outside
    lambda ds, tmp: ds / "derivatives" / "qsmbids",  # new, in the input's derivatives
    lambda ds, tmp: _dataset(ds / "derivatives" / "qsmbids", "qsmbids"),  # ours, rerun
    lambda ds, tmp: _dataset(tmp / "out", "qsmbids"),
    lambda ds, tmp: _ours_with_settings_only(ds / "derivatives" / "qsm"),
    lambda ds, tmp: (ds / "derivatives" / "empty").mkdir(parents=True) or ds / "derivatives" / "empty",
    lambda ds, tmp: _dataset(tmp / "study") and tmp / "study" / "derivatives" / "qsmbids",  # another dataset's
    lambda ds, tmp: _with_a_file(tmp / "plain"),  # an existing folder outside any dataset (as before)
])
def test_accepted_output_folders(ds, tmp_path, where):
    out = where(ds, tmp_path)
    check_folders(ds, out, tmp_path / "work")
    check_folders(ds, out)  # the group level: no work folder


@pytest.mark.parametrize("where, needle", [
    (lambda ds, tmp: ds, "lies inside the input dataset"),
    (lambda ds, tmp: ds / "derivatives", "lies inside the input dataset"),
    (lambda ds, tmp: ds / "sub-01" / "qsm", "lies inside the input dataset"),
    (lambda ds, tmp: _dataset(ds / "derivatives" / "fmriprep", "fMRIPrep"), "holds the derivative dataset of fMRIPrep"),
    (lambda ds, tmp: _dataset(tmp / "sim", "qsmbids-sim"), "holds the derivative dataset of qsmbids-sim"),
    (lambda ds, tmp: _dataset(tmp / "sim", "qsmbids-sim") / "sub-01", "lies inside the derivative dataset of "
                                                                        "qsmbids-sim"),
    (lambda ds, tmp: _dataset(tmp / "mine", "qsmbids") / "nested", "lies inside the derivative dataset of qsmbids"),
    (lambda ds, tmp: _dataset(tmp / "raw2"), "holds a raw BIDS dataset"),
    (lambda ds, tmp: _dataset(tmp / "raw2") / "qsm", "lies inside a raw BIDS dataset"),
    (lambda ds, tmp: (ds / "derivatives" / "fs" / "sub-01").mkdir(parents=True) or ds / "derivatives" / "fs",
     "holds files of another tool"),
])
def test_refused_output_folders(ds, tmp_path, where, needle):
    out = where(ds, tmp_path)
    with pytest.raises(Refusal) as exc:
        check_folders(ds, out, tmp_path / "work")
    assert exc.value.code == 64 and needle in str(exc.value) and str(exc.value).startswith(str(out))


@pytest.mark.parametrize("folders, needle", [
    (lambda out, ds: (ds, out), "the work folder is the output folder"),
    (lambda out, ds: (ds, out / "work"), "lies inside the output folder"),
    (lambda out, ds: (ds, out.parent), "lies inside the work folder"),
    (lambda out, ds: (ds, ds / "code" / "work"), "lies inside the input dataset"),
    (lambda out, ds: (_dataset(ds.parent / "scratch" / "ds"), ds.parent / "scratch"),
     "the input dataset lies inside the work folder"),
])
def test_refused_work_folders(ds, tmp_path, folders, needle):
    out = tmp_path / "results" / "out"
    bids, work = folders(out, ds)
    with pytest.raises(Refusal) as exc:
        check_folders(bids, out, work)
    assert exc.value.code == 64 and needle in str(exc.value)
