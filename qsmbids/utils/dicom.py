"""DICOM side of ``qsmbids-convert``: find the multi-echo GRE (and T1w) series in a folder and plan their BIDS names.

Headers are read with pydicom (classic one-image-per-file and enhanced multi-frame DICOM, plain or gzipped); the voxels
are converted later by dcm2niix (:mod:`qsmbids.cli.convert`). This module only reads: it never writes next to the
DICOM files.

What each image is comes from the standard tags, with vendor private tags where the standard ones are silent:

* part (magnitude / phase / real / imaginary): ``ImageType`` (Siemens ``M``/``P``, Philips ``M``/``P`` or
  ``M_FFE``/``P_FFE``/``PHASE``, ``REAL``/``IMAGINARY``), the enhanced ``ComplexImageComponent`` of each frame, and
  GE's private image type (0043,102F: 0 magnitude, 1 phase, 2 real, 3 imaginary);
* echo: ``EchoTime`` (ms; the enhanced ``EffectiveEchoTime`` per frame) and ``EchoNumbers``;
* sequence: ``ScanningSequence`` ``GR`` without ``IR`` is a gradient echo; ``GR`` with ``IR`` (MPRAGE) or a
  description naming T1/MPRAGE/SPGR is a T1w candidate.

Siemens exports magnitude and phase as two series (phase series number = magnitude + 1); series with the same
protocol, echo times and matrix are paired into one run. Several images at the same slice position for one echo and
part (uncombined coil images, repeated acquisitions) are refused: qsmbids needs coil-combined images.
"""

from __future__ import annotations

import gzip
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..exit_codes import EX_DATAERR, InputError

PARTS = ("mag", "phase", "real", "imag")
_GE_PART = {0: "mag", 1: "phase", 2: "real", 3: "imag"}
_T1_WORDS = re.compile(r"t1|mprage|mp-rage|mp2rage|spgr|tfl3d|bravo", re.IGNORECASE)


@dataclass(frozen=True)
class Image:
    """One DICOM file (a slice, or a whole multi-frame volume)."""

    path: Path
    series_uid: str
    series_number: int
    description: str
    protocol: str
    patient_id: str
    study_uid: str
    study_date: str
    manufacturer: str
    scanning_sequence: str
    acq_type: str
    image_type: tuple[str, ...]
    parts: tuple[str, ...]  # one entry per frame
    echo_times: tuple[float, ...]  # ms, one entry per frame
    positions: tuple[tuple[float, float, float] | None, ...]  # ImagePositionPatient per frame
    rows: int
    cols: int
    orientation: tuple[float, ...]
    coil: str
    field_strength: float | None
    complete: bool  # the pixel data are all there


@dataclass
class Series:
    uid: str
    number: int
    description: str
    protocol: str
    manufacturer: str
    images: list[Image] = field(default_factory=list)
    incomplete: list[Path] = field(default_factory=list)

    @property
    def echo_times(self) -> tuple[float, ...]:
        return tuple(sorted({round(t, 3) for im in self.images for t in im.echo_times if t is not None}))

    @property
    def parts(self) -> tuple[str, ...]:
        found = {p for im in self.images for p in im.parts}
        return tuple(p for p in PARTS if p in found)

    @property
    def n_frames(self) -> int:
        return sum(len(im.parts) for im in self.images)

    @property
    def kind(self) -> str:
        """``megre``, ``t1w`` or ``other``."""
        seq = {s for im in self.images for s in re.split(r"[\\ ]+", im.scanning_sequence.upper()) if s}
        words = f"{self.description} {self.protocol}"
        if "GR" in seq and "IR" not in seq and ("phase" in self.parts or "real" in self.parts
                                                or len(self.echo_times) > 1):
            return "megre"
        if ("GR" in seq and "IR" in seq) or (_T1_WORDS.search(words) and "phase" not in self.parts
                                             and len(self.echo_times) <= 1):
            return "t1w"
        return "other"


