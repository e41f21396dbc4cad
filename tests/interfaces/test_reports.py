"""Report interfaces: the run summary table and the accuracy numbers against a known truth."""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

os.environ.setdefault("NIPYPE_NO_ET", "1")

from qsmbids.interfaces.reports import Accuracy, MapReportlet, MaskReportlet, RunSummary, accuracy_metrics
from tests.reports._synth import (
    AFFINE,
    NUCLEI,
    SHAPE,
    save,
    truth_volumes,
    write_meta,
    write_truth,
)


class _Balanced(HTMLParser):
    """Checks that every opened element of a fragment is closed, in order."""

    VOID = frozenset({"br", "img", "meta", "hr", "input", "link"})

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> str:
    p = _Balanced()
    p.feed(html)
    p.close()
    assert p.stack == []
    return " ".join(" ".join(p.text).split())


def test_run_summary(tmp_path):
    metas = write_meta(tmp_path / "meta", session="pre", run="02")
    res = RunSummary(in_files=metas).run(cwd=str(tmp_path))
    html = Path(res.outputs.out_report).read_text()
    text = _parse(html)
    for expected in ("Session pre", "Run 02", "Echo times (ms) 4.00, 10.50, 17.00", "Echoes 3",
                     "Field strength (T) 2.89",
                     "Voxel size (mm) 2 × 2 × 2", "Matrix 30 × 34 × 28", "Obliquity (°) 10.00",
                     "(0.000, 0.174, 0.985)", "B0 angle to the slice axis (°) 10.00", "Brain mask volume (mL) 1234.5",
                     "Reference offset removed (ppm) 0.0042", "Dipole inversion medi lambda=1000",
                     "iterations=30, residual=0.0123, converged=no", "12.35", "Total 19.20"):
        assert expected in text, expected
    assert "note=a&lt;b" in html and "a<b" not in html
    warn_rows = [row for row in html.split("<tr") if 'class="qsm-warn"' in row]
    assert len(warn_rows) == 1 and "did not converge in 30 iterations" in warn_rows[0]
    assert "Acquisition" not in text  # absent entities are left out


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    return write_truth(tmp_path_factory.mktemp("truth"))


def _accuracy(tmp_path, est, mask, truth, **kw):
    cwd = tmp_path / "node"
    cwd.mkdir(exist_ok=True)
    res = Accuracy(in_chimap=save(est, tmp_path / "est.nii.gz"), in_mask=save(mask, tmp_path / "m.nii.gz", np.uint8),
                   truth_chimap=truth["chimap"], **kw).run(cwd=str(cwd))
    return json.loads(Path(res.outputs.out_metrics).read_text()), res.outputs


def test_accuracy_perfect_estimate(tmp_path, truth):
    t = truth_volumes()
    est = np.where(t["mask"], t["chi"] + 0.07, 0.0)  # another reference: a constant offset is not an error
    m, outs = _accuracy(tmp_path, est, t["mask"], truth, truth_mask=truth["mask"], truth_dseg=truth["dseg"],
                        truth_dseg_tsv=truth["dseg_tsv"])
    assert m["nrmse"] == pytest.approx(0, abs=1e-4) and m["nrmse_detrended"] == pytest.approx(0, abs=1e-4)  # float32
    assert m["hfen"] == pytest.approx(0, abs=1e-4) and m["xsim"] == pytest.approx(1.0)
    assert m["correlation"] == pytest.approx(1.0) and m["dgm_linearity"] == pytest.approx(0, abs=1e-6)
    assert m["dgm_labels"] == [v[0] for v in NUCLEI.values()]  # csf, gm and wm are not deep grey matter
    assert {r["name"] for r in m["rois"]} == {"csf", "gm", "wm", *(v[0] for v in NUCLEI.values())}
    assert all(r["estimate"] == pytest.approx(r["truth"]) for r in m["rois"])
    assert Path(outs.out_figure).read_text().count("<text") > 5
    html = Path(outs.out_report).read_text()
    text = _parse(html)
    assert "NRMSE (demeaned, 2019 challenge) 0.00 %" in text and "DGM linearity |1 − slope| (5 nuclei) 0.0000" in text
    assert "both maps are demeaned inside the evaluation mask" in text and "XSIM (Gaussian window" in text


