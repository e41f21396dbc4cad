"""Every run's ROI statistics gathered into one tidy table: one row per participant × session × run × region.

The per-run tables (``sub-*/[ses-*/]anat/*_stats.tsv``, written by the participant level) are read with their
sidecars (atlas, χ method); each row gets the run's entities and the participant's ``participants.tsv`` columns
(renamed ``participants_<name>`` where a column is named like one of the ROI table, so that phenotype and statistics
never overwrite each other).
Nothing is dropped silently: a run of the raw dataset without statistics is listed as *missing* with the likely
reason, a statistics file that cannot be read is *skipped* with a warning naming it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DEFAULT_INVERSION
from ..files import write_text_atomic
from ..reports.tables import COLUMN_DOC, STAT_COLUMNS, read_stats_tsv

__all__ = ["KEY_COLUMNS", "PARTICIPANT_PREFIX", "GroupData", "GroupDataError", "collect_group", "expected_runs",
           "write_summary"]

LOG = logging.getLogger("qsmbids")
#: Columns that identify a row, in order (``rec`` only matters for datasets with several reconstructions).
KEY_COLUMNS: tuple[str, ...] = ("participant", "session", "acq", "rec", "run", "method", "atlas", "roi")
_STAT_VALUES = tuple(c for c in STAT_COLUMNS if c != "name")
_ENTITY = re.compile(r"([a-zA-Z]+)-([a-zA-Z0-9]+)")
_KEY_DOC = {
    "participant": "participant label (without sub-)",
    "session": "session label (n/a: none)",
    "acq": "acquisition label of the MEGRE run (n/a: none)",
    "rec": "reconstruction label of the MEGRE run (n/a: none)",
    "run": "run index of the MEGRE run (n/a: none)",
    "method": "dipole inversion method of the susceptibility map",
    "atlas": "atlas or segmentation the regions come from",
    "roi": "region name",
}


@dataclass
class GroupData:
    """What the group level found. ``rows``: tidy records (see :data:`KEY_COLUMNS` + statistics + participant
    columns); ``missing``: runs without statistics (participant, run, reason); ``skipped``: unreadable statistics
    files (file, reason); ``participant_columns``: the columns joined from ``participants.tsv`` (as named in the
    table: see :data:`PARTICIPANT_PREFIX`)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    missing: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    participant_columns: list[str] = field(default_factory=list)
    participant_meta: dict[str, Any] = field(default_factory=dict)

    def table(self):
        """The rows as a pandas DataFrame, columns in file order."""
        import pandas as pd

        cols = [*KEY_COLUMNS, "label", *_STAT_VALUES[1:], *self.participant_columns]
        return pd.DataFrame(self.rows, columns=cols)


def _run_key(name: str) -> tuple[str, dict[str, str]]:
    """``sub-01_ses-a_run-2_echo-1_part-phase_MEGRE.nii.gz`` → (``sub-01_ses-a_run-2``, entities)."""
    stem = name.split(".")[0]
    ents = {k: v for k, v in _ENTITY.findall(stem)}
    keep = [f"{k}-{v}" for k, v in _ENTITY.findall(stem) if k in ("sub", "ses", "task", "acq", "ce", "rec", "run")]
    return "_".join(keep), ents


def expected_runs(bids_dir: str | os.PathLike | None, subjects: set[str] | None = None) -> dict[str, str]:
    """MEGRE runs of the raw dataset (run prefix → subject), from the phase files' names (no pybids: fast)."""
    if not bids_dir or not Path(bids_dir).is_dir():
        return {}
    out = {}
    for p in sorted(Path(bids_dir).glob("sub-*/**/anat/*_part-phase_MEGRE.nii*")):
        key, ents = _run_key(p.name)
        if subjects is None or ents.get("sub") in subjects:
            out[key] = ents["sub"]
    return out


class GroupDataError(ValueError):
    """Input of the group level that cannot be used as it is (exit 65); the message is one line naming the file."""


#: prefix of a ``participants.tsv`` column whose name is also a column of the ROI table (``mean``, ``label``, ...)
PARTICIPANT_PREFIX = "participants_"


