"""Nipype's MultiProc, made safe to leave: no waiting for a result that cannot come, a full disk ends the run, and
the worker processes are quiet and never outlive the run.

Nipype's ``MultiProcPlugin`` waits for a ``result`` dictionary from each worker. When nipype itself fails around the
node in the worker (the disk is full, so the node's ``result_*.pklz`` cannot be written and reading it back raises
``FileNotFoundError``), or when a worker dies (killed by the OOM killer), the future holds an exception instead;
nipype's callback raises, the result never arrives, and the scheduler polls forever: a cluster job burns its whole
wall time. :class:`QsmbidsMultiProcPlugin` turns such a future into a failed node like any other, ends the run at
once when a node failed because a folder could not be written (waiting for the others would only fill the disk
further), and stops the workers whenever the run ends early (a crash with ``--stop-on-first-crash``, SIGTERM).
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from traceback import format_exception

from nipype.pipeline.plugins.multiproc import MultiProcPlugin, run_node

from .lifecycle import end_processes
from .recovery import STOP_ERRNOS, write_errno_in_text

__all__ = ["QsmbidsMultiProcPlugin"]

_PR_SET_PDEATHSIG = 1


class QsmbidsMultiProcPlugin(MultiProcPlugin):
    """``MultiProc`` whose failures always reach the scheduler, and whose workers end with the run.

    Extra plugin argument: ``worker_log_levels`` (``{"workflow_level": "CRITICAL", ...}``), nipype's logging levels
    in the workers; fork-server workers start from nipype's defaults (INFO) and would print lines per node otherwise.
    """

    def __init__(self, plugin_args=None):
        plugin_args = dict(plugin_args or {})
        levels = plugin_args.pop("worker_log_levels", None)
        super().__init__(plugin_args=plugin_args)
        # nipype's pool has started no process yet (they start on the first submit): replace it by one whose workers
        # are set up for us
        self.pool.shutdown(wait=False)
        import multiprocessing as mp

        self.pool = ProcessPoolExecutor(max_workers=self.processors, initializer=_init_worker,
                                        initargs=(self._cwd, levels),
                                        mp_context=mp.get_context(self.plugin_args.get("mp_context")))

    def _submit_job(self, node, updatehash=False):
        self._taskid += 1
        taskid = self._taskid
        if getattr(node.interface, "terminal_output", "") == "stream":
            node.interface.terminal_output = "allatonce"
        future = self.pool.submit(run_node, node, updatehash, taskid)
        self._task_obj[taskid] = future
        # the task id travels with the callback: a worker that died returns no dictionary to read it from
        future.add_done_callback(functools.partial(self._future_done, taskid))
        return taskid

    def _future_done(self, taskid: int, future) -> None:
        try:
            result = future.result()
        except BaseException as exc:  # noqa: BLE001 — a dead worker, or nipype failing around the node
            result = {"result": None, "traceback": format_exception(exc), "taskid": taskid}
        self._taskresult[taskid] = result

    def _clean_queue(self, jobid, graph, result=None):
        notrun = super()._clean_queue(jobid, graph, result=result)
        text = "".join((result or {}).get("traceback") or "")
        found = write_errno_in_text(text, STOP_ERRNOS)
        if found is not None:
            path, code = found
            raise OSError(code, os.strerror(code), path)
        return notrun

    def run(self, graph, config, updatehash=False):
        try:
            return super().run(graph, config, updatehash=updatehash)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """End the workers (and whatever they started) now; their nodes stay unfinished and rerun next time."""
        workers = [p.pid for p in list((getattr(self.pool, "_processes", None) or {}).values()) if p.pid]
        end_processes(workers)
        self.pool.shutdown(wait=True, cancel_futures=True)


def _init_worker(cwd: str, levels) -> None:
    """Set up a worker: nipype's folder and environment, qsmbids' logging levels, and its end with the run."""
    os.chdir(cwd)
    os.environ["NIPYPE_NO_ET"] = "1"
    # Ctrl-C reaches the whole process group: the main process decides and stops the workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:  # if the fork server dies (the main process was SIGKILLed), the worker goes with it
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
    if levels:
        from nipype import config as ncfg
        from nipype import logging as nlogging

        for key, level in levels.items():
            ncfg.set("logging", key, level)
        nlogging.update_logging(ncfg)
