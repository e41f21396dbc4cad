"""How a run ends (issue #14): a full work disk exits 73 instead of hanging, a dead worker fails its node instead of
hanging, SIGTERM/SIGINT stop every process of the run with one line and 143/130, worker processes print nothing at
default verbosity, and two runs on one subject in one work folder do not collide (per-subject lock).

The resume after SIGTERM (derivatives identical to an uninterrupted run) is in ``test_reliability.py``, next to the
reference run it compares with.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from qsmbids.cli.lifecycle import WorkFolderBusy, lock_subjects
from qsmbids.cli.run import _main

from .test_reliability import (FAST_ARGS, _assert_complete, _env, _session_pids, _snapshot,
                               _still_running)

#: what qsmbids itself prints on stdout at default verbosity (no nipype log line)
PROGRESS = re.compile(r"^(qsmbids |qsmbids: warning: |\[sub-\d+\] |  report: )")


@pytest.fixture
def dataset(sim_bids, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(sim_bids, ds)
    return ds


def _command(ds: Path, out: Path, work: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "qsmbids", str(ds), str(out), "participant", "-w", str(work), "--nprocs", "2",
            *FAST_ARGS, *map(str, extra)]


# ------------------------------------------------------------------------------------------------------------
# the MultiProc plugin: failures that used to hang the scheduler
# ------------------------------------------------------------------------------------------------------------
def _kill_own_worker():
    import os

    os._exit(3)


def _disk_full(wait_for):
    import os
    import time

    deadline = time.time() + 60
    while not os.path.exists(wait_for) and time.time() < deadline:
        time.sleep(0.1)
    raise OSError(28, "No space left on device")


def _long_node(pid_file):
    import os
    import time

    with open(pid_file, "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(120)
    return pid_file


def _workflow(tmp_path: Path, **functions):
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    wf = pe.Workflow(name="wf", base_dir=str(tmp_path))
    wf.config["execution"]["crashdump_dir"] = str(tmp_path / "crash")
    wf.config["execution"]["crashfile_format"] = "txt"
    for name, (fn, inputs) in functions.items():
        node = pe.Node(niu.Function(function=fn, input_names=list(inputs), output_names=["out"]), name=name)
        for key, value in inputs.items():
            setattr(node.inputs, key, value)
        wf.add_nodes([node])
    return wf


def _run_in_thread(wf, plugin, timeout: float = 90.0):
    """Run ``wf`` with ``plugin``; returns the exception it ended with (None for success). Fails if still running
    after ``timeout`` seconds: before the fix, these workflows never ended."""
    ended: dict[str, BaseException | None] = {}

    def target():
        try:
            wf.run(plugin=plugin)
            ended["exc"] = None
        except BaseException as exc:  # noqa: BLE001
            ended["exc"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the scheduler hangs"
    return ended["exc"]


def test_dead_worker_fails_its_node_instead_of_hanging(tmp_path, monkeypatch):
    """A worker that dies (OOM killer, a crash in native code) leaves no result; the node fails, the run ends."""
    from qsmbids.cli.multiproc import QsmbidsMultiProcPlugin

    monkeypatch.chdir(tmp_path)
    wf = _workflow(tmp_path, die=(_kill_own_worker, {}))
    exc = _run_in_thread(wf, QsmbidsMultiProcPlugin({"n_procs": 1, "mp_context": "forkserver"}))
    assert exc is not None and not isinstance(exc, OSError)
    crash = list((tmp_path / "crash").glob("crash-*die*"))
    assert len(crash) == 1 and "BrokenProcessPool" in crash[0].read_text()


def test_disk_full_in_a_node_ends_the_run_and_its_workers(tmp_path, monkeypatch):
    """ENOSPC in one node ends the whole run at once (OSError with its errno), and the node still running in the
    other worker is stopped rather than waited for."""
    from qsmbids.cli.multiproc import QsmbidsMultiProcPlugin

    monkeypatch.chdir(tmp_path)
    pid_file = tmp_path / "long.pid"
    wf = _workflow(tmp_path, full=(_disk_full, {"wait_for": str(pid_file)}),
                   long=(_long_node, {"pid_file": str(pid_file)}))
    plugin = QsmbidsMultiProcPlugin({"n_procs": 2, "mp_context": "forkserver"})
    exc = _run_in_thread(wf, plugin)
    assert isinstance(exc, OSError) and exc.errno == errno.ENOSPC, exc
    assert _still_running([int(pid_file.read_text())]) == []


# ------------------------------------------------------------------------------------------------------------
# the app
# ------------------------------------------------------------------------------------------------------------
def test_full_work_disk_exits_73_quickly(dataset, tmp_path):
    """The work folder on a 2 MB tmpfs (a private mount namespace; unprivileged through a user namespace where
    allowed): exit 73 with one line naming the work folder, within 30 s (it used to hang forever), no process left,
    inputs untouched. Skipped where no tmpfs can be mounted."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not available")
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    before = _snapshot(dataset)
    cmd = " ".join(_command(dataset, out, mnt / "work"))
    script = (f"mount -t tmpfs -o size=2m tmpfs {mnt} || exit 99\n"
              f"timeout -s KILL 30 {cmd} > {tmp_path}/1.out 2> {tmp_path}/1.err; echo $? > {tmp_path}/1.rc\n")
    for unshare in (["unshare", "--mount", "--propagation", "private"], ["unshare", "-r", "-m"]):
        proc = subprocess.Popen([*unshare, "sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=_env(), start_new_session=True)
        _, stderr = proc.communicate(timeout=120)
        if proc.returncode != 99 and (tmp_path / "1.rc").exists():
            break
    else:
        pytest.skip(f"cannot mount a tmpfs here: {stderr.strip()[:200]}")
    assert _still_running(_session_pids(proc.pid)) == []
    err = (tmp_path / "1.err").read_text()
    assert (tmp_path / "1.rc").read_text().strip() == "73", err  # 137: killed after 30 s, i.e. it hung
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"qsmbids: error: {mnt / 'work'}: cannot write (no space left on device)"), err
    assert "rerun with the same -w to resume" in err
    stdout = (tmp_path / "1.out").read_text().splitlines()
    assert all(PROGRESS.match(line) for line in stdout), stdout  # no nipype log lines from the workers
    assert not list(out.glob("sub-01/anat/*.nii*"))
    _assert_complete(out)
    assert _snapshot(dataset) == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_every_process_with_one_line(dataset, tmp_path, sig):
    """SIGTERM (SLURM at the wall-time limit, ``docker stop``: to the main process only) or SIGINT while a stage
    runs: exit 143 / 130, one line on stderr, and no process of the run left (fork server, workers)."""
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.Popen(_command(dataset, out, work), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), start_new_session=True)
    seen, tree = [], []
    try:
        for line in proc.stdout:
            seen.append(line)
            if " load done" in line:
                break
        time.sleep(0.5)  # the mask stage is running in a worker now
        tree = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        proc.send_signal(sig)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert any(" load done" in ln for ln in seen), "".join(seen)
    assert len(tree) >= 2  # at least the fork server and a worker were there to stop
    assert proc.returncode == 128 + sig, err
    assert err == f"qsmbids: stopped by {sig.name}; what finished is kept in the work folder: rerun the same " \
                  "command to resume\n"
    assert _still_running(tree) == []
    assert _still_running(_session_pids(proc.pid)) == []
    assert all(PROGRESS.match(line) for line in (seen + rest.splitlines(keepends=True))), seen
    _assert_complete(out)


