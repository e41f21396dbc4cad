#!/usr/bin/env python
"""Spatial phase unwrapping: wall time, peak memory and correctness of qsmbids vs scikit-image (CPU).

Phantom (seeded): a smooth field (three Gaussian bumps + a low-order polynomial, several wraps) plus the
closed-form field of a magnetised sphere at the grid centre (pole value 6π at its surface), wrapped to
[−π, π); mask: a brain-like ellipsoid (semi-axes 78 % of the half field of view, as in
``phantoms.head_phantom``) without the sphere and a 3-voxel shell around it (where the sphere field
aliases), i.e. the usual situation of a strong source excluded from the mask. Optional Gaussian phase
noise (``--noise`` rad).

Each method runs in its own subprocess (the data are made in another one), and its peak resident memory
is the kernel's high-water mark VmHWM, reset just before the timed calls (``ru_maxrss`` where /proc is
missing); the baseline (Python + torch + data) and the increment are reported too. Each method is called
``--repeat`` times (default 3) and ``wall_s`` is the fastest call (the machine may be shared).
``correct_fraction`` is the fraction of mask voxels whose result − truth is the most frequent integer
multiple of 2π (a global 2πk offset is allowed) within 1e-3 rad. Torch uses ``--threads`` threads
(default 1, like scikit-image).

    python benchmarks/bench_unwrap.py                       # 256×256×176 → stdout + results/unwrap.json
    python benchmarks/bench_unwrap.py --shape 96 96 64 --methods quality skimage
"""

from __future__ import annotations

import argparse
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
METHODS = ("quality", "laplacian", "skimage")
TARGET_SPEEDUP = 3.0


def phantom(shape, seed=0, noise=0.0):
    """(wrapped phase, true unwrapped phase, mask) as float32/float32/bool NumPy arrays."""
    import numpy as np

    from qsmbids.qsm.phantoms import coordinates, sphere_field

    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    X, Y, Z = coordinates(shape, (1.0, 1.0, 1.0))
    half = np.array(shape, dtype=np.float64) / 2
    scale = float(min(shape)) / 64.0
    truth = np.zeros(shape, dtype=np.float64)
    for _ in range(3):
        c = rng.uniform(-0.3, 0.3, 3) * half
        sigma = rng.uniform(10, 16) * scale
        amp = rng.uniform(4, 8) * np.pi * rng.choice([-1, 1])
        truth += amp * np.exp(-((X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2) / (2 * sigma**2))
    coef = rng.uniform(-1, 1, 4)
    truth += 3 * np.pi * (coef[0] * X / half[0] + coef[1] * (Y / half[1]) ** 2 + coef[2] * X * Z / (half[0] * half[2]))
    radius = 15.0 * scale
    truth += (6 * np.pi / (2.0 / 3.0)) * sphere_field(shape, (1.0, 1.0, 1.0), radius, 1.0)
    if noise > 0:
        truth += noise * rng.standard_normal(shape)
    axes = 0.78 * half
    brain = (X / axes[0]) ** 2 + (Y / axes[1]) ** 2 + (Z / axes[2]) ** 2 <= 1
    mask = brain & (np.sqrt(X**2 + Y**2 + Z**2) > radius + 3)
    wrapped = np.angle(np.exp(1j * truth))
    truth = truth - 2 * np.pi * np.round(truth[mask].mean() / (2 * np.pi))
    return wrapped.astype(np.float32), truth.astype(np.float32), mask


def correct_fraction(result, truth, mask) -> float:
    import numpy as np

    d = (result.astype(np.float64) - truth.astype(np.float64))[mask] / (2 * np.pi)
    k = np.round(d)
    if not np.all(np.isfinite(k)):
        return 0.0
    values, counts = np.unique(k, return_counts=True)
    mode = values[np.argmax(counts)]
    return float(np.mean((k == mode) & (np.abs(d - k) * 2 * np.pi < 1e-3)))


def _call(method, wrapped, mask):
    if method == "skimage":
        import numpy as np
        from skimage.restoration import unwrap_phase

        return np.ma.filled(unwrap_phase(np.ma.masked_array(wrapped.astype(np.float64), mask=~mask), rng=0), 0.0)
    from qsmbids.qsm.unwrap import unwrap

    return unwrap(wrapped, method, mask=mask)


def _memory_gb():
    """(current RSS, peak RSS) in GB of this process: /proc VmRSS/VmHWM on Linux, else ru_maxrss."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024**2, int(fields["VmHWM"].split()[0]) / 1024**2
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        return peak, peak


def _reset_peak():
    """Reset the kernel's peak-RSS mark (VmHWM) so that the next peak is the measured call's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(method, path, threads, repeat=1):
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    if method == "make":
        w, t, m = phantom(*json.loads(path)[1:])
        np.savez(json.loads(path)[0], wrapped=w, truth=t, mask=m)
        return
    data = np.load(path)
    wrapped, truth, mask = data["wrapped"], data["truth"], data["mask"]
    w0, t0, m0 = phantom((24, 24, 24), seed=1)  # warm-up: imports and first-call overheads
    _call(method, w0, m0)
    base, _ = _memory_gb()
    reset = _reset_peak()
    walls = []
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        result = _call(method, wrapped, mask)
        walls.append(time.perf_counter() - t)
    _, peak = _memory_gb()
    print(json.dumps({
        "method": method,
        "wall_s": round(min(walls), 3),
        "wall_s_all": [round(x, 3) for x in walls],
        "peak_rss_gb": round(peak, 3),
        "baseline_rss_gb": round(base, 3),
        "peak_increment_gb": round(peak - base, 3),
        "peak_is_call_only": reset,
        "correct_fraction": correct_fraction(np.asarray(result), truth, mask),
    }))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=(256, 256, 176))
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=0.0, help="Gaussian phase noise (rad) added before wrapping")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per method; wall_s is the fastest")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "unwrap.json")
    ap.add_argument("--worker", choices=METHODS + ("make",), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.data, args.threads, args.repeat)
        return 0
    import numpy as np

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # the data are made in a subprocess: workers forked from a small parent start with a small peak RSS
        path = os.path.join(tmp, "data.npz")
        spec = json.dumps([path, list(args.shape), args.seed, args.noise])
        subprocess.run([sys.executable, __file__, "--worker", "make", "--data", spec], check=True)
        mask_voxels = int(np.load(path)["mask"].sum())
        for m in args.methods:
            cmd = [sys.executable, __file__, "--worker", m, "--data", path, "--threads", str(args.threads),
                   "--repeat", str(args.repeat)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                results[m] = {"method": m, "error": proc.stderr.strip().splitlines()[-1:]}
                continue
            results[m] = json.loads(proc.stdout.strip().splitlines()[-1])
    report = {
        "benchmark": "unwrap",
        "shape": list(args.shape),
        "mask_voxels": mask_voxels,
        "seed": args.seed,
        "noise_rad": args.noise,
        "threads": args.threads,
        "repeat": args.repeat,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg": [round(x, 2) for x in os.getloadavg()]},
        "results": results,
    }
    sk = results.get("skimage", {}).get("wall_s")
    for m in ("quality", "laplacian"):
        r = results.get(m, {})
        if sk and r.get("wall_s"):
            r["speedup_vs_skimage"] = round(sk / r["wall_s"], 2)
            r["meets_target"] = bool(
                r["speedup_vs_skimage"] >= TARGET_SPEEDUP
                and r["correct_fraction"] >= results["skimage"].get("correct_fraction", 1.0)
            )
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
