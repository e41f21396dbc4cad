#!/usr/bin/env python
"""Wall time and peak memory of the participant-level BIDS App (``qsmbids DS OUT participant``) on the simulator.

The dataset is made once with ``qsmbids-sim DATA/<preset> --preset <preset>`` (kept when ``--data`` is given), then
``qsmbids DATA/<preset> OUT participant -w WORK --nprocs N`` runs in a subprocess twice: a cold run in a fresh work
folder and a warm rerun on the same work folder (nipype's cache: nothing should be recomputed, so its wall time is
the fixed cost of validation, input checks, hashing and the report).

Why poll ``/proc`` rather than take ``ru_maxrss``: nipype's MultiProc runs nodes in worker processes, so the memory a
user must provide is the *sum* over the process tree, which no single ``rusage`` gives. Every ``--interval`` seconds
the tree under the command is walked and RSS is summed (``peak_tree_gb``; shared pages such as the torch libraries
are counted once per process, so ``peak_tree_pss_gb`` — proportional set size — is the fairer sum). The working
folder of each process tells which node it is running (nipype runs an interface inside its node folder), which
gives a sampled per-node peak RSS of the process running it without psutil. Per-node run times come from the node
result files (``result_<node>.pklz``, ``runtime.duration``); when nipype's own resource monitor can run (psutil
importable by the app), it is switched on through ``NIPYPE_CONFIG_DIR`` and its ``runtime.mem_peak_gb`` is reported
too. The kernel's exact peak of the largest single process (``wait4``) cross-checks the sampled one.

    python benchmarks/bench_app.py                         # demo preset, JSON to stdout + results/app.json
    python benchmarks/bench_app.py --data /tmp/bench_data  # keep (and reuse) the simulated dataset
    python benchmarks/bench_app.py --quick                 # test preset (3 mm), results/app_test.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = {"wall_s": 60.0, "peak_gb": 4.0}
PAGE = os.sysconf("SC_PAGE_SIZE")
GB = 1024**3
NOTES = [
    ("rss_peak_gb: peak RSS (sampled) of the process while it ran in the node folder; it includes the worker's "
     "baseline (Python, nipype, torch: about 0.35 GB) and what the worker kept from earlier nodes"),
    ("mem_peak_gb: nipype's resource monitor (psutil: the process and all its children); for nodes run in the main "
     "process (sinks, merges) that includes the MultiProc workers, so it is not the node's own memory"),
    "ds_* sinks are always_run in niworkflows: they rerun on a warm rerun by design",
]


# ------------------------------------------------------------------------------------------------ /proc sampling
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # comm may hold spaces: fields after the last ')'
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _tree(root: int) -> list[int]:
    kids, out, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeSampler(threading.Thread):
    """Samples the process tree under ``pid``: peak summed RSS/PSS, peak single RSS, per-node-folder peak RSS."""

    def __init__(self, pid: int, work_dir: Path, interval: float):
        super().__init__(daemon=True)
        self.pid, self.work, self.interval = pid, str(work_dir.resolve()) + os.sep, interval
        self.stop = threading.Event()
        self.peak_tree = self.peak_pss = self.peak_proc = 0
        self.max_procs = self.samples = 0
        self.nodes: dict[str, int] = {}  # node folder (relative to the work dir) -> peak RSS of the process in it
        self.peak_at: dict = {}  # when the summed RSS peaked and what each process was running then
        self.t0 = time.perf_counter()

    def run(self) -> None:
        while not self.stop.is_set():
            total = pss = 0
            pids = _tree(self.pid)
            running = []
            for pid in pids:
                try:
                    rss = _rss_bytes(pid)
                    cwd = os.readlink(f"/proc/{pid}/cwd")
                except OSError:  # exited between the walk and the read
                    continue
                total += rss
                pss += _pss_bytes(pid)
                self.peak_proc = max(self.peak_proc, rss)
                if cwd.startswith(self.work):
                    rel = cwd[len(self.work):]
                    self.nodes[rel] = max(self.nodes.get(rel, 0), rss)
                    running.append((rel.rsplit("/", 1)[-1], round(rss / GB, 2)))
                else:
                    running.append((None, round(rss / GB, 2)))
            if total > self.peak_tree:
                self.peak_at = {"t_s": round(time.perf_counter() - self.t0, 1), "processes": running}
            self.peak_tree, self.peak_pss = max(self.peak_tree, total), max(self.peak_pss, pss)
            self.max_procs, self.samples = max(self.max_procs, len(pids)), self.samples + 1
            self.stop.wait(self.interval)


# ------------------------------------------------------------------------------------------------ one app run
def _nipype_cfg_dir(base: Path, sample_s: float) -> Path:
    """A nipype config folder that turns the resource monitor on (read by every nipype process at import)."""
    cfg = base / "nipype_cfg"
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "nipype.cfg").write_text(f"[monitoring]\nenabled = true\nsample_frequency = {sample_s}\n")
    return cfg


def _result_mtimes(work: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")}


def run_app(cmd: list[str], work: Path, env: dict, interval: float) -> dict:
    """Run the app once; wall time, tree memory, CPU time, the timestamped log and its exit status."""
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=work.parent)
    sampler = TreeSampler(proc.pid, work, interval)
    sampler.start()
    log = [(round(time.perf_counter() - t0, 2), line.rstrip()) for line in proc.stdout]
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop.set()
    sampler.join()
    cpu = ru.ru_utime + ru.ru_stime
    peak = max(sampler.peak_tree, sampler.peak_proc) / GB
    return {
        "returncode": proc.returncode, "wall_s": round(wall, 2),
        "peak_tree_gb": round(sampler.peak_tree / GB, 3), "peak_tree_pss_gb": round(sampler.peak_pss / GB, 3),
        "peak_proc_gb": round(sampler.peak_proc / GB, 3),
        "peak_proc_gb_kernel": round(ru.ru_maxrss * 1024 / GB, 3),  # exact, largest reaped descendant
        "peak_tree_at": sampler.peak_at, "cpu_s": round(cpu, 1), "cpu_per_wall": round(cpu / wall, 2), "max_processes": sampler.max_procs,
        "samples": sampler.samples, "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "meets_target": proc.returncode == 0 and wall <= TARGETS["wall_s"] and peak <= TARGETS["peak_gb"],
        "phases": _phases(log, wall), "log": log, "_node_rss": sampler.nodes,
    }


def _phases(log: list[tuple[float, str]], wall: float) -> dict:
    """Split the wall time with the app's own progress lines: checks before the workflow, stages, the rest."""
    start = next((t for t, s in log if re.match(r"qsmbids \S+: \d+ run\(s\)", s)), None)
    stages = [t for t, s in log if re.match(r"\[.*\] \d+/\d+ \w+ done", s)]
    out = {"preflight_s": start}
    if start is not None and stages:
        out.update(stages_s=round(stages[-1] - start, 2), after_last_stage_s=round(wall - stages[-1], 2))
    return out


