"""Stage-by-stage accuracy of the QSM pipeline against a simulator's ground truth (in-process, no nipype).

:func:`run_pipeline` runs the app's stage chain exactly as :mod:`qsmbids.interfaces.qsm` does (mask → MCPC-3D-S +
spatial/temporal unwrapping → weighted echo fit → background removal on the mask's box → inversion on the local
mask's box → referencing), keeping every intermediate. :func:`score_run` compares each stage with the truth:

* ``mask_dice``: Dice of the mask against the true brain mask;
* ``total_field_err`` (%): the *total-field* error seen through background removal: the local field that the
  chosen background removal gives from the estimated total field vs from the true total field, both with the
  **true** mask (demeaned NRMSE on the eroded true mask). Harmonic differences — shim, a smooth phase offset that
  the field absorbed, the unknown constant — cancel; unwrapping errors, offset residues that are not harmonic and
  noise remain;
* ``local_field_err`` (%): the pipeline's local field vs the true local field (demeaned, on its mask ∩ truth);
* χ metrics (demeaned NRMSE %, HFEN %, XSIM, DGM slope) end to end (``e2e_*``) and for the inversion applied to
  the true local field with the true mask (``ideal_*``), both scored on the pipeline's final mask ∩ true mask
  (coverage reported as the fraction of the true mask scored).

:func:`load_bids_run` reads one MEGRE run and the ``derivatives/qsmbids-sim`` truth that ``qsmbids-sim`` and
:func:`qsmbids.sim.qsmforward.make_qsmforward_dataset` both write.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RunData", "load_bids_run", "run_pipeline", "invert_total", "score_run", "background_grid", "chi_scores"]

#: Deep grey labels of :mod:`qsmbids.sim.phantom` (caudate … dentate, left and right).
DGM_LABELS: tuple[int, ...] = tuple(range(4, 18))
#: Stage defaults of the App (a copy of qsmbids.config.DEFAULTS' method names; the benchmark passes the real ones).
APP_DEFAULTS: dict[str, str] = {"mask": "combined", "unwrap": "quality", "combine": "snr", "bgremove": "resharp",
                                "inversion": "medi", "reference": "mean"}


@dataclasses.dataclass
class RunData:
    """One multi-echo run (phase in rad, (E, X, Y, Z)) with its ground truth (ppm) on the same grid."""

    name: str
    magnitude: np.ndarray
    phase: np.ndarray
    echo_times: tuple[float, ...]
    field_strength: float
    voxel_size: tuple[float, float, float]
    b0_dir: tuple[float, float, float]
    chi: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    total_field: np.ndarray
    local_field: np.ndarray
    affine: np.ndarray | None = None


def _read(path: Path, dtype=np.float32) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj, dtype=dtype)


def load_bids_run(root: str | Path, *, name: str | None = None, subject: str | None = None) -> RunData:
    """The first MEGRE run of ``root`` (or of ``sub-<subject>``) and its truth from ``derivatives/qsmbids-sim``."""
    import nibabel as nib

    from ..qsm.phase import b0_direction_from_affine, scale_phase

    root = Path(root)
    pattern = f"sub-{subject}/**/*_part-phase_MEGRE.nii*" if subject else "sub-*/**/*_part-phase_MEGRE.nii*"
    phase_files = sorted(root.glob(pattern), key=lambda p: int(re.search(r"_echo-(\d+)", p.name).group(1)))
    if not phase_files:
        raise FileNotFoundError(f"{root}: no *_part-phase_MEGRE.nii[.gz]")
    prefix = phase_files[0].name.split("_echo-")[0]
    phase_files = [p for p in phase_files if p.name.startswith(prefix + "_echo-")]
    tes, phase, mag = [], [], []
    for p in phase_files:
        side = json.loads(Path(str(p).split(".nii")[0] + ".json").read_text())
        tes.append(float(side["EchoTime"]))
        b0 = float(side["MagneticFieldStrength"])
        units = side.get("Units", "auto")
        ph = _read(p)
        phase.append(np.asarray(scale_phase(ph, "rad" if units == "rad" else "auto"), dtype=np.float32))
        mag.append(_read(Path(str(p).replace("_part-phase_", "_part-mag_"))))
    img = nib.load(str(phase_files[0]))
    vs = tuple(float(z) for z in img.header.get_zooms()[:3])
    b0_dir = tuple(float(v) for v in b0_direction_from_affine(img.affine))
    sub = prefix.split("_")[0]
    truth = root / "derivatives" / "qsmbids-sim" / sub / "anat"
    t = {
        "chi": _read(truth / f"{prefix}_Chimap.nii.gz"),
        "mask": _read(truth / f"{prefix}_desc-brain_mask.nii.gz") > 0,
        "labels": _read(truth / f"{prefix}_dseg.nii.gz", np.int16),
        "total_field": _read(truth / f"{prefix}_desc-total_fieldmap.nii.gz"),
        "local_field": _read(truth / f"{prefix}_desc-local_fieldmap.nii.gz"),
    }
    return RunData(name=name or root.name, magnitude=np.stack(mag), phase=np.stack(phase), echo_times=tuple(tes),
                   field_strength=b0, voxel_size=vs, b0_dir=b0_dir, affine=np.asarray(img.affine), **t)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------------
# the app's chain, in process


def _box(mask: np.ndarray, vs: Sequence[float], margin_mm: float = 16.0) -> tuple[slice, ...]:
    """The bounding box the app's FFT stages run on (``interfaces.qsm._Stage._box``)."""
    idx = np.nonzero(mask)
    box = []
    for axis, ix in enumerate(idx):
        m = max(4, int(np.ceil(margin_mm / vs[axis])))
        box.append(slice(max(0, int(ix.min()) - m), min(mask.shape[axis], int(ix.max()) + m + 1)))
    return tuple(box)


