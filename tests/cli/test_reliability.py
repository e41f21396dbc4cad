"""Reliability of the participant level (issue #8): resources reach the scheduler, a full disk or a read-only folder
is one line and exit 73 with no truncated output, a damaged work folder is repaired, a SIGKILLed run resumes to the
same derivatives, inputs are never touched, two runs are bit-identical, and array jobs may share an output folder.

Fast tests run the app in this process (``--use-plugin`` Linear, so a monkeypatch reaches the nodes); the slow ones
run ``python -m qsmbids`` as a user would, on ``qsmbids-sim --preset test`` data (``demo`` for the resource test).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsmbids.cli.run import STAGES, _main

FAST_ARGS = ("--skip-bids-validation", "--no-roi", "--outputs", "chimap", "mask", "--inversion", "tkd")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": "0"}


def _qsmbids(*args, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qsmbids", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=_env(), check=False)


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path below ``root`` with its type, size, mode, mtime and (files) SHA-256."""
    snap = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        snap[p.relative_to(root).as_posix()] = (p.is_dir(), st.st_size if p.is_file() else 0, st.st_mode,
                                                st.st_mtime_ns, digest)
    return snap


def _derivatives(out: Path) -> dict[str, Path]:
    """The data files of the derivative dataset (not reports, figures or logs)."""
    return {p.relative_to(out).as_posix(): p for p in out.glob("sub-*/**/anat/*") if p.is_file()}


def _assert_complete(out: Path) -> None:
    """No truncated output: every NIfTI decodes completely, every JSON parses, no staging folder is left."""
    for p in out.rglob("*.nii.gz"):
        if not any(part.startswith(".qsmbids-sink-") for part in p.parts):
            np.asanyarray(nib.load(p).dataobj)  # raises on a truncated file
    for p in out.rglob("*.json"):
        json.loads(p.read_text())


def _assert_same_derivatives(a: Path, b: Path, *, exact_bytes: bool = False) -> int:
    da, db = _derivatives(a), _derivatives(b)
    assert sorted(da) == sorted(db)
    for rel, pa in da.items():
        pb = db[rel]
        if rel.endswith(".nii.gz"):
            ia, ib = nib.load(pa), nib.load(pb)
            assert np.array_equal(np.asanyarray(ia.dataobj), np.asanyarray(ib.dataobj)), rel
            assert np.array_equal(ia.affine, ib.affine) and ia.header.get_data_dtype() == ib.header.get_data_dtype()
            if exact_bytes:
                assert gzip.decompress(pa.read_bytes()) == gzip.decompress(pb.read_bytes()), rel
        elif rel.endswith(".json"):
            assert json.loads(pa.read_text()) == json.loads(pb.read_text()), rel
        elif rel.endswith(".h5"):  # ITK transforms: HDF5 stamps object times into the file, compare the contents
            assert _h5_contents(pa).keys() == _h5_contents(pb).keys(), rel
            for key, value in _h5_contents(pa).items():
                assert np.array_equal(value, _h5_contents(pb)[key]), f"{rel}:{key}"
        else:
            assert pa.read_bytes() == pb.read_bytes(), rel
    return len(da)


def _h5_contents(path: Path) -> dict[str, np.ndarray]:
    import h5py  # a dependency of nitransforms (niworkflows)

    found: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as fh:
        fh.visititems(lambda name, obj: found.__setitem__(name, np.asarray(obj[()]))
                      if isinstance(obj, h5py.Dataset) else None)
    return found


def _still_running(pids, timeout: float = 10.0) -> list[int]:
    """The pids still running (zombies do not count) after waiting up to ``timeout`` seconds for them to end."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _session_pids(sid: int) -> list[int]:
    """The processes of session ``sid`` (a child started with ``start_new_session`` and all it started)."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                found.append(proc.pid)
        except OSError:
            continue
    return found