# ------------------------------------------------------------------------------------------------ node results
def node_table(work: Path, node_rss: dict[str, int], shape: tuple[int, ...], n_echoes: int) -> list[dict]:
    """One row per node that has a result file: run time (and nipype's own peak when it monitored)."""
    from nipype.utils.filemanip import loadpkl

    try:
        from qsmbids.workflows.qsm import stage_mem_gb
    except ImportError:  # pragma: no cover - the estimate is a nicety
        stage_mem_gb = None
    nvox = int(shape[0] * shape[1] * shape[2])
    rows = []
    for res in work.rglob("result_*.pklz"):
        rel = res.parent.relative_to(work).as_posix()
        parts = rel.split("/")
        try:
            runtime = loadpkl(res).runtime
        except Exception as err:  # noqa: BLE001 - a broken result file is reported, not fatal
            rows.append({"name": parts[-1], "path": rel, "error": str(err)[:200]})
            continue
        row = {"name": parts[-1], "path": rel,
               "run": parts[2] if len(parts) > 3 else None,  # qsmbids_wf/<subject>_wf/<run>_wf/...
               "duration_s": round(float(getattr(runtime, "duration", 0.0) or 0.0), 3)}
        mon = getattr(runtime, "mem_peak_gb", None)
        if mon is not None:
            row["mem_peak_gb"] = round(float(mon), 3)
            row["cpu_percent"] = getattr(runtime, "cpu_percent", None)
        if rel in node_rss:
            row["rss_peak_gb"] = round(node_rss[rel] / GB, 3)
        if stage_mem_gb is not None and parts[-1] in {"load", "mask", "unwrap", "combine", "bgremove", "invert",
                                                       "reference", "relax", "swi"}:
            row["estimated_mem_gb"] = stage_mem_gb(parts[-1], nvox, n_echoes)
        rows.append(row)
    return sorted(rows, key=lambda r: -r.get("duration_s", 0.0))