def _participants(bids_dir: str | os.PathLike | None) -> tuple[dict[str, dict[str, Any]], list[str], dict]:
    """``participants.tsv`` rows by label (values as numbers where they parse), its columns and its JSON.

    Phenotype columns are kept apart from the statistics: a column named like one of the ROI table (``mean``,
    ``label``, ``session``) is renamed with :data:`PARTICIPANT_PREFIX` (with a warning). A participant listed twice
    or a column name given twice raises :class:`GroupDataError`: which row or column is meant cannot be guessed.
    """
    if not bids_dir:
        return {}, [], {}
    tsv = Path(bids_dir) / "participants.tsv"
    if not tsv.is_file():
        return {}, [], {}
    import pandas as pd

    try:
        header = tsv.read_text(encoding="utf-8").split("\n", 1)[0].rstrip("\r").split("\t")
        df = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        LOG.warning("qsmbids group: %s unreadable (%s); participant columns left out", tsv, exc)
        return {}, [], {}
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise GroupDataError(f"{tsv}: column {twice[0]!r} appears more than once; rename or remove one")
    if "participant_id" not in df.columns:
        LOG.warning("qsmbids group: %s has no participant_id column; participant columns left out", tsv)
        return {}, [], {}
    names = _participant_column_names(tsv, [c for c in df.columns if c != "participant_id"])
    out: dict[str, dict[str, Any]] = {}
    first_row: dict[str, int] = {}
    for i, r in df.iterrows():
        label = str(r["participant_id"]).strip().removeprefix("sub-")
        if label in out:  # rows are numbered as in the file (the header is line 1)
            raise GroupDataError(f"{tsv}: participant sub-{label} is listed twice (lines {first_row[label]} and "
                                 f"{int(i) + 2}); keep one row per participant")
        first_row[label] = int(i) + 2
        out[label] = {new: _value(r[old]) for old, new in names.items()}
    meta = {}
    js = tsv.with_suffix(".json")
    if js.is_file():
        try:
            meta = json.loads(js.read_text())
        except (OSError, ValueError):
            meta = {}
    meta = {names.get(k, k): v for k, v in meta.items()} if isinstance(meta, dict) else {}
    return out, list(names.values()), meta


def _participant_column_names(tsv: Path, columns: list[str]) -> dict[str, str]:
    """``participants.tsv`` column → its name in the group table (prefixed where it is a column of the ROI table)."""
    taken = {*KEY_COLUMNS, "label", *_STAT_VALUES[1:]}
    names: dict[str, str] = {}
    for c in columns:
        if c not in taken:
            names[c] = c
            continue
        new = PARTICIPANT_PREFIX + c
        if new in taken or new in columns:
            raise GroupDataError(f"{tsv}: column {c!r} is also a column of the ROI table and {new!r} is taken too; "
                                 "rename it")
        LOG.warning("qsmbids group: %s: column %r is also a column of the ROI table; written as %r", tsv, c, new)
        names[c] = new
    return names


def _value(text: str) -> Any:
    text = str(text).strip()
    if text in ("", "n/a"):
        return math.nan
    try:
        return float(text) if any(ch in text for ch in ".eE") or not text.lstrip("-").isdigit() else int(text)
    except ValueError:
        return text


