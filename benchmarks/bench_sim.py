#!/usr/bin/env python
"""Wall time and peak memory of ``qsmbids-sim`` for one subject with ``--preset demo`` and ``--preset test``.

Each preset runs in its own process (``/usr/bin/time``-free: the child's peak RSS from ``resource``), so
the figures are those of the command a user runs. Targets: demo < 30 s and < 4 GB on 2 cores; test < 3 s.

    python benchmarks/bench_sim.py            # JSON to stdout and benchmarks/results/sim.json
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = {"demo_s": 30.0, "demo_gb": 4.0, "test_s": 3.0}


def run(preset: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ds"
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "qsmbids.cli.sim", str(out), "--preset", preset, *extra],
                              capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.exists() else 0
    return {
        "preset": preset, "args": extra, "returncode": proc.returncode, "wall_s": round(wall, 2),
        "peak_rss_gb": round(max(peak, before) / 1024**2, 3), "dataset_mb": round(size / 1024**2, 1),
        "stderr_tail": proc.stderr.strip().splitlines()[-1:] if proc.stderr else [],
    }


def main() -> int:
    results = [run("test", []), run("demo", [])]  # test first: the children's peak is a running maximum
    report = {
        "benchmark": "qsmbids-sim", "targets": TARGETS, "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "python": platform.python_version(), "results": results,
    }
    dest = HERE / "results" / "sim.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if all(r["returncode"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