def _paste(values: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=values.dtype)
    out[box] = values
    return out


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def total_field_ppm(data: RunData, mask: np.ndarray, *, unwrap: str = "quality", combine: str = "snr",
                    unwrap_params: Mapping[str, Any] | None = None,
                    combine_params: Mapping[str, Any] | None = None) -> tuple[np.ndarray, dict]:
    """The Unwrap and CombineEchoes stages: offset removal, unwrapping, weighted fit → total field (ppm)."""
    from ..qsm.echoes import combine_echoes, fit_field
    from ..qsm.phase import hz_to_ppm

    up = dict(unwrap_params or {})
    if len(data.echo_times) < 2:
        up["offset"] = "none"
    fit = combine_echoes(data.phase, data.magnitude, data.echo_times, mask, voxel_size=data.voxel_size,
                         unwrapper=unwrap, **up)
    fit2 = fit_field(_np(fit.unwrapped), data.echo_times, data.magnitude, mask, weighting=combine,
                     **dict(combine_params or {}))
    field = _np(hz_to_ppm(_np(fit2.field_hz), data.field_strength)).astype(np.float32)
    return field, {"noise_hz": _np(fit2.noise)}


def local_field(field_ppm: np.ndarray, mask: np.ndarray, data: RunData, method: str = "resharp",
                **params: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """The BackgroundRemoval stage on the mask's box: (local field ppm, its mask, seconds)."""
    from ..qsm.background import remove_background

    box = _box(mask, data.voxel_size)
    t0 = time.perf_counter()
    res = remove_background(field_ppm[box], mask[box], data.voxel_size, data.b0_dir, method=method, **params)
    dt = time.perf_counter() - t0
    lm = _paste(_np(res.mask).astype(bool), box, mask.shape)
    return _paste(_np(res.local_field), box, mask.shape) * lm, lm, dt


def invert_local(local: np.ndarray, mask: np.ndarray, data: RunData, method: str = "medi",
                 **params: Any) -> np.ndarray:
    """The DipoleInversion and Reference (mean) stages on the mask's box: χ (ppm, mean 0 in the mask)."""
    from ..qsm.inversion import invert

    box = _box(mask, data.voxel_size)
    p = dict(params)
    if method == "medi" and "magnitude" not in p:
        mag = data.magnitude[(slice(None), *box)]
        p["magnitude"] = np.sqrt((mag.astype(np.float64) ** 2).sum(0)).astype(np.float32)
    chi = _np(invert(local[box], mask[box], data.voxel_size, data.b0_dir, method=method, **p))
    chi = _paste(chi.astype(np.float32), box, mask.shape) * mask
    chi[mask] -= chi[mask].mean()
    return chi


def invert_total(field_ppm: np.ndarray, mask: np.ndarray, data: RunData, *, noise_ppm: np.ndarray | None = None,
                 **params: Any) -> np.ndarray:
    """Total field inversion (:func:`qsmbids.qsm.inversion.tfi.tfi`) in place of BackgroundRemoval + DipoleInversion,
    on the mask's box with the RSS magnitude, then the mean reference: χ (ppm, mean 0 in the mask)."""
    from ..qsm.inversion.tfi import tfi

    box = _box(mask, data.voxel_size)
    mag = data.magnitude[(slice(None), *box)]
    p = dict(params)
    if noise_ppm is not None:
        p["noise_std"] = noise_ppm[box]
    chi = _np(tfi(field_ppm[box], mask[box], data.voxel_size, data.b0_dir,
                  magnitude=np.sqrt((mag.astype(np.float64) ** 2).sum(0)).astype(np.float32), **p))
    chi = _paste(chi.astype(np.float32), box, mask.shape) * mask
    chi[mask] -= chi[mask].mean()
    return chi


def run_pipeline(data: RunData, *, mask: str | np.ndarray = "app", stages: Mapping[str, str] | None = None,
                 params: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The app's chain on ``data`` with ``stages`` (method per stage, default :data:`APP_DEFAULTS`).

    ``mask="true"`` replaces the mask stage with the true brain mask; an array replaces it with that mask (e.g.
    :func:`qsmbids.deep.brain.deepbet_mask`, which needs the image's affine and lives above this floor). ``params``: per-stage keyword arguments
    (keys ``mask``, ``unwrap``, ``combine``, ``bgremove``, ``inversion``). Returns the intermediates: ``mask``,
    ``total_field`` (ppm), ``local_field`` (ppm), ``local_mask``, ``chi`` (ppm) and ``times`` (s per stage).
    """
    from ..qsm.mask import brain_mask

    st = {**APP_DEFAULTS, **dict(stages or {})}
    pr = {k: dict(v) for k, v in (params or {}).items()}
    times = {}
    t0 = time.perf_counter()
    if isinstance(mask, np.ndarray):
        m = mask.astype(bool)
    elif mask == "true":
        m = data.mask.copy()
    else:
        m = _np(brain_mask(data.magnitude, data.phase, data.echo_times, data.voxel_size, method=st["mask"],
                           **pr.get("mask", {}))).astype(bool)
    times["mask"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    field, _ = total_field_ppm(data, m, unwrap=st["unwrap"], combine=st["combine"],
                               unwrap_params=pr.get("unwrap"), combine_params=pr.get("combine"))
    times["field"] = time.perf_counter() - t0
    local, lmask, times["bgremove"] = local_field(field, m, data, st["bgremove"], **pr.get("bgremove", {}))
    t0 = time.perf_counter()
    chi = invert_local(local, lmask, data, st["inversion"], **pr.get("inversion", {}))
    times["inversion"] = time.perf_counter() - t0
    return {"mask": m, "total_field": field, "local_field": local, "local_mask": lmask, "chi": chi, "times": times}


# ------------------------------------------------------------------------------------------------------------
# scores


def _demeaned_nrmse(x: np.ndarray, ref: np.ndarray, m: np.ndarray) -> float:
    a = x[m].astype(np.float64)
    b = ref[m].astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float(100.0 * np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def dgm_slope(chi: np.ndarray, truth: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> float:
    """Slope a of the regional means of the deep grey nuclei, mean_x(R) ≈ a·mean_truth(R) + b."""
    xs, ys = [], []
    for lab in DGM_LABELS:
        r = mask & (labels == lab)
        if r.sum() >= 3:
            xs.append(float(truth[r].mean()))
            ys.append(float(chi[r].mean()))
    if len(xs) < 2:
        return float("nan")
    return float(np.polyfit(xs, ys, 1)[0])


def chi_scores(chi: np.ndarray, data: RunData, mask: np.ndarray, prefix: str) -> dict[str, float]:
    """Demeaned NRMSE %, HFEN %, XSIM (Gaussian 7³), DGM slope of ``chi`` vs the truth on ``mask`` ∩ true mask."""
    from ..qsm import metrics

    m = mask & data.mask
    x = np.where(m, chi - chi[m].mean(), 0).astype(np.float32)
    r = np.where(m, data.chi - data.chi[m].mean(), 0).astype(np.float32)
    return {f"{prefix}_nrmse": _demeaned_nrmse(chi, data.chi, m), f"{prefix}_hfen": float(metrics.hfen(x, r, m)),
            f"{prefix}_xsim": float(metrics.xsim(x, r, m)),
            f"{prefix}_dgm_slope": dgm_slope(chi, data.chi, data.labels, m)}


def score_run(data: RunData, result: Mapping[str, Any], *, bgremove: str = "resharp",
              bg_params: Mapping[str, Any] | None = None, inversion: str = "medi",
              inv_params: Mapping[str, Any] | None = None, ideal: bool = True) -> dict[str, float]:
    """Per-stage errors of one :func:`run_pipeline` result (see the module docstring for the definitions)."""
    bp = dict(bg_params or {})
    m, tm = result["mask"], data.mask
    out: dict[str, float] = {"mask_dice": float(2 * (m & tm).sum() / (m.sum() + tm.sum())),
                             "mask_volume_ml": float(m.sum() * np.prod(data.voxel_size) / 1000)}
    est = np.where(tm, result["total_field"], 0).astype(np.float32)
    loc_est, lm_est, _ = local_field(est, tm, data, bgremove, **bp)
    loc_true, lm_true, _ = local_field(data.total_field, tm, data, bgremove, **bp)
    out["total_field_err"] = _demeaned_nrmse(loc_est, loc_true, lm_est & lm_true)
    lm = result["local_mask"] & tm
    out["local_field_err"] = _demeaned_nrmse(result["local_field"], data.local_field, lm)
    out["coverage"] = float(lm.sum() / tm.sum())
    out.update(chi_scores(result["chi"], data, result["local_mask"], "e2e"))
    if ideal:
        chi_ideal = invert_local(data.local_field * tm, tm, data, inversion, **dict(inv_params or {}))
        out.update(chi_scores(chi_ideal, data, result["local_mask"], "ideal"))
    out.update({f"t_{k}": float(v) for k, v in result["times"].items()})
    return out


def background_grid(data: RunData, variants: Mapping[str, tuple[str, Mapping[str, Any]]], *,
                    field: np.ndarray | None = None, mask: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Each background-removal variant (name → (method, params)) on a total field (default the true one) with a
    mask (default the true one): local-field error on its own mask and on the mask common to all variants,
    coverage of the true mask, seconds."""
    f = data.total_field if field is None else field
    m = data.mask if mask is None else mask
    runs = {}
    for name, (method, params) in variants.items():
        loc, lm, dt = local_field(np.where(m, f, 0).astype(np.float32), m, data, method, **dict(params))
        runs[name] = (loc, lm, dt)
    common = np.logical_and.reduce([lm for _, lm, _ in runs.values()]) & data.mask
    out = {}
    for name, (loc, lm, dt) in runs.items():
        own = lm & data.mask
        out[name] = {"local_err": _demeaned_nrmse(loc, data.local_field, own),
                     "local_err_common": _demeaned_nrmse(loc, data.local_field, common),
                     "coverage": float(own.sum() / data.mask.sum()), "seconds": dt}
    return out
