"""Checks of the MEGRE images themselves, before any work: header geometry and every voxel.

Geometry (:func:`check_geometry`): the dipole model needs an orthogonal voxel grid, one voxel size and one
orientation of the grid to the scanner (for the B0 direction). A sheared affine, a qform and sform that point the grid
differently, or pixdim that disagree with the sform leave one of these undetermined: refused (65) beyond
:data:`GEOMETRY_TOLERANCE`, a warning below it where the stages' choice is clear.

Voxels (:func:`check_data`): readable, not all zero, not mostly NaN/Inf, and data that can be what the file claims:
a phase echo that is constant or holds only a handful of distinct values (a mask, a label image, a constant written by
a broken conversion) is refused, and so is a constant magnitude. Complex-valued images (complex64/complex128) are
accepted as what they are: the angle of a complex phase file is the phase and the modulus of a complex magnitude file
the magnitude (:func:`complex_note` says so in the run's warnings; :func:`as_part` converts), never their real part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..exit_codes import EX_DATAERR, InputError

__all__ = ["GEOMETRY_TOLERANCE", "MIN_PHASE_VALUES", "VOXEL_MM_RANGE", "as_part", "check_data", "check_geometry",
           "check_voxel_size", "complex_note"]

#: voxel sizes (mm) outside this range are refused: above 10 mm the background-removal kernels and the dipole model
#: have no brain left to work on (and such values usually mean pixdim in the wrong units); below 10 µm, the same
VOXEL_MM_RANGE = (0.01, 10.0)
#: (degrees, mm, fraction): shear, qform/sform rotation, qform/sform offset, pixdim/sform voxel size
GEOMETRY_TOLERANCE = (1.0, 1.0, 0.01)
#: below this (degrees, fraction) a shear or voxel-size disagreement is rounding of the stored header: not mentioned
_SILENT = (0.01, 0.001)
#: a phase echo with fewer distinct values than this (in an image of at least 8 times as many voxels) is no phase
MIN_PHASE_VALUES = 16


def _refuse(message: str):
    return InputError(EX_DATAERR, message)


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:160] or type(err).__name__


def check_voxel_size(path: str, zooms) -> None:
    """Refuse voxel sizes outside :data:`VOXEL_MM_RANGE` (65): the numbers of the header, as the stages use them."""
    lo, hi = VOXEL_MM_RANGE
    vs = [float(z) for z in zooms]
    if not all(math.isfinite(v) and lo <= v <= hi for v in vs):
        shown = " × ".join(f"{v:g}" for v in vs)
        raise _refuse(f"{path}: voxel size {shown} mm is outside {lo:g}–{hi:g} mm (wrong pixdim or units in the "
                      "header?)")


def _mm(v) -> str:
    return " × ".join(f"{x:.4g}" for x in v)


def _rotation(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=0)


def check_geometry(path: str, img) -> list[str]:
    """Shear, qform/sform and pixdim/sform agreement of one image: warnings, or a refusal (65) when the voxel grid,
    the voxel size or the B0 direction is ambiguous (beyond :data:`GEOMETRY_TOLERANCE`).

    The stages take the voxel size from pixdim and the orientation (B0 direction) from ``img.affine`` (the sform
    when its code is set, else the qform), and treat the grid as orthogonal.
    """
    max_shear, max_deg_mm, max_frac = GEOMETRY_TOLERANCE
    hdr = img.header
    m = np.asarray(img.affine, dtype=float)[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if not np.all(np.isfinite(m)) or np.any(norms <= 0) or abs(np.linalg.det(m)) <= 1e-12 * float(np.prod(norms)):
        raise _refuse(f"{path}: the affine of the header is singular (a voxel axis of length zero), so neither the "
                      "voxel size nor the B0 direction can be determined; fix the header (sform/qform)")
    warnings = []
    u = _rotation(m)
    shear = max(math.degrees(math.asin(min(1.0, abs(float(u[:, i] @ u[:, j])))))
                for i, j in ((0, 1), (0, 2), (1, 2)))
    if shear > max_shear:
        raise _refuse(f"{path}: the affine is sheared (voxel axes {90 - shear:.1f}° apart, not 90°): the voxel grid "
                      "is not orthogonal, so the dipole model's voxel size and B0 direction are undefined; resample "
                      "the images onto an orthogonal grid first")
    if shear > _SILENT[0]:
        warnings.append(f"{Path(path).name}: the affine is sheared by {shear:.2f}°; treated as orthogonal")
    zooms = np.asarray(hdr.get_zooms()[:3], dtype=float)
    off = float(np.max(np.abs(norms - zooms) / zooms))
    if off > max_frac:
        raise _refuse(f"{path}: pixdim gives voxels of {_mm(zooms)} mm but the affine (sform) {_mm(norms)} mm, so the "
                      "voxel size is ambiguous; make the header agree (e.g. nibabel: img.set_qform(img.get_sform()))")
    if off > _SILENT[1]:
        warnings.append(f"{Path(path).name}: pixdim ({_mm(zooms)} mm) and the sform ({_mm(norms)} mm) differ by "
                        f"{100 * off:.2f} %; pixdim used")
    get_codes = getattr(hdr, "get_qform", None)
    if get_codes is None:
        return warnings
    qform, qcode = hdr.get_qform(coded=True)
    sform, scode = hdr.get_sform(coded=True)
    if not (qcode and scode) or qform is None or sform is None:
        return warnings
    rq, rs = _rotation(np.asarray(qform, float)[:3, :3]), _rotation(np.asarray(sform, float)[:3, :3])
    cos = (float(np.trace(rq.T @ rs)) - 1) / 2
    angle = math.degrees(math.acos(max(-1.0, min(1.0, cos))))
    flipped = np.linalg.det(rq) * np.linalg.det(rs) < 0
    if flipped or angle > max_deg_mm:
        what = "one is mirrored" if flipped else f"{angle:.1f}° apart"
        raise _refuse(f"{path}: the qform and sform orient the image differently ({what}), so the B0 direction is "
                      "ambiguous; make them agree (e.g. fslorient -copyqform2sform, if the qform is the scanner's)")
    shift = float(np.linalg.norm(np.asarray(qform, float)[:3, 3] - np.asarray(sform, float)[:3, 3]))
    if shift > max_deg_mm:
        warnings.append(f"{Path(path).name}: the qform and sform place the image {shift:.1f} mm apart; the sform is "
                        "used (the B0 direction and voxel size agree)")
    return warnings


def complex_note(path: str, dtype, *, is_phase: bool) -> str | None:
    """The warning for a complex-valued image (None for a real one)."""
    if np.dtype(dtype).kind != "c":
        return None
    use = "angle as the phase" if is_phase else "modulus as the magnitude"
    return f"{Path(path).name}: complex-valued ({np.dtype(dtype).name}); its {use} is used"


def as_part(data: np.ndarray, *, is_phase: bool) -> np.ndarray:
    """Real data as they are; complex data as their angle (phase) or modulus (magnitude), never the real part."""
    if not np.iscomplexobj(data):
        return data
    return np.angle(data) if is_phase else np.abs(data)


def _header_only(path: str, img) -> bool:
    """True when the file ends right after the header: a NIfTI written without its image data."""
    import gzip

    offset = max(352, int(img.header.get_data_offset()))  # single-file NIfTI: data start at 352 bytes or later
    if str(path).endswith(".gz"):
        with gzip.open(path, "rb") as fh:
            return len(fh.read(offset + 1)) <= offset
    return Path(path).stat().st_size <= offset


def _read(p: str) -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.load(p)
        empty = _header_only(p, img)
        data = None if empty else np.asanyarray(img.dataobj)
    except Exception as err:  # noqa: BLE001 — nibabel, gzip and zlib raise many kinds
        raise _refuse(f"{p}: corrupt or truncated NIfTI ({_short(err)})") from None
    if data is None:
        raise _refuse(f"{p}: holds a NIfTI header but no image data (incomplete export or copy?)")
    return data


def _distinct(vol: np.ndarray, limit: int) -> int | None:
    """The number of distinct values of ``vol`` when below ``limit``, else None (a strided sample decides first)."""
    flat = vol.ravel()
    if np.unique(flat[:: max(1, flat.size // 200_000)]).size >= limit:
        return None
    n = int(np.unique(flat).size)
    return n if n < limit else None


def check_data(phase: Sequence[str], magnitude: Sequence[str]) -> None:
    """Read every voxel once: truncated files, NaN/Inf, all-zero or constant data, phase that is no phase → 65."""
    for p in [*phase, *magnitude]:
        data = _read(p)
        if data.size == 0:
            raise _refuse(f"{p}: the image holds no voxels")
        is_phase = p in phase
        part = "phase" if is_phase else "magnitude"
        if np.issubdtype(data.dtype, np.inexact):
            finite = np.isfinite(data)
            if not finite.all():
                frac = 1 - finite.mean()
                if is_phase and frac > 0.5:
                    raise _refuse(f"{p}: {100 * frac:.0f} % of the phase voxels are NaN/Inf")
                if not finite.any():
                    raise _refuse(f"{p}: all voxels are NaN/Inf ({part})")
            data = np.where(finite, as_part(data, is_phase=is_phase), 0)
        if not np.any(data):
            raise _refuse(f"{p}: all voxels are zero ({part})")
        vols = list(np.moveaxis(data.reshape(*data.shape[:3], -1), 3, 0)) if data.ndim > 3 else [data]
        for i, vol in enumerate(vols, start=1):
            where = f"{p}: echo {i}: " if len(vols) > 1 else f"{p}: "
            lo, hi = float(vol.min()), float(vol.max())
            if lo == hi:
                raise _refuse(f"{where}every voxel holds the same value ({lo:g}), which cannot be {part} data")
            n = _distinct(vol, MIN_PHASE_VALUES) if is_phase and vol.size >= 8 * MIN_PHASE_VALUES else None
            if n is not None:
                raise _refuse(f"{where}only {n} distinct values in {vol.size} voxels, which cannot be phase data (a "
                              "mask or a label image?)")
