"""The generated page in real headless Chromium: it renders, loads every figure, and needs no network."""

from __future__ import annotations

import pytest

from ._browser import browser_unavailable, check_page


def test_report_in_chromium(report_tree, tmp_path):
    reason = browser_unavailable()
    if reason:
        pytest.skip(reason)
    res = check_page(report_tree["out"] / "sub-01.html", screenshot=tmp_path / "shot.png")
    assert res["console_errors"] == [] and res["page_errors"] == []
    assert res["blocked_requests"] == [] and res["failed_requests"] == []
    assert len(res["images"]) == 8 and res["broken_images"] == []
    assert all(w > 100 and h > 100 for _, w, h in res["images"])
    assert res["anchors_missing"] == []
    assert res["pixel_std"] > 10.0 and res["screenshot_size"][1] > 2000  # a long, non-blank page
    assert res["title"] == "qsmbids report: sub-01"
