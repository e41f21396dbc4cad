#!/usr/bin/env python
"""Dipole inversion defaults before → after calibration, per method and condition (NRMSE/HFEN/XSIM/time).

Conditions come from :mod:`tests.qsm.realistic_head` (textured χ of the simulated head, field computed at 1 mm and
block-averaged, noise of a 5-echo fit with R2* decay): the true local field, or the local field V-SHARP leaves
from the simulated total field (``vsharp``). NRMSE demeaned (%), HFEN (2016 challenge LoG, %), XSIM (Gaussian 7³).

    python benchmarks/bench_inversion.py                       # all conditions → results/inversion.{json,md}
    python benchmarks/bench_inversion.py --only A E --methods tkd medi
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

CONDITIONS = {
    "A": dict(seed=1, voxel_size=3, field_strength=3.0, snr=50),
    "B": dict(seed=2, voxel_size=2, field_strength=3.0, snr=50),
    "C": dict(seed=3, voxel_size=2, field_strength=7.0, snr=50),
    "D": dict(seed=4, voxel_size=3, field_strength=3.0, snr=20, forward="qsm-forward"),
    "E": dict(seed=1, voxel_size=3, field_strength=3.0, snr=50, bfr="vsharp"),
    "F": dict(seed=2, voxel_size=2, field_strength=3.0, snr=50, bfr="vsharp"),
    "G": dict(seed=0, voxel_size=1, field_strength=3.0, snr=50, bfr="vsharp"),
}
#: parameters of the defaults before calibration (as shipped before issue #13, item 5)
BEFORE = {
    "tkd": {"threshold": 0.15}, "tsvd": {"threshold": 0.15}, "tikhonov": {"lambda_": 1e-2},
    "ilsqr": {"max_iter": 50}, "tv": {"lambda_": 1e-3}, "rts": {"delta": 0.15}, "medi": {"lambda_": 1500.0},
    "tgv": {"erosions": 0},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=["A", "B", "C", "D", "E", "F"], help="conditions (G: 1 mm, slow)")
    ap.add_argument("--methods", nargs="*", default=list(BEFORE))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    import torch

    from qsmbids.qsm.inversion import invert
    from tests.qsm.realistic_head import make_case, score

    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for cn in args.only:
        case = make_case(**CONDITIONS[cn])
        for m in args.methods:
            for which, params in (("before", BEFORE[m]), ("after", {})):
                kw = dict(params)
                if m == "medi":
                    kw["magnitude"] = case.magnitude
                t0 = time.perf_counter()
                chi, info = invert(case.field, case.mask, case.voxel_size, case.b0_dir, method=m, return_info=True,
                                   **kw)
                dt = time.perf_counter() - t0
                row = {"condition": cn, "case": case.name, "method": m, "defaults": which, "time_s": round(dt, 2),
                       "params": {k: v for k, v in info.params.items() if isinstance(v, (int, float, str, tuple))},
                       **{k: round(v, 3) for k, v in score(chi, case).items()}}
                rows.append(row)
                print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "inversion.json").write_text(json.dumps(rows, indent=1, default=str))
    lines = ["| condition | method | NRMSE % before → after | HFEN % before → after | XSIM before → after | time s |",
             "|---|---|---|---|---|---|"]
    for cn in args.only:
        for m in args.methods:
            b = next(r for r in rows if r["condition"] == cn and r["method"] == m and r["defaults"] == "before")
            a = next(r for r in rows if r["condition"] == cn and r["method"] == m and r["defaults"] == "after")
            lines.append(f"| {a['case']} | {m} | {b['nrmse']:.1f} → {a['nrmse']:.1f} | {b['hfen']:.1f} → "
                         f"{a['hfen']:.1f} | {b['xsim']:.3f} → {a['xsim']:.3f} | {a['time_s']:.1f} |")
    (args.out / "inversion.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
