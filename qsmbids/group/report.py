"""HTML of the group level: the self-contained ``group.html`` (figures inlined as data URIs, inline CSS, no scripts,
no network), so that it can be mailed or archived alone. The ROI table of one run is :mod:`qsmbids.reports.tables`."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from jinja2 import Environment

from ..files import write_text_atomic
from ..reports.tables import format_cell

__all__ = ["render_group_report"]

_ENV = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)


_GROUP = _ENV.from_string("""\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="qsmbids {{ version }}">
<title>qsmbids group report</title>
<style>
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1d2733; background: #f6f8fa; }
nav { position: sticky; top: 0; display: flex; gap: 1rem; padding: .55rem 1.2rem; background: #17324d; }
nav a, nav span { color: #dbe8f5; text-decoration: none; font-size: .92rem; }
nav span { font-weight: 700; color: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 1rem 1.2rem 3rem; }
section { background: #fff; border: 1px solid #d8dee6; border-radius: 6px; padding: .4rem 1.2rem 1rem; margin: 1.2rem 0; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; border-bottom: 1px solid #d8dee6; padding-bottom: .3rem; }
img { display: block; max-width: 100%; height: auto; margin: .6rem 0; }
table { border-collapse: collapse; font-size: .88rem; margin: .5rem 0 1rem; }
th, td { border: 1px solid #d8dee6; padding: .2rem .5rem; text-align: left; }
th { background: #eef2f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.warn { color: #b45309; font-weight: 600; } .muted { color: #5b6b7c; }
</style>
</head>
<body>
<nav aria-label="Sections"><span>qsmbids · group</span>
{% for g in groups %}<a href="#{{ g.id }}">{{ g.atlas }} · {{ g.method }}</a>{% endfor %}
<a href="#runs">Runs</a><a href="#missing">Missing ({{ missing|length + skipped|length }})</a></nav>
<main>
<h1>Group report</h1>
<p class="muted">qsmbids {{ version }} · {{ n_participants }} participant{{ "" if n_participants == 1 else "s" }} ·
{{ runs|length }} run{{ "" if runs|length == 1 else "s" }} with ROI statistics · table:
<a href="group/roi_summary.tsv">group/roi_summary.tsv</a> (columns: <a href="group/roi_summary.json">roi_summary.json</a>)</p>
{% if missing or skipped %}<p class="warn">&#9888; {{ missing|length }} run{{ "" if missing|length == 1 else "s" }} without
statistics and {{ skipped|length }} unreadable statistics file{{ "" if skipped|length == 1 else "s" }} were left out (see
<a href="#missing">below</a>).</p>{% endif %}
{% for g in groups %}
<section id="{{ g.id }}">
<h2>{{ g.atlas }} · {{ g.method }}</h2>
<img src="{{ g.box }}" alt="Box plot of regional mean susceptibility, {{ g.atlas }}, {{ g.method }}">
{% if g.covariate %}<img src="{{ g.covariate }}" alt="Regional mean susceptibility against {{ g.covariate_name }}">
{% endif %}
<table><caption>Regional mean susceptibility across runs (ppm)</caption>
<thead><tr><th>Region</th><th>Runs</th><th>Mean</th><th>SD</th><th>Min</th><th>Max</th><th>Mean voxels</th></tr></thead>
<tbody>{% for r in g.summary %}<tr><td>{{ r.roi }}</td><td class="num">{{ r.n }}</td><td class="num">{{ r.mean }}</td>
<td class="num">{{ r.sd }}</td><td class="num">{{ r.min }}</td><td class="num">{{ r.max }}</td><td class="num">{{ r.voxels }}</td></tr>
{% endfor %}</tbody></table>
</section>
{% endfor %}
<section id="runs"><h2>Runs</h2>
<table><thead><tr><th>Participant</th><th>Session</th><th>Acq</th><th>Run</th><th>Method</th><th>Atlas</th><th>Regions</th>
<th>File</th></tr></thead><tbody>
{% for r in runs %}<tr><td>{{ r.participant }}</td><td>{{ r.session }}</td><td>{{ r.acq }}</td><td>{{ r.run }}</td>
<td>{{ r.method }}</td><td>{{ r.atlas }}</td><td class="num">{{ r.regions }}</td><td><code>{{ r.file }}</code></td></tr>
{% endfor %}</tbody></table></section>
<section id="missing"><h2>Missing and skipped</h2>
{% if missing %}<table><caption>Runs of the dataset without ROI statistics (left out)</caption>
<thead><tr><th>Participant</th><th>Run</th><th>Reason</th></tr></thead><tbody>
{% for m in missing %}<tr><td>{{ m.participant }}</td><td>{{ m.run }}</td><td>{{ m.reason }}</td></tr>{% endfor %}
</tbody></table>{% else %}<p>Every MEGRE run of the dataset has ROI statistics.</p>{% endif %}
{% if skipped %}<table><caption>Statistics files that could not be read (left out)</caption>
<thead><tr><th>File</th><th>Problem</th></tr></thead><tbody>
{% for s in skipped %}<tr><td><code>{{ s.file }}</code></td><td>{{ s.reason }}</td></tr>{% endfor %}
</tbody></table>{% endif %}
</section>
</main>
</body>
</html>
""")


def _data_uri(svg: str | os.PathLike) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(Path(svg).read_bytes()).decode("ascii")


def _numeric(series) -> bool:
    import pandas as pd

    vals = pd.to_numeric(series, errors="coerce")
    return bool(vals.notna().sum() >= 3 and vals.nunique() >= 2)


def render_group_report(data, output_dir: str | os.PathLike, *, covariate: str = "age") -> Path:
    """Write ``group/figures/*.svg`` and ``<output_dir>/group.html`` (self-contained); return the page's path.

    One section per (atlas, method): a box/strip plot of the regional means, a scatter against ``covariate`` when
    ``participants.tsv`` has it numeric for at least three participants, and a summary table.
    """
    import pandas as pd

    from .. import __version__
    from .plots import plot_roi_box, plot_roi_covariate

    out = Path(output_dir)
    figs = out / "group" / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    table = data.table()
    groups = []
    for (atlas, method), sub in table.groupby(["atlas", "method"], sort=True):
        gid = f"{atlas}-{method}"
        g: dict[str, Any] = {"id": gid, "atlas": atlas, "method": method,
                             "box": _data_uri(plot_roi_box(sub, figs / f"{gid}_box.svg"))}
        if covariate in sub.columns and _numeric(sub.drop_duplicates("participant")[covariate]):
            sub2 = sub.assign(**{covariate: pd.to_numeric(sub[covariate], errors="coerce")})
            g["covariate"] = _data_uri(plot_roi_covariate(sub2, figs / f"{gid}_{covariate}.svg", covariate=covariate))
            g["covariate_name"] = covariate
        rows = []
        for roi, r in sub.groupby("roi", sort=False):
            v = pd.to_numeric(r["mean"], errors="coerce").dropna()
            rows.append({"roi": roi, "n": int(v.size), "mean": format_cell(float(v.mean())) if v.size else "n/a",
                         "sd": format_cell(float(v.std(ddof=1))) if v.size > 1 else "n/a",
                         "min": format_cell(float(v.min())) if v.size else "n/a",
                         "max": format_cell(float(v.max())) if v.size else "n/a",
                         "voxels": f"{float(r['voxels'].mean()):.0f}"})
        g["summary"] = rows
        groups.append(g)
    page = _GROUP.render(version=__version__, groups=groups, runs=data.runs, missing=data.missing,
                         skipped=data.skipped, n_participants=table["participant"].nunique())
    path = out / "group.html"
    return write_text_atomic(path, page)
