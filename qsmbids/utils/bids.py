"""Finding and checking the MEGRE runs of a BIDS dataset (pybids), before any workflow is built.

Everything that can be wrong with the input is found here, up front, so that a bad dataset is refused with one line
naming the file and the problem and a BIDS-Apps exit code, before a single derivative is written:
:class:`InputError` carries the exit code (16 validation, 18 nothing matched, 65 bad data, 66 missing input).

A run is the set of files sharing subject, session, acquisition, reconstruction and run entities: the phase (and,
when present, the magnitude) of every echo, as one 3-D file per echo (``echo-<i>``) or one 4-D file holding all
echoes. Single-echo ``T2starw`` data with ``part-phase`` are accepted too where the chosen methods allow.

The numbers of the sidecars are checked by :mod:`qsmbids.utils.sidecars` (one routine for every field, per-echo and
4-D alike), the images' geometry and voxels by :mod:`qsmbids.utils.images`; this module finds the files, groups them
into runs and checks that the parts of a run fit together.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..exit_codes import EX_DATAERR, EX_NO_MATCH, EX_NOINPUT, EX_VALIDATION, InputError
from .images import _short, check_geometry, check_voxel_size, complex_note
from .images import check_data as check_voxels
from .masks import check_user_mask, find_user_mask
from .sidecars import GAMMA_BAR_MHZ_T, TE_MS_THRESHOLD
from .sidecars import echo_times as sidecar_echo_times
from .sidecars import field_strength as sidecar_field_strength

__all__ = ["GAMMA_BAR_MHZ_T", "TE_MS_THRESHOLD", "InputError", "MegreRun", "collect_runs", "ground_truth_for",
           "validate_bids"]

ENTITY_ORDER = ("subject", "session", "acquisition", "reconstruction", "run")
SHORT = {"subject": "sub", "session": "ses", "acquisition": "acq", "reconstruction": "rec", "run": "run"}


@dataclass(frozen=True)
class MegreRun:
    """One multi-echo GRE run: file paths per echo, echo times (s) and field strength (T).

    ``representation`` ``"mag-phase"`` (``part-mag``/``part-phase``) or ``"real-imag"`` (``part-real``/``part-imag``,
    as some scanners and converters write them): then ``phase`` holds the real and ``magnitude`` the imaginary
    parts, and the load stage turns them into magnitude and phase.
    """

    entities: dict[str, str]
    phase: tuple[str, ...]
    magnitude: tuple[str, ...]
    echo_times: tuple[float, ...]
    field_strength: float
    phase_units: str | None = None
    truth: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    mask_file: str | None = None  # the user's brain mask (--derivatives), checked to be on the run's grid
    representation: str = "mag-phase"

    @property
    def subject(self) -> str:
        return self.entities["subject"]

    @property
    def name(self) -> str:
        """``sub-01_ses-1_run-2``: the entities that tell this run apart."""
        name = "_".join(f"{SHORT[k]}-{self.entities[k]}" for k in ENTITY_ORDER if self.entities.get(k))
        return name + (f"_{self.entities['suffix']}" if self.entities.get("suffix") else "")

    @property
    def label(self) -> str:
        """``sub-01 run-2`` for progress lines."""
        return self.name.replace("_", " ")

    @property
    def source_files(self) -> list[str]:
        return [*self.phase, *self.magnitude]

    @property
    def n_echoes(self) -> int:
        return len(self.echo_times)


# ------------------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------------------
def validate_bids(bids_dir: Path) -> None:
    """Run ``bids-validator-deno`` on the raw dataset; errors → :class:`InputError` (16).

    The first error is quoted in the message with its location and the count of the others; warnings are ignored.
    """
    exe = shutil.which("bids-validator-deno")
    if exe is None:
        raise InputError(EX_VALIDATION, "bids-validator-deno is not installed; install it or use --skip-bids-validation")
    proc = subprocess.run([exe, "--json", str(bids_dir)], capture_output=True, text=True, timeout=600, check=False)
    try:
        report = json.loads(proc.stdout)
        issues = report["issues"]["issues"]
    except (ValueError, KeyError, TypeError):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise InputError(EX_VALIDATION, f"{bids_dir}: BIDS validation failed ({tail[0]})") from None
    errors = [i for i in issues if i.get("severity") == "error"]
    if errors:
        first = errors[0]
        where = first.get("location") or ""
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(EX_VALIDATION, f"{bids_dir}: not a valid BIDS dataset: {first.get('code')} {where}{more}; "
                                        "fix it or use --skip-bids-validation")


def check_bids_root(bids_dir: Path) -> None:
    """Existence and a dataset_description.json: 66 when missing, 16 when not a BIDS dataset."""
    if not bids_dir.exists():
        raise InputError(EX_NOINPUT, f"{bids_dir}: the BIDS dataset folder does not exist")
    if not bids_dir.is_dir():
        raise InputError(EX_NOINPUT, f"{bids_dir}: not a folder")
    if not os.access(bids_dir, os.R_OK | os.X_OK):
        raise InputError(EX_NOINPUT, f"{bids_dir}: the BIDS dataset folder is not readable by this user "
                                     f"(uid {os.getuid()}); check its permissions")
    desc = bids_dir / "dataset_description.json"
    if not desc.is_file():
        hint = ""
        if not any(bids_dir.glob("sub-*")):
            hint = " (no sub-<label> folders either: convert the scanner data to BIDS first, e.g. with dcm2bids)"
        raise InputError(EX_VALIDATION, f"{desc}: missing; {bids_dir} is not a BIDS dataset{hint}")
    try:
        json.loads(desc.read_text())
    except ValueError as err:
        raise InputError(EX_VALIDATION, f"{desc}: not valid JSON ({err})") from None


# ------------------------------------------------------------------------------------------------------------
# discovery
# ------------------------------------------------------------------------------------------------------------
def _layout(bids_dir: Path):
    from bids.layout import BIDSLayout, BIDSLayoutIndexer

    indexer = BIDSLayoutIndexer(validate=False, ignore=["code", "derivatives", "sourcedata", "stimuli", "models",
                                                        "work", re.compile(r"^\.")])
    try:
        return BIDSLayout(str(bids_dir), validate=False, indexer=indexer)
    except Exception as err:  # noqa: BLE001 — pybids raises a zoo of errors on broken datasets
        raise InputError(EX_VALIDATION, f"{bids_dir}: pybids cannot index the dataset ({err})") from None


def collect_runs(
    bids_dir: Path | str,
    *,
    participant_label: tuple[str, ...] | list[str] = (),
    session_label: tuple[str, ...] | list[str] = (),
    bids_filters: dict[str, Any] | None = None,
    echo_times: tuple[float, ...] | None = None,
    field_strength: float | None = None,
    need_magnitude: bool = True,
    min_echoes: int = 1,
    ground_truth_dir: Path | str | None = None,
    check_data: bool = True,
    derivatives: tuple[Path | str, ...] | list[Path | str] = (),
) -> list[MegreRun]:
    """Every MEGRE run matching the labels and filters, checked; raises :class:`InputError`.

    ``bids_filters`` are pybids entity filters (as in fMRIPrep's ``--bids-filter-file``; a ``"megre"`` key is
    honoured, otherwise the whole dict is used). ``echo_times`` (s) and ``field_strength`` (T) override the sidecars.
    ``derivatives``: folders searched for a brain mask per run (:mod:`qsmbids.utils.masks`), checked here.
    """
    bids_dir = Path(bids_dir).absolute()
    check_bids_root(bids_dir)
    layout = _layout(bids_dir)
    raw_filters = dict(bids_filters or {})
    if any(isinstance(v, dict) for v in raw_filters.values()):  # fMRIPrep style: one entry per kind of image
        filters = dict(raw_filters.get("megre", {}))
    else:
        filters = raw_filters
    filters.pop("suffix", None)
    filters.pop("part", None)
    subjects = [s.removeprefix("sub-") for s in participant_label]
    sessions = [s.removeprefix("ses-") for s in session_label]
    all_subjects = set(layout.get_subjects())
    if not all_subjects:
        raise InputError(EX_NO_MATCH, f"{bids_dir}: the dataset is empty (no sub-<label> folder with data)")
    if subjects:
        missing = sorted(set(subjects) - all_subjects)
        if missing:
            raise InputError(EX_NO_MATCH, f"{bids_dir}: no subject {', '.join('sub-' + m for m in missing)} in the "
                                          f"dataset (found: {', '.join(sorted(all_subjects)) or 'none'})")
    query: dict[str, Any] = {"datatype": "anat", "part": "phase", "extension": [".nii", ".nii.gz"], **filters}
    if subjects:
        query["subject"] = subjects
    if sessions:
        query["session"] = sessions
    try:
        files = layout.get(suffix="MEGRE", **query) + layout.get(suffix="T2starw", **query)
        real = layout.get(suffix="MEGRE", **{**query, "part": "real"})
    except Exception as err:  # noqa: BLE001
        raise InputError(EX_NO_MATCH, f"--bids-filter-file: invalid filter ({err})") from None
    files += _real_only(files, real)
    if not files:
        what = " ".join(filter(None, [
            "sub-" + ",".join(subjects) if subjects else "", "ses-" + ",".join(sessions) if sessions else "",
            json.dumps(filters) if filters else ""]))
        raise InputError(EX_NO_MATCH, f"{bids_dir}: no multi-echo GRE phase images (anat/*_part-phase_MEGRE.nii[.gz] "
                                      "or *_part-real_MEGRE with *_part-imag_MEGRE)"
                                      + (f" match {what}" if what else " found"))
    groups: dict[tuple, list] = defaultdict(list)
    for f in files:
        ents = f.get_entities()
        key = tuple(str(ents.get(k)) if ents.get(k) is not None else None for k in ENTITY_ORDER) + (ents["suffix"],)
        groups[key].append(f)
    seen: dict[tuple, str] = {}
    for key in groups:
        other = seen.setdefault(key[:-1], key[-1])
        if other != key[-1]:
            where = groups[key][0].path
            raise InputError(EX_DATAERR, f"{where}: both {other} and {key[-1]} phase images share these entities, so "
                                         "their outputs would have the same names; select one with "
                                         "--bids-filter-file")
    truth_root = Path(ground_truth_dir) if ground_truth_dir else bids_dir / "derivatives" / "qsmbids-sim"
    runs = []
    for key in sorted(groups, key=lambda k: tuple(x or "" for x in k)):
        run = _make_run(layout, key, groups[key], echo_times=echo_times, field_strength=field_strength,
                        need_magnitude=need_magnitude, min_echoes=min_echoes)
        truth = ground_truth_for(truth_root, run.entities) if truth_root.is_dir() else {}
        if check_data:
            check_voxels(run.phase, run.magnitude)
        mask_file = find_user_mask(derivatives, run.entities) if derivatives else None
        if mask_file is not None:
            check_user_mask(mask_file, run.phase[0])
        runs.append(MegreRun(**{**run.__dict__, "truth": truth,
                                "mask_file": str(mask_file) if mask_file is not None else None}))
    return runs


def _make_run(layout, key, phase_files, *, echo_times, field_strength, need_magnitude, min_echoes) -> MegreRun:
    from bids.layout import Query

    entities = {k: v for k, v in zip(ENTITY_ORDER, key[:-1], strict=True) if v is not None}
    suffix = key[-1]
    complex_parts = phase_files[0].get_entities().get("part") == "real"
    partner = ["imag"] if complex_parts else ["mag", "magnitude"]
    echoes = [f.get_entities().get("echo") for f in phase_files]
    first = phase_files[0].path
    _refuse_duplicates([f.path for f in phase_files], echoes)
    if len(phase_files) > 1 and any(e is None for e in echoes):
        four_d = next(f.path for f, e in zip(phase_files, echoes, strict=True) if e is None)
        raise InputError(EX_DATAERR, f"{four_d}: {len(phase_files)} phase files for one run but not all have an "
                                     "echo- entity (4-D and 3-D files mixed); keep one form")
    phase_files = sorted(phase_files, key=lambda f: int(f.get_entities().get("echo") or 0))
    mags = []
    for f in phase_files:
        ents = {k: v for k, v in f.get_entities().items() if k not in ("part", "extension")}
        # an entity the phase file lacks must be absent from its magnitude too (pybids: absent = no constraint)
        absent = {k: Query.NONE for k in (*ENTITY_ORDER, "echo") if k not in ents}
        hits = [m for m in layout.get(**{**ents, **absent, "part": partner},
                                      extension=[".nii", ".nii.gz"])]
        _refuse_duplicates([m.path for m in hits], [m.get_entities().get("part") for m in hits])
        mags.append(hits[0].path if hits else None)
    have = [m is not None for m in mags]
    if complex_parts and not all(have):
        missing = [p.path for p, h in zip(phase_files, have, strict=True) if not h]
        raise InputError(EX_DATAERR, f"{missing[0]}: no matching part-imag image (a part-real image needs its "
                                     "imaginary part)")
    if not any(have):
        _refuse_mixed_magnitude(layout, phase_files[0])
    if any(have) and not all(have):
        missing = [p.path for p, h in zip(phase_files, have, strict=True) if not h]
        raise InputError(EX_DATAERR, f"{missing[0]}: no matching part-mag image (echo counts of magnitude and phase "
                                     "differ)")
    if need_magnitude and not all(have):
        raise InputError(EX_DATAERR, f"{first}: no magnitude images (part-mag) for this run, but the chosen methods "
                                     "need them (choose e.g. --mask quality --combine uniform --inversion rts and "
                                     "--outputs chimap mask fields)")
    import nibabel as nib

    phase_paths = tuple(f.path for f in phase_files)
    shapes, headers = [], []
    for p in phase_paths + tuple(m for m in mags if m):
        if not os.access(p, os.R_OK):
            raise InputError(EX_NOINPUT, f"{p}: not readable by this user (uid {os.getuid()}); check its permissions")
        try:
            img = nib.load(p)
        except Exception as err:  # noqa: BLE001
            raise InputError(EX_DATAERR, f"{p}: cannot read NIfTI header ({_short(err)})") from None
        shapes.append((p, img.shape, img.affine))
        headers.append((p, img))
    ref_path, ref_shape, ref_aff = shapes[0]
    four_d = len(phase_paths) == 1 and len(ref_shape) == 4 and ref_shape[3] > 1
    for p, shape, aff in shapes:
        if len(shape) not in (3, 4) or (len(shape) == 4 and not four_d and shape[3] != 1):
            raise InputError(EX_DATAERR, f"{p}: expected a 3-D image per echo (or one 4-D image), got shape {shape}")
        if shape[:3] != ref_shape[:3] or (four_d and shape != ref_shape):
            raise InputError(EX_DATAERR, f"{p}: shape {shape} differs from {Path(ref_path).name} {ref_shape}")
        if not np.allclose(aff, ref_aff, atol=1e-3):
            raise InputError(EX_DATAERR, f"{p}: affine differs from {Path(ref_path).name} (magnitude and phase must "
                                         "be on the same grid)")
    if min(ref_shape[:3]) < 2:
        raise InputError(EX_DATAERR, f"{ref_path}: a single-slice (2-D) image {ref_shape} cannot be processed in 3-D")
    check_voxel_size(ref_path, nib.load(ref_path).header.get_zooms()[:3])
    notes = _header_notes(headers, phase_paths)
    n_echoes = ref_shape[3] if four_d else len(phase_paths)

    metas = [(_sidecar(p), layout.get_metadata(p)) for p in phase_paths]
    meta = metas[0][1]
    if echo_times is not None:
        tes = tuple(float(t) for t in echo_times)
        if len(tes) != n_echoes:
            raise InputError(EX_DATAERR, f"{phase_paths[0]}: --echo-times gives {len(tes)} values for {n_echoes} "
                                         "echoes")
    else:
        tes = sidecar_echo_times(metas, n_echoes, four_d=four_d, image=phase_paths[0])
    if n_echoes < min_echoes:
        raise InputError(EX_DATAERR, f"{phase_paths[0]}: {n_echoes} echo(es), but the chosen methods need at least "
                                     f"{min_echoes}")
    warnings: list[str] = []
    if field_strength is not None:
        b0 = float(field_strength)
    else:
        b0, warnings = sidecar_field_strength(metas)
    warnings += notes
    return MegreRun(entities={**entities, "suffix": suffix} if suffix != "MEGRE" else entities,
                    phase=phase_paths, magnitude=tuple(m for m in mags if m), echo_times=tes,
                    field_strength=b0, phase_units=None if complex_parts else meta.get("Units"),
                    warnings=tuple(warnings), representation="real-imag" if complex_parts else "mag-phase")


def _refuse_duplicates(paths: list[str], keys: list) -> None:
    """The same image stored twice (``.nii`` next to ``.nii.gz``: ``keys`` equal): 65, since which one is meant
    cannot be told."""
    seen: dict[Any, str] = {}
    for path, key in sorted(zip(paths, keys, strict=True), key=lambda pk: pk[0]):
        if key in seen:
            raise InputError(EX_DATAERR, f"{path}: duplicate of {Path(seen[key]).name} (the same image stored twice; "
                                         "keep one)")
        seen[key] = path


def _header_notes(headers: list[tuple[str, Any]], phase_paths: tuple[str, ...]) -> list[str]:
    """Geometry of every header (refusals raise) and complex-valued images: the run's warnings, each problem said
    once, naming its first file and how many more share it."""
    files: dict[str, list[str]] = {}
    for p, img in headers:
        found = check_geometry(p, img)
        note = complex_note(p, img.get_data_dtype(), is_phase=p in phase_paths)
        for warning in [*found, *([note] if note else [])]:
            name, problem = warning.split(": ", 1)
            files.setdefault(problem, []).append(name)
    return [f"{names[0]}{f' (+{len(names) - 1} more)' if len(names) > 1 else ''}: {problem}"
            for problem, names in files.items()]


def _real_only(phase_files, real_files) -> list:
    """``part-real`` images of runs that have no ``part-phase`` image (a run with both is read as magnitude/phase)."""
    def key(f):
        ents = f.get_entities()
        return tuple(str(ents.get(k)) for k in (*ENTITY_ORDER, "echo"))
    have = {key(f) for f in phase_files}
    return [f for f in real_files if key(f) not in have]


def _refuse_mixed_magnitude(layout, phase_file) -> None:
    """No magnitude matched: if there is one in the other form (4-D vs per-echo 3-D), say so instead of "none"."""
    from bids.layout import Query

    ents = {k: v for k, v in phase_file.get_entities().items() if k not in ("part", "extension", "echo")}
    echo = phase_file.get_entities().get("echo")
    absent = {k: Query.NONE for k in ENTITY_ORDER if k not in ents}
    hits = layout.get(**ents, **absent, part=["mag", "magnitude"], extension=[".nii", ".nii.gz"])
    other = [h for h in hits if (h.get_entities().get("echo") is None) != (echo is None)]
    if other:
        form = "one 4-D phase image" if echo is None else "one 3-D phase image per echo"
        raise InputError(EX_DATAERR, f"{phase_file.path}: {form}, but the magnitude ({Path(other[0].path).name}) "
                                     "is stored the other way (4-D and 3-D files mixed); store both parts alike")


def ground_truth_for(root: Path, entities: dict[str, str]) -> dict[str, str]:
    """Ground-truth files (``chimap``, ``mask``, ``dseg``, ``dseg_tsv``) for a run, when a truth dataset has them."""
    sub = entities["subject"]
    folder = root / f"sub-{sub}"
    if entities.get("session"):
        folder = folder / f"ses-{entities['session']}"
    folder = folder / "anat"
    prefix = "_".join(f"{SHORT[k]}-{entities[k]}" for k in ENTITY_ORDER if entities.get(k))
    found = {}
    for key, name in (("chimap", "_Chimap.nii.gz"), ("mask", "_desc-brain_mask.nii.gz"), ("dseg", "_dseg.nii.gz"),
                      ("dseg_tsv", "_dseg.tsv")):
        p = folder / f"{prefix}{name}"
        if p.is_file():
            found[key] = str(p)
    return found if {"chimap", "mask"} <= set(found) else {}


def _sidecar(path: str) -> str:
    p = str(path)
    for ext in (".nii.gz", ".nii"):
        if p.endswith(ext):
            return p[: -len(ext)] + ".json"
    return p
