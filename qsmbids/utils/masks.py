"""Brain masks given by the user: ``--derivatives DIR`` (fMRIPrep's option, repeatable).

A derivative dataset may hold, for a MEGRE run, ``sub-<label>[/ses-<label>]/anat/<entities>[_…]_desc-brain_mask
.nii[.gz]`` whose subject, session, acquisition, reconstruction and run entities equal the run's (other entities
such as ``part-``/``echo-`` may be present; a ``space-`` other than ``orig`` marks a mask in another space, which is
skipped). Such a mask replaces the computed one, as fMRIPrep reuses precomputed derivatives. It is checked before
any work: same grid as the run (shape and affine), readable, not empty, 100 mL to 3 L; otherwise exit 65 with one
line naming the file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..exit_codes import EX_DATAERR, EX_NOINPUT, InputError

__all__ = ["MASK_VOLUME_ML", "check_user_mask", "find_user_mask", "mask_entities"]

#: Accepted volume of a user's brain mask (mL): below 100 mL it is not a brain, above 3 L it is a head.
MASK_VOLUME_ML = (100.0, 3000.0)
_KEYS = {"sub": "subject", "ses": "session", "acq": "acquisition", "rec": "reconstruction", "run": "run"}
_NAME = re.compile(r"^(?P<ents>(?:[a-zA-Z]+-[a-zA-Z0-9]+_)*)desc-brain_mask\.nii(?:\.gz)?$")


def mask_entities(name: str) -> dict[str, str] | None:
    """Entities of a ``…_desc-brain_mask.nii[.gz]`` file name (``sub``, ``space``, …), or None for other names.

    >>> mask_entities("sub-01_run-2_part-mag_desc-brain_mask.nii.gz")
    {'sub': '01', 'run': '2', 'part': 'mag'}
    >>> mask_entities("sub-01_desc-brain_T1w.nii.gz") is None
    True
    """
    m = _NAME.match(name)
    if not m:
        return None
    return dict(part.split("-", 1) for part in m.group("ents").strip("_").split("_") if part)


def _same(label: str | None, value) -> bool:
    """Entity equality as BIDS means it: ``run-01`` is run 1."""
    if label is None or value is None:
        return label is None and value is None
    text = str(value)
    return label == text or (label.isdigit() and text.isdigit() and int(label) == int(text))


def find_user_mask(derivatives: Sequence[Path | str], entities: dict[str, str]) -> Path | None:
    """The one brain mask in ``derivatives`` (searched in the order given) for a run with these entities
    (``subject``, ``session``, …); None when no folder has one. Several matches in one folder: ``InputError`` 65."""

    sub = entities["subject"]
    for root in derivatives:
        folder = Path(root) / f"sub-{sub}"
        if entities.get("session"):
            folder = folder / f"ses-{entities['session']}"
        folder = folder / "anat"
        if not folder.is_dir():
            continue
        found = []
        for p in sorted(folder.iterdir()):
            ents = mask_entities(p.name)
            if ents is None or ents.get("space", "orig") != "orig":
                continue
            if all(_same(ents.get(short), entities.get(key)) for short, key in _KEYS.items()):
                found.append(p)
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise InputError(EX_DATAERR, f"{folder}: several brain masks match one run ({names}); keep one")
        if found:
            return found[0]
    return None


def check_user_mask(path: Path | str, reference: Path | str) -> None:
    """``path`` must be a readable 3-D mask on the grid of the image ``reference`` with 100 mL – 3 L of voxels
    above zero; else ``InputError`` 65 (66 when it cannot be read at all)."""
    import nibabel as nib


    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except FileNotFoundError:
        raise InputError(EX_NOINPUT, f"{path}: the brain mask file is missing") from None
    except Exception as err:  # noqa: BLE001 - any reading error is a bad file
        raise InputError(EX_DATAERR, f"{path}: cannot read the brain mask ({' '.join(str(err).split())[:120]})") from None
    ref = nib.load(str(reference))
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.shape != tuple(ref.shape[:3]):
        raise InputError(EX_DATAERR, f"{path}: the brain mask's shape {tuple(data.shape)} differs from the run's "
                                     f"{tuple(ref.shape[:3])} ({Path(reference).name}); it must be on the run's grid")
    if not np.allclose(img.affine, ref.affine, atol=1e-3, rtol=0):
        raise InputError(EX_DATAERR, f"{path}: the brain mask's affine differs from the run's ({Path(reference).name}); "
                                     "it must be on the run's grid")
    inside = np.isfinite(data) & (data > 0)
    volume = float(inside.sum()) * float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    lo, hi = MASK_VOLUME_ML
    if not inside.any():
        raise InputError(EX_DATAERR, f"{path}: the brain mask is empty")
    if volume < lo or volume > hi:
        raise InputError(EX_DATAERR, f"{path}: the brain mask covers {volume:.0f} mL, outside {lo:.0f}–{hi:.0f} mL "
                                     "(not a brain mask?)")
