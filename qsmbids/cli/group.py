"""``qsmbids bids_dir output_dir group``: every run's ROI statistics in one table, plots and ``group.html``.

Reads only what the participant level wrote into ``output_dir`` (``*_stats.tsv`` and sidecars) plus the raw
dataset's ``participants.tsv`` and file names (to list runs that have no statistics); no workflow runs. Writes
``group/roi_summary.tsv`` + ``.json``, ``group/figures/*.svg`` and ``group.html``. Refusals are one line on stderr
with a BIDS-Apps exit code: no participant results → 18, input dataset missing → 66, output not writable → 73,
an ambiguous ``participants.tsv`` (a participant listed twice) → 65, an output folder that is not ours → 64.
The outputs are written into a hidden staging folder and renamed into place, so a failure leaves the previous
group outputs (or none), never a half-written set.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .exit_codes import EX_CANTCREAT, EX_DATAERR, EX_NO_MATCH, EX_NOINPUT, EX_OK, Refusal
from .folders import check_folders

__all__ = ["group"]

LOG = logging.getLogger("qsmbids")


def _refuse(code: int, message: str) -> int:
    print(f"qsmbids: error: {message}", file=sys.stderr)
    return code


def group(settings) -> int:
    """Run the group level for ``settings`` (an :class:`~qsmbids.config.Settings`); return the exit code."""
    from ..group.collect import GroupDataError, collect_group

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
    try:
        check_folders(bids, out)  # never into another pipeline's dataset, nor inside the input
    except Refusal as err:
        return _refuse(err.code, str(err))
    try:
        data = collect_group(out, bids, participant_label=labels)
    except GroupDataError as err:
        return _refuse(EX_DATAERR, str(err))
    if not data.rows:
        why = f"; {len(data.skipped)} unreadable statistics file(s), e.g. {data.skipped[0]['file']}" if data.skipped \
            else ""
        return _refuse(EX_NO_MATCH, f"{out}: no participant results with ROI statistics{who}{why}; {first}")
    if not os.access(out, os.W_OK | os.X_OK):
        return _refuse(EX_CANTCREAT, f"{out}: the output folder is not writable")
    try:
        tsv, page = _write_group_outputs(data, out)
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


#: prefix of the hidden folder the group outputs are staged in (inside the output folder: same file system)
STAGING_PREFIX = ".qsmbids-group-"


def _write_group_outputs(data, out: Path) -> tuple[Path, Path]:
    """Write ``group/`` and ``group.html`` into a staging folder, then rename both into place; returns the paths
    of the table and the page. Whatever fails before the renames leaves the previous outputs as they were."""
    from ..group.collect import write_summary
    from ..group.report import render_group_report

    _remove_stale_staging(out)
    stage = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out))
    old, previous = out / "group", stage / "previous"
    swapping = False
    try:
        write_summary(data, stage)
        render_group_report(data, stage)
        if old.exists():
            os.replace(old, previous)  # the swap: the new folder follows at once
            swapping = True
        os.replace(stage / "group", old)
        swapping = False
        os.replace(stage / "group.html", out / "group.html")
    except BaseException:
        if swapping and not old.exists():
            os.replace(previous, old)  # put the previous outputs back
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return old / "roi_summary.tsv", out / "group.html"


def _remove_stale_staging(out: Path) -> None:
    """Staging folders of group runs that were killed (their process is gone)."""
    for folder in out.glob(f"{STAGING_PREFIX}*"):
        try:
            pid = int(folder.name[len(STAGING_PREFIX):].split("-", 1)[0])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process
