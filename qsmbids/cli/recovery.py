"""Staying correct across crashes and full disks: what ``qsmbids`` does before and after running the workflow.

Derivatives are written atomically (the sinks stage every file in a hidden ``.qsmbids-sink-*`` folder of the output
dataset and rename it into place), so a killed run never leaves a truncated output. A rerun with the same work
folder then recomputes only what did not finish: nipype reruns a node whose hash file is still ``_unfinished``,
:func:`repair_work_dir` removes the nodes it would wrongly take as finished, and :func:`remove_stale_staging` the
staging folders of killed sinks. A full disk or a read-only folder while running is reported as one line and exit
73 (:func:`write_error_in`, :func:`write_error_line`), not as a crash of the software.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

__all__ = ["STOP_ERRNOS", "WRITE_ERRNOS", "missing_inputs", "remove_monitor_files", "remove_stale_staging",
           "repair_work_dir", "unwritable_folder", "write_errno_in_text", "write_error_in", "write_error_line"]

LOG = logging.getLogger("qsmbids")
#: errors that mean "cannot write here" rather than "the software failed": exit 73 with one line
WRITE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted"}
#: the write errors no rerun can get past until space is freed or the file system is made writable: a node failing
#: with one of them ends the whole run (every later node would fail the same way)
STOP_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
#: prefix of the sinks' staging folders (qsmbids.interfaces.bids)
STAGING_PREFIX = ".qsmbids-sink-"


def write_error_line(path, code: int, context: str = "") -> str:
    """``<path>: cannot write (no space left on device)...`` for an OSError met while writing."""
    reason = WRITE_ERRNOS.get(code, os.strerror(code))
    what = f"cannot write ({reason})" if code in STOP_ERRNOS else reason
    return (f"{path}: {what}{context}; nothing half-written was left: free space or fix the permissions, then rerun "
            "with the same -w to resume")


def unwritable_folder(code: int, folders: tuple[Path, ...]) -> Path:
    """The first of ``folders`` where a 1 MB file cannot be written now (the error named no file); else the first.

    A node fails in its work folder or, for a sink, in the output folder; which of them is full or read-only is
    told by trying."""
    for folder in folders:
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".qsmbids-probe-") as fh:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            if err.errno == code:
                return folder
    return folders[0]


def repair_work_dir(root: Path) -> int:
    """Remove the folders of nodes that nipype would take as finished but whose results cannot be used.

    Nipype marks a finished node with a ``_0x<hash>.json`` file and reads its ``result_<node>.pklz`` when a later
    node needs its outputs; a result file that is truncated or garbage (a run killed while it was written, a damaged
    or full disk), or outputs that disappeared (a derivative deleted by hand, a scrubbed scratch folder), would make
    the rerun crash instead of resume. Such a node folder is deleted, so the node and everything after it is
    recomputed (with timestamp hashing, the new outputs invalidate the nodes that consumed the old ones). Returns
    the number of node folders removed.
    """
    from nipype.pipeline.engine.utils import load_resultfile

    if not root.is_dir():
        return 0
    removed, changed = 0, True
    while changed:  # until no node points at files of a removed one (pass-through nodes such as merge_meta)
        changed = False
        for hashfile in sorted(root.rglob("_0x*.json")):
            node_dir = hashfile.parent
            if hashfile.name.endswith("_unfinished.json") or not node_dir.is_dir():
                continue  # nipype reruns unfinished nodes by itself
            results = list(node_dir.glob("result_*.pklz"))
            try:
                if len(results) != 1:
                    raise ValueError("no result file")
                outputs = load_resultfile(str(results[0])).outputs
                if outputs is None:
                    raise ValueError("no outputs")
                missing = [p for p in _paths(outputs.get()) if not Path(p).exists()]
                if missing:
                    raise FileNotFoundError(missing[0])
            except Exception as err:  # noqa: BLE001 — unpickling garbage raises anything
                LOG.debug("work folder: %s is not usable (%s); recomputing it", node_dir, err)
                shutil.rmtree(node_dir, ignore_errors=True)
                removed += 1
                changed = True
    return removed


def _paths(value) -> list[str]:
    """Absolute file paths among a node's outputs (nested lists and dicts included)."""
    if isinstance(value, str):
        return [value] if os.path.isabs(value) else []
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _paths(v)]
    return []