def test_accuracy_known_values(tmp_path, truth):
    t = truth_volumes()
    rng = np.random.default_rng(7)
    noise = rng.normal(0, 0.01, SHAPE)
    est = 0.8 * t["chi"] + noise
    small = t["mask"].copy()
    small[:, :, :8] = False  # the estimate's mask is smaller: evaluate on the intersection only
    est[~small] = 50.0  # anything outside the evaluation mask must not matter
    eroded = small & (truth_volumes()["labels"] == 2)
    eroded[:, :, 20:] = False
    est[eroded] = 0.0  # voxels the background removal dropped (zero in the estimate) are not scored
    m, _outs = _accuracy(tmp_path, est, small, truth, truth_mask=truth["mask"], truth_dseg=truth["dseg"],
                        truth_dseg_tsv=truth["dseg_tsv"])
    ev = small & t["mask"] & ~eroded
    assert m["excluded_zero_voxels"] == int(eroded.sum()) > 100
    x, r = est[ev] - est[ev].mean(), t["chi"][ev] - t["chi"][ev].mean()
    assert m["evaluation_voxels"] == int(ev.sum())
    assert m["nrmse"] == pytest.approx(100 * np.linalg.norm(x - r) / np.linalg.norm(r), rel=1e-6)
    assert m["correlation"] == pytest.approx(np.corrcoef(x, r)[0, 1], rel=1e-6)
    lab = t["labels"]
    means_e = [est[ev & (lab == k)].mean() - est[ev].mean() for k in NUCLEI]
    means_t = [t["chi"][ev & (lab == k)].mean() - t["chi"][ev].mean() for k in NUCLEI]
    slope = np.polyfit(means_t, means_e, 1)[0]
    assert m["dgm_slope"] == pytest.approx(slope, rel=1e-6) and m["dgm_linearity"] == pytest.approx(abs(1 - slope))
    assert 0.7 < slope < 0.9  # the 0.8 scaling shows through the noise
    put = next(q for q in m["rois"] if q["name"] == "putamen_right")
    assert put["estimate"] == pytest.approx(means_e[1]) and put["n_voxels"] == int((ev & (lab == 4)).sum())


def test_accuracy_without_segmentation_or_variation(tmp_path, truth):
    t = truth_volumes()
    m, outs = _accuracy(tmp_path, np.where(t["mask"], t["chi"], 0) + 0.001 * t["mask"], t["mask"], truth)
    assert m["rois"] == [] and "dgm_linearity" not in m and m["nrmse"] == pytest.approx(0, abs=1e-4)
    assert "Voxels (subsample)" in Path(outs.out_figure).read_text()
    const, _ = _accuracy(tmp_path, np.where(t["mask"], 0.1, 0.0), t["mask"], truth)
    assert const["correlation"] is None and any(n.startswith("correlation") for n in const["notes"])
    assert const["nrmse"] == pytest.approx(100.0)  # a constant estimate scores 100 % once demeaned
    bad = tmp_path / "bad.nii.gz"
    nb.Nifti1Image(np.zeros((4, 4, 4), np.float32), AFFINE).to_filename(bad)
    with pytest.raises(ValueError, match="grid of the estimate"):
        accuracy_metrics(str(bad), str(bad), truth["chimap"])
    # the node reports the problem in the section instead of failing the run
    res = Accuracy(in_chimap=str(bad), in_mask=str(bad), truth_chimap=truth["chimap"]).run(cwd=str(tmp_path))
    assert "grid of the estimate" in Path(res.outputs.out_report).read_text()
    assert "error" in json.loads(Path(res.outputs.out_metrics).read_text())


def test_figure_interfaces(tmp_path):
    t = truth_volumes()
    chi = save(t["chi"], tmp_path / "chi.nii.gz")
    mask = save(t["mask"], tmp_path / "mask.nii.gz", np.uint8)
    res = MapReportlet(in_file=chi, in_mask=mask, vmin=-0.15, vmax=0.15, label="χ", units="ppm",
                       out_name="chi.svg").run(cwd=str(tmp_path))
    assert Path(res.outputs.out_report).name == "chi.svg" and "χ (ppm)" in Path(res.outputs.out_report).read_text()
    auto = MapReportlet(in_file=chi, auto="symmetric", out_name="auto.svg").run(cwd=str(tmp_path))
    a = np.percentile(np.abs(t["chi"]), 99)
    assert f">{a:.3g}</text>" in Path(auto.outputs.out_report).read_text()
    phase_only = MaskReportlet(in_mask=mask).run(cwd=str(tmp_path))  # no magnitude: the mask is the background
    assert Path(phase_only.outputs.out_report).read_bytes().startswith(b"<?xml")
