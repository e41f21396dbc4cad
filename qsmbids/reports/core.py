"""The per-subject HTML report (``<output_dir>/sub-<label>.html``), built only from files on disk.

Like fMRIPrep's report, the page is assembled after the workflow ran, from the reportlets the ``ds_report_*`` sinks
wrote into ``sub-<label>/figures/`` (so ``--reports-only`` can rebuild it), the methods boilerplate in
``logs/CITATION.md`` and the crash files nipype left in ``sub-<label>/log/<run uuid>/``. It works offline and is
self-contained apart from the figures, which are linked relatively (``sub-<label>/figures/…svg``) so the page
can be opened straight from the output folder or an archive of it: inline CSS, no scripts, no network.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment
from markupsafe import Markup

from ..files import write_text_atomic
from . import REPORTLETS, SECTIONS

__all__ = ["Reportlet", "Run", "collect_errors", "collect_runs", "generate_reports", "render_markdown"]

_NAME = re.compile(
    r"^(?P<prefix>sub-[A-Za-z0-9]+(?:_[A-Za-z]+-[A-Za-z0-9]+)*?)_desc-(?P<desc>[A-Za-z0-9]+)_(?P<suffix>[A-Za-z0-9]+)"
    r"(?P<ext>\.(?:svg|png|html|json))$"
)
_ENTITY_NAMES = {"ses": "Session", "task": "Task", "acq": "Acquisition", "ce": "Contrast", "rec": "Reconstruction",
                 "run": "Run", "chunk": "Chunk"}
_EXT_ORDER = {".html": 0, ".svg": 1, ".png": 1, ".json": 2}
#: Reportlets of the regions of interest (issue #6: written by qsmbids.workflows.roi) added to the shared table.
ROI_REPORTLETS: dict[str, tuple[str, str, str]] = {
    "roi": ("dseg", "Regions", "Regions of interest in the run's space, over the first-echo magnitude"),
    "roistats": ("Chimap", "Regions", "Susceptibility per region of interest"),
}
_REPORTLETS = {**REPORTLETS, **ROI_REPORTLETS}
_SECTIONS = (*[s for s in SECTIONS if s != "Accuracy"], "Regions", *[s for s in SECTIONS if s == "Accuracy"])


@dataclass
class Reportlet:
    """One file of a run's report: an inlined HTML fragment, a linked figure or a linked data file."""

    desc: str
    kind: str  # "html", "img" or "link"
    caption: str
    src: str = ""  # path relative to output_dir (POSIX), for "img" and "link"
    content: Markup = field(default_factory=Markup)


@dataclass
class Run:
    """All reportlets of one run (files sharing the entity prefix before ``_desc-``)."""

    prefix: str
    title: str
    sections: dict[str, list[Reportlet]] = field(default_factory=dict)


def _run_title(prefix: str) -> str:
    parts = prefix.split("_")[1:]
    words = []
    for p in parts:
        key, _, value = p.partition("-")
        words.append(f"{_ENTITY_NAMES.get(key, key)} {value}")
    return " · ".join(words) if words else "Run"


def collect_runs(output_dir: str | os.PathLike, subject: str) -> list[Run]:
    """Reportlets under ``sub-<subject>/**/figures/`` grouped by run and sorted into the page's sections."""
    out = Path(output_dir)
    sub_dir = out / f"sub-{subject}"
    runs: dict[str, Run] = {}
    files = sorted(p for p in sub_dir.glob("**/figures/*") if p.is_file()) if sub_dir.is_dir() else []
    order = list(_REPORTLETS)
    found = []
    for p in files:
        m = _NAME.match(p.name)
        if not m or not m["prefix"].startswith(f"sub-{subject}") or m["desc"] not in _REPORTLETS:
            continue
        found.append((m["prefix"], order.index(m["desc"]), _EXT_ORDER[m["ext"]], p, m))
    for prefix, _, _, p, m in sorted(found, key=lambda t: t[:3]):
        run = runs.setdefault(prefix, Run(prefix, _run_title(prefix)))
        desc, ext = m["desc"], m["ext"]
        _, section, caption = _REPORTLETS[desc]
        rel = p.relative_to(out).as_posix()
        if ext == ".html":
            item = Reportlet(desc, "html", caption, rel, Markup(p.read_text(encoding="utf-8")))
        elif ext in (".svg", ".png"):
            item = Reportlet(desc, "img", caption, rel)
        else:
            item = Reportlet(desc, "link", f"{caption}: numbers ({p.name})", rel)
        run.sections.setdefault(section, []).append(item)
    for run in runs.values():
        run.sections = {s: run.sections[s] for s in _SECTIONS if s in run.sections}
    return [runs[k] for k in sorted(runs)]


