#!/usr/bin/env python
"""Deep dipole inversion: speed and memory per model, and accuracy next to the classical methods (issue 5).

Timing: each model runs :func:`qsmbids.deep.infer.infer` in its own subprocess on a ``size``³ simulated local
field at 1 mm (B0 along z): wall time of the call on the CPU (cold: first call, weights verified and loaded
before the clock starts), the process peak RSS during the call (Linux ``clear_refs``, as in bench_qsm.py), and,
when CUDA is present, the GPU time (median of 3 after a warm-up) and peak GPU memory. Targets (issue 5): CPU
≤ 20 s and ≤ 4 GB on 2 cores at 160³, GPU ≤ 1 s.

Accuracy: held-out simulated heads (:func:`qsmbids.sim.phantom.make_head`, seeds 1000, 1001, …, never used in
training), brain χ forward-simulated with :func:`qsmbids.qsm.fourier.forward_field` (zero-padded ×1.5) plus
Gaussian noise, cropped to the brain's bounding box plus 8 voxels; every model with a weight file is scored next to
TKD, Tikhonov, TV and RTS (:func:`qsmbids.qsm.inversion.invert`, defaults) by NRMSE (demeaned, %), HFEN (%) and
XSIM (Gaussian 7³ window, fraction) inside the brain mask (:mod:`qsmbids.qsm.metrics`).

    python benchmarks/bench_deep.py                          # shipped weights, 160³ timing, 2 heads at 1 mm
    python benchmarks/bench_deep.py --weights-dir runs/w     # weight files <model>.pt + cards from elsewhere
    python benchmarks/bench_deep.py --untrained --size 64    # quick check of the machinery (untrained models)

``--untrained`` builds every model with its default configuration (seeded) and saves it with
:func:`qsmbids.deep.weights.save_weights` to a temporary folder: numbers then only test the plumbing. With
``--size`` below 128 the accuracy heads are also cropped to ``size``³ around the brain centre (quick runs).
Results: JSON to ``benchmarks/results/deep.json`` (``--out``) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
TARGETS = {"cpu_s_160": 20.0, "cpu_peak_gb_160": 4.0, "gpu_s_160": 1.0}
CLASSICAL = ("tkd", "tikhonov", "tv", "rts")


def _timing_field(size: int):
    """A 1 mm ``size``³ local field (ppm) of a head phantom, and a mask that fills the box up to 4 voxels from its
    faces, so that the network grid is about ``size``³ as for a real brain (seeded, noise 0.002 ppm)."""
    import numpy as np

    from qsmbids.qsm.fourier import forward_field
    from qsmbids.qsm.phantoms import head_phantom

    ph = head_phantom((size,) * 3, (1.0, 1.0, 1.0), seed=0)
    mask = np.zeros((size,) * 3, bool)
    mask[4:-4, 4:-4, 4:-4] = True
    field = forward_field(ph.chi, (1.0, 1.0, 1.0)) * mask
    rng = np.random.default_rng(0)
    field = field + 0.002 * rng.standard_normal(field.shape).astype("float32") * mask
    return field.astype("float32"), mask


def _worker(name: str, weights: str, size: int, threads: int | None) -> dict:
    import torch
    from bench_qsm import _peak_rss, _reset_peak_rss

    from qsmbids.deep.infer import _model_for, infer

    if threads:
        torch.set_num_threads(threads)
    field, mask = _timing_field(size)
    t0 = time.perf_counter()
    _model_for(weights, torch.device("cpu"), None)  # verify and load once outside the clock (infer's cache)
    load_s = time.perf_counter() - t0
    base = _reset_peak_rss()
    t0 = time.perf_counter()
    _, info = infer(field, mask, (1.0, 1.0, 1.0), (0, 0, 1), model=weights, device="cpu", return_info=True)
    wall = time.perf_counter() - t0
    peak = _peak_rss()
    res = {"name": name, "size": size, "grid": info["grid"], "tiles": info["tiles"], "threads": torch.get_num_threads(),
           "load_s": round(load_s, 3), "cpu_s": round(wall, 3), "peak_rss_gb": round(peak, 3),
           "baseline_rss_gb": round(base, 3), "call_peak_increment_gb": round(peak - base, 3)}
    if torch.cuda.is_available():
        infer(field, mask, (1.0, 1.0, 1.0), (0, 0, 1), model=weights, device="cuda")  # warm-up (cuDNN, caches)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            infer(field, mask, (1.0, 1.0, 1.0), (0, 0, 1), model=weights, device="cuda")
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        res.update(gpu=torch.cuda.get_device_name(0), gpu_s=round(sorted(times)[1], 4),
                   gpu_peak_gb=round(torch.cuda.max_memory_allocated() / 1024**3, 3))
    return res


def _untrained_weights(models, out_dir: Path, seed: int = 0) -> None:
    import torch

    from qsmbids.deep.models import build_model
    from qsmbids.deep.weights import save_weights

    for name in models:
        torch.manual_seed(seed)
        save_weights(build_model(name), out_dir / f"{name}.pt",
                     {"note": "untrained (bench_deep.py --untrained): numbers only test the machinery", "seed": seed})


def _heads(n: int, voxel: float, noise: float, crop: int | None, tilt_deg: float):
    """Held-out heads: dicts with field, chi (truth, brain only), mask, voxel size, B0 direction, seed."""
    import numpy as np

    from qsmbids.qsm.fourier import forward_field
    from qsmbids.sim.phantom import make_head

    t = np.radians(tilt_deg)
    b0 = (float(np.sin(t)), 0.0, float(np.cos(t)))
    out = []
    for k in range(n):
        seed = 1000 + k
        h = make_head(seed, voxel_size=voxel)
        mask = h.brain_mask.astype(bool)
        chi = (h.chi * mask).astype("float32")
        vs = (voxel,) * 3
        field = forward_field(chi, vs, b0, pad_factor=1.5)
        rng = np.random.default_rng(seed)
        field = (field + noise * rng.standard_normal(field.shape).astype("float32")) * mask
        nz = np.argwhere(mask)
        lo, hi = np.maximum(nz.min(0) - 8, 0), np.minimum(nz.max(0) + 9, mask.shape)
        if crop:
            c = (nz.min(0) + nz.max(0)) // 2
            lo, hi = np.maximum(c - crop // 2, 0), np.minimum(c - crop // 2 + crop, mask.shape)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        out.append({"seed": seed, "field": field[sl].astype("float32"), "chi": chi[sl], "mask": mask[sl],
                    "voxel_size": vs, "b0": b0})
    return out


def _scores(x, ref, mask) -> dict:
    import numpy as np

    from qsmbids.qsm.metrics import hfen, nrmse, xsim

    xm, rm = np.where(mask, x, 0).astype("float64"), np.where(mask, ref, 0).astype("float64")
    import torch

    xt, rt, mt = torch.from_numpy(xm), torch.from_numpy(rm), torch.from_numpy(mask)
    return {"nrmse": round(nrmse(xt, rt, mt, mode="demeaned"), 3), "hfen": round(hfen(xt, rt, mt), 3),
            "xsim": round(xsim(xt, rt, mt), 4)}


def _accuracy(models: dict[str, str], heads, device: str) -> list[dict]:
    import numpy as np

    from qsmbids.deep.infer import infer
    from qsmbids.qsm.inversion import invert

    rows = []
    methods = [(m, "classical", None) for m in CLASSICAL] + [(m, "deep", p) for m, p in models.items()]
    for method, family, path in methods:
        per_head = []
        for h in heads:
            t0 = time.perf_counter()
            try:
                if family == "classical":
                    x = invert(h["field"], h["mask"], h["voxel_size"], h["b0"], method=method)
                else:
                    x = infer(h["field"], h["mask"], h["voxel_size"], h["b0"], model=path, device=device)
            except Exception as exc:  # noqa: BLE001 — a failing method is a row with its error, not a crash
                per_head.append({"seed": h["seed"], "error": f"{type(exc).__name__}: {exc}"})
                continue
            per_head.append({"seed": h["seed"], "seconds": round(time.perf_counter() - t0, 2),
                             **_scores(np.asarray(x), h["chi"], h["mask"])})
            print(json.dumps({"method": method, **per_head[-1]}), file=sys.stderr, flush=True)
        ok = [r for r in per_head if "error" not in r]
        mean = {k: round(float(np.mean([r[k] for r in ok])), 4) for k in ("nrmse", "hfen", "xsim")} if ok else {}
        rows.append({"method": method, "family": family, **mean, "heads": per_head})
    return rows


def _summary(rows: list[dict]) -> dict:
    """Issue 5's target: the best deep model beats the best classical method on NRMSE and on XSIM."""
    out = {}
    for fam in ("classical", "deep"):
        ok = [r for r in rows if r["family"] == fam and "nrmse" in r]
        if ok:
            out[f"best_{fam}_nrmse"] = min(ok, key=lambda r: r["nrmse"])["method"]
            out[f"best_{fam}_xsim"] = max(ok, key=lambda r: r["xsim"])["method"]
    val = {r["method"]: r for r in rows if "nrmse" in r}
    if "best_deep_nrmse" in out and "best_classical_nrmse" in out:
        out["deep_beats_classical_nrmse"] = val[out["best_deep_nrmse"]]["nrmse"] < val[out["best_classical_nrmse"]][
            "nrmse"]
        out["deep_beats_classical_xsim"] = val[out["best_deep_xsim"]]["xsim"] > val[out["best_classical_xsim"]]["xsim"]
    return out