def _dataset(data: Path, preset: str) -> tuple[Path, float | None]:
    ds = data / preset
    if (ds / "dataset_description.json").exists():
        return ds, None
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qsmbids.cli.sim", str(ds), "--preset", preset], check=True,
                   capture_output=True, text=True)
    return ds, round(time.perf_counter() - t0, 1)


def _machine() -> dict:
    import nipype
    import torch

    with open("/proc/meminfo") as fh:
        mem = next((int(x.split()[1]) / 1024**2 for x in fh if x.startswith("MemTotal")), None)
    return {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "mem_total_gb": round(mem, 1) if mem else None, "machine": platform.machine(),
            "python": platform.python_version(), "nipype": nipype.__version__, "torch": torch.__version__}


def _psutil_ok(env: dict) -> bool:
    probe = subprocess.run([sys.executable, "-c", "import psutil"], env=env, capture_output=True, check=False)
    return probe.returncode == 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="demo", choices=("demo", "test"))
    ap.add_argument("--quick", action="store_true", help="the test preset (3 mm, 3 echoes)")
    ap.add_argument("--data", type=Path, help="folder for the simulated dataset, reused when present "
                                              "(default: a temporary folder)")
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--interval", type=float, default=0.1, help="process-tree sampling period (s)")
    ap.add_argument("--monitor", choices=("auto", "on", "off"), default="auto",
                    help="nipype's resource monitor (needs psutil in the app's environment)")
    ap.add_argument("--no-warm", action="store_true", help="skip the warm rerun")
    ap.add_argument("--keep", type=Path, help="keep the output and work folders here")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more qsmbids arguments (last)")
    args = ap.parse_args(argv)
    preset = "test" if args.quick else args.preset

    tmp = Path(tempfile.mkdtemp(prefix="bench_app_"))
    try:
        base = args.keep or tmp
        data = args.data or tmp / "data"
        data.mkdir(parents=True, exist_ok=True)
        ds, sim_s = _dataset(data, preset)
        import nibabel as nib

        first = min(ds.glob("sub-*/**/*_echo-1_part-phase_MEGRE.nii*"))
        shape = nib.load(first).shape[:3]
        n_echoes = len(list(first.parent.glob(first.name.replace("echo-1", "echo-*"))))

        out, work = base / "out", base / "work"
        for d in (out, work):
            shutil.rmtree(d, ignore_errors=True)
        work.mkdir(parents=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        monitor = args.monitor != "off" and _psutil_ok(env)
        if args.monitor == "on" and not monitor:
            print("bench_app: --monitor on but psutil cannot be imported by the app", file=sys.stderr)
            return 2
        if monitor:
            env["NIPYPE_CONFIG_DIR"] = str(_nipype_cfg_dir(tmp, 0.1))
        cmd = [sys.executable, "-m", "qsmbids", str(ds), str(out), "participant", "-w", str(work),
               "--nprocs", str(args.nprocs), *args.extra]

        cold = run_app(cmd, work, env, args.interval)
        nodes = node_table(work, cold.pop("_node_rss"), shape, n_echoes)
        results = {"cold": cold}
        if not args.no_warm and cold["returncode"] == 0:
            before = _result_mtimes(work)
            warm = run_app(cmd, work, env, args.interval)
            warm.pop("_node_rss")
            after = _result_mtimes(work)
            rerun = sorted(Path(p).parent.relative_to(work).as_posix() for p, m in after.items() if before.get(p) != m)
            # niworkflows' DerivativesDataSink is always_run: sinks rerun by design, anything else is a cache miss
            warm["recomputed_nodes"] = [r for r in rerun if not r.rsplit("/", 1)[-1].startswith("ds_")]
            warm["rerun_sinks"] = len(rerun) - len(warm["recomputed_nodes"])
            results["warm"] = warm
        results["nodes"] = nodes
        results["slowest"] = [{k: n.get(k) for k in ("name", "run", "duration_s", "rss_peak_gb", "mem_peak_gb")
                               if k in n} for n in nodes[:5]]
        results["node_time_sum_s"] = round(sum(n.get("duration_s", 0.0) for n in nodes), 2)
        report = {
            "benchmark": "qsmbids participant", "preset": preset, "targets": TARGETS,
            "command": ["qsmbids", "DS", "OUT", "participant", "-w", "WORK", "--nprocs", str(args.nprocs),
                        *args.extra],
            "dataset": {"shape": list(shape), "n_echoes": n_echoes, "simulated_in_s": sim_s},
            "nipype_resource_monitor": monitor, "sample_interval_s": args.interval,
            "notes": NOTES,
            "machine": _machine(), "results": results,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    dest = HERE / "results" / ("app.json" if preset == "demo" else f"app_{preset}.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(report, indent=2))
    _summary(report, dest)
    return 0 if all(r["returncode"] == 0 for k, r in results.items() if k in ("cold", "warm")) else 1


def _summary(report: dict, dest: Path) -> None:
    res = report["results"]
    print(f"qsmbids participant, preset {report['preset']} {tuple(report['dataset']['shape'])} × "
          f"{report['dataset']['n_echoes']} echoes; targets ≤ {TARGETS['wall_s']:.0f} s, ≤ {TARGETS['peak_gb']:.0f} GB")
    for key in ("cold", "warm"):
        if key in res:
            r = res[key]
            print(f"  {key:4s}: rc {r['returncode']}, {r['wall_s']:.1f} s (preflight {r['phases'].get('preflight_s')} s)"
                  f", tree RSS {r['peak_tree_gb']:.2f} GB (PSS {r['peak_tree_pss_gb']:.2f}), largest process "
                  f"{r['peak_proc_gb']:.2f} GB, CPU {r['cpu_per_wall']:.2f} cores, load {r['load_avg_before'][0]}"
                  f"{'' if r['meets_target'] else '  [misses target]'}")
    if "warm" in res:
        print(f"  warm rerun recomputed {len(res['warm']['recomputed_nodes'])} processing node(s) "
              f"(+ {res['warm']['rerun_sinks']} always-run sinks)")
    print(f"  slowest nodes (of {len(res['nodes'])}, {res['node_time_sum_s']:.1f} s in all):")
    for n in res["slowest"]:
        mem = n.get("rss_peak_gb", n.get("mem_peak_gb"))
        print(f"    {n['name']:18s} {n['duration_s']:7.2f} s" + (f"  {mem:.2f} GB" if mem is not None else ""))
    if res["cold"].get("peak_tree_at"):
        at = res["cold"]["peak_tree_at"]
        print(f"  cold tree peak at {at['t_s']} s: " + ", ".join(f"{n or 'main/other'} {g} GB" for n, g in at["processes"]))
    print(f"  written to {dest}")


if __name__ == "__main__":
    raise SystemExit(main())
