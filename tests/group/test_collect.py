"""Collecting every run's statistics into the tidy group table."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest

from qsmbids.group.collect import (
    KEY_COLUMNS,
    collect_group,
    expected_runs,
    write_summary,
)

from .conftest import AGES, NAMES, make_study


def test_one_row_per_subject_run_region_with_participant_columns(study):
    raw, out = study
    data = collect_group(out, raw)
    df = data.table()
    assert len(df) == 3 * len(NAMES) and list(df.columns[: len(KEY_COLUMNS)]) == list(KEY_COLUMNS)
    assert not df.duplicated(["participant", "session", "run", "roi"]).any()
    assert set(df["participant"]) == {"01", "02", "03"} and set(df["method"]) == {"medi"}
    assert (df["run"] == "1").all() and (df["session"] == "n/a").all()
    assert dict(zip(df["participant"], df["age"])) == {s: AGES[s] for s in ("01", "02", "03")}
    put = df[df["roi"] == "Left_Putamen"].sort_values("age")
    assert put["mean"].diff().dropna().gt(0.01).all()  # the synthetic 0.001 ppm/year trend
    assert data.missing == [{"participant": "04", "run": "sub-04_run-1",
                             "reason": "no participant-level outputs for this subject"}]


def test_sessions_runs_and_participant_label(tmp_path):
    raw, out = make_study(tmp_path, runs=(1, 2), sessions=("a", "b"), raw_only=())
    df = collect_group(out, raw).table()
    assert len(df) == 3 * 2 * 2 * len(NAMES)
    sub = collect_group(out, raw, participant_label=("02",)).table()
    assert set(sub["participant"]) == {"02"} and len(sub) == 2 * 2 * len(NAMES)
    assert set(zip(sub["session"], sub["run"])) == {("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")}


def test_corrupted_table_is_skipped_with_a_warning_naming_it(study, caplog):
    raw, out = study
    bad = out / "sub-02" / "anat" / "sub-02_run-1_seg-HarvardOxford_stats.tsv"
    bad.write_text("index\tname\tvoxels\n1\tx\n")
    worse = out / "sub-03" / "anat" / "sub-03_run-1_seg-HarvardOxford_stats.tsv"
    worse.write_text(worse.read_text().replace("\t0.", "\tabc", 1))
    with caplog.at_level(logging.WARNING, logger="qsmbids"):
        data = collect_group(out, raw)
    assert set(data.table()["participant"]) == {"01"}
    assert [s["file"] for s in data.skipped] == ["sub-02/anat/" + bad.name, "sub-03/anat/" + worse.name]
    assert "not a qsmbids ROI statistics table" in data.skipped[0]["reason"]
    assert "is not a number" in data.skipped[1]["reason"]
    assert str(bad) in caplog.text and str(worse) in caplog.text
    # a skipped run is not reported missing a second time
    assert [m["participant"] for m in data.missing] == ["04"]


def test_missing_reasons(study):
    raw, out = study
    (out / "sub-03" / "anat" / "sub-03_run-1_seg-HarvardOxford_stats.tsv").unlink()
    (out / "sub-03" / "anat" / "sub-03_run-1_Chimap.nii.gz").write_bytes(b"")
    log = out / "sub-02" / "log" / "x"
    log.mkdir(parents=True)
    (log / "crash-20250101-node.txt").write_text("Node: roi_register\n")
    (out / "sub-02" / "anat" / "sub-02_run-1_seg-HarvardOxford_stats.tsv").unlink()
    reasons = {m["participant"]: m["reason"] for m in collect_group(out, raw).missing}
    assert "--no-roi" in reasons["03"]
    assert "failed" in reasons["02"] and "crash-20250101-node.txt" in reasons["02"]
    assert expected_runs(raw, {"01"}) == {"sub-01_run-1": "01"}


def test_summary_files(study):
    raw, out = study
    tsv, js = write_summary(collect_group(out, raw), out)
    assert tsv == out / "group" / "roi_summary.tsv"
    df = pd.read_csv(tsv, sep="\t", na_values="n/a", dtype={"participant": str})
    assert len(df) == 3 * len(NAMES) and df["session"].isna().all()
    assert df["participant"].tolist()[0] == "01"
    doc = json.loads(js.read_text())
    assert set(df.columns) == set(doc)
    assert doc["mean"]["Units"] == "ppm" and doc["age"] == {"Description": "age", "Units": "year"}
    assert doc["sex"]["Description"].startswith("sex")


@pytest.mark.parametrize("tsv", ["participant\tage\n01\t3\n", None])
def test_participants_table_missing_or_malformed(study, tsv):
    raw, out = study
    if tsv is None:
        (raw / "participants.tsv").unlink()
    else:
        (raw / "participants.tsv").write_text(tsv)
    data = collect_group(out, raw)
    assert data.participant_columns == [] and len(data.table()) == 3 * len(NAMES)
