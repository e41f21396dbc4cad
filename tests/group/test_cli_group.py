"""``qsmbids bids_dir output_dir group``: exit codes, messages and outputs; ``--segmentation-dir`` refusals."""

from __future__ import annotations

import json

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


# ---------------------------------------------------------------------------------------------------- #14
def _tree(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_phenotype_columns_named_like_statistics_are_kept_apart(study, capsys):
    raw, out = study
    (raw / "participants.tsv").write_text("participant_id\tage\tlabel\tmean\tsession\n" + "".join(
        f"sub-{s}\t{a}\tgroup{s}\t{100 + a}\tS{s}\n" for s, a in (("01", 30), ("02", 50), ("03", 70), ("04", 40))))
    (raw / "participants.json").write_text('{"mean": {"Description": "mean reaction time", "Units": "ms"}}')
    assert _main([str(raw), str(out), "group"]) == 0
    df = pd.read_csv(out / "group" / "roi_summary.tsv", sep="\t", dtype={"participant": str})
    stats = pd.read_csv(out / "sub-02" / "anat" / "sub-02_run-1_seg-HarvardOxford_stats.tsv", sep="\t")
    mine = df[df["participant"] == "02"].sort_values("label")
    assert mine["label"].tolist() == sorted(NAMES)  # the atlas labels, not the phenotype
    assert np.allclose(mine["mean"].to_numpy(), stats.sort_values("index")["mean"].to_numpy())
    assert set(mine["participants_mean"]) == {150} and set(mine["participants_label"]) == {"group02"}
    assert set(mine["participants_session"]) == {"S02"} and mine["session"].isna().all()
    doc = json.loads((out / "group" / "roi_summary.json").read_text())
    assert doc["participants_mean"]["Units"] == "ms" and doc["mean"]["Units"] == "ppm"
    text = capsys.readouterr().out
    assert "participants.tsv: column 'mean' is also a column of the ROI table; written as 'participants_mean'" in text


@pytest.mark.parametrize("rows", [["sub-02\t50", "sub-02\t51"], ["sub-02\t50", "02\t51"]])
def test_duplicate_participant_row_exits_65(study, capsys, rows):
    raw, out = study
    (raw / "participants.tsv").write_text("participant_id\tage\nsub-01\t30\n" + "\n".join(rows) + "\n")
    before = _tree(out)
    assert _main([str(raw), str(out), "group"]) == 65
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qsmbids: error: ")
    assert str(raw / "participants.tsv") in err[0] and "sub-02 is listed twice (lines 3 and 4)" in err[0]
    assert "Traceback" not in captured.err + captured.out
    assert _tree(out) == before  # nothing written


@pytest.mark.parametrize("content", ["null", "[1, 2]", '{"Method": null, "Atlas": "HarvardOxford"}', "{broken"])
def test_invalid_stats_sidecar_is_skipped_with_a_warning(study, capsys, content):
    raw, out = study
    side = out / "sub-02" / "anat" / "sub-02_run-1_seg-HarvardOxford_stats.json"
    side.write_text(content)
    assert _main([str(raw), str(out), "group"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    warning = [ln for ln in captured.out.splitlines() if str(side) in ln]
    assert len(warning) == 1 and "sidecar skipped" in warning[0]
    df = pd.read_csv(out / "group" / "roi_summary.tsv", sep="\t", dtype={"participant": str})
    mine = df[df["participant"] == "02"]
    assert len(mine) == len(NAMES) and set(mine["atlas"]) == {"HarvardOxford"}  # from the file name


def test_group_outputs_are_replaced_whole_or_not_at_all(study, monkeypatch, capsys):
    """A failure while the report is written (after the table) leaves the previous outputs byte-identical and no
    staging folder; on a first run it leaves no group output at all."""
    from qsmbids.group import report

    raw, out = study
    real = report.render_group_report

    def fail(data, output_dir, **kw):
        real(data, output_dir, **kw)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "render_group_report", fail)
    assert _main([str(raw), str(out), "group"]) == 73
    assert not (out / "group").exists() and not (out / "group.html").exists()
    assert sorted(p.name for p in out.iterdir()) == ["sub-01", "sub-02", "sub-03"]
    monkeypatch.setattr(report, "render_group_report", real)
    assert _main([str(raw), str(out), "group"]) == 0
    before = _tree(out)
    (raw / "participants.tsv").write_text("participant_id\tage\nsub-01\t31\nsub-02\t51\nsub-03\t71\n")
    monkeypatch.setattr(report, "render_group_report", fail)
    capsys.readouterr()
    assert _main([str(raw), str(out), "group"]) == 73
    assert "No space left on device" in capsys.readouterr().err
    assert _tree(out) == before and not list(out.glob(".qsmbids-group-*"))


def test_group_level_refuses_another_pipelines_dataset(study, tmp_path, capsys):
    raw, out = study
    (out / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0", "DatasetType": '
                                                  '"derivative", "GeneratedBy": [{"Name": "fMRIPrep"}]}')
    assert _main([str(raw), str(out), "group"]) == 64
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds the derivative dataset of fMRIPrep" in err[0]
    assert not (out / "group").exists()
