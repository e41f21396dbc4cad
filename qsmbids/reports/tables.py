"""The ROI table formats shared by both levels: the per-run statistics TSV (written by the participant level,
read by the group level), BIDS ``_dseg.tsv`` label tables and the run's ROI table in the report (HTML).

numpy, csv and jinja2 only, so that both ends (nipype interfaces, the group collector) agree on one definition.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["COLUMN_DOC", "STAT_COLUMNS", "SegmentationError", "format_cell", "read_dseg_tsv", "read_stats_tsv",
           "roi_statistics", "roi_table_html", "stats_sidecar", "write_stats_tsv"]

#: Columns of the per-run statistics TSV, in order.
STAT_COLUMNS: tuple[str, ...] = ("index", "name", "voxels", "volume_mm3", "coverage", "mean", "median", "std", "iqr",
                                 "p5", "p95")
COLUMN_DOC: dict[str, dict[str, str]] = {
    "index": {"Description": "label value in the segmentation (dseg) image"},
    "name": {"Description": "region name, from the segmentation's labels TSV"},
    "voxels": {"Description": "voxels of the region inside the susceptibility map's support (where χ is defined)"},
    "volume_mm3": {"Description": "volume of those voxels", "Units": "mm^3"},
    "coverage": {"Description": "fraction of the region's voxels inside the susceptibility map's support; low "
                                "values flag a region cut by the brain mask"},
    "mean": {"Description": "mean susceptibility in the region (referenced map)", "Units": "ppm"},
    "median": {"Description": "median susceptibility in the region", "Units": "ppm"},
    "std": {"Description": "standard deviation of susceptibility in the region (ddof = 1)", "Units": "ppm"},
    "iqr": {"Description": "interquartile range (75th − 25th percentile) of susceptibility", "Units": "ppm"},
    "p5": {"Description": "5th percentile of susceptibility", "Units": "ppm"},
    "p95": {"Description": "95th percentile of susceptibility", "Units": "ppm"},
}


class SegmentationError(ValueError):
    """A segmentation or its labels table that cannot be used (bad input data: exit code 65)."""


def roi_statistics(chi: np.ndarray, labels: np.ndarray, names: dict[int, str], support: np.ndarray,
                   voxel_volume_mm3: float) -> list[dict[str, Any]]:
    """One row per label of ``names`` (in label order): see :data:`STAT_COLUMNS`.

    Statistics use the region's voxels inside ``support`` (where χ is defined: the eroded mask the inversion
    worked in); a region with no such voxel gets NaN statistics and 0 voxels, so it is reported, not dropped.

    >>> lab = np.array([1, 1, 1, 2, 2, 0]); chi = np.array([0.1, 0.2, 0.3, -0.1, 5.0, 9.0])
    >>> rows = roi_statistics(chi, lab, {1: "a", 2: "b", 3: "c"}, np.array([1, 1, 1, 1, 0, 1], bool), 2.0)
    >>> [(r["name"], r["voxels"], round(r["mean"], 3), r["coverage"]) for r in rows[:2]]
    [('a', 3, 0.2, 1.0), ('b', 1, -0.1, 0.5)]
    >>> math.isnan(rows[2]["mean"]), rows[2]["voxels"]
    (True, 0)
    """
    chi = np.asarray(chi, np.float64)
    labels = np.asarray(labels)
    support = np.asarray(support, bool) & np.isfinite(chi)
    rows = []
    for idx in sorted(names):
        region = labels == idx
        n_all = int(region.sum())
        v = chi[region & support]
        row: dict[str, Any] = {"index": int(idx), "name": names[idx], "voxels": int(v.size),
                               "volume_mm3": float(v.size * voxel_volume_mm3),
                               "coverage": float(v.size / n_all) if n_all else 0.0}
        if v.size:
            q5, q25, q50, q75, q95 = np.percentile(v, [5, 25, 50, 75, 95])
            row.update(mean=float(v.mean()), median=float(q50), std=float(v.std(ddof=1)) if v.size > 1 else 0.0,
                       iqr=float(q75 - q25), p5=float(q5), p95=float(q95))
        else:
            row.update({k: math.nan for k in ("mean", "median", "std", "iqr", "p5", "p95")})
        rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.6g}"
    return str(v)


def write_stats_tsv(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """The statistics as a BIDS TSV (``n/a`` for missing values)."""
    path = Path(path)
    lines = ["\t".join(STAT_COLUMNS)] + ["\t".join(_fmt(r[c]) for c in STAT_COLUMNS) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def stats_sidecar(*, atlas: str, space: str, method: str, reference: str) -> dict[str, Any]:
    """Sidecar of a statistics TSV: what each column means, and which atlas and χ method made it."""
    return {"Description": f"Susceptibility statistics per region of the {atlas} segmentation in the run's space",
            "Atlas": atlas, "AtlasSpace": space, "Method": method, "Reference": reference,
            **{c: dict(d) for c, d in COLUMN_DOC.items()}}


def read_dseg_tsv(path: str | os.PathLike) -> dict[int, str]:
    """``index → name`` of a BIDS ``_dseg.tsv``; unreadable, without ``index``/``name`` columns, with a non-integer
    or repeated index → :class:`SegmentationError` naming the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
            fields = set(rows[0]) if rows else set()
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SegmentationError(f"{path}: cannot read the labels table ({exc})") from None
    if not {"index", "name"} <= fields:
        raise SegmentationError(f"{path}: the labels table needs 'index' and 'name' columns (BIDS dseg.tsv)")
    out: dict[int, str] = {}
    for i, r in enumerate(rows, start=2):
        text = (r.get("index") or "").strip()
        try:
            idx = int(text)
        except ValueError:
            raise SegmentationError(f"{path}: line {i}: index {text!r} is not an integer") from None
        if idx in out:
            raise SegmentationError(f"{path}: line {i}: index {idx} appears twice")
        out[idx] = (r.get("name") or "").strip() or f"label {idx}"
    return out