def collect_group(output_dir: str | os.PathLike, bids_dir: str | os.PathLike | None = None, *,
                  participant_label: tuple[str, ...] | list[str] = ()) -> GroupData:
    """Read every statistics table under ``output_dir`` (of ``participant_label`` only, when given)."""
    out = Path(output_dir)
    wanted = set(participant_label) or None
    data = GroupData()
    parts, data.participant_columns, data.participant_meta = _participants(bids_dir)
    files = sorted(out.glob("sub-*/**/anat/*_stats.tsv")) if out.is_dir() else []
    seen: set[str] = set()
    for f in files:
        key, ents = _run_key(f.name)
        sub = ents.get("sub", "")
        if wanted is not None and sub not in wanted:
            continue
        seen.add(key)  # an unreadable table is reported as skipped, not also as missing
        try:
            rows = read_stats_tsv(f)
        except ValueError as exc:
            LOG.warning("qsmbids group: skipping %s: %s", f, str(exc).removeprefix(f"{f}: "))
            data.skipped.append({"file": f.relative_to(out).as_posix(), "reason": str(exc).removeprefix(f"{f}: ")})
            continue
        side = _stats_sidecar(f.with_suffix(".json"))
        method = side.get("Method") or ents.get("desc") or DEFAULT_INVERSION
        atlas = side.get("Atlas") or ents.get("seg") or "n/a"
        run_info = {"participant": sub, "session": ents.get("ses", "n/a"), "acq": ents.get("acq", "n/a"),
                    "rec": ents.get("rec", "n/a"), "run": ents.get("run", "n/a"), "method": method, "atlas": atlas}
        data.runs.append({**run_info, "file": f.relative_to(out).as_posix(), "regions": len(rows)})
        extra = parts.get(sub, {c: math.nan for c in data.participant_columns})
        for r in rows:
            data.rows.append({**run_info, "roi": r["name"], "label": r["index"],
                              **{c: r[c] for c in _STAT_VALUES[1:]}, **extra})
    for key, sub in expected_runs(bids_dir, wanted).items():
        if key in seen:
            continue
        data.missing.append({"participant": sub, "run": key, "reason": _why_missing(out, sub, key)})
        LOG.warning("qsmbids group: %s has no ROI statistics (%s); left out", key, data.missing[-1]["reason"])
    return data


def _stats_sidecar(path: Path) -> dict[str, str]:
    """``Method`` and ``Atlas`` of a statistics sidecar; an unreadable or invalid one (not a JSON object, e.g.
    ``null``, or values that are not text) is skipped with a warning naming it (the file name decides then)."""
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problem = f"unreadable ({type(exc).__name__})"
    else:
        if not isinstance(doc, dict):
            problem = f"not a JSON object ({type(doc).__name__ if doc is not None else 'null'})"
        else:
            bad = [k for k in ("Method", "Atlas") if k in doc and not (isinstance(doc[k], str) and doc[k].strip())]
            if not bad:
                return {k: doc[k].strip() for k in ("Method", "Atlas") if k in doc}
            problem = f"{bad[0]} is not a name ({doc[bad[0]]!r})"
    LOG.warning("qsmbids group: %s: sidecar skipped, %s; atlas and method taken from the file name", path, problem)
    return {}


def _why_missing(out: Path, sub: str, key: str) -> str:
    sub_dir = out / f"sub-{sub}"
    if not sub_dir.is_dir():
        return "no participant-level outputs for this subject"
    crashes = sorted(sub_dir.glob("log/*/crash-*"))
    if not any(sub_dir.glob(f"**/anat/{key}*_Chimap.nii*")):
        return ("the participant level failed for this run (" + crashes[-1].relative_to(out).as_posix() + ")"
                if crashes else "no susceptibility map for this run (not processed yet)")
    if crashes:
        return f"no ROI statistics; a node crashed ({crashes[-1].relative_to(out).as_posix()})"
    return "no ROI statistics (participant level run with --no-roi, or without magnitude images)"


def write_summary(data: GroupData, output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``group/roi_summary.tsv`` (``n/a`` for missing values) and its JSON sidecar describing every column."""
    folder = Path(output_dir) / "group"
    folder.mkdir(parents=True, exist_ok=True)
    df = data.table()
    tsv, js = folder / "roi_summary.tsv", folder / "roi_summary.json"
    write_text_atomic(tsv, df.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g", lineterminator="\n"))
    doc: dict[str, Any] = {c: {"Description": d} for c, d in _KEY_DOC.items()}
    doc["label"] = {"Description": COLUMN_DOC["index"]["Description"]}
    for c in _STAT_VALUES[1:]:
        doc[c] = dict(COLUMN_DOC[c])
    for c in data.participant_columns:
        given = data.participant_meta.get(c)
        doc[c] = dict(given) if isinstance(given, dict) else {"Description": f"{c} (from participants.tsv)"}
    write_text_atomic(js, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return tsv, js