def _crash_text(path: Path) -> tuple[str, str]:
    """(node name, full text) of a nipype crash file (plain text, or a pickled one via nipype's loader)."""
    if path.suffix in (".pkl", ".pklz"):
        try:
            from nipype.utils.filemanip import loadcrash

            record = loadcrash(str(path))
            node = getattr(record.get("node"), "fullname", "unknown node")
            return node, "".join(record.get("traceback", []))
        except Exception as exc:  # noqa: BLE001 - an unreadable crash file is itself worth reporting
            return "unknown node", f"could not read {path.name}: {exc}"
    text = path.read_text(encoding="utf-8", errors="replace")
    m = re.search(r"^Node: (.+)$", text, re.MULTILINE)
    return (m.group(1).strip() if m else "unknown node"), text


def collect_errors(output_dir: str | os.PathLike, subject: str, run_uuid: str | None) -> list[dict[str, str]]:
    """Crash files of this execution (``sub-<subject>/log/<run_uuid>/crash-*``; every execution if None)."""
    log = Path(output_dir) / f"sub-{subject}" / "log"
    pattern = f"{run_uuid}/crash-*" if run_uuid else "*/crash-*"
    errors = []
    for p in sorted(log.glob(pattern)) if log.is_dir() else []:
        node, text = _crash_text(p)
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        errors.append({"file": p.relative_to(output_dir).as_posix(), "node": node,
                       "message": lines[-1] if lines else "(empty crash file)", "text": text})
    return errors


_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])"), r"<em>\1</em>"),
    (re.compile(r"(?<![\w_])_([^_\n]+)_(?![\w_])"), r"<em>\1</em>"),
    (re.compile(r"\[([^\]]+)\]\((https?://[^)\s]+)\)"), r'<a href="\2">\1</a>'),
]


def _inline(text: str) -> str:
    out = html.escape(text, quote=True)
    for pat, rep in _INLINE:
        out = pat.sub(rep, out)
    return out


def render_markdown(text: str) -> Markup:
    """A small, safe subset of Markdown (headings, paragraphs, lists, emphasis, code, links) as HTML.

    Enough for the methods boilerplate; everything is escaped first, so the text cannot inject markup.

    >>> str(render_markdown("# Methods\\n\\nWe used *MEDI* [@liu2011].\\n\\n- a\\n- b"))
    '<h3>Methods</h3>\\n<p>We used <em>MEDI</em> [@liu2011].</p>\\n<ul><li>a</li><li>b</li></ul>'
    """
    blocks: list[str] = []
    para: list[str] = []
    items: list[str] = []

    def flush() -> None:
        if para:
            blocks.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()
        if items:
            blocks.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for raw in text.splitlines():
        line = raw.rstrip()
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        bullet = re.match(r"^\s*[-*+]\s+(.*)$", line)
        if not line.strip():
            flush()
        elif heading:
            flush()
            level = min(len(heading.group(1)) + 2, 6)
            blocks.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif bullet:
            if para:
                flush()
            items.append(bullet.group(1))
        elif items and raw.startswith((" ", "\t")):
            items[-1] += " " + line.strip()
        else:
            if items:
                flush()
            para.append(line.strip())
    flush()
    return Markup("\n".join(blocks))


def _methods(output_dir: Path, boilerplate_dir: str | os.PathLike | None) -> dict[str, Any]:
    logs = Path(boilerplate_dir) if boilerplate_dir else output_dir / "logs"
    md = logs / "CITATION.md"
    if not md.is_file():
        return {"html": Markup(""), "links": []}
    links = []
    for name in ("CITATION.md", "CITATION.html", "CITATION.bib", "CITATION.tex"):
        p = logs / name
        try:
            rel = p.resolve().relative_to(output_dir.resolve()).as_posix()
        except ValueError:
            continue
        if p.is_file():
            links.append({"name": name, "href": rel})
    return {"html": render_markdown(md.read_text(encoding="utf-8")), "links": links}


def _environment() -> Environment:
    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.globals["slug"] = lambda s: re.sub(r"[^A-Za-z0-9_-]+", "-", str(s)).strip("-").lower()
    return env


def generate_reports(
    subject_list: list[str] | tuple[str, ...],
    output_dir: str | os.PathLike,
    run_uuid: str | None,
    *,
    boilerplate_dir: str | os.PathLike | None = None,
) -> int:
    """Write ``<output_dir>/sub-<label>.html`` for every subject; return the number of errors (crash files) found.

    ``subject_list``: labels with or without ``sub-``. ``run_uuid``: the execution whose crash files are listed
    (None: all executions). ``boilerplate_dir``: where ``CITATION.md`` is (default ``<output_dir>/logs``). Nothing
    is written outside ``output_dir``; each page is replaced atomically.
    """
    from qsmbids import __version__

    out = Path(output_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    template = _environment().from_string(
        resources.files("qsmbids").joinpath("data", "report.html.j2").read_text(encoding="utf-8")
    )
    methods = _methods(out, boilerplate_dir)
    n_errors = 0
    for subject in subject_list:
        label = str(subject).removeprefix("sub-")
        runs = collect_runs(out, label)
        errors = collect_errors(out, label, run_uuid)
        n_errors += len(errors)
        page = template.render(subject=label, runs=runs, errors=errors, methods=methods, version=__version__,
                               run_uuid=run_uuid or "n/a")
        write_text_atomic(out / f"sub-{label}.html", page, mode=0o644)
    return n_errors
