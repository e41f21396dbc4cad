"""Open an HTML report in real headless Chromium and say what a reader would see go wrong.

Reusable outside the unit tests (e.g. on a real ``qsmbids`` output folder)::

    from tests.reports._browser import check_page
    print(check_page("/out/sub-01.html", screenshot="/tmp/sub-01.png"))

Only ``file://`` requests are allowed: anything else is aborted and listed in ``blocked_requests``, which shows
the report works offline.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("QSMBIDS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def browser_unavailable() -> str | None:
    """Why the browser check cannot run here (None if it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed"
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM}"
    return None


def check_page(html_file: str | os.PathLike, screenshot: str | os.PathLike | None = None, *,
               width: int = 1280, height: int = 900, timeout_ms: int = 30000) -> dict[str, Any]:
    """Load ``html_file`` in headless Chromium; return what went wrong and how the page looked.

    Keys: ``console_errors`` and ``page_errors`` (lists of text), ``blocked_requests`` (non-file URLs),
    ``failed_requests``, ``images`` (src, naturalWidth, naturalHeight of every ``<img>``), ``broken_images``
    (naturalWidth 0), ``pixel_std`` (standard deviation of the full-page screenshot's grey levels: ~0 for a blank
    page), ``title`` and ``anchors_missing`` (in-page ``#links`` whose target id does not exist).
    """
    import numpy as np
    from PIL import Image
    from playwright.sync_api import sync_playwright

    url = Path(html_file).absolute().as_uri()
    res: dict[str, Any] = {"console_errors": [], "page_errors": [], "blocked_requests": [], "failed_requests": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: m.type == "error" and res["console_errors"].append(m.text))
            page.on("pageerror", lambda e: res["page_errors"].append(str(e)))
            page.on("requestfailed", lambda r: res["failed_requests"].append(r.url))

            def route(r):
                if r.request.url.startswith("file://"):
                    r.continue_()
                else:
                    res["blocked_requests"].append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.goto(url, wait_until="load", timeout=timeout_ms)
            res["title"] = page.title()
            res["images"] = page.evaluate(
                "() => Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight])"
            )
            res["anchors_missing"] = page.evaluate(
                "() => Array.from(document.querySelectorAll('a[href^=\"#\"]')).map(a => a.getAttribute('href'))"
                ".filter(h => !document.getElementById(h.slice(1)))"
            )
            png = page.screenshot(full_page=True)
        finally:
            browser.close()
    if screenshot:
        Path(screenshot).write_bytes(png)
    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    res["pixel_std"] = float(grey.std())
    res["screenshot_size"] = grey.shape[::-1]
    res["broken_images"] = [src for src, w, _ in res["images"] if not w]
    return res