def open_dicom(path: Path):
    """The file opened for reading in binary, through gzip when it is gzipped (looked up by its magic bytes)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _float(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def part_from_image_type(image_type) -> str | None:
    """``phase``, ``real`` or ``imag`` when ``ImageType`` (DICOM's, or the list in dcm2niix's sidecar) says so, else
    None (a magnitude, or a vendor that says it elsewhere)."""
    it = {str(t).upper() for t in image_type}
    if it & {"P", "PHASE", "P_FFE", "PHASE MAP"}:
        return "phase"
    if it & {"R", "REAL", "R_FFE"}:
        return "real"
    if it & {"I", "IMAGINARY", "I_FFE"}:
        return "imag"
    return None


def _part_from(image_type: tuple[str, ...], ds) -> str:
    part = part_from_image_type(image_type)
    if part is not None:
        return part
    ge = ds.get((0x0043, 0x102F))
    if ge is not None:
        try:
            return _GE_PART.get(int(ge.value), "mag")
        except (TypeError, ValueError):
            pass
    return "mag"


def _frame_info(ds, image_type: tuple[str, ...]) -> tuple[tuple[str, ...], tuple, tuple]:
    """Per-frame part, echo time and position: enhanced DICOM from its functional groups, classic from the file."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        pos = ds.get("ImagePositionPatient")
        return ((_part_from(image_type, ds),), (_float(ds.get("EchoTime")),),
                (tuple(float(x) for x in pos) if pos else None,))
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared = shared[0] if shared else None
    parts, tes, poss = [], [], []
    for fr in per_frame:
        def get(seq_name, attr, fr=fr):
            for grp in (fr, shared):
                if grp is not None and seq_name in grp and grp[seq_name].value:
                    v = grp[seq_name][0].get(attr)
                    if v is not None:
                        return v
            return None
        comp = get("MRImageFrameTypeSequence", "ComplexImageComponent")
        comp = str(comp).upper() if comp else ""
        parts.append({"MAGNITUDE": "mag", "PHASE": "phase", "REAL": "real", "IMAGINARY": "imag"}.get(
            comp, _part_from(image_type, ds)))
        tes.append(_float(get("MREchoSequence", "EffectiveEchoTime")))
        pos = get("PlanePositionSequence", "ImagePositionPatient")
        poss.append(tuple(float(x) for x in pos) if pos else None)
    return tuple(parts), tuple(tes), tuple(poss)


def _sequence(ds) -> str:
    """``ScanningSequence`` (classic) or its enhanced equivalent: EchoPulseSequence GRADIENT → GR, InversionRecovery
    YES → IR (looked up in the shared functional groups as well)."""
    classic = ds.get("ScanningSequence")
    if classic:
        return "\\".join(classic) if not isinstance(classic, str) else classic
    pulse, inv = ds.get("EchoPulseSequence"), ds.get("InversionRecovery")
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and "MRModifierSequence" in shared[0] and shared[0].MRModifierSequence:
        inv = inv or shared[0].MRModifierSequence[0].get("InversionRecovery")
    seq = {"GRADIENT": ["GR"], "SPIN": ["SE"], "BOTH": ["GR", "SE"]}.get(str(pulse or "").upper(), [])
    if str(inv or "").upper() == "YES":
        seq.append("IR")
    return "\\".join(seq)


def _pixels_complete(ds, n_frames: int) -> bool:
    if "PixelData" not in ds:
        return False
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and getattr(ts, "is_compressed", False):
        return True  # encapsulated: length not predictable; dcm2niix decodes and complains if broken
    need = int(ds.get("Rows", 0)) * int(ds.get("Columns", 0)) * int(ds.get("BitsAllocated", 16)) // 8
    need *= int(ds.get("SamplesPerPixel", 1)) * n_frames
    return len(ds.PixelData) >= need


