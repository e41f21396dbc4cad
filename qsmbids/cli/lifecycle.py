"""How a participant run starts and ends among other processes: one run per subject and work folder, and a clean
stop on SIGTERM (SLURM's wall-time limit, ``docker stop``) or SIGINT (Ctrl-C).

*Locks.* Array jobs on different subjects may share one work folder; two runs on the same subject may not (they
would write into the same node folders and both fail). Each run holds an exclusive ``flock`` on
``<work>/.qsmbids-lock/sub-<label>`` for every subject it processes; the kernel releases it when the process ends,
however it ends, so a lock file left behind by a killed run never blocks the next one.

*Signals.* :func:`stop_on_signals` turns SIGTERM and SIGINT into :class:`Interrupted` in the main thread; the
caller stops every process the run started (:func:`end_children`: MultiProc workers, their fork server and
whatever a node launched), prints one line and exits 128 + the signal number. Nodes still running stay unfinished
in the work folder and are recomputed by the rerun; derivatives are only ever renamed into place, so none is
half-written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import threading
import time
from pathlib import Path

__all__ = ["Interrupted", "WorkFolderBusy", "end_children", "end_processes", "lock_subjects", "stop_on_signals"]

#: the folder of the lock files, inside the work folder
LOCK_DIR = ".qsmbids-lock"
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: file systems that do not implement flock (Lustre without ``-o flock``, some FUSE mounts) answer with these
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived. A BaseException: nipype's ``except Exception`` around nodes must not swallow it."""

    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)

    @property
    def code(self) -> int:
        """The shell's exit status for a process ended by this signal: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + self.signum


class WorkFolderBusy(Exception):
    """Another run holds the lock of a subject in this work folder."""


@contextlib.contextmanager
def stop_on_signals():
    """Within the block, SIGTERM and SIGINT raise :class:`Interrupted` (once: further ones are ignored while the
    caller cleans up). The previous handlers come back afterwards. Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def end_children(grace: float = 3.0) -> None:
    """Stop every process this one started (and their descendants), SIGKILL after ``grace`` seconds.

    Multiprocessing's resource tracker is left alone: it ends by itself when this process exits, after unlinking
    what was registered with it (killing it would only make the next registration start a new one)."""
    import psutil
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    try:
        children = [p.pid for p in psutil.Process().children() if p.pid != tracker]
    except psutil.Error:
        return
    end_processes(children, grace=grace)


def end_processes(pids, *, grace: float = 3.0) -> None:
    """SIGTERM the processes ``pids`` and all their descendants, SIGKILL those still alive after ``grace`` seconds.

    The whole tree is collected first: a child whose parent dies is handed to init and could not be found again.
    """
    import psutil

    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs += [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)


@contextlib.contextmanager
def lock_subjects(work: Path, subjects):
    """Hold the lock of each subject in ``work`` for the block; :class:`WorkFolderBusy` at once if another run
    holds one (nothing is waited for: a run that might wait for hours is worse on a cluster than a clear line)."""
    folder = Path(work) / LOCK_DIR
    folder.mkdir(exist_ok=True)
    held: list[int] = []
    try:
        for sub in sorted(subjects):
            path = folder / f"sub-{sub}"
            try:
                fd, writable = os.open(path, os.O_RDWR | os.O_CREAT, 0o666), True
            except PermissionError:  # another user's lock file in a shared work folder: flock works read-only too
                fd, writable = os.open(path, os.O_RDONLY), False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in _NO_LOCKS:
                    continue  # no locking on this file system: run unprotected, as before
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise WorkFolderBusy(f"{work}: sub-{sub} is being processed by another qsmbids run with this work "
                                     f"folder ({_holder(path)}); wait until it has finished, or give this run its "
                                     "own -w") from None
            held.append(fd)
            if not writable:
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        yield
    finally:
        for fd in held:
            os.close(fd)  # releases the flock


def _holder(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        text = ""
    return text or "its details are not written yet"
