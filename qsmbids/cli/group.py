"""``qsmbids bids_dir output_dir group``: every run's ROI statistics in one table, plots and ``group.html``.

Reads only what the participant level wrote into ``output_dir`` (``*_stats.tsv`` and sidecars) plus the raw
dataset's ``participants.tsv`` and file names (to list runs that have no statistics); no workflow runs. Writes
``group/roi_summary.tsv`` + ``.json``, ``group/figures/*.svg`` and ``group.html``. Refusals are one line on stderr
with a BIDS-Apps exit code: no participant results → 18, input dataset missing → 66, output not writable → 73.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from .exit_codes import EX_CANTCREAT, EX_NO_MATCH, EX_NOINPUT, EX_OK

__all__ = ["group"]

LOG = logging.getLogger("qsmbids")


def _refuse(code: int, message: str) -> int:
    print(f"qsmbids: error: {message}", file=sys.stderr)
    return code


def group(settings) -> int:
    """Run the group level for ``settings`` (an :class:`~qsmbids.config.Settings`); return the exit code."""
    from ..group.collect import collect_group, write_summary
    from ..group.report import render_group_report

    ex = settings.execution
    t0 = time.perf_counter()
    bids, out = Path(ex.bids_dir), Path(ex.output_dir)
    if not bids.is_dir():
        return _refuse(EX_NOINPUT, f"{bids}: the BIDS folder does not exist")
    labels = tuple(ex.participant_label)
    who = f" for sub-{', sub-'.join(labels)}" if labels else ""
    first = f"run the participant level first (qsmbids {bids} {out} participant)"
    if not out.is_dir():
        return _refuse(EX_NO_MATCH, f"{out}: no participant results (the output folder does not exist); {first}")
    data = collect_group(out, bids, participant_label=labels)
    if not data.rows:
        why = f"; {len(data.skipped)} unreadable statistics file(s), e.g. {data.skipped[0]['file']}" if data.skipped \
            else ""
        return _refuse(EX_NO_MATCH, f"{out}: no participant results with ROI statistics{who}{why}; {first}")
    if not os.access(out, os.W_OK | os.X_OK):
        return _refuse(EX_CANTCREAT, f"{out}: the output folder is not writable")
    try:
        tsv, _ = write_summary(data, out)
        page = render_group_report(data, out)
    except OSError as err:
        return _refuse(EX_CANTCREAT, f"{out}: cannot write the group outputs ({err.strerror or err})")
    table = data.table()
    LOG.info("qsmbids group: %d row(s) from %d run(s) of %d participant(s) in %.1f s", len(table), len(data.runs),
             table["participant"].nunique(), time.perf_counter() - t0)
    for m in data.missing:
        LOG.info("  missing: %s (%s)", m["run"], m["reason"])
    for s in data.skipped:
        LOG.info("  skipped: %s (%s)", s["file"], s["reason"])
    LOG.info("  table: %s", tsv)
    LOG.info("  report: %s", page)
    return EX_OK
