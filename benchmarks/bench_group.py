"""Benchmarks of the ROI step and the group level (issue #6); writes benchmarks/results/bench_group.json.

* registration: RegisterTemplate + ApplyAtlas on a simulated 3 mm head (the test preset's grid) turned by
  (8, −6, 5)° and shifted (4, −3, 5) mm, one ITK thread (as in the App); target ≤ 60 s per run on 2 cores.
* group: ``qsmbids … group`` logic (collect, summary TSV/JSON, figures, group.html) over 100 synthetic statistics
  files (50 participants × 2 runs × 14 regions); target ≤ 10 s.

    python benchmarks/bench_group.py [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bench_registration(tmp: Path, repeats: int) -> dict:
    import nibabel as nb
    import numpy as np

    from qsmbids.interfaces.roi import ApplyAtlas, RegisterTemplate
    from qsmbids.sim.phantom import make_head

    h = make_head(7, voxel_size=3.0, rotation_deg=(8.0, -6.0, 5.0), translation_mm=(4.0, -3.0, 5.0))
    e1 = np.exp(-h.r1 * 0.03)
    mag = (h.m0 * (1 - e1) / (1 - np.cos(np.radians(15)) * e1) * np.exp(-h.r2star * 0.004)).astype(np.float32)
    nb.save(nb.Nifti1Image(mag, h.affine), tmp / "mag.nii.gz")
    nb.save(nb.Nifti1Image(h.brain_mask.astype(np.uint8), h.affine), tmp / "mask.nii.gz")
    times = []
    for k in range(repeats):
        wd = tmp / f"reg{k}"
        wd.mkdir()
        t0 = time.perf_counter()
        reg = RegisterTemplate(in_file=str(tmp / "mag.nii.gz"), in_mask=str(tmp / "mask.nii.gz")).run(cwd=str(wd))
        ApplyAtlas(reference=str(tmp / "mag.nii.gz"), transforms=reg.outputs.transforms,
                   invert=reg.outputs.invert).run(cwd=str(wd))
        times.append(time.perf_counter() - t0)
    return {"grid": list(h.labels.shape), "voxel_mm": 3.0, "seconds": times, "best_s": min(times),
            "target_s": 60.0, "itk_threads": 1}


def bench_group(tmp: Path, repeats: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import numpy as np

    from qsmbids.cli.group import group
    from qsmbids.config import ExecutionSettings, Settings
    from qsmbids.reports.tables import roi_statistics, stats_sidecar, write_stats_tsv

    raw, out = tmp / "raw", tmp / "out"
    names = {i: f"Region_{i}" for i in range(1, 15)}
    lab = np.repeat(np.arange(1, 15), 40)
    rng = np.random.default_rng(0)
    raw.mkdir()
    (raw / "participants.tsv").write_text("participant_id\tage\n" + "".join(f"sub-{s:03d}\t{20 + s}\n"
                                                                            for s in range(50)))
    n = 0
    for s in range(50):
        anat = out / f"sub-{s:03d}" / "anat"
        anat.mkdir(parents=True)
        (raw / f"sub-{s:03d}" / "anat").mkdir(parents=True)
        for run in (1, 2):
            prefix = f"sub-{s:03d}_run-{run}"
            (raw / f"sub-{s:03d}" / "anat" / f"{prefix}_echo-1_part-phase_MEGRE.nii.gz").write_bytes(b"")
            rows = roi_statistics(rng.normal(0.05, 0.02, lab.size), lab, names, np.ones(lab.size, bool), 27.0)
            write_stats_tsv(rows, anat / f"{prefix}_seg-HarvardOxford_stats.tsv")
            (anat / f"{prefix}_seg-HarvardOxford_stats.json").write_text(json.dumps(
                stats_sidecar(atlas="HarvardOxford", space="MNI152NLin6Asym", method="medi", reference="mean")))
            n += 1
    settings = Settings(execution=ExecutionSettings(bids_dir=raw, output_dir=out, analysis_level="group",
                                                    work_dir=tmp / "work"))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        assert group(settings) == 0
        times.append(time.perf_counter() - t0)
    rows = len((out / "group" / "roi_summary.tsv").read_text().splitlines()) - 1
    return {"stats_files": n, "rows": rows, "seconds": times, "best_s": min(times), "target_s": 10.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        (tmp / "r").mkdir()
        (tmp / "g").mkdir()
        res = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                           "load_1min": os.getloadavg()[0]},
               "registration": bench_registration(tmp / "r", args.repeats),
               "group": bench_group(tmp / "g", args.repeats)}
    out = Path(__file__).resolve().parent / "results" / "bench_group.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
