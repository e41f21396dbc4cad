"""A real single-node SLURM cluster on localhost (``-m slurm``; CI installs Debian's slurm-wlm and munge first):
munged, slurmctld and slurmd with their own key, socket, ports and slurm.conf in a temporary folder; the documented
array script (docs/hpc/qsmbids-array.sbatch) runs the installed qsmbids for two simulated participants as a
2-task array, then the group level runs as a job that depends on it. The daemons are stopped at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "hpc" / "qsmbids-array.sbatch"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.5)
    raise TimeoutError(what)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        pytest.skip(f"SLURM/munge not installed ({', '.join(missing)}); apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the test cluster's daemons run as root")
    root = tmp_path_factory.mktemp("slurm")
    root.chmod(0o700)
    for d in ("state", "spool", "log", "munge"):
        (root / d).mkdir(mode=0o700)
    key, sock = root / "munge" / "munge.key", root / "munge" / "munge.socket"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    subprocess.run(["munged", "--force", f"--key-file={key}", f"--socket={sock}", f"--pid-file={root}/munged.pid",
                    f"--log-file={root}/log/munged.log", f"--seed-file={root}/munge/seed"], check=True)
    host = socket.gethostname()
    cpus = os.cpu_count() or 2
    mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=qsmbidstest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={sock}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
NodeName={host} CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    pid_files = [root / f"{name}.pid" for name in ("munged", "slurmctld", "slurmd")]
    try:
        subprocess.run(["slurmctld", "-f", str(conf)], check=True, env=env)
        subprocess.run(["slurmd", "-f", str(conf)], check=True, env=env)
        _wait(lambda: subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env)
              .stdout.strip() == "idle", 60, "the node did not come up idle")
        yield {"root": root, "env": env, "cpus": cpus}
    finally:
        # the pids first: a daemon removes its pid file when shutdown begins, not when it has ended
        pids = [_pid(f) for f in pid_files]
        subprocess.run(["scancel", "--user", str(os.getuid())], env=env, capture_output=True)
        try:
            _wait(lambda: not subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=env)
                  .stdout.strip(), 30, "jobs left after scancel")
        except TimeoutError:
            pass  # the daemons are killed below all the same
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True)  # slurmctld and slurmd
        subprocess.run(["munged", "--stop", f"--socket={sock}"], capture_output=True)
        for pid in pids:
            _stop(pid)


def _pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text())
    except (OSError, ValueError):
        return None


def _running(pid: int) -> bool:
    """Alive and not a zombie (a daemon's exit may never be reaped by this sandbox's init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stop(pid: int | None) -> None:
    """Wait for a daemon to end; kill it after 20 s."""
    if pid is None:
        return
    try:
        _wait(lambda: not _running(pid), 20, str(pid))
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_array_job_then_group_level(cluster, tmp_path):
    from qsmbids.cli.sim import main as sim_main

    env = dict(cluster["env"])
    bids, out = tmp_path / "bids", tmp_path / "out"
    assert sim_main([str(bids), "--preset", "test", "--subjects", "2", "--seed", "11"]) == 0
    qsmbids = Path(sys.executable).parent / "qsmbids"
    exports = f"ALL,BIDS_DIR={bids},OUT_DIR={out},QSMBIDS_BIN={qsmbids},SLURM_TMPDIR={tmp_path}/scratch"
    t0 = time.perf_counter()
    sub = subprocess.run(["sbatch", "--parsable", "--array=1-2", "--cpus-per-task=1", "--mem=4G",
                          f"--output={tmp_path}/task-%A_%a.log", f"--export={exports}", str(SCRIPT)],
                         capture_output=True, text=True, env=env, check=True, cwd=tmp_path)
    jid = sub.stdout.strip().split(";")[0]
    group = subprocess.run(["sbatch", "--wait", f"--dependency=afterok:{jid}", "--kill-on-invalid-dep=yes",
                            f"--output={tmp_path}/group.log", f"--export=ALL,PATH={qsmbids.parent}:{env['PATH']}",
                            "--wrap", f"qsmbids {bids} {out} group"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1500)
    took = time.perf_counter() - t0
    logs = {p.name: p.read_text() for p in sorted(tmp_path.glob("*.log"))}
    assert group.returncode == 0, (group.stderr, logs)
    print(f"\nSLURM array (2 participants) + group: {took:.1f} s")
    # both array tasks ran, each on its own participant, and both finished
    tasks = [text for name, text in logs.items() if name.startswith("task-")]
    assert len(tasks) == 2
    assert {t.split(": sub-")[1].split(",")[0] for t in tasks} == {"01", "02"}
    for s in ("01", "02"):
        assert (out / f"sub-{s}" / "anat" / f"sub-{s}_Chimap.nii.gz").is_file()
        assert (out / f"sub-{s}.html").is_file()
    assert not list((tmp_path / "scratch").glob("qsmbids-work-*"))  # removed after success
    rows = [line.split("\t") for line in (out / "group" / "roi_summary.tsv").read_text().splitlines()]
    assert rows[0][0] == "participant" and {r[0] for r in rows[1:]} == {"01", "02"} and len(rows) > 10


def test_nipype_slurm_plugin_file(cluster, tmp_path):
    """``--use-plugin docs/hpc/nipype-slurm.yml``: every step is its own SLURM job; qsmbids waits for them and writes
    the derivatives and the report as with MultiProc."""
    from qsmbids.cli.sim import main as sim_main

    env = {**cluster["env"], "LOGNAME": os.environ.get("LOGNAME", "root")}
    bids, out = tmp_path / "bids", tmp_path / "out"
    assert sim_main([str(bids), "--preset", "test", "--seed", "12"]) == 0
    qsmbids = Path(sys.executable).parent / "qsmbids"
    t0 = time.perf_counter()
    res = subprocess.run([str(qsmbids), str(bids), str(out), "participant", "-w", str(tmp_path / "work"),
                          "--skip-bids-validation", "--use-plugin", str(ROOT / "docs/hpc/nipype-slurm.yml")],
                         capture_output=True, text=True, env=env, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    print(f"\nnipype SLURM plugin, one participant: {time.perf_counter() - t0:.1f} s")
    batch = list((tmp_path / "work").rglob("batchscript_*.sh"))
    assert len(batch) > 10  # the steps really went through sbatch
    assert (out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").is_file() and (out / "sub-01.html").is_file()


def test_nipype_slurmgraph_plugin_file_submits_and_says_so(cluster, tmp_path):
    """``--use-plugin docs/hpc/nipype-slurmgraph.yml``: nipype submits the whole graph and returns before anything
    has run, so qsmbids exits 0 saying how to write the reports later, and writes no report now. The jobs are
    cancelled (running them is what the SLURM plugin test shows)."""
    from qsmbids.cli.sim import main as sim_main

    env = {**cluster["env"], "LOGNAME": os.environ.get("LOGNAME", "root")}
    bids, out = tmp_path / "bids", tmp_path / "out"
    assert sim_main([str(bids), "--preset", "test", "--seed", "13"]) == 0
    qsmbids = Path(sys.executable).parent / "qsmbids"
    try:
        res = subprocess.run([str(qsmbids), str(bids), str(out), "participant", "-w", str(tmp_path / "work"),
                              "--skip-bids-validation", "--use-plugin", str(ROOT / "docs/hpc/nipype-slurmgraph.yml")],
                             capture_output=True, text=True, env=env, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "submitted as jobs with the SLURMGraph plugin" in res.stderr + res.stdout
        assert "--reports-only" in res.stderr + res.stdout
        queued = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=env).stdout.split()
        assert len(queued) > 10
        assert not (out / "sub-01.html").exists()
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
