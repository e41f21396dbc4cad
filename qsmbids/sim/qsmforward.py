"""A second, independent forward model: simulate a :class:`~qsmbids.sim.phantom.HeadModel` with ``qsm-forward``.

``qsm-forward`` (PyPI, A. Stewart et al., the QSMxT team's simulator) reads a folder of tissue maps through its
``TissueParams`` and writes a BIDS MEGRE dataset with its own field model (dipole convolution on a 2× grid padded
with the corner value), its own 2nd-order shim (a polynomial fitted to the field in the brain and subtracted), its
own quadratic phase offset (from the M0 centre of mass), its own noise model (σ = max|S| / peak SNR per channel) and
k-space cropping to the target voxel size. Running our head through it and scoring the app on the result checks
that the pipeline does not only work on the data of our own simulator (:mod:`qsmbids.sim.forward`).

Layout written for ``TissueParams`` (names and units from its source, qsm-forward 0.x): ``chimodel/ChiModelMIX.nii``
(χ, ppm), ``maps/M0.nii.gz`` (a.u.), ``maps/R1.nii.gz`` (1/s), ``maps/R2star.nii.gz`` (1/s),
``masks/BrainMask.nii.gz`` (0/1), ``masks/SegmentedModel.nii.gz`` (integer labels); voxel axes as in the arrays,
B0 along the third voxel axis by default.

Alignment pitfall: qsm-forward resamples its ground truth with ``resize()``, which rebuilds the affine from the
identity and drops the translation, while the signal is cropped in k-space (sample j of the output lies at input
voxel j·N/M). Both agree only when the source affine has **no translation**; the maps are therefore written with
``diag(voxel_size)`` and the whole dataset (images and truth) carries that affine.

After the simulation the adapter adds what the app expects of a BIDS MEGRE dataset: phase sidecars get
``"Units": "rad"`` (qsm-forward writes radians without saying so), and its ground truth is copied into
``derivatives/qsmbids-sim`` in our layout (χ, brain mask, labels, total and local field), so that
``qsmbids … --ground-truth`` and the accuracy benchmark read both simulators the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from .phantom import HeadModel

__all__ = ["QsmForwardDataset", "write_tissue_maps", "make_qsmforward_dataset", "crop_head"]


@dataclasses.dataclass
class QsmForwardDataset:
    """A qsm-forward BIDS dataset and its ground truth on the grid of the simulated images.

    ``root``: the BIDS folder; ``phase``/``magnitude``: per-echo NIfTI paths; ``echo_times`` (s);
    ``field_strength`` (T); ``affine`` and ``voxel_size`` (mm) of the images; truth arrays: ``chi`` (ppm, relative
    to CSF), ``mask`` (brain, bool), ``labels`` (int), ``total_field`` (ppm, the field the signal encodes, i.e.
    after qsm-forward's shim), ``total_field_unshimmed`` (ppm), ``local_field`` (ppm, field of χ inside the mask).
    """

    root: Path
    phase: list[Path]
    magnitude: list[Path]
    echo_times: tuple[float, ...]
    field_strength: float
    affine: np.ndarray
    voxel_size: tuple[float, float, float]
    chi: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    total_field: np.ndarray
    total_field_unshimmed: np.ndarray
    local_field: np.ndarray


def crop_head(head: HeadModel, *, margin_mm: float = 8.0, multiple_of: float | None = None) -> HeadModel:
    """The head cropped to its bounding box plus ``margin_mm`` of air, each side a whole number of ``multiple_of`` mm.

    qsm-forward pads χ with its corner value (air here) before the dipole convolution, so air beyond the margin is
    still there as far as the field is concerned; the crop only saves memory and time (its convolution runs on a
    grid twice the input in every axis). With ``multiple_of`` (the output voxel size) the field of view is a whole
    number of output voxels, so k-space cropping and the truth resampling give the same grid.
    """
    vs = float(head.voxel_size[0])
    idx = np.nonzero(head.head_mask | head.brain_mask)
    m = int(math.ceil(margin_mm / vs))
    sl = []
    for ax, ix in enumerate(idx):
        lo = max(0, int(ix.min()) - m)
        hi = min(head.chi.shape[ax], int(ix.max()) + m + 1)
        if multiple_of:
            step = round(float(multiple_of) / vs)
            if step < 1 or abs(step * vs - float(multiple_of)) > 1e-6:
                raise ValueError(f"multiple_of: {multiple_of} mm is not a whole number of {vs} mm voxels")
            size = head.chi.shape[ax]
            n = int(math.ceil((hi - lo) / step)) * step
            if n > size:
                n = (size // step) * step
            lo = min(lo, size - n)
            hi = lo + n
        sl.append(slice(lo, hi))
    sl = tuple(sl)
    changes = {f: np.ascontiguousarray(getattr(head, f)[sl])
               for f in ("chi", "labels", "m0", "r1", "r2star", "brain_mask", "head_mask")}
    return dataclasses.replace(head, **changes)


def _save(path: Path, data: np.ndarray, affine: np.ndarray, dtype) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


def write_tissue_maps(root: str | Path, head: HeadModel) -> Path:
    """Write the head's maps in the folder layout qsm-forward's ``TissueParams`` reads (zero-translation affine)."""
    root = Path(root)
    affine = np.diag([*map(float, head.voxel_size), 1.0])
    _save(root / "chimodel" / "ChiModelMIX.nii", head.chi, affine, np.float32)
    _save(root / "maps" / "M0.nii.gz", head.m0, affine, np.float32)
    _save(root / "maps" / "R1.nii.gz", head.r1, affine, np.float32)
    _save(root / "maps" / "R2star.nii.gz", head.r2star, affine, np.float32)
    _save(root / "masks" / "BrainMask.nii.gz", head.brain_mask, affine, np.uint8)
    _save(root / "masks" / "SegmentedModel.nii.gz", head.labels, affine, np.int16)
    return root


def _peak_snr(head: HeadModel, te: float, tr: float, flip_deg: float, snr: float) -> float:
    """qsm-forward's peak SNR (noise σ = max|S|/peak_snr) that gives our SNR definition (mean brain |S₁| / σ)."""
    a = math.radians(flip_deg)
    e1 = np.exp(-tr * head.r1)
    s = head.m0 * np.exp(-te * head.r2star) * (1 - e1) * math.sin(a) / (1 - math.cos(a) * e1)
    return float(snr) * float(s.max()) / float(s[head.brain_mask].mean())


def _read(path: Path, dtype=np.float32) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=dtype)


