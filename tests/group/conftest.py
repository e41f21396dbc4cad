"""Synthetic participant-level outputs for the group tests: statistics tables written with the participant
level's own writer, a raw dataset skeleton with MEGRE phase names and a participants.tsv."""

from __future__ import annotations

import json
import os

os.environ.setdefault("NIPYPE_NO_ET", "1")

import numpy as np
import pytest

from qsmbids.reports.tables import roi_statistics, stats_sidecar, write_stats_tsv

NAMES = {4: "Left_Thalamus", 6: "Left_Putamen", 7: "Left_Pallidum", 17: "Right_Putamen"}
AGES = {"01": 30, "02": 50, "03": 70, "04": 40}


def make_study(root, subjects=("01", "02", "03"), *, raw_only=("04",), runs=(1,), sessions=(None,)):
    """Raw skeleton for ``subjects`` + ``raw_only`` and statistics for ``subjects``; χ grows with age in the
    putamen (0.001 ppm / year), so the age scatter has a known slope."""
    raw, out = root / "raw", root / "out"
    (raw).mkdir(parents=True, exist_ok=True)
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    (raw / "participants.tsv").write_text("participant_id\tage\tsex\n" + "".join(
        f"sub-{s}\t{AGES[s]}\t{'MF'[i % 2]}\n" for i, s in enumerate(AGES)))
    (raw / "participants.json").write_text(json.dumps({"age": {"Description": "age", "Units": "year"}}))
    rng = np.random.default_rng(0)
    lab = np.repeat(np.array(list(NAMES)), 50)
    for sub in (*subjects, *raw_only):
        for ses in sessions:
            for run in runs:
                parts = [f"sub-{sub}"] + ([f"ses-{ses}"] if ses else []) + [f"run-{run}"]
                prefix = "_".join(parts)
                rel = f"sub-{sub}/" + (f"ses-{ses}/" if ses else "") + "anat"
                (raw / rel).mkdir(parents=True, exist_ok=True)
                (raw / rel / f"{prefix}_echo-1_part-phase_MEGRE.nii.gz").write_bytes(b"")
                if sub in raw_only:
                    continue
                chi = rng.normal(0.0, 0.005, lab.size) + np.where(lab == 6, 0.001 * AGES[sub], 0.0)
                rows = roi_statistics(chi, lab, NAMES, np.ones(lab.size, bool), 27.0)
                (out / rel).mkdir(parents=True, exist_ok=True)
                write_stats_tsv(rows, out / rel / f"{prefix}_seg-HarvardOxford_stats.tsv")
                (out / rel / f"{prefix}_seg-HarvardOxford_stats.json").write_text(json.dumps(
                    stats_sidecar(atlas="HarvardOxford", space="MNI152NLin6Asym", method="medi", reference="mean")))
    return raw, out


@pytest.fixture
def study(tmp_path):
    return make_study(tmp_path)
