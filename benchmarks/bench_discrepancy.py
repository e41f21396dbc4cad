#!/usr/bin/env python
"""Fixed default λ vs the discrepancy principle (MEDI, TV, iLSQR) on simulated heads with truth (#13).

Datasets are BIDS folders under $DISC_WORK (default /tmp/discwork) written by benchmarks/bench_accuracy.py's
make_datasets (ours-3mm, 7t-3mm, qsmforward-3mm) or qsmbids-sim (--preset test --snr 30 → snr30-3mm). Chain: true
mask, the app's echo fit (its noise map), default background removal; then each inversion with fixed λ (a small
grid) and with the discrepancy rule (noise map / estimated σ). Prints one JSON line per result.

    OMP_NUM_THREADS=1 python benchmarks/bench_discrepancy.py ours-3mm 7t-3mm      # LIGHT=1 / LIGHT2=1: fewer λ
"""
import sys, json, time, os
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np, torch
torch.set_num_threads(1)
from pathlib import Path
from qsmbids.config import DEFAULTS
from qsmbids.sim.accuracy import load_bids_run, total_field_ppm, local_field, invert_local, chi_scores, _box
from qsmbids.qsm.inversion import invert
from qsmbids.qsm.phase import GAMMA_BAR

W = Path(os.environ.get("DISC_WORK", "/tmp/discwork"))
BG = DEFAULTS["bgremove"]
GRIDS = {"medi": [300, 1000, 3000, 1e4, 3e4], "tv": [1e-4, 2.5e-4, 5e-4, 1e-3, 2e-3]}
if os.environ.get("LIGHT2"):
    GRIDS = {"medi": [3000], "tv": [5e-4]}
elif os.environ.get("LIGHT"):
    GRIDS = {"medi": [1000, 3000, 1e4], "tv": [2.5e-4, 5e-4, 2e-3]}

def info_of(local, lm, data, method, **kw):
    box = _box(lm, data.voxel_size)
    p = dict(kw)
    if method == "medi":
        mag = data.magnitude[(slice(None), *box)]
        p["magnitude"] = np.sqrt((mag.astype(np.float64) ** 2).sum(0)).astype(np.float32)
    if isinstance(p.get("noise_std"), np.ndarray):
        p["noise_std"] = p["noise_std"][box]
    _, info = invert(local[box], lm[box], data.voxel_size, data.b0_dir, method=method, return_info=True, **p)
    return info

def my_invert(local, lm, data, method, **kw):
    box = _box(lm, data.voxel_size)
    p = dict(kw)
    if method == "medi":
        mag = data.magnitude[(slice(None), *box)]
        p["magnitude"] = np.sqrt((mag.astype(np.float64) ** 2).sum(0)).astype(np.float32)
    if isinstance(p.get("noise_std"), np.ndarray):
        p["noise_std"] = p["noise_std"][box]
    chi = np.asarray(invert(local[box], lm[box], data.voxel_size, data.b0_dir, method=method, **p))
    out = np.zeros(lm.shape, np.float32)
    out[box] = chi
    out *= lm
    out[lm] -= out[lm].mean()
    return out

def rows_for(name, local, lm, data, sd):
    out = []
    def run(method, label, **kw):
        t = time.time()
        kw2 = dict(kw)
        if isinstance(kw2.get("noise_std"), np.ndarray):
            kw2["noise_std"] = kw2["noise_std"] * lm + (~lm)  # positive outside the mask
        chi = my_invert(local, lm, data, method, **kw2)
        s = chi_scores(chi, data, lm, "chi")
        r = {"dataset": name, "method": method, "variant": label, "nrmse": s["chi_nrmse"], "xsim": s["chi_xsim"],
             "t": time.time() - t}
        if any(isinstance(v, str) and v == "discrepancy" for v in kw.values()):
            info = info_of(local, lm, data, method, **kw2)
            r.update({k: info.params.get(k) for k in ("lambda_", "max_iter", "noise_sigma", "noise_source",
                                                       "discrepancy_target", "discrepancy_misfit",
                                                       "discrepancy_solves")})
        out.append(r)
        print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    for m in ("medi", "tv"):
        for lam in GRIDS[m]:
            run(m, f"fixed {lam:g}", lambda_=lam)
        if m == "medi" and not os.environ.get("LIGHT2"):
            run(m, "fixed 3000 weighted", lambda_=3000.0, noise_std=sd)
        run(m, "disc map", lambda_="discrepancy", noise_std=sd)
        if not (os.environ.get("LIGHT2") and m == "medi"):
            run(m, "disc est", lambda_="discrepancy")
    run("ilsqr", "fixed 10")
    run("ilsqr", "disc map", max_iter="discrepancy", noise_std=sd)
    run("ilsqr", "disc est", max_iter="discrepancy")
    return out

results = []
names = sys.argv[1:] or ["ours-3mm", "7t-3mm", "qsmforward-3mm", "snr30-3mm", "snr15-3mm"]
for nm in names:
    data = load_bids_run(W / nm, name=nm)
    m = data.mask
    field, extra = total_field_ppm(data, m)
    local, lm, _ = local_field(np.where(m, field, 0).astype(np.float32), m, data, BG)
    hz = np.asarray(extra["noise_hz"], dtype=np.float64)
    good = lm & np.isfinite(hz) & (hz > 0)
    hz = np.where(good, hz, np.median(hz[good]))
    sd = (hz * 1e6 / (GAMMA_BAR * data.field_strength)).astype(np.float32)
    # true noise of the estimated total field vs the map (RMS over the local mask)
    err = (field - data.total_field)[lm]
    print(f"# {nm}: B0 {data.field_strength} T, vs {data.voxel_size}, noise map RMS {np.sqrt((sd[lm]**2).mean()):.5f} ppm,"
          f" field error std {err.std():.5f} ppm, local-field error std {(local - data.local_field)[lm].std():.5f}", flush=True)
    results += rows_for(nm, local, lm, data, sd)
json.dump(results, open(W / ("measure-" + "_".join(names) + ".json"), "w"), indent=1, default=float)