def read_image(path: Path):
    """The :class:`Image` of one file, ``None`` for a file that is not DICOM; raises ``ValueError`` when broken."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with open_dicom(path) as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fh)
    except InvalidDicomError:
        return None
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        if path.name.upper() == "DICOMDIR":
            return None
        raise ValueError(f"unreadable DICOM ({type(exc).__name__})") from exc
    if "SOPClassUID" not in ds and "Modality" not in ds:
        return None
    if str(ds.get("Modality", "MR")) != "MR" or "Rows" not in ds:
        return None  # reports, presentation states, other modalities: not images we convert
    image_type = tuple(str(x) for x in (ds.get("ImageType") or ()))
    parts, tes, poss = _frame_info(ds, image_type)
    coil = ds.get((0x0051, 0x100F))
    return Image(
        path=path, series_uid=str(ds.get("SeriesInstanceUID", "")), series_number=int(ds.get("SeriesNumber") or 0),
        description=str(ds.get("SeriesDescription", "")), protocol=str(ds.get("ProtocolName", "")),
        patient_id=str(ds.get("PatientID", "")), study_uid=str(ds.get("StudyInstanceUID", "")),
        study_date=str(ds.get("StudyDate", "")), manufacturer=str(ds.get("Manufacturer", "")),
        scanning_sequence=_sequence(ds),
        acq_type=str(ds.get("MRAcquisitionType", "")), image_type=image_type, parts=parts, echo_times=tes,
        positions=poss, rows=int(ds.get("Rows", 0)), cols=int(ds.get("Columns", 0)),
        orientation=tuple(round(float(x), 4) for x in (ds.get("ImageOrientationPatient") or ())),
        coil=str(coil.value) if coil is not None else "", field_strength=_float(ds.get("MagneticFieldStrength")),
        complete=_pixels_complete(ds, len(parts)))


def scan(folder: Path, warn) -> list[Series]:
    """Every DICOM series under ``folder`` (recursively); unreadable or truncated files are ``warn``-ed and skipped."""
    series: dict[str, Series] = {}
    n_dicom = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            im = read_image(path)
        except ValueError as exc:
            warn(f"{path}: {exc}; skipped")
            continue
        if im is None:
            continue
        n_dicom += 1
        s = series.setdefault(im.series_uid, Series(im.series_uid, im.series_number, im.description, im.protocol,
                                                    im.manufacturer))
        if not im.complete:
            warn(f"{path}: truncated pixel data; skipped")
            s.incomplete.append(path)
            continue
        s.images.append(im)
    return sorted((s for s in series.values()), key=lambda s: (s.number, s.uid))


def check_series(s: Series) -> None:
    """Refuse (65) a selected series that cannot be converted to one coil-combined volume per echo and part."""
    where = f"series {s.number} ({s.description or s.protocol})"
    if s.incomplete:
        raise InputError(EX_DATAERR, f"{s.incomplete[0]}: truncated DICOM file; {where} is incomplete")
    groups: dict[tuple, list] = defaultdict(list)
    geo = set()
    for im in s.images:
        geo.add((im.rows, im.cols, im.orientation))
        for part, te, pos in zip(im.parts, im.echo_times, im.positions, strict=True):
            groups[(part, None if te is None else round(te, 3))].append((pos, im.coil, im.path))
    if len(geo) > 1:
        raise InputError(EX_DATAERR, f"{s.images[0].path.parent}: {where} mixes image matrices or orientations "
                             f"({len(geo)} different); echoes must share one grid")
    counts = {k: len(v) for k, v in groups.items()}
    for (part, te), items in groups.items():
        pos = [p for p, _, _ in items if p is not None]
        if len(pos) != len(set(pos)):
            coils = sorted({c for _, c, _ in items if c})
            extra = f" (coil elements {', '.join(coils[:4])})" if len(coils) > 1 else ""
            raise InputError(EX_DATAERR, f"{items[0][2].parent}: {where} has several {part} images at the same slice "
                                 f"position for TE {te} ms{extra}: uncombined coil images or repeated "
                                 "acquisitions; export coil-combined images")
    if len(set(counts.values())) > 1:
        (k_lo, n_lo), (k_hi, n_hi) = min(counts.items(), key=lambda kv: kv[1]), max(counts.items(),
                                                                                      key=lambda kv: kv[1])
        raise InputError(EX_DATAERR, f"{s.images[0].path.parent}: {where} is incomplete: {n_lo} {k_lo[0]} images at TE "
                             f"{k_lo[1]} ms but {n_hi} {k_hi[0]} images at TE {k_hi[1]} ms")


def sanitise(label: str) -> str:
    """A BIDS label (letters and digits only) from a DICOM string."""
    return re.sub(r"[^A-Za-z0-9]", "", label)


@dataclass
class Run:
    """One BIDS acquisition planned from one or more series (Siemens: magnitude and phase series paired)."""

    kind: str  # megre | t1w
    series: list[Series]
    run: int | None = None

    @property
    def numbers(self) -> list[int]:
        return [s.number for s in self.series]


def pair_series(selected: list[Series]) -> list[Run]:
    """Group series of one acquisition: same protocol, echo times and matrix, parts that complement each other."""
    runs: list[Run] = []
    open_runs: dict[tuple, Run] = {}
    for s in selected:
        kind = s.kind
        if kind == "t1w":
            runs.append(Run("t1w", [s]))
            continue
        im = s.images[0]
        key = (re.sub(r"[_ ]?(ph|pha|phase|mag)$", "", (s.protocol or s.description).strip(), flags=re.I),
               s.echo_times, im.rows, im.cols, im.orientation)
        prev = open_runs.get(key)
        if prev is not None and not (set(prev.series[-1].parts) & set(s.parts)):
            prev.series.append(s)
            del open_runs[key]
            continue
        r = Run("megre", [s])
        runs.append(r)
        open_runs[key] = r
    for kind in ("megre", "t1w"):
        same = [r for r in runs if r.kind == kind]
        if len(same) > 1:
            for i, r in enumerate(same, 1):
                r.run = i
    return runs


def run_parts(r: Run) -> tuple[str, ...]:
    found = {p for s in r.series for p in s.parts}
    return tuple(p for p in PARTS if p in found)


def select(series: list[Series], specs: list[str] | None) -> list[Series]:
    """Series chosen by ``--series``: numbers or description globs; a leading ``-`` excludes. Default: all."""
    import fnmatch

    if not specs:
        return list(series)
    include = [x for x in specs if not x.startswith("-")]
    exclude = [x[1:] for x in specs if x.startswith("-")]

    def hit(s: Series, pat: str) -> bool:
        if pat.isdigit():
            return s.number == int(pat)
        return fnmatch.fnmatch(s.description.lower(), pat.lower()) or fnmatch.fnmatch(s.protocol.lower(),
                                                                                      pat.lower())
    chosen = [s for s in series if (not include or any(hit(s, p) for p in include))]
    return [s for s in chosen if not any(hit(s, p) for p in exclude)]