@pytest.fixture
def dataset(sim_bids, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(sim_bids, ds)
    return ds


def _linear_plugin(tmp_path: Path) -> Path:
    f = tmp_path / "linear.yml"
    f.write_text("plugin: Linear\n")
    return f


# ------------------------------------------------------------------------------------------------------------
# fast
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "plugin_file", "n_procs", "memory_gb", "strict"), [
    (["--nprocs", "1", "--mem-gb", "4"], None, 1, 4.0, False),
    (["--nprocs", "2"], "plugin: MultiProc\nplugin_args: {n_procs: 8, memory_gb: 7}\n", 2, 7.0, True),
])
def test_nprocs_and_mem_gb_reach_multiproc(dataset, tmp_path, monkeypatch, capsys, args, plugin_file, n_procs,
                                           memory_gb, strict):
    """The scheduler itself gets the limits (nipype's MultiProc: processors, memory_gb), and every node asks for
    no more threads than --nprocs and a memory estimate. By default a node estimated above --mem-gb still runs
    (alone); a plugin file keeps nipype's own default, which refuses such a node."""
    from nipype.pipeline.plugins.multiproc import MultiProcPlugin

    seen = {}

    def run(self, graph, config, updatehash=False):
        nodes = list(graph.nodes())
        seen.update(processors=self.processors, memory_gb=self.memory_gb, raise_insufficient=self.raise_insufficient,
                    n_procs=max(n.n_procs for n in nodes), mem_gb=[n.mem_gb for n in nodes if n.name in STAGES],
                    monitored={n.name for n in nodes if n.interface.resource_monitor})
        from nipype import config as ncfg

        seen["monitor"] = ncfg.resource_monitor
        raise RuntimeError("stop before running anything")

    monkeypatch.setattr(MultiProcPlugin, "run", run)
    if plugin_file:
        (tmp_path / "plugin.yml").write_text(plugin_file)
        args = [*args, "--use-plugin", str(tmp_path / "plugin.yml")]
    rc = _main([str(dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"), *FAST_ARGS,
                *args])
    assert rc == 70, capsys.readouterr().err  # the stopped run
    assert seen["processors"] == n_procs and seen["memory_gb"] == memory_gb
    assert seen["raise_insufficient"] is strict
    assert seen["n_procs"] <= n_procs
    assert len(seen["mem_gb"]) == 7 and all(m > 0 for m in seen["mem_gb"])
    assert seen["monitor"] is True and seen["monitored"] == set(STAGES[:7])  # the stages, not the sinks
    from nipype import config as ncfg

    assert ncfg.resource_monitor is False  # switched off again for whatever runs next in this process


def test_missing_mandatory_input_is_found_before_running():
    """A node whose mandatory input nothing feeds (directly or through an inputnode) would hang nipype's MultiProc;
    the app finds it in the flattened graph first."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from qsmbids.cli.recovery import missing_inputs

    inner = pe.Workflow(name="inner")
    inputnode = pe.Node(niu.IdentityInterface(fields=["given", "never"]), name="inputnode")
    fed = pe.Node(niu.Rename(format_string="a"), name="fed")
    starved = pe.Node(niu.Rename(format_string="b"), name="starved")
    alone = pe.Node(niu.Rename(format_string="c"), name="alone")
    inner.connect([(inputnode, fed, [("given", "in_file")]), (inputnode, starved, [("never", "in_file")])])
    inner.add_nodes([alone])
    outer = pe.Workflow(name="outer")
    source = pe.Node(niu.IdentityInterface(fields=["path"]), name="source")
    source.inputs.path = __file__
    outer.connect(source, "path", inner, "inputnode.given")
    assert missing_inputs(outer) == ["outer.inner.alone.in_file", "outer.inner.starved.in_file"]
    alone.inputs.in_file = __file__
    outer.connect(source, "path", inner, "inputnode.never")
    assert missing_inputs(outer) == []


def test_read_only_output_folder(dataset, tmp_path, capsys):
    """A folder nobody may write into (``chattr +i`` holds even for root, unlike chmod): exit 73, one line."""
    out = tmp_path / "out"
    out.mkdir()
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        rc = _main([str(dataset), str(out), "participant", "-w", str(tmp_path / "work"), *FAST_ARGS])
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)
    err = capsys.readouterr().err
    assert rc == 73 and err.count("\n") == 1 and f"{out}: the output folder is not writable" in err
    assert list(out.iterdir()) == [] and not (tmp_path / "work").exists()


def test_disk_full_then_damaged_work_dir_then_resume(dataset, tmp_path, monkeypatch, capsys):
    """A full disk while the sinks write (simulated: every gzip write into a sink's staging folder writes half and
    raises ENOSPC, as the kernel does) → exit 73, one line naming the output folder, no NIfTI in the derivative
    folder, no staging folder, inputs untouched. Then the work folder is damaged (a truncated result file, garbage
    files) and the rerun repairs it, recomputes only what is needed and finishes."""
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [str(dataset), str(out), "participant", "-w", str(work), "--use-plugin", str(_linear_plugin(tmp_path)),
            *FAST_ARGS]
    before = _snapshot(dataset)
    real_write = gzip.GzipFile.write

    def full_disk(self, data):
        target = f"{getattr(self, 'name', '')} {getattr(getattr(self, 'fileobj', None), 'name', '')}"
        if f"{os.sep}.qsmbids-sink-" in target:
            real_write(self, bytes(memoryview(data))[: max(1, len(data) // 2)])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(gzip.GzipFile, "write", full_disk)
    rc = _main(argv)
    captured = capsys.readouterr()
    assert rc == 73, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err + captured.out
    assert lines[0].startswith(f"qsmbids: error: {out}: cannot write (no space left on device) in ds_")
    assert "rerun with the same -w to resume" in lines[0]
    assert not list(out.glob("sub-01/anat/*.nii*")) and not list(out.glob(".qsmbids-sink-*"))
    _assert_complete(out)
    assert not (out / "sub-01.html").exists()  # no report either: writing it would have failed the same way
    monkeypatch.undo()

    # damage the work folder: a truncated result file, garbage next to results and in place of nothing
    run_dir = work / "qsmbids_wf" / "sub_01_wf" / "sub_01_wf"
    results = {s: next(run_dir.glob(f"**/{s}/result_{s}.pklz")) for s in STAGES[:7]}
    chi_before = np.asanyarray(nib.load(results["invert"].parent / "chi_ppm.nii").dataobj).copy()
    mtimes = {s: p.stat().st_mtime_ns for s, p in results.items()}
    raw = results["bgremove"].read_bytes()
    results["bgremove"].write_bytes(raw[: len(raw) // 3])
    (results["mask"].parent / "garbage.bin").write_bytes(os.urandom(4096))
    (work / "qsmbids_wf" / "garbage.pklz").write_bytes(b"\x1f\x8b not really gzip")
    time.sleep(0.01)

    rc = _main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.err == "" and "work folder: 2 unusable node result(s) removed" in captured.out  # + merge_meta
    after = {s: p.stat().st_mtime_ns for s, p in results.items()}
    assert [s for s in STAGES[:7] if after[s] != mtimes[s]] == ["bgremove", "invert", "reference"]
    chi_after = np.asanyarray(nib.load(results["invert"].parent / "chi_ppm.nii").dataobj)
    assert np.array_equal(chi_before, chi_after)  # recomputed, bit for bit
    names = sorted(p.name for p in out.glob("sub-01/anat/*.nii.gz"))
    assert names == ["sub-01_desc-brain_mask.nii.gz", "sub-01_desc-tkd_Chimap.nii.gz"]
    _assert_complete(out)
    assert not list(out.glob(".qsmbids-sink-*")) and not list(work.glob(".proc-*"))
    assert _snapshot(dataset) == before


# ------------------------------------------------------------------------------------------------------------
# slow: the app as a user runs it
# ------------------------------------------------------------------------------------------------------------
def _immutable(path: Path, on: bool) -> bool:
    return subprocess.run(["chattr", "-R", "+i" if on else "-i", str(path)], capture_output=True,
                          check=False).returncode == 0


@pytest.fixture(scope="module")
def reference(sim_bids, tmp_path_factory):
    """One uninterrupted default run on a copy of the dataset that nobody can write into (``chattr -R +i``; where
    the file system does not support it the copy is only watched), with the copy's state before and after."""
    base = tmp_path_factory.mktemp("reliability")
    ds = base / "ds"
    shutil.copytree(sim_bids, ds)
    before = _snapshot(ds)
    locked = _immutable(ds, True)
    try:
        t0 = time.perf_counter()
        proc = _qsmbids(ds, base / "out_a", "participant", "-w", base / "work_a", "--nprocs", "2",
                        "--omp-nthreads", "1")
        seconds = time.perf_counter() - t0
        after = _snapshot(ds)
        yield {"ds": ds, "base": base, "proc": proc, "before": before, "after": after, "locked": locked,
               "out": base / "out_a", "work": base / "work_a", "seconds": seconds}
    finally:
        if locked:
            _immutable(ds, False)


@pytest.mark.slow
def test_inputs_untouched_and_never_written(reference):
    proc = reference["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""
    assert reference["after"] == reference["before"]  # same paths, sizes, modes, mtimes and checksums
    assert len(reference["before"]) > 20


@pytest.mark.slow
def test_peak_memory_per_stage_in_the_report(reference):
    assert reference["proc"].returncode == 0
    metas = {m["stage"]: m for m in (json.loads(p.read_text()) for p in reference["work"].rglob("*_meta.json"))}
    assert set(STAGES) <= set(metas)
    peaks = {s: metas[s]["info"]["peak_memory_gb"] for s in STAGES}
    assert all(0.05 < v < 8 for v in peaks.values()), peaks
    html = (reference["out"] / "sub-01.html").read_text()
    assert html.count("peak_memory_gb=") >= len(STAGES)
    assert not list(reference["work"].glob(".proc-*")) and not list(Path.cwd().glob(".proc-*"))


@pytest.mark.slow
def test_two_runs_are_identical(reference):
    """Determinism on the CPU: a second run in a fresh work folder gives the same bytes in every derivative."""
    assert reference["proc"].returncode == 0
    base = reference["base"]
    proc = _qsmbids(reference["ds"], base / "out_c", "participant", "-w", base / "work_c", "--nprocs", "2",
                    "--omp-nthreads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = _assert_same_derivatives(reference["out"], base / "out_c", exact_bytes=True)
    assert n >= 16


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume(reference):
    """SIGKILL the whole process group while a stage runs; nothing truncated is left, and a rerun with the same
    work folder reuses what finished and ends with the derivatives of the uninterrupted run."""
    assert reference["proc"].returncode == 0
    base = reference["base"]
    out, work = base / "out_b", base / "work_b"
    cmd = [sys.executable, "-m", "qsmbids", str(reference["ds"]), str(out), "participant", "-w", str(work),
           "--nprocs", "2", "--omp-nthreads", "1", "--skip-bids-validation"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env(),
                            start_new_session=True)
    seen = []
    try:
        deadline = time.monotonic() + 600
        for line in proc.stdout:
            seen.append(line)
            if " unwrap done" in line or time.monotonic() > deadline:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert any(" unwrap done" in ln for ln in seen), "".join(seen)
    assert proc.returncode == -signal.SIGKILL
    _assert_complete(out)

    again = _qsmbids(*cmd[3:])
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("load", "mask", "unwrap"):  # finished before the kill: not recomputed
        assert any(f" {stage} done, cached" in ln for ln in again.stdout.splitlines()), again.stdout
    _assert_complete(out)
    assert not list(out.glob(".qsmbids-sink-*"))
    assert _assert_same_derivatives(reference["out"], out) >= 16


@pytest.mark.slow
def test_sigterm_mid_stage_leaves_no_process_then_resume(reference):
    """SIGTERM to the main process only (SLURM's wall-time limit, ``docker stop``) while a stage runs: exit 143 with
    one line, no process of the run left behind, nothing truncated; the rerun with the same work folder reuses what
    finished and ends with the derivatives of the uninterrupted run."""
    import psutil

    assert reference["proc"].returncode == 0
    base = reference["base"]
    out, work = base / "out_t", base / "work_t"
    cmd = [sys.executable, "-m", "qsmbids", str(reference["ds"]), str(out), "participant", "-w", str(work),
           "--nprocs", "2", "--omp-nthreads", "1", "--skip-bids-validation"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            start_new_session=True)
    seen, tree = [], []
    try:
        for line in proc.stdout:
            seen.append(line)
            if " unwrap done" in line:
                break
        tree = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert any(" unwrap done" in ln for ln in seen), "".join(seen)
    assert proc.returncode == 143 and err.count("\n") == 1 and "stopped by SIGTERM" in err, err
    assert _still_running(tree) == []
    assert _still_running(_session_pids(proc.pid)) == []  # all processes the run started are in its session
    _assert_complete(out)

    again = _qsmbids(*cmd[3:])
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("load", "mask", "unwrap"):  # finished before the signal: not recomputed
        assert any(f" {stage} done, cached" in ln for ln in again.stdout.splitlines()), again.stdout
    assert not list(out.glob(".qsmbids-sink-*"))
    assert _assert_same_derivatives(reference["out"], out) >= 16


@pytest.mark.slow
def test_two_subjects_at_once_into_one_output_folder(tmp_path):
    """Two array tasks: different subjects, the same output and work folders, started together."""
    from qsmbids.cli.sim import main as sim_main

    ds = tmp_path / "ds"
    assert sim_main([str(ds), "--preset", "test", "--subjects", "2", "--seed", "5"]) == 0
    out, work = tmp_path / "out", tmp_path / "work"
    procs = [subprocess.Popen([sys.executable, "-m", "qsmbids", str(ds), str(out), "participant", "-w", str(work),
                               "--participant-label", label, "--nprocs", "1", "--no-roi"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for label in ("01", "02")]
    results = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert err == ""
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "qsmbids"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".bidsignore"]
    for label in ("01", "02"):
        assert (out / f"sub-{label}.html").is_file()
        assert (out / f"sub-{label}" / "anat" / f"sub-{label}_Chimap.nii.gz").is_file()
    _assert_complete(out)
    proc = subprocess.run(["bids-validator-deno", "--json", str(out)], capture_output=True, text=True, check=False)
    issues = json.loads(proc.stdout)["issues"]["issues"]
    assert [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"] == []


@pytest.mark.slow
def test_disk_full_on_a_real_file_system_then_resume(dataset, tmp_path):
    """The output folder on a 200 kB tmpfs (a private mount namespace; skipped where mounting is not allowed): the
    run fails with exit 73 and one line; after the file system is grown the same command finishes."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not available")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    args = " ".join([sys.executable, "-m", "qsmbids", str(dataset), str(mnt / "out"), "participant", "-w",
                     str(tmp_path / "work"), "--nprocs", "2", *FAST_ARGS])
    script = (f"mount -t tmpfs -o size=200k tmpfs {mnt} || exit 99\n"
              f"{args} > {tmp_path}/1.out 2> {tmp_path}/1.err; echo $? > {tmp_path}/1.rc\n"
              f"cp -a {mnt}/out {tmp_path}/full\n"
              f"mount -o remount,size=64m {mnt}\n"
              f"{args} > {tmp_path}/2.out 2> {tmp_path}/2.err; echo $? > {tmp_path}/2.rc\n"
              f"cp -a {mnt}/out {tmp_path}/done\n")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=1200, env=_env(), check=False)
    if proc.returncode == 99 or not (tmp_path / "1.rc").exists():
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[:200]}")
    err = (tmp_path / "1.err").read_text()
    assert (tmp_path / "1.rc").read_text().strip() == "73", err
    assert err.count("\n") == 1 and "no space left on device" in err and str(mnt / "out") in err
    _assert_complete(tmp_path / "full")
    assert (tmp_path / "2.rc").read_text().strip() == "0", (tmp_path / "2.err").read_text()
    assert "load done, cached" in (tmp_path / "2.out").read_text()
    _assert_complete(tmp_path / "done")
    assert len(list((tmp_path / "done").glob("sub-01/anat/*.nii.gz"))) == 2


@pytest.mark.slow
def test_demo_dataset_with_one_process_and_4_gb(tmp_path):
    """The demo dataset (1 mm, 5 echoes) with ``--nprocs 1 --mem-gb 4``: it finishes, and no stage's process went
    above the 4 GB it was given (peak resident memory from nipype's resource monitor)."""
    from qsmbids.cli.sim import main as sim_main

    ds = tmp_path / "demo"
    assert sim_main([str(ds), "--preset", "demo"]) == 0
    proc = _qsmbids(ds, tmp_path / "out", "participant", "-w", tmp_path / "work", "--nprocs", "1", "--mem-gb", "4",
                    "--skip-bids-validation", timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").is_file()
    peaks = {json.loads(p.read_text())["stage"]: json.loads(p.read_text())["info"].get("peak_memory_gb")
             for p in (tmp_path / "work").rglob("*_meta.json")}
    assert set(STAGES) <= set(peaks) and max(peaks.values()) < 4.0, peaks