# ------------------------------------------------------------------------------------------------------------
# one run per subject and work folder
# ------------------------------------------------------------------------------------------------------------
def test_subject_lock(tmp_path):
    """Different subjects lock independently (array jobs share a work folder); the same subject is refused while
    held and free again afterwards; a lock file left by a SIGKILLed holder does not block (the kernel released
    it)."""
    with lock_subjects(tmp_path, ["01"]), lock_subjects(tmp_path, ["02", "03"]):
        with pytest.raises(WorkFolderBusy, match=r"sub-02 is being processed by another qsmbids run .*pid "
                                                 rf"{os.getpid()} on"):
            with lock_subjects(tmp_path, ["02"]):
                pass
    with lock_subjects(tmp_path, ["02"]):
        pass
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                               "from qsmbids.cli.lifecycle import lock_subjects\n"
                               f"with lock_subjects(Path({str(tmp_path)!r}), ['04']):\n"
                               "    print('held', flush=True); time.sleep(120)\n"],
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkFolderBusy):
            with lock_subjects(tmp_path, ["04"]):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / ".qsmbids-lock" / "sub-04").is_file()
    with lock_subjects(tmp_path, ["04"]):
        pass


def test_second_run_on_a_locked_subject_refuses(dataset, tmp_path, capsys):
    """Another run holds sub-01 in this work folder: exit 73 at once with one line, no output folder left behind,
    nothing written into the work folder but the lock, inputs untouched."""
    out, work = tmp_path / "out", tmp_path / "work"
    work.mkdir()
    before = _snapshot(dataset)
    with lock_subjects(work, ["01"]):
        rc = _main([str(dataset), str(out), "participant", "-w", str(work), *FAST_ARGS])
    captured = capsys.readouterr()
    assert rc == 73, captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith(f"qsmbids: error: {work}: sub-01 is being processed by another qsmbids run with "
                                   f"this work folder (pid {os.getpid()} on ")
    assert "give this run its own -w" in captured.err
    assert not out.exists()
    assert sorted(p.name for p in work.iterdir()) == [".qsmbids-lock"]
    assert _snapshot(dataset) == before


@pytest.mark.slow
def test_two_runs_on_one_subject_share_a_work_folder(dataset, tmp_path):
    """Two runs of the same subject with the same work and output folders, started one second apart: one finishes
    (exit 0) with one complete set of derivatives, the other refuses at once (exit 73, one line)."""
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = _command(dataset, out, work)
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    time.sleep(1)
    second = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300, check=False)
    out_1, err_1 = first.communicate(timeout=900)
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 73], (err_1, second.stderr)
    refused = second if second.returncode == 73 else first
    err = second.stderr if refused is second else err_1
    assert err.count("\n") == 1 and "sub-01 is being processed by another qsmbids run" in err
    names = sorted(p.name for p in out.glob("sub-01/anat/*.nii.gz"))
    assert names == ["sub-01_desc-brain_mask.nii.gz", "sub-01_desc-tkd_Chimap.nii.gz"]
    assert (out / "sub-01.html").is_file()
    _assert_complete(out)
    assert not list(out.glob(".qsmbids-sink-*"))