def remove_stale_staging(out: Path, subjects: list[str]) -> None:
    """Delete the staging folders that killed sinks of these subjects left in the output folder.

    A sink writes into ``<output>/.qsmbids-sink-*/sub-<label>/...`` and renames the finished files into place; a
    staging folder holding only this run's subjects belongs to a run of ours that was killed. Folders holding other
    subjects may belong to a run writing right now (array jobs share the output folder) and are left alone, as are
    empty ones younger than an hour.
    """
    ours = {f"sub-{s}" for s in subjects}
    for stage in out.glob(f"{STAGING_PREFIX}*"):
        if not stage.is_dir():
            continue
        entries = {p.name for p in stage.iterdir()}
        stale = (entries and entries <= ours) or (not entries and time.time() - stage.stat().st_mtime > 3600)
        if stale:
            shutil.rmtree(stage, ignore_errors=True)


def remove_monitor_files(work: Path) -> None:
    """Delete the resource monitor's sample files of finished processes (nipype has read them into the results);
    those of live processes may belong to another run sharing the work folder and are kept."""
    for f in work.glob(".proc-*_time-*"):
        pid = f.name.split("_", 1)[0].removeprefix(".proc-")
        try:
            if int(pid) == os.getpid():
                raise ProcessLookupError  # nodes run in this process (Linear plugin) are finished too
            os.kill(int(pid), 0)
        except ProcessLookupError:
            f.unlink(missing_ok=True)
        except (ValueError, OSError):
            continue


_ERRNO_LINE = re.compile(r"\w+Error: \[Errno (\d+)\][^\n']*(?:'([^'\n]+)')?")


def write_error_in(exc: BaseException, crashes: list[Path]) -> tuple[str | None, int] | None:
    """(path, errno) when the run failed because a folder could not be written (disk full, quota, read-only).

    The nodes fail in worker processes, so the OSError reaches this process only as text in the crash files; when
    the disk is so full that not even the crash file could be written, the error is nipype's own.
    """
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in WRITE_ERRNOS:
            return seen.filename, seen.errno
        seen = seen.__cause__ or seen.__context__
    for crash in crashes:
        try:
            text = crash.read_text(errors="replace")
        except OSError:
            continue
        found = write_errno_in_text(text)
        if found is not None:
            return found
    return None


def write_errno_in_text(text: str, codes=STOP_ERRNOS) -> tuple[str | None, int] | None:
    """(path or None, errno) of the first ``OSError: [Errno N] …`` with N in ``codes`` in a traceback's text."""
    for match in _ERRNO_LINE.finditer(text):
        code = int(match.group(1))
        if code in codes:
            return match.group(2), code
    return None


def missing_inputs(wf) -> list[str]:
    """``node.input`` for every mandatory input that is neither set nor fed in the flattened workflow.

    Such a node is a bug of the workflow, and nipype's MultiProc does not survive it: the worker finds no result
    file to return, the future's callback fails and the scheduler waits forever. Found before the run, it is one
    line and exit 70 instead of a hung job on a cluster. An input fed from an ``inputnode``/``outputnode``
    (IdentityInterface) counts only if that field is itself set or fed.
    """
    from nipype.interfaces.base import isdefined
    from nipype.interfaces.utility import IdentityInterface

    graph = wf._create_flat_graph()
    feeds: dict[tuple[object, str], list[tuple[object, str]]] = {}
    for src, dest, data in graph.edges(data=True):
        for out, inp in data.get("connect", []):
            feeds.setdefault((dest, inp), []).append((src, out if isinstance(out, str) else out[0]))

    def provided(node, name: str, depth: int = 0) -> bool:
        if isdefined(getattr(node.inputs, name, None)):
            return True
        for src, out in feeds.get((node, name), []):
            if not isinstance(src.interface, IdentityInterface) or depth > 50 or provided(src, out, depth + 1):
                return True
        return False

    found = []
    for node in graph.nodes():
        for name, trait in node.inputs.traits(mandatory=True).items():
            group = [n for n in {name, *(trait.xor or ())} if node.inputs.trait(n) is not None]
            if not any(provided(node, n) for n in group):
                found.append(f"{node.fullname}.{name}")
    return sorted(found)
