#!/usr/bin/env python
"""Stage-by-stage accuracy of the default pipeline on simulated heads with ground truth (CPU, in process).

Rows = datasets: our simulator's head (``qsmbids-sim`` ``test`` preset, 3 mm, or ``demo``, 1 mm) and the same head
simulated by qsm-forward (an independent forward model with its own shim, phase offset and noise). Columns = mask
Dice, total-field error (local field from the estimated vs the true total field, same background removal, true
mask), local-field error, χ demeaned NRMSE / HFEN / XSIM / DGM slope end to end and for the default inversion on
the true local field (see :mod:`qsmbids.sim.accuracy`). Then a grid of background removal × inversion on the
estimated total field (``--mask true`` or ``app``).

    python benchmarks/bench_accuracy.py --quick                 # 3 mm heads, default chain + a small grid (~5 min)
    python benchmarks/bench_accuracy.py --resolution 1          # 1 mm heads (several minutes per dataset)
    python benchmarks/bench_accuracy.py --quick --mask app --unwrap-param offset_smoothing=gaussian

Writes ``benchmarks/results/accuracy[-<tag>].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

#: background-removal variants of the grid: name -> (method, params); radii in mm
BG_VARIANTS = {
    "vsharp": ("vsharp", {}),
    "vsharp_r24": ("vsharp", {"radii": [24, 18, 12, 9, 6]}),
    "sharp_r6": ("sharp", {"radius": 6.0}),
    "resharp": ("resharp", {}),
    "pdf": ("pdf", {}),
    "lbv": ("lbv", {}),
}
QUICK_BG = ("vsharp", "resharp", "pdf", "lbv")
#: datasets: ours (qsmbids-sim, 3 T, axial), oblique (+ lesions, B0 20° off the slice axis), 7t (7 T, shorter TEs),
#: qsmforward (the same head simulated by qsm-forward)
DATASETS = ("ours", "oblique", "7t", "qsmforward")
INVERSIONS = ("medi", "rts", "tv")
QUICK_INV = ("medi",)


def _kv(items: list[str]) -> dict:
    out = {}
    for it in items:
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def make_datasets(work: Path, resolution: float, seed: int, which: tuple[str, ...]) -> dict[str, Path]:
    """Write the datasets (ours via qsmbids-sim, qsm-forward via the adapter) and return name -> BIDS root."""
    from qsmbids.cli.sim import main as sim_main
    from qsmbids.sim.phantom import make_head
    from qsmbids.sim.qsmforward import make_qsmforward_dataset

    out = {}
    preset = "test" if resolution >= 2 else "demo"
    if "ours" in which:
        root = work / f"ours-{resolution:g}mm"
        if not root.exists():
            args = [str(root), "--preset", preset, "--seed", str(seed)]
            if preset == "demo" and resolution != 1:
                args += ["--voxel-size", str(resolution)]
            if sim_main(args) != 0:
                raise RuntimeError("qsmbids-sim failed")
        out[f"ours {resolution:g} mm"] = root
    variants = {"oblique": (["--lesions", "--b0-tilt", "20"], "lesions, B0 20°"),
                "7t": (["--field-strength", "7", "--echo-times", "3", "6", "9"] if preset == "test" else
                       ["--field-strength", "7", "--echo-times", "3", "6", "9", "12", "15"], "7 T")}
    for key, (extra, label) in variants.items():
        if key not in which:
            continue
        root = work / f"{key}-{resolution:g}mm"
        if not root.exists():
            args = [str(root), "--preset", preset, "--seed", str(seed), *extra]
            if preset == "demo" and resolution != 1:
                args += ["--voxel-size", str(resolution)]
            if sim_main(args) != 0:
                raise RuntimeError("qsmbids-sim failed")
        out[f"ours {resolution:g} mm, {label}"] = root
    if "qsmforward" in which:
        root = work / f"qsmforward-{resolution:g}mm"
        if not root.exists():
            # the same head (same seed as qsmbids-sim's first subject), on a finer grid where it is affordable
            fine = resolution / 2 if resolution >= 2 else resolution
            tes = (0.004, 0.008, 0.012) if preset == "test" else (0.004, 0.008, 0.012, 0.016, 0.020)
            make_qsmforward_dataset(root, make_head(seed * 1000, voxel_size=fine), echo_times=tes,
                                    voxel_size=resolution, seed=seed + 1)
        out[f"qsm-forward {resolution:g} mm"] = root
    return out


def evaluate(root: Path, name: str, *, mask: str, stages: dict, params: dict, bg: tuple[str, ...],
             inv: tuple[str, ...]) -> dict:
    from qsmbids.sim.accuracy import (
        background_grid,
        chi_scores,
        invert_local,
        load_bids_run,
        local_field,
        run_pipeline,
        score_run,
    )

    data = load_bids_run(root, name=name)
    t0 = time.perf_counter()
    m = mask
    if mask == "app" and stages["mask"] == "deepbet":  # the network lives in qsmbids.deep, above qsmbids.sim
        from qsmbids.deep.brain import DEFAULT_DEEPBET_ERODE_MM, deepbet_mask

        m = np.asarray(deepbet_mask(data.magnitude, data.affine, erode_mm=DEFAULT_DEEPBET_ERODE_MM, device="cpu"))
    res = run_pipeline(data, mask=m, stages=stages, params=params)
    row = score_run(data, res, bgremove=stages["bgremove"], bg_params=params.get("bgremove"),
                    inversion=stages["inversion"], inv_params=params.get("inversion"))
    row["t_total"] = time.perf_counter() - t0
    variants = {k: BG_VARIANTS[k] for k in bg}
    grid_true = background_grid(data, variants)
    grid = {}
    for k, (method, p) in variants.items():
        loc, lm, dt = local_field(np.where(res["mask"], res["total_field"], 0).astype(np.float32), res["mask"],
                                  data, method, **p)
        for inv_method in inv:
            t1 = time.perf_counter()
            chi = invert_local(loc, lm, data, inv_method)
            s = chi_scores(chi, data, lm, "chi")
            s.update({"bg_s": dt, "inv_s": time.perf_counter() - t1,
                      "coverage": float((lm & data.mask).sum() / data.mask.sum())})
            grid[f"{k} + {inv_method}"] = s
    return {"dataset": name, "root": str(root), "mask": mask, "default": row, "bg_on_true_field": grid_true,
            "grid": grid}


def markdown(results: list[dict], meta: dict) -> str:
    lines = [f"# Stage accuracy ({meta['date']}, `{meta['command']}`)", "",
             f"mask: {meta['mask']}; stages: {meta['stages']}; params: {meta['params']}", ""]
    cols = [("mask_dice", "mask Dice", 3), ("total_field_err", "total-field err %", 1),
            ("local_field_err", "local-field err %", 1), ("coverage", "coverage", 2),
            ("e2e_nrmse", "χ NRMSE %", 1), ("e2e_hfen", "χ HFEN %", 1), ("e2e_xsim", "χ XSIM", 3),
            ("e2e_dgm_slope", "DGM slope", 2), ("ideal_nrmse", "true-local χ NRMSE %", 1),
            ("ideal_xsim", "true-local χ XSIM", 3), ("t_field", "field s", 1), ("t_bgremove", "bgremove s", 1)]
    lines.append("| dataset | " + " | ".join(c[1] for c in cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    for r in results:
        d = r["default"]
        lines.append(f"| {r['dataset']} | " + " | ".join(f"{d[k]:.{p}f}" for k, _, p in cols) + " |")
    lines += ["", "## Background removal on the true total field, true mask (local-field error %)", "",
              "| dataset | method | err (own mask) | err (common mask) | coverage | s |", "|---|---|---|---|---|---|"]
    for r in results:
        for k, v in r["bg_on_true_field"].items():
            lines.append(f"| {r['dataset']} | {k} | {v['local_err']:.1f} | {v['local_err_common']:.1f} | "
                         f"{v['coverage']:.2f} | {v['seconds']:.1f} |")
    lines += ["", "## Background × inversion on the estimated total field (χ on the final mask ∩ true mask)", "",
              "| dataset | variant | χ NRMSE % | HFEN % | XSIM | DGM slope | coverage | bg s | inv s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for k, v in r["grid"].items():
            lines.append(f"| {r['dataset']} | {k} | {v['chi_nrmse']:.1f} | {v['chi_hfen']:.1f} | {v['chi_xsim']:.3f} "
                         f"| {v['chi_dgm_slope']:.2f} | {v['coverage']:.2f} | {v['bg_s']:.1f} | {v['inv_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 mm heads, V-SHARP/RESHARP/PDF/LBV × MEDI only")
    p.add_argument("--resolution", type=float, default=3.0, help="output voxel size in mm (3 = test preset)")
    p.add_argument("--datasets", nargs="+", default=["ours", "qsmforward"], choices=list(DATASETS))
    p.add_argument("--mask", choices=("true", "app"), default="true", help="true brain mask or the app's mask")
    p.add_argument("--bgremove", nargs="+", choices=sorted(BG_VARIANTS), help="grid of background variants")
    p.add_argument("--inversion", nargs="+", help="grid of inversions")
    p.add_argument("--unwrap-param", nargs="*", default=[], metavar="K=V", help="unwrap-stage parameters")
    p.add_argument("--bgremove-param", nargs="*", default=[], metavar="K=V", help="default bgremove parameters")
    p.add_argument("--work", type=Path, default=None, help="folder for the datasets (kept; default a temp dir)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--tag", default="", help="suffix of the result files")
    a = p.parse_args(argv)

    import torch

    from qsmbids.config import DEFAULTS

    torch.set_num_threads(a.threads)
    res = 3.0 if a.quick else a.resolution
    bg = tuple(a.bgremove or (QUICK_BG if a.quick else BG_VARIANTS))
    inv = tuple(a.inversion or (QUICK_INV if a.quick else INVERSIONS))
    stages = {k: DEFAULTS[k] for k in ("mask", "unwrap", "combine", "bgremove", "inversion", "reference")}
    params = {"unwrap": _kv(a.unwrap_param), "bgremove": _kv(a.bgremove_param)}
    work = a.work or Path(tempfile.mkdtemp(prefix="qsmbids-acc-"))
    work.mkdir(parents=True, exist_ok=True)
    roots = make_datasets(work, res, a.seed, tuple(a.datasets))
    results = []
    for name, root in roots.items():
        t = time.perf_counter()
        results.append(evaluate(root, name, mask=a.mask, stages=stages, params=params, bg=bg, inv=inv))
        print(f"bench_accuracy: {name} done in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    meta = {"date": datetime.date.today().isoformat(), "command": "python " + " ".join(["benchmarks/bench_accuracy.py",
            *(argv if argv is not None else sys.argv[1:])]), "mask": a.mask, "stages": stages, "params": params,
            "threads": a.threads, "machine": platform.machine(), "python": platform.python_version()}
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    stem = "accuracy" + (f"-{a.tag}" if a.tag else "")
    (out_dir / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=float))
    md = markdown(results, meta)
    (out_dir / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