def make_qsmforward_dataset(
    out_dir: str | Path,
    head: HeadModel,
    *,
    echo_times: Sequence[float] = (0.004, 0.008, 0.012),
    field_strength: float = 3.0,
    voxel_size: float | None = None,
    snr: float | None = 100.0,
    seed: int = 0,
    subject: str = "1",
    tr: float = 0.03,
    flip_angle_deg: float = 15.0,
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    quiet: bool = True,
) -> QsmForwardDataset:
    """Simulate ``head`` with qsm-forward into the BIDS folder ``out_dir`` and return its truth on the image grid.

    ``echo_times`` in s; ``field_strength`` in T; ``voxel_size`` the isotropic output voxel size in mm (default the
    head's; it must be a whole multiple of the head's voxel size); ``snr`` our definition (mean first-echo
    magnitude in the brain / noise σ per channel, converted to qsm-forward's peak SNR), ``None`` = no noise;
    ``seed`` seeds the noise. qsm-forward's shim field and phase offset are on (its defaults). The head is first
    cropped to its bounding box plus 8 mm (:func:`crop_head`). The maps qsm-forward reads go to
    ``out_dir/../<name>-tissue`` and are kept for inspection.
    """
    import qsm_forward

    out = Path(out_dir)
    vs_out = float(voxel_size if voxel_size is not None else head.voxel_size[0])
    head = crop_head(head, multiple_of=vs_out)
    tissue = write_tissue_maps(out.parent / f"{out.name}-tissue", head)
    te = np.asarray([float(t) for t in echo_times])
    peak = np.inf if snr is None or not math.isfinite(snr) else _peak_snr(head, float(te[0]), tr, flip_angle_deg, snr)
    tp = qsm_forward.TissueParams(root_dir=str(tissue))
    rp = qsm_forward.ReconParams(subject=subject, TR=tr, TEs=te, flip_angle=flip_angle_deg, B0=field_strength,
                                 B0_dir=np.asarray(b0_dir, dtype=float), voxel_size=np.full(3, vs_out),
                                 peak_snr=peak, random_seed=int(seed))
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        qsm_forward.generate_bids(tp, rp, str(out), save_field=True, save_shimmed_field=True)

    anat = out / f"sub-{subject}" / "anat"
    stem = f"sub-{subject}"
    multi = len(te) > 1
    suffix = "MEGRE" if multi else "T2starw"
    phase, mag = [], []
    for i in range(len(te)):
        echo = f"_echo-{i + 1}" if multi else ""
        phase.append(anat / f"{stem}{echo}_part-phase_{suffix}.nii")
        mag.append(anat / f"{stem}{echo}_part-mag_{suffix}.nii")
        side = phase[-1].with_suffix(".json")
        meta = json.loads(side.read_text())
        meta["Units"] = "rad"
        side.write_text(json.dumps(meta, indent=1))
    img = nib.load(str(phase[0]))
    affine = np.asarray(img.affine, dtype=np.float64)
    vs = tuple(float(z) for z in img.header.get_zooms()[:3])
    der = out / "derivatives" / "qsm-forward" / f"sub-{subject}" / "anat"
    truth = {
        "chi": _read(der / f"{stem}_Chimap.nii"),
        "mask": _read(der / f"{stem}_mask.nii") > 0.5,
        "labels": np.rint(_read(der / f"{stem}_dseg.nii")).astype(np.int16),
        "total_field": _read(der / f"{stem}_desc-shimmed_fieldmap.nii"),
        "total_field_unshimmed": _read(der / f"{stem}_fieldmap.nii"),
        "local_field": _read(der / f"{stem}_fieldmap-local.nii"),
    }
    for k, v in truth.items():
        if v.shape != img.shape[:3]:
            raise RuntimeError(f"qsm-forward truth {k} has shape {v.shape}, the images {img.shape[:3]}")
    _write_truth_copy(out, subject, truth, affine, head, [p.relative_to(out) for p in phase + mag])
    return QsmForwardDataset(root=out, phase=phase, magnitude=mag, echo_times=tuple(float(t) for t in te),
                             field_strength=float(field_strength), affine=affine, voxel_size=vs, **truth)


def _write_truth_copy(out: Path, subject: str, truth: dict, affine: np.ndarray, head: HeadModel, raw) -> None:
    """qsm-forward's truth in our layout (``derivatives/qsmbids-sim``), where the app looks for ground truth."""
    from .bids import write_ground_truth

    write_ground_truth(out, subject, chi=truth["chi"], brain_mask=truth["mask"].astype(np.uint8),
                       labels=truth["labels"], label_rows=head.labels_table(), total_field_ppm=truth["total_field"],
                       local_field_ppm=truth["local_field"], affine=affine, raw_files=[str(r) for r in raw])
