"""Brain extraction on the GRE magnitude with deepbet (Fisch et al., Comput Biol Med 2024).

Why a network: in gradient-echo magnitude at short echo times the scalp and marrow fat are the brightest
tissues, and thin skull, meninges, vessels, eyes, sinus walls and the neck touch the brain through partial volume,
so an intensity (Otsu) or phase-quality mask leaks into them: on a real 3 T head the ``combined`` mask covered
the whole head (2.8 L instead of about 1.5 L). deepbet's two LinkNet-style 3-D U-Nets (a bounding-box net at 128³
and the mask net at 256³ inside the box), trained on T1-weighted heads, follow the inner skull on GRE magnitude too
(measured: 1.55 L on the real Philips head, Dice 0.95–0.98 on the simulated heads; see the README's Accuracy
section). deepbet is MIT-licensed and ships its TorchScript weights inside its wheel (no download at run time).

Input is the root-sum-of-squares over echoes of the magnitude (the first echo dominates; the sum gains SNR),
brought to the closest RAS orientation as deepbet expects, and the probability map is returned on the input grid.
Post-processing is ours (scipy): threshold, largest 6-connected component, holes filled.

This module uses deepbet's model-running method (:meth:`deepbet.BrainExtraction.run_model`) only; files are never
read or written here.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["BRAIN_EXTRACTION_METHODS", "BrainExtractionError", "deepbet_info", "deepbet_mask", "deepbet_probability"]

#: Erosion (mm) of the deepbet mask in the app's default (``--param deepbet.erode_mm``).
DEFAULT_DEEPBET_ERODE_MM: float = 3.0
#: Mask methods implemented by a network (the numerical ones live in :data:`qsmbids.qsm.mask.MASK_METHODS`).
BRAIN_EXTRACTION_METHODS: tuple[str, ...] = ("deepbet",)


class BrainExtractionError(RuntimeError):
    """deepbet is not installed or its weights are missing (the message is one line)."""


def _weights_dir() -> Path:
    try:
        from deepbet.utils import DATA_PATH
    except ImportError as exc:  # pragma: no cover - deepbet is a dependency
        raise BrainExtractionError(f"the deepbet package is not installed ({exc}); reinstall qsmbids") from None
    return Path(DATA_PATH) / "models"


def deepbet_info() -> dict[str, Any]:
    """Version and SHA-256 (first 16 hex digits) of the shipped deepbet weights, for sidecars and reports."""
    d = _weights_dir()
    out: dict[str, Any] = {"model": "deepbet", "version": importlib.metadata.version("deepbet")}
    for name in ("bbox_model.pt", "model.pt"):
        p = d / name
        if not p.is_file():
            raise BrainExtractionError(f"{p}: deepbet weight file missing (reinstall deepbet)")
        out[f"sha256_{p.stem}"] = _sha256(str(p))[:16]
    return out


@functools.lru_cache(maxsize=8)
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=2)
def _extractor(device: str):
    import torch

    _weights_dir()  # clear error when deepbet is missing
    from deepbet.bet import BrainExtraction
    from deepbet.utils import load_model

    bet = BrainExtraction.__new__(BrainExtraction)  # load the two TorchScript nets onto the device we choose
    d = _weights_dir()
    with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript loading deprecated; it still works
        warnings.simplefilter("ignore", DeprecationWarning)
        bet.model = load_model(str(d / "model.pt"), no_gpu=True).to(torch.device(device))
        bet.bbox_model = load_model(str(d / "bbox_model.pt"), no_gpu=True).to(torch.device(device))
    bet.bbox = None
    return bet


def _combine_echoes(magnitude: np.ndarray) -> np.ndarray:
    mag = np.asarray(magnitude, dtype=np.float32)
    if mag.ndim == 4:  # (E, X, Y, Z)
        mag = np.sqrt(np.sum(np.square(mag, dtype=np.float64), axis=0)).astype(np.float32)
    if mag.ndim != 3:
        raise ValueError(f"magnitude: expected a 3-D volume or (echo, x, y, z), got shape {mag.shape}")
    return np.nan_to_num(mag, nan=0.0, posinf=0.0, neginf=0.0)


def deepbet_probability(magnitude: np.ndarray, affine: np.ndarray, *, device: str = "cpu") -> np.ndarray:
    """deepbet's brain probability (0..1, float32) on the input grid of ``magnitude`` ((X, Y, Z) or (E, X, Y, Z),
    echoes combined by root-sum-of-squares); ``affine`` is the voxel → world (RAS mm) matrix of the grid."""
    import nibabel as nib
    import torch

    x = _combine_echoes(magnitude)
    if not np.any(x > 0):
        raise ValueError("magnitude: all voxels are zero; no brain to extract")
    ornt = nib.io_orientation(np.asarray(affine, dtype=np.float64))
    ras = nib.orientations.apply_orientation(x, ornt)  # closest canonical (RAS) voxel order, as deepbet expects
    with torch.no_grad():
        prob = _extractor(str(device)).run_model(np.ascontiguousarray(ras, dtype=np.float32))
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), ornt)
    return np.ascontiguousarray(nib.orientations.apply_orientation(np.asarray(prob, np.float32), back))


def deepbet_mask(magnitude: np.ndarray, affine: np.ndarray, *, threshold: float = 0.5, erode_mm: float = 0.0,
                 device: str = "cpu") -> np.ndarray:
    """Brain mask (bool, input grid) from deepbet's probability above ``threshold`` (0..1, default 0.5 as
    deepbet's own), keeping the largest 6-connected component with holes filled, then eroded by ``erode_mm``
    (a ball in mm; voxel sizes from ``affine``)."""
    t = float(threshold)
    if not (math.isfinite(t) and 0.0 < t < 1.0):
        raise ValueError(f"threshold: expected a probability between 0 and 1, got {threshold!r}")
    if not (math.isfinite(float(erode_mm)) and float(erode_mm) >= 0):
        raise ValueError(f"erode_mm: expected a non-negative erosion radius in mm, got {erode_mm!r}")
    m = deepbet_probability(magnitude, affine, device=device) > t
    if not m.any():
        raise ValueError("magnitude: deepbet found no brain in this image")
    lab, n = ndimage.label(m)
    if n > 1:
        m = lab == (int(np.argmax(np.bincount(lab.ravel())[1:])) + 1)
    m = ndimage.binary_fill_holes(m)
    if float(erode_mm) > 0:
        depth = ndimage.distance_transform_edt(m, sampling=np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0)))
        eroded = depth > float(erode_mm)
        m = eroded if eroded.any() else m
    return m
