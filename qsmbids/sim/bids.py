"""BIDS writer for simulated multi-echo GRE data and its ground truth.

Raw data follow BIDS 1.10 for MEGRE: ``sub-<l>/[ses-<s>/]anat/sub-<l>[_ses-][_acq-][_run-]_echo-<i>_part-{mag,phase}_MEGRE.nii.gz``
with JSON sidecars (``EchoTime`` in s, ``MagneticFieldStrength`` in T, ``EchoNumber``, ``FlipAngle`` in deg,
``RepetitionTime`` in s, ``ImagingFrequency`` in MHz, ``ImageType``, and ``Units`` for phase). Ground truth goes
to ``derivatives/qsmbids-sim/`` as a derivative dataset: ``_Chimap`` (ppm), ``_desc-brain_mask``, ``_dseg`` with its
``_dseg.tsv`` and the total and local fields (``_desc-{total,local}_fieldmap``, ppm, listed in ``.bidsignore``
because BIDS has no suffix for them yet).

Files are written deterministically (fixed gzip header, sorted JSON keys) so that the same inputs give
byte-identical datasets.
"""

from __future__ import annotations

import csv
import gzip
from concurrent.futures import ThreadPoolExecutor
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .. import __version__
from ..constants import GAMMA_BAR_MHZ_T

__all__ = [
    "BIDS_VERSION",
    "entities_prefix",
    "save_nifti",
    "write_json",
    "write_tsv",
    "write_dataset_description",
    "write_participants",
    "write_megre_run",
    "write_t1w",
    "write_ground_truth",
]

BIDS_VERSION = "1.10.0"
DERIV_NAME = "qsmbids-sim"


def entities_prefix(sub: str, ses: str | None = None, acq: str | None = None, run: int | None = None) -> str:
    """``sub-01_ses-02_acq-x_run-1`` from the entities present, in BIDS order.

    >>> entities_prefix("01", run=2)
    'sub-01_run-2'
    """
    parts = [f"sub-{sub}"]
    if ses is not None:
        parts.append(f"ses-{ses}")
    if acq is not None:
        parts.append(f"acq-{acq}")
    if run is not None:
        parts.append(f"run-{run}")
    return "_".join(parts)


def _subdir(root: Path, sub: str, ses: str | None, datatype: str = "anat") -> Path:
    d = Path(root) / f"sub-{sub}"
    if ses is not None:
        d = d / f"ses-{ses}"
    return d / datatype


def save_nifti(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray, *, dtype: Any = None) -> Path:
    """Write a NIfTI-1 image (mm, s units; sform and qform = ``affine``) with a deterministic gzip header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(data if dtype is None else np.asarray(data).astype(dtype))
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    raw = img.to_bytes()
    if path.name.endswith(".gz"):
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=1) as gz:
            gz.write(raw)
        raw = buf.getvalue()
    path.write_bytes(raw)
    return path


def _save_all(jobs: Sequence[tuple[Path, np.ndarray, np.ndarray, Any]]) -> list[Path]:
    """Save several images at once: gzip compression releases the GIL, so threads use every core."""
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        return list(pool.map(lambda job: save_nifti(job[0], job[1], job[2], dtype=job[3]), jobs))


def write_json(path: str | os.PathLike, content: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    return path


def write_tsv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(columns)
        for row in rows:
            w.writerow(["n/a" if row.get(c) is None else row.get(c) for c in columns])
    return path


def write_dataset_description(root: str | os.PathLike, *, name: str, derivative: bool = False,
                              source: str | None = None) -> Path:
    """``dataset_description.json`` for the raw dataset or the ground-truth derivative dataset."""
    desc: dict[str, Any] = {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative" if derivative else "raw",
        "License": "CC0",
        "Authors": ["qsmbids simulator", "qsmbids developers"],
        "GeneratedBy": [{"Name": "qsmbids-sim", "Version": __version__,
                         "Description": "Numerical head phantom and multi-echo GRE forward model"}],
    }
    if derivative and source:
        desc["SourceDatasets"] = [{"URI": "bids:raw:"}]
        desc["DatasetLinks"] = {"raw": source}
    return write_json(Path(root) / "dataset_description.json", desc)


def write_participants(root: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """``participants.tsv`` (participant_id, age, sex) and its JSON data dictionary."""
    write_tsv(Path(root) / "participants.tsv", rows, ["participant_id", "age", "sex"])
    write_json(Path(root) / "participants.json", {
        "age": {"Description": "age of the simulated participant", "Units": "year"},
        "sex": {"Description": "sex of the simulated participant",
                "Levels": {"F": "female", "M": "male"}},
    })


def write_megre_run(
    root: str | os.PathLike,
    sub: str,
    *,
    magnitude: np.ndarray,
    phase: np.ndarray,
    affine: np.ndarray,
    echo_times: Sequence[float],
    field_strength: float,
    flip_angle_deg: float,
    repetition_time: float,
    phase_units: str = "rad",
    ses: str | None = None,
    acq: str | None = None,
    run: int | None = None,
    extra_sidecar: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write one multi-echo GRE run: per echo a magnitude and a phase NIfTI with sidecars. Returns the NIfTI paths."""
    mag = np.asarray(magnitude)
    ph = np.asarray(phase)
    te = [float(t) for t in echo_times]
    if mag.shape != ph.shape or mag.ndim != 4 or mag.shape[0] != len(te):
        raise ValueError(f"magnitude/phase: expected (echoes, X, Y, Z) arrays with {len(te)} echoes, "
                         f"got {mag.shape} and {ph.shape}")
    if phase_units not in ("rad", "arbitrary"):
        raise ValueError(f"phase_units: expected 'rad' or 'arbitrary', got {phase_units!r}")
    d = _subdir(Path(root), sub, ses)
    prefix = entities_prefix(sub, ses, acq, run)
    jobs = []
    for i, t in enumerate(te, start=1):
        common = {
            "EchoTime": t,
            "EchoNumber": i,
            "MagneticFieldStrength": float(field_strength),
            "ImagingFrequency": round(GAMMA_BAR_MHZ_T * float(field_strength), 6),
            "FlipAngle": float(flip_angle_deg),
            "RepetitionTime": float(repetition_time),
            "Manufacturer": "qsmbids-sim",
            "MRAcquisitionType": "3D",
            "PulseSequenceType": "Gradient Echo",
        }
        if extra_sidecar:
            common.update(extra_sidecar)
        for part, data in (("mag", mag[i - 1]), ("phase", ph[i - 1])):
            stem = d / f"{prefix}_echo-{i}_part-{part}_MEGRE"
            dtype = np.int16 if (part == "phase" and phase_units == "arbitrary") else np.float32
            jobs.append((Path(f"{stem}.nii.gz"), data, affine, dtype))
            side = dict(common)
            side["ImageType"] = ["ORIGINAL", "PRIMARY", "M" if part == "mag" else "P"]
            if part == "phase":
                side["Units"] = phase_units
            write_json(f"{stem}.json", side)
    return _save_all(jobs)