def _markdown(report: dict) -> str:
    lines = []
    if report.get("timing"):
        threads = report["timing"][0].get("threads", "?")
        lines += [f"CPU/GPU inference on a {report['size']}³ field (1 mm), {threads} CPU threads", "", "| model | grid | CPU s | peak RSS GB | GPU s | GPU peak GB |",
                  "|---|---|---:|---:|---:|---:|"]
        for r in report["timing"]:
            if "error" in r:
                lines.append(f"| {r['name']} | error: {r['error']} | | | | |")
                continue
            lines.append(f"| {r['name']} | {'×'.join(map(str, r['grid']))} | {r['cpu_s']:.2f} | {r['peak_rss_gb']:.2f} "
                         f"| {r.get('gpu_s', '–')} | {r.get('gpu_peak_gb', '–')} |")
        lines.append("")
    if report.get("accuracy"):
        a = report["accuracy_setup"]
        title = (f"Accuracy on {a['heads']} held-out simulated heads ({a['voxel_mm']} mm, noise {a['noise_ppm']} ppm, "
                 f"B0 tilt {a['tilt_deg']}°): NRMSE demeaned %, HFEN %, XSIM (Gaussian 7³)")
        lines += [title, "",
                  "| method | family | NRMSE % | HFEN % | XSIM |", "|---|---|---:|---:|---:|"]
        for r in report["accuracy"]:
            if "nrmse" not in r:
                err = next((h["error"] for h in r["heads"] if "error" in h), "failed")
                lines.append(f"| {r['method']} | {r['family']} | error: {err} | | |")
                continue
            lines.append(f"| {r['method']} | {r['family']} | {r['nrmse']:.1f} | {r['hfen']:.1f} | {r['xsim']:.3f} |")
        sm = report.get("summary", {})
        if "deep_beats_classical_nrmse" in sm:
            verdict = {True: "beats", False: "does not beat"}
            lines += ["", (f"best deep vs best classical: NRMSE {sm['best_deep_nrmse']} vs {sm['best_classical_nrmse']} "
                           f"({verdict[sm['deep_beats_classical_nrmse']]}), XSIM {sm['best_deep_xsim']} vs "
                           f"{sm['best_classical_xsim']} ({verdict[sm['deep_beats_classical_xsim']]})")]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None, help="models to run (default: every one with weights)")
    p.add_argument("--weights-dir", type=Path, default=None, help="folder with <model>.pt and cards (default: shipped)")
    p.add_argument("--untrained", action="store_true", help="use untrained default models (machinery check)")
    p.add_argument("--size", type=int, default=160, help="edge of the timing field (voxels at 1 mm)")
    p.add_argument("--heads", type=int, default=2, help="number of held-out heads (seeds 1000, 1001, …)")
    p.add_argument("--voxel", type=float, default=1.0, help="head voxel size (mm, isotropic)")
    p.add_argument("--noise", type=float, default=0.002, help="field noise std (ppm)")
    p.add_argument("--tilt", type=float, default=0.0, help="B0 tilt from z (degrees) of the heads")
    p.add_argument("--crop", type=int, default=None, help="crop heads to this edge around the brain centre")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="auto", help="device for the accuracy runs")
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--out", type=Path, default=HERE / "results" / "deep.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.weights, args.size, args.threads)))
        return 0

    import torch

    from qsmbids.deep.weights import available_models

    tmp = tempfile.TemporaryDirectory(prefix="bench_deep_")
    if args.untrained:
        from qsmbids.deep.models import MODELS

        wdir = Path(tmp.name)
        _untrained_weights(args.models or MODELS, wdir)
    else:
        wdir = args.weights_dir
    from qsmbids.deep.models import MODELS
    from qsmbids.deep.weights import resolve_weights

    names = args.models or sorted(available_models(wdir), key=lambda n: (MODELS + (n,)).index(n))

    models = {n: str(resolve_weights(n, wdir)) for n in names}
    if not models:
        print(f"no weight files in {wdir or 'the shipped weights folder'}: pass --weights-dir or --untrained; "
              "classical methods only", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"benchmark": "qsmbids.deep inference", "untrained": args.untrained, "size": args.size,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "machine": platform.machine(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "targets": TARGETS, "weights": {n: str(p) for n, p in models.items()}, "timing": [], "accuracy": []}
    if not args.skip_timing:
        for name, path in models.items():
            cmd = [sys.executable, __file__, "--worker", name, "--weights", path, "--size", str(args.size)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                err = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                report["timing"].append({"name": name, "error": err})
            else:
                report["timing"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(report["timing"][-1]), file=sys.stderr, flush=True)
    if not args.skip_accuracy:
        crop = args.crop if args.crop is not None else (args.size if args.size < 128 else None)
        heads = _heads(args.heads, args.voxel, args.noise, crop, args.tilt)
        report["accuracy_setup"] = {"heads": args.heads, "seeds": [h["seed"] for h in heads], "voxel_mm": args.voxel,
                                    "noise_ppm": args.noise, "tilt_deg": args.tilt, "crop": crop,
                                    "shape": list(heads[0]["field"].shape) if heads else None,
                                    "metrics": "NRMSE demeaned (%), HFEN (%, LoG σ 1.5), XSIM (Gaussian σ 1.5, 7³)"}
        report["accuracy"] = _accuracy(models, heads, args.device)
        report["summary"] = _summary(report["accuracy"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
