"""Small synthetic run outputs (NIfTI maps, stage metadata JSONs, a truth with a labelled segmentation) for tests.

The grid is 30×34×28 voxels of 2 mm in LAS+ orientation (x flipped), so the reportlets' reorientation is exercised.
The truth χ is CSF-referenced (like ``qsmbids-sim``'s) and carries deep grey nuclei with distinct values.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np

SHAPE = (30, 34, 28)
AFFINE = np.array([[-2.0, 0, 0, 29.0], [0, 2.0, 0, -33.0], [0, 0, 2.0, -27.0], [0, 0, 0, 1]])
#: label → (name, χ ppm relative to CSF, centre in voxels, radius in voxels)
NUCLEI = {
    3: ("caudate_left", 0.05, (19, 20, 15), 2.5),
    4: ("putamen_right", 0.09, (10, 17, 14), 2.5),
    5: ("globus_pallidus_left", 0.19, (18, 15, 13), 2.0),
    6: ("thalamus_right", 0.02, (12, 13, 15), 2.5),
    7: ("red_nucleus_left", 0.11, (16, 11, 10), 1.8),
}
TSV_NAMES = {0: "air", 1: "csf", 2: "gm", 8: "wm", **{k: v[0] for k, v in NUCLEI.items()}}
ECHO_TIMES = (0.004, 0.0105, 0.017)


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij")


def _ball(c, r) -> np.ndarray:
    i, j, k = _grid()
    return (i - c[0]) ** 2 + (j - c[1]) ** 2 + (k - c[2]) ** 2 <= r * r


def truth_volumes() -> dict[str, np.ndarray]:
    """Brain mask, CSF-referenced χ (ppm) and labels, deterministic."""
    i, j, k = _grid()
    c = [(n - 1) / 2 for n in SHAPE]
    r = ((i - c[0]) / 12.5) ** 2 + ((j - c[1]) / 14.5) ** 2 + ((k - c[2]) / 11.5) ** 2
    mask = r <= 1.0
    labels = np.where(mask, np.where(r > 0.7, 2, 8), 0).astype(np.int16)  # cortex shell, white matter core
    labels[mask & (r < 0.04)] = 1  # a small CSF "ventricle"
    chi = np.where(labels == 2, 0.02, np.where(labels == 8, -0.03, 0.0))
    chi = chi + 0.004 * np.sin(i / 3.0) * np.cos(j / 4.0) * mask
    for lab, (_, value, centre, radius) in NUCLEI.items():
        ball = _ball(centre, radius) & mask
        labels[ball] = lab
        chi[ball] = value
    return {"mask": mask, "chi": np.where(mask, chi, 0.0), "labels": labels}


def save(data: np.ndarray, path: Path, dtype=np.float32) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.Nifti1Image(np.asarray(data).astype(dtype), AFFINE).to_filename(str(path))
    return str(path)


def write_truth(root: Path) -> dict[str, str]:
    """Truth χ, mask, dseg and dseg.tsv as ``qsmbids-sim`` names them."""
    t = truth_volumes()
    anat = root / "sub-01" / "anat"
    out = {
        "chimap": save(t["chi"], anat / "sub-01_Chimap.nii.gz"),
        "mask": save(t["mask"], anat / "sub-01_desc-brain_mask.nii.gz", np.uint8),
        "dseg": save(t["labels"], anat / "sub-01_dseg.nii.gz", np.int16),
    }
    tsv = anat / "sub-01_dseg.tsv"
    tsv.write_text("index\tname\n" + "".join(f"{k}\t{v}\n" for k, v in sorted(TSV_NAMES.items())))
    out["dseg_tsv"] = str(tsv)
    return out


def write_meta(root: Path, *, session: str | None = "1", run: str | None = "01") -> list[str]:
    """Stage metadata JSONs in the contract's format, in stage order."""
    load_info = {
        "subject": "01", "session": session, "acquisition": None, "reconstruction": None, "run": run,
        "echo_times_s": list(ECHO_TIMES), "field_strength_t": 2.89, "b0_direction": [0.0, 0.1736, 0.9848],
        "b0_angle_deg": 10.0, "obliquity_deg": 10.0, "voxel_size_mm": [2.0, 2.0, 2.0], "shape": list(SHAPE),
        "n_echoes": 3, "phase_units": "rad", "has_magnitude": True,
        "sources": ["bids:raw:sub-01/ses-1/anat/sub-01_ses-1_run-01_echo-1_part-phase_MEGRE.nii.gz"],
    }
    stages = [
        {"stage": "load", "label": "Load", "method": "nibabel", "params": {}, "runtime_s": 0.5, "warnings": [],
         "info": load_info},
        {"stage": "mask", "label": "Brain mask", "method": "combined", "params": {"threshold": 0.3},
         "runtime_s": 1.25, "warnings": [], "info": {"volume_ml": 1234.5}},
        {"stage": "unwrap", "label": "Phase unwrapping", "method": "quality", "params": {}, "runtime_s": 2.0,
         "warnings": [], "info": {}},
        {"stage": "bgremove", "label": "Background field removal", "method": "vsharp",
         "params": {"radii_mm": [12, 2], "note": "a<b"}, "runtime_s": 3.0, "warnings": [], "info": {}},
        {"stage": "inversion", "label": "Dipole inversion", "method": "medi", "params": {"lambda": 1000},
         "runtime_s": 12.345, "warnings": ["did not converge in 30 iterations"],
         "info": {"iterations": 30, "residual": 0.0123, "converged": False}},
        {"stage": "reference", "label": "Referencing", "method": "mean", "params": {}, "runtime_s": 0.1,
         "warnings": [], "info": {"reference_ppm": 0.0042}},
    ]
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, s in enumerate(stages):
        p = root / f"{n:02d}_{s['stage']}.json"
        p.write_text(json.dumps(s))
        paths.append(str(p))
    return paths


def write_run(root: Path, seed: int = 0) -> dict[str, str]:
    """Every map of one run (the estimate: truth demeaned plus noise), the metadata list, and the raw source file."""
    rng = np.random.default_rng(seed)
    t = truth_volumes()
    m = t["mask"]
    est = np.where(m, t["chi"] - t["chi"][m].mean() + rng.normal(0, 0.005, SHAPE), 0.0)
    mag = np.stack([np.where(m, 1.0, 0.3) * np.exp(-te * 30) * (1 + 0.05 * rng.standard_normal(SHAPE))
                    for te in ECHO_TIMES], axis=-1)
    work = root / "work"
    out = {
        "magnitude": save(mag, work / "magnitude.nii.gz"),
        "mask": save(m, work / "mask.nii.gz", np.uint8),
        "total_field": save(np.where(m, 40.0 * np.tanh(_grid()[2] / 10 - 1.4), 0), work / "total_field.nii.gz"),
        "local_field": save(np.where(m, 0.01 * est / 0.05, 0), work / "local_field.nii.gz"),
        "chimap": save(est, work / "chimap.nii.gz"),
        "r2star": save(np.where(m, 20 + 10 * (t["labels"] > 2), 0), work / "r2star.nii.gz"),
        "swi": save(mag[..., 0] * (1 - 0.3 * (t["labels"] == 5)), work / "swi.nii.gz"),
        "minip": save(mag[..., -1], work / "minip.nii.gz"),
    }
    src = root / "bids" / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_run-01_echo-1_part-phase_MEGRE.nii.gz"
    out["source_file"] = save(np.zeros((2, 2, 2)), src)
    out["meta"] = write_meta(work / "meta")
    return out