def read_stats_tsv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a per-run statistics TSV, typed (``n/a`` → NaN); a file that is not one raises ``ValueError``
    naming it (the group level skips such a file with a warning)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0].split("\t") != list(STAT_COLUMNS):
        raise ValueError(f"{path}: not a qsmbids ROI statistics table (expected the columns "
                         f"{', '.join(STAT_COLUMNS)})")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        if len(cells) != len(STAT_COLUMNS):
            raise ValueError(f"{path}: line {n} has {len(cells)} fields, expected {len(STAT_COLUMNS)}")
        row: dict[str, Any] = {}
        try:
            for col, cell in zip(STAT_COLUMNS, cells):
                if col == "name":
                    row[col] = cell
                elif col in ("index", "voxels"):
                    row[col] = int(cell)
                else:
                    row[col] = math.nan if cell == "n/a" else float(cell)
        except ValueError:
            raise ValueError(f"{path}: line {n}: {col} {cell!r} is not a number") from None
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no region rows")
    return rows


def format_cell(v: Any, fmt: str = "{:.4f}") -> str:
    """A number as shown in the HTML tables (``n/a`` when not finite); anything else as text."""
    if isinstance(v, float) and not math.isfinite(v):
        return "n/a"
    return fmt.format(v) if isinstance(v, float) else str(v)


_ROI_TABLE = """\
<div class="qsm-roi">
<table class="qsm-table qsm-rois">
<caption>Regions of the {{ atlas }} segmentation: susceptibility (ppm, referenced{% if method %}; {{ method }}{% endif %})</caption>
<thead><tr><th>Region</th><th>Label</th><th>Voxels</th><th>Volume (mm³)</th><th>Coverage</th><th>Mean</th><th>Median</th>\
<th>SD</th><th>IQR</th><th>P5</th><th>P95</th></tr></thead>
<tbody>
{% for r in rows %}<tr{% if r.coverage < 0.5 %} class="qsm-warn"{% endif %}><td>{{ r.name }}</td><td class="num">{{ r.index }}</td>\
<td class="num">{{ r.voxels }}</td><td class="num">{{ f(r.volume_mm3, "{:.0f}") }}</td><td class="num">{{ f(r.coverage, "{:.2f}") }}</td>\
{% for k in ("mean", "median", "std", "iqr", "p5", "p95") %}<td class="num">{{ f(r[k]) }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
{% if low %}<p class="qsm-warning">&#9888; {{ low|length }} region{{ "s" if low|length != 1 else "" }} less than half inside the \
susceptibility map's support (brain mask after background removal): {{ low|join(", ") }}.</p>{% endif %}
</div>
"""


def roi_table_html(rows: list[dict[str, Any]], *, atlas: str, method: str = "") -> str:
    """The statistics of one run as an HTML table (regions less than half covered by χ are flagged)."""
    low = [r["name"] for r in rows if r["coverage"] < 0.5]
    from jinja2 import Environment  # only when a report is written

    template = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True).from_string(_ROI_TABLE)
    return template.render(rows=rows, atlas=atlas, method=method, f=format_cell, low=low)
