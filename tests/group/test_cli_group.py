"""``qsmbids bids_dir output_dir group``: exit codes, messages and outputs; ``--segmentation-dir`` refusals."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from qsmbids.cli.run import _main

from .conftest import NAMES, make_study


def test_group_level_writes_table_and_report(study, capsys):
    raw, out = study
    assert _main([str(raw), str(out), "group"]) == 0
    df = pd.read_csv(out / "group" / "roi_summary.tsv", sep="\t", dtype={"participant": str})
    assert len(df) == 3 * len(NAMES) and (out / "group.html").is_file()
    text = capsys.readouterr().out
    assert "missing: sub-04_run-1 (no participant-level outputs for this subject)" in text


def test_participant_label_at_group_level(study):
    raw, out = study
    assert _main([str(raw), str(out), "group", "--participant-label", "sub-01", "03"]) == 0
    df = pd.read_csv(out / "group" / "roi_summary.tsv", sep="\t", dtype={"participant": str})
    assert sorted(df["participant"].unique()) == ["01", "03"]
    assert "sub-04" not in (out / "group.html").read_text()  # not asked for: not reported missing


@pytest.mark.parametrize("case", ["empty", "absent", "label"])
def test_no_participant_results_exits_18(study, tmp_path, capsys, case):
    raw, out = study
    argv = [str(raw), str(out), "group"]
    if case == "empty":
        argv[1] = str(tmp_path / "empty")
        (tmp_path / "empty").mkdir()
    elif case == "absent":
        argv[1] = str(tmp_path / "nowhere")
    else:
        argv += ["--participant-label", "04"]
    assert _main(argv) == 18
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qsmbids: error: ") and "run the participant level first" in err[0]
    assert not (tmp_path / "empty" / "group").exists()


def test_group_level_missing_bids_dir_exits_66(study, tmp_path, capsys):
    _, out = study
    assert _main([str(tmp_path / "nope"), str(out), "group"]) == 66
    assert "does not exist" in capsys.readouterr().err


def _seg_dir(root, tsv: str | None):
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    nb.save(nb.Nifti1Image(np.array([[[0, 4], [5, 6]]], np.int16), np.eye(4)), anat / "sub-01_desc-aseg_dseg.nii.gz")
    if tsv is not None:
        (anat / "sub-01_desc-aseg_dseg.tsv").write_text(tsv)
    return root


@pytest.mark.parametrize("tsv, code, match", [
    (None, 65, "no labels TSV"),
    ("index\tname\n4\tA\n5\tB\n", 65, "label value(s) 6 have no row"),
    ("idx\tlabel\n4\tA\n", 65, "needs 'index' and 'name' columns"),
])
def test_bad_segmentation_dir_exits_65_before_anything(tmp_path, capsys, tsv, code, match):
    raw, _ = make_study(tmp_path)
    seg = _seg_dir(tmp_path / "seg", tsv)
    out = tmp_path / "new_out"
    with pytest.raises(SystemExit) as exc:  # refused while parsing, as usage errors are
        _main([str(raw), str(out), "participant", "--segmentation-dir", str(seg)])
    assert exc.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0] and "sub-01_desc-aseg_dseg" in err[0]
    assert not out.exists()


def test_segmentation_dir_usage(tmp_path, capsys):
    raw, _ = make_study(tmp_path)
    seg = _seg_dir(tmp_path / "seg", "index\tname\n4\tA\n5\tB\n6\tC\n")
    for extra, code, match in (([str(tmp_path / "x")], 66, "does not exist"),
                               ([str(seg), "--no-roi"], 64, "cannot be used together")):
        with pytest.raises(SystemExit) as exc:
            _main([str(raw), str(tmp_path / "o"), "participant", "--segmentation-dir", *extra])
        assert exc.value.code == code and match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
