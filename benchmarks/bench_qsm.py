#!/usr/bin/env python
"""Wall time, peak memory and FFT-bound ratio of every qsmbids.qsm algorithm on one volume (CPU).

The input volumes are generated once (seeded) and saved; each algorithm then runs in its own subprocess
that loads them. The kernel's peak-RSS mark is reset just before the call (Linux ``clear_refs``), so
``peak_rss_gb`` is the process peak during the call (Python + torch + inputs + the call's own memory),
``baseline_rss_gb`` the resident size just before it and ``call_peak_increment_gb`` the difference. For FFT-based iterative solvers the run
time is compared with its FFT bound: the number of forward+inverse 3-D FFT pairs the solver reports
(``SolverInfo.fft_pairs``) times the time of one FFT pair of the working grid measured in the same process
(real-to-complex pairs for solvers that use ``rfftn``, complex pairs otherwise; both are reported).

    python benchmarks/bench_qsm.py                    # 256×256×176, all cases, JSON to stdout + results/qsm.json
    python benchmarks/bench_qsm.py --shape 96 96 64 --only tkd rts
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = {"tkd_s": 1.0, "rts_s": 20.0, "peak_gb": 3.0, "fft_ratio": 1.5}

# name -> (stage, uses_fft_bound)
CASES: dict[str, tuple[str, bool]] = {
    "tkd": ("inversion", False),
    "tsvd": ("inversion", False),
    "tikhonov": ("inversion", False),
    "ilsqr": ("inversion", True),
    "tv": ("inversion", True),
    "rts": ("inversion", True),
    "medi": ("inversion", True),
    "tgv": ("inversion", True),
    "sharp": ("background", False),
    "vsharp": ("background", False),
    "resharp": ("background", True),
    "pdf": ("background", True),
    "lbv": ("background", False),
    "unwrap_laplacian": ("unwrap", False),
    "unwrap_quality": ("unwrap", False),
    "mask_combined": ("mask", False),
    "combine_echoes": ("echoes", False),
    "r2star_loglinear": ("relax", False),
    "r2star_arlo": ("relax", False),
    "swi": ("swi", False),
}


def _data(shape):
    import numpy as np
    import torch

    from qsmbids.qsm.fourier import forward_field
    from qsmbids.qsm.phantoms import head_phantom

    vs = (1.0, 1.0, 1.0)
    ph = head_phantom(shape, vs, seed=0)
    rng = np.random.default_rng(0)
    mask = torch.from_numpy(ph.mask)
    local = forward_field(torch.from_numpy(ph.chi), vs, pad_factor=1.5) * mask
    local = local + 0.005 * torch.from_numpy(rng.standard_normal(shape).astype("float32")) * mask
    # background: air (χ = −9.4 ppm relative to tissue) outside a head ellipsoid around the brain
    from qsmbids.qsm.phantoms import coordinates

    X, Y, Z = coordinates(shape, vs)
    half = [n / 2 for n in shape]
    head = (X / (0.95 * half[0])) ** 2 + (Y / (0.95 * half[1])) ** 2 + (Z / (0.95 * half[2])) ** 2 <= 1
    chi_bg = np.where(head & ~ph.mask, 0.0, -9.4) * ~ph.mask
    background = forward_field(torch.from_numpy(chi_bg.astype("float32")), vs, pad_factor=1.5)
    total = (local + background) * mask
    return ph, mask, local, total, vs


def _multi_echo(ph, total_ppm, shape, b0=3.0, tes=(0.004, 0.008, 0.012, 0.016)):
    import numpy as np
    import torch

    from qsmbids.qsm.phase import ppm_to_rad, wrap

    r2s = torch.full(shape, 25.0)
    mag = torch.from_numpy(ph.magnitude + 0.05)[None] * torch.exp(-torch.tensor(tes)[:, None, None, None] * r2s)
    rng = np.random.default_rng(1)
    offset = 0.3  # echo-independent phase offset φ0 (rad)
    phase = torch.stack([wrap(ppm_to_rad(total_ppm, te, b0) + offset) for te in tes])
    noise = 0.01 * torch.from_numpy(rng.standard_normal((len(tes), *shape)).astype("float32"))
    return mag, phase + noise, tes


def _status_gb(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024**2
    raise KeyError(key)


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark (Linux clear_refs 5) so that VmHWM measures only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_gb("VmRSS")
    except OSError:  # not Linux: fall back to the lifetime peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _peak_rss():
    try:
        return _status_gb("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _fft_pair_times(shape, reps=3):
    import torch

    x = torch.randn(shape)
    xc = x.to(torch.complex64)
    torch.fft.irfftn(torch.fft.rfftn(x), s=shape)
    torch.fft.ifftn(torch.fft.fftn(xc))
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.fft.irfftn(torch.fft.rfftn(x), s=shape)
    t_r = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.fft.ifftn(torch.fft.fftn(xc))
    t_c = (time.perf_counter() - t0) / reps
    return t_r, t_c


def _make_data(shape, path):
    """Generate the benchmark volumes once (seeded) and save them; workers load them."""
    import numpy as np

    ph, mask, local, total, vs = _data(shape)
    mag, phase, tes = _multi_echo(ph, total, shape)
    np.savez(path, chi=ph.chi, mask=ph.mask, magnitude=ph.magnitude, local=local.numpy(), total=total.numpy(),
             mag=mag.numpy(), phase=phase.numpy(), tes=np.asarray(tes))


def _run_case(name, shape, data_path):
    import numpy as np
    import torch

    from qsmbids.qsm.fourier import padded_shape

    d = dict(np.load(data_path))
    vs = (1.0, 1.0, 1.0)
    mask = torch.from_numpy(d["mask"])
    local, total = torch.from_numpy(d["local"]), torch.from_numpy(d["total"])
    magnitude = torch.from_numpy(d["magnitude"])
    mag, phase, tes = torch.from_numpy(d["mag"]), torch.from_numpy(d["phase"]), tuple(d["tes"].tolist())
    del d
    base_rss = _reset_peak_rss()
    stage = CASES[name][0]
    info = None
    t0 = time.perf_counter()
    if stage == "inversion":
        from qsmbids.qsm.inversion import invert

        kw = {"magnitude": magnitude} if name == "medi" else {}
        out = invert(local, mask, vs, (0, 0, 1), method=name, return_info=True, **kw)
        out, info = out if isinstance(out, tuple) else (out, None)
    elif stage == "background":
        from qsmbids.qsm.background import remove_background

        out = remove_background(total, mask, vs, (0, 0, 1), method=name, return_info=True)
        out, info = out if isinstance(out, tuple) and len(out) == 2 and hasattr(out[1], "fft_pairs") else (out, None)
    else:
        if name == "unwrap_laplacian":
            from qsmbids.qsm.unwrap import unwrap_laplacian

            out = unwrap_laplacian(phase[-1], vs, mask=mask)
        elif name == "unwrap_quality":
            from qsmbids.qsm.unwrap import unwrap_quality

            out = unwrap_quality(phase[-1], mag[-1], mask, voxel_size=vs)
        elif name == "mask_combined":
            from qsmbids.qsm.mask import brain_mask

            out = brain_mask(mag, phase, tes, vs, method="combined")
        elif name == "combine_echoes":
            from qsmbids.qsm.echoes import combine_echoes

            out = combine_echoes(phase, mag, tes, mask, voxel_size=vs)
        elif name.startswith("r2star"):
            from qsmbids.qsm import relax

            fn = relax.r2star_loglinear if name == "r2star_loglinear" else relax.r2star_arlo
            out = fn(mag, tes, mask)
        elif name == "swi":
            from qsmbids.qsm.swi import minip, swi

            out = minip(swi(mag[0], phase[0], mask, voxel_size=vs), vs)
        else:
            raise KeyError(name)
    wall = time.perf_counter() - t0
    del out
    res = {
        "name": name,
        "stage": stage,
        "wall_s": round(wall, 3),
        "peak_rss_gb": round(_peak_rss(), 3),
        "baseline_rss_gb": round(base_rss, 3),
        "call_peak_increment_gb": round(_peak_rss() - base_rss, 3),
    }
    if info is not None:
        res.update(iterations=info.iterations, residual=float(info.residual), fft_pairs=info.fft_pairs)
        if CASES[name][1] and info.fft_pairs:
            grid = tuple(info.params.get("fft_shape") or padded_shape(shape, float(info.params.get("pad_factor", 1.0))))
            t_r, t_c = _fft_pair_times(grid)
            res.update(
                fft_grid=list(grid),
                fft_pair_s_real=round(t_r, 4),
                fft_pair_s_complex=round(t_c, 4),
                fft_bound_ratio_real=round(wall / (info.fft_pairs * t_r), 3),
                fft_bound_ratio_complex=round(wall / (info.fft_pairs * t_c), 3),
            )
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=3, default=(256, 256, 176))
    p.add_argument("--only", nargs="+", choices=sorted(CASES), default=None)
    p.add_argument("--out", type=Path, default=HERE / "results" / "qsm.json")
    p.add_argument("--worker", choices=sorted(CASES), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    shape = tuple(args.shape)
    if args.worker:
        print(json.dumps(_run_case(args.worker, shape, args.data)))
        return 0
    import tempfile

    import torch

    results = []
    tmp = tempfile.TemporaryDirectory()
    data_path = str(Path(tmp.name) / "data.npz")
    _make_data(shape, data_path)
    for name in args.only or list(CASES):
        proc = subprocess.run([sys.executable, __file__, "--worker", name, "--shape", *map(str, shape),
                               "--data", data_path], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            err = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            results.append({"name": name, "error": err})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    report = {
        "benchmark": "qsmbids.qsm algorithms",
        "shape": list(shape),
        "voxel_size_mm": [1.0, 1.0, 1.0],
        "device": "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "targets": TARGETS,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