def write_t1w(
    root: str | os.PathLike,
    sub: str,
    *,
    image: np.ndarray,
    affine: np.ndarray,
    field_strength: float,
    inversion_time: float,
    repetition_time: float,
    ses: str | None = None,
) -> Path:
    """Write ``sub-<l>[_ses-<s>]_T1w.nii.gz`` and its sidecar."""
    stem = _subdir(Path(root), sub, ses) / f"{entities_prefix(sub, ses)}_T1w"
    write_json(f"{stem}.json", {
        "MagneticFieldStrength": float(field_strength), "InversionTime": float(inversion_time),
        "RepetitionTime": float(repetition_time), "Manufacturer": "qsmbids-sim", "MRAcquisitionType": "3D",
        "PulseSequenceType": "MPRAGE",
    })
    return save_nifti(f"{stem}.nii.gz", image, affine, dtype=np.float32)


def write_ground_truth(
    root: str | os.PathLike,
    sub: str,
    *,
    chi: np.ndarray,
    brain_mask: np.ndarray,
    labels: np.ndarray,
    label_rows: Sequence[Mapping[str, Any]],
    total_field_ppm: np.ndarray,
    local_field_ppm: np.ndarray,
    affine: np.ndarray,
    raw_files: Sequence[str] = (),
    ses: str | None = None,
    acq: str | None = None,
    run: int | None = None,
) -> list[Path]:
    """Write the truth of one run into ``<root>/derivatives/qsmbids-sim`` (a derivative dataset)."""
    deriv = Path(root) / "derivatives" / DERIV_NAME
    if not (deriv / "dataset_description.json").exists():
        write_dataset_description(deriv, name="qsmbids-sim ground truth", derivative=True, source="../../")
        (deriv / ".bidsignore").write_text("*_fieldmap.nii.gz\n*_fieldmap.json\n")
        (deriv / "README").write_text(
            "Ground truth of the qsmbids-sim dataset: susceptibility (Chimap, ppm), brain mask, tissue labels\n"
            "(dseg + TSV) and the total and local fields (ppm, desc-total/desc-local fieldmap).\n"
        )
    d = _subdir(deriv, sub, ses)
    prefix = entities_prefix(sub, ses, acq, run)
    sources = [f"bids:raw:{f}" for f in raw_files]
    jobs = [(d / f"{prefix}_Chimap.nii.gz", chi, affine, np.float32)]
    write_json(d / f"{prefix}_Chimap.json", {"Units": "ppm", "SkullStripped": False, "Sources": sources,
                                              "Description": "ground-truth magnetic susceptibility (relative to CSF)"})
    jobs.append((d / f"{prefix}_desc-brain_mask.nii.gz", brain_mask, affine, np.uint8))
    write_json(d / f"{prefix}_desc-brain_mask.json", {"Type": "Brain", "Sources": sources})
    jobs.append((d / f"{prefix}_dseg.nii.gz", labels, affine, np.int16))
    rows = [{"index": r["index"], "name": r["name"]} for r in label_rows]
    write_tsv(d / f"{prefix}_dseg.tsv", rows, ["index", "name"])
    for desc, data in (("total", total_field_ppm), ("local", local_field_ppm)):
        jobs.append((d / f"{prefix}_desc-{desc}_fieldmap.nii.gz", data, affine, np.float32))
        write_json(d / f"{prefix}_desc-{desc}_fieldmap.json", {
            "Units": "ppm", "Sources": sources,
            "Description": f"ground-truth {desc} field, relative field perturbation dB/B0",
        })
    return _save_all(jobs)
