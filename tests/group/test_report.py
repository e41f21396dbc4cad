"""The group report: figures, tables and a self-contained page that opens in headless Chromium."""

from __future__ import annotations

import base64
import re

import pytest

from qsmbids.group.collect import collect_group
from qsmbids.group.report import render_group_report
from qsmbids.reports.tables import roi_table_html
from tests.reports._browser import browser_unavailable, check_page

from .conftest import make_study


def _svgs(page: str) -> list[str]:
    return [base64.b64decode(m).decode() for m in re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', page)]


def test_group_report_is_self_contained(study, tmp_path):
    raw, out = study
    bad = out / "sub-02" / "anat" / "sub-02_run-9_seg-HarvardOxford_stats.tsv"  # an extra, unreadable table
    bad.write_text("garbage\n")
    page = render_group_report(collect_group(out, raw), out)
    text = page.read_text()
    assert page == out / "group.html"
    svgs = _svgs(text)
    assert len(svgs) == 2  # box plot + age scatter (numeric age for at least three participants)
    assert "Left Putamen" in svgs[0] and "against age" in svgs[1]
    assert "sub-04_run-1" in text and "no participant-level outputs" in text  # missing run listed
    assert bad.name in text  # skipped file listed
    assert not re.search(r'(src|href)="(?!data:|#|group/)', text)  # nothing linked but the table files
    assert (out / "group" / "figures" / "HarvardOxford-medi_box.svg").is_file()


def test_no_age_plot_without_numeric_age(tmp_path):
    raw, out = make_study(tmp_path)
    (raw / "participants.tsv").write_text("participant_id\tgroup\nsub-01\ta\nsub-02\tb\nsub-03\ta\n")
    text = render_group_report(collect_group(out, raw), out).read_text()
    assert len(_svgs(text)) == 1


def test_roi_table_flags_low_coverage():
    rows = [{"index": 1, "name": "A", "voxels": 10, "volume_mm3": 270.0, "coverage": 0.3, "mean": 0.1,
             "median": 0.1, "std": 0.01, "iqr": 0.02, "p5": 0.08, "p95": 0.12},
            {"index": 2, "name": "B", "voxels": 0, "volume_mm3": 0.0, "coverage": 0.0, "mean": float("nan"),
             "median": float("nan"), "std": float("nan"), "iqr": float("nan"), "p5": float("nan"),
             "p95": float("nan")}]
    html = roi_table_html(rows, atlas="HarvardOxford", method="medi")
    assert html.count('class="qsm-warn"') == 2 and "n/a" in html and "2 regions less than half" in html


@pytest.mark.skipif(browser_unavailable() is not None, reason=str(browser_unavailable()))
def test_group_report_opens_in_chromium(study, tmp_path):
    raw, out = study
    page = render_group_report(collect_group(out, raw), out)
    res = check_page(page, screenshot=tmp_path / "group.png")
    assert res["console_errors"] == [] and res["page_errors"] == [] and res["blocked_requests"] == []
    assert res["broken_images"] == [] and len(res["images"]) == 2
    assert all(w > 300 and h > 150 for _, w, h in res["images"])
    assert res["anchors_missing"] == [] and res["pixel_std"] > 20
