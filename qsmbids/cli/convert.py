"""``qsmbids-convert``: DICOM → BIDS for multi-echo gradient-echo (MEGRE) data, ready for ``qsmbids``.

    qsmbids-convert DICOM_DIR BIDS_DIR [--subject LABEL] [--session LABEL|auto] [--series N|GLOB|-N|-GLOB ...]
                    [--dry-run] [--overwrite]

The headers are read with pydicom (:mod:`qsmbids.utils.dicom`: which series is a multi-echo GRE, which image is
magnitude, phase, real or imaginary, which echo), the voxels are converted by dcm2niix (the PyPI wheel; Rorden's
conversion keeps vendor scaling, slice order and orientation right). Then every echo and part becomes
``sub-<label>[/ses-<label>]/anat/sub-<label>[_ses-<label>][_run-<n>]_echo-<n>_part-{mag,phase}_MEGRE.nii.gz`` with a
sidecar (dcm2niix's, plus ``Units`` for the phase): Siemens phase (−4096…4095) is rescaled to radians, Philips
phase is in radians after its rescale already, real/imaginary pairs (GE) become magnitude and phase. A T1w series
becomes ``…_T1w.nii.gz``. ``dataset_description.json``, ``participants.tsv`` and a ``README`` (how the dataset was
made: the command line and the dcm2niix version) complete the dataset.

The dataset is built in a temporary folder next to BIDS_DIR and moved into place at the end (new dataset), or its
subject folder is moved in (appending to an existing dataset); the DICOM folder is never written. Refusals are one
line with an exit code: 66 no DICOM, 18 no GRE series with phase (the series found are listed), 65 broken series
(inconsistent matrix, uncombined coils, truncated files), 64 an existing subject without ``--overwrite``, 73 an
output folder that cannot be written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from ..exit_codes import InputError
from ..files import write_text_atomic
from ..utils.dicom import (
    Run,
    check_series,
    open_dicom,
    pair_series,
    part_from_image_type,
    run_parts,
    sanitise,
    scan,
    select,
)
from .exit_codes import EX_CANTCREAT, EX_DATAERR, EX_NO_MATCH, EX_NOINPUT, EX_SOFTWARE, EX_USAGE

BIDS_VERSION = "1.10.0"
#: dcm2niix sidecar keys that are guesses or conversion notes, not acquisition facts
_DROP_KEYS = ("BidsGuess",)
_PI_TOL = 0.01


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qsmbids-convert",
        description="Convert multi-echo GRE DICOM series (magnitude + phase) to a BIDS dataset for qsmbids.")
    p.add_argument("dicom_dir", type=Path, help="folder with the DICOM files (searched recursively; .gz allowed)")
    p.add_argument("bids_dir", type=Path, help="BIDS dataset to create, or an existing one to add a subject to")
    p.add_argument("--subject", metavar="LABEL", help="subject label (default: the PatientID, letters and digits)")
    p.add_argument("--session", metavar="LABEL",
                   help="session label; 'auto' = the StudyDate (default: none, or the StudyDate when the folder "
                        "holds several studies of the patient)")
    p.add_argument("--series", nargs="+", metavar="SEL",
                   help="series to convert: numbers or SeriesDescription globs; a leading '-' excludes (default: all "
                        "GRE and T1w series)")
    p.add_argument("--dry-run", action="store_true", help="print the series found and what each becomes; write nothing")
    p.add_argument("--overwrite", action="store_true", help="replace the subject's (session's) data when present")
    p.add_argument("--version", action="version", version=f"qsmbids-convert {__version__}")
    return p


def _dcm2niix() -> str:
    exe = shutil.which("dcm2niix") or str(Path(sys.executable).with_name("dcm2niix"))
    if not Path(exe).is_file():
        raise InputError(EX_SOFTWARE, "dcm2niix: not found (pip install dcm2niix)")
    return exe


def dcm2niix_version() -> str:
    out = subprocess.run([_dcm2niix(), "-v"], capture_output=True, text=True, check=False).stdout
    for tok in out.split():
        if tok.startswith("v1."):
            return tok
    return out.strip().splitlines()[-1] if out.strip() else "unknown"


def _labels(runs: list[Run], args) -> tuple[str, str | None]:
    images = [im for r in runs for s in r.series for im in s.images]
    patients = sorted({im.patient_id for im in images})
    if args.subject:
        sub = sanitise(args.subject.removeprefix("sub-"))
        if not sub:
            raise InputError(EX_USAGE, f"--subject {args.subject!r}: a label needs letters or digits")
    else:
        if len(patients) > 1:
            raise InputError(EX_USAGE, f"{args.dicom_dir}: DICOM of {len(patients)} patients ({', '.join(patients[:3])}"
                                       "); convert one patient at a time or pick series with --series")
        sub = sanitise(patients[0]) if patients else ""
        if not sub:
            raise InputError(EX_USAGE, f"{args.dicom_dir}: no usable PatientID in the DICOM; give --subject LABEL")
    studies = {(im.study_uid, im.study_date) for im in images}
    ses = args.session
    if ses == "auto" or (ses is None and len(studies) > 1):
        dates = sorted({d for _, d in studies})
        if len(dates) != 1 or not dates[0]:
            raise InputError(EX_USAGE, f"{args.dicom_dir}: the selected series come from {len(studies)} studies "
                                       f"({', '.join(dates) or 'no StudyDate'}); give --session LABEL or --series")
        ses = dates[0]
    if ses is not None:
        ses = sanitise(ses.removeprefix("ses-"))
        if not ses:
            raise InputError(EX_USAGE, f"--session {args.session!r}: a label needs letters or digits")
    return sub, ses


def _stem(sub: str, ses: str | None, run: int | None) -> str:
    parts = [f"sub-{sub}"] + ([f"ses-{ses}"] if ses else []) + ([f"run-{run}"] if run else [])
    return "_".join(parts)


def plan_table(series, runs: list[Run], sub: str | None, ses: str | None) -> list[list[str]]:
    """Rows of the ``--dry-run`` table: one per series found."""
    becomes: dict[int, str] = {}
    for r in runs:
        stem = _stem(sub or "<label>", ses, r.run)
        folder = f"sub-{sub or '<label>'}/" + (f"ses-{ses}/" if ses else "") + "anat/"
        if r.kind == "megre":
            n = len(r.series[0].echo_times) or 1
            parts = "{mag,phase}"  # real/imaginary pairs become magnitude and phase
            target = f"{folder}{stem}_echo-<1..{n}>_part-{parts}_MEGRE.nii.gz"
        else:
            target = f"{folder}{stem}_T1w.nii.gz"
        for s in r.series:
            becomes[s.number] = target
    rows = [["series", "description", "images", "echoes (TE ms)", "parts", "kind", "becomes"]]
    for s in series:
        tes = s.echo_times
        rows.append([str(s.number), s.description or s.protocol, str(s.n_frames),
                     f"{len(tes)} ({', '.join(f'{t:g}' for t in tes)})" if tes else "-", ",".join(s.parts) or "-",
                     s.kind, becomes.get(s.number, "(skipped)")])
    return rows


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _stage_inputs(series_list, dest: Path) -> None:
    """Copy (decompress) the series' files into ``dest`` for dcm2niix, which reads no gzipped DICOM."""
    dest.mkdir(parents=True)
    for s in series_list:
        for i, im in enumerate(s.images):
            with open_dicom(im.path) as src, open(dest / f"s{s.number:05d}_{i:06d}.dcm", "wb") as out:
                shutil.copyfileobj(src, out)


def _run_dcm2niix(indir: Path, outdir: Path) -> list[tuple[Path, dict]]:
    outdir.mkdir(parents=True)
    proc = subprocess.run([_dcm2niix(), "-z", "y", "-b", "y", "-ba", "y", "-f", "x%s", "-o", str(outdir), str(indir)],
                          capture_output=True, text=True, check=False)
    niis = sorted(outdir.glob("*.nii.gz"))
    if proc.returncode != 0 or not niis:
        last = (proc.stderr or proc.stdout).strip().splitlines()
        raise InputError(EX_DATAERR, f"{indir}: dcm2niix could not convert the series"
                                     + (f" ({last[-1]})" if last else ""))
    out = []
    for nii in niis:
        js = nii.with_name(nii.name[: -len(".nii.gz")] + ".json")
        out.append((nii, json.loads(js.read_text()) if js.is_file() else {}))
    return out


def _part_of(meta: dict) -> str:
    return part_from_image_type(meta.get("ImageType", [])) or "mag"


def _phase_to_rad(path: Path, meta: dict, warn):
    """(image or ``path`` unchanged, Units): radians when the vendor range is known, else Units 'arbitrary'."""
    import nibabel as nib

    img = nib.load(path)
    name = path.name
    data = np.asarray(img.dataobj, dtype=np.float64)
    lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
    if lo >= -np.pi - _PI_TOL and hi <= np.pi + _PI_TOL:
        return path, "rad"
    if lo >= -4096.5 and hi <= 4096.5 and hi - lo > 4096:  # Siemens: −4096…4095 ↔ −π…π
        rad = (data * (np.pi / 4096.0)).astype(np.float32)
        out = nib.Nifti1Image(rad, img.affine, img.header)
        out.header.set_data_dtype(np.float32)
        out.header.set_slope_inter(1.0, 0.0)
        return out, "rad"
    warn(f"{name}: phase range {lo:g}..{hi:g} is no known vendor scaling; written as is with Units 'arbitrary' "
         "(qsmbids rescales min..max to -pi..pi)")
    return path, "arbitrary"


def _write(img, meta: dict, path: Path) -> None:
    """Save ``img`` (a NIfTI image, or the path of dcm2niix's file to copy byte for byte) and its sidecar."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(img, Path):
        shutil.copyfile(img, path)
    else:
        nib.save(img, path)
    clean = {k: v for k, v in meta.items() if k not in _DROP_KEYS}
    path.with_name(path.name[: -len(".nii.gz")] + ".json").write_text(json.dumps(clean, indent=2) + "\n")


def _convert_megre(r: Run, outputs: list[tuple[Path, dict]], anat: Path, stem: str, warn) -> list[Path]:
    import nibabel as nib

    by_key: dict[tuple[str, float], tuple[Path, dict]] = {}
    for nii, meta in outputs:
        te = meta.get("EchoTime")
        if te is None:
            raise InputError(EX_DATAERR, f"series {r.numbers}: no EchoTime in the converted sidecar of {nii.name}")
        key = (_part_of(meta), round(float(te) * 1e3, 3))
        if key in by_key:
            raise InputError(EX_DATAERR, f"series {r.numbers}: dcm2niix wrote two {key[0]} volumes at TE {key[1]} ms "
                                         "(uncombined coils or repeats?); export coil-combined images")
        by_key[key] = (nii, meta)
    tes = sorted({te for _, te in by_key})
    parts = {p for p, _ in by_key}
    if "phase" not in parts and not {"real", "imag"} <= parts:
        raise InputError(EX_NO_MATCH, f"series {r.numbers}: magnitude only, no phase images; enable the phase export "
                                      "(magnitude and phase) of the GRE sequence on the scanner")
    written = []
    for i, te in enumerate(tes, 1):
        base = anat / f"{stem}_echo-{i}"
        if ("phase", te) in by_key:
            nii, meta = by_key[("phase", te)]
            img, units = _phase_to_rad(nii, meta, warn)
            _write(img, {**meta, "Units": units}, Path(f"{base}_part-phase_MEGRE.nii.gz"))
            mag = by_key.get(("mag", te))
            if mag is None:
                raise InputError(EX_DATAERR, f"series {r.numbers}: no magnitude image at TE {te} ms")
            _write(mag[0], mag[1], Path(f"{base}_part-mag_MEGRE.nii.gz"))
        elif ("real", te) in by_key and ("imag", te) in by_key:
            (rn, rm), (inn, _) = by_key[("real", te)], by_key[("imag", te)]
            re_i, im_i = nib.load(rn), nib.load(inn)
            z = np.asarray(re_i.dataobj, np.float64) + 1j * np.asarray(im_i.dataobj, np.float64)
            meta = {k: v for k, v in rm.items() if k != "ImageType"}
            _write(nib.Nifti1Image(np.abs(z).astype(np.float32), re_i.affine), {**meta, "ImageType": ["MAGNITUDE"]},
                   Path(f"{base}_part-mag_MEGRE.nii.gz"))
            _write(nib.Nifti1Image(np.angle(z).astype(np.float32), re_i.affine),
                   {**meta, "ImageType": ["PHASE"], "Units": "rad"}, Path(f"{base}_part-phase_MEGRE.nii.gz"))
        else:
            raise InputError(EX_DATAERR, f"series {r.numbers}: echo at TE {te} ms has parts "
                                         f"{sorted(p for p, t in by_key if t == te)}; need magnitude and phase")
        written.append(base)
    return written


def _dataset_files(root: Path, sub: str, argv: list[str], version: str) -> None:
    desc = root / "dataset_description.json"
    if not desc.is_file():
        desc.write_text(json.dumps({
            "Name": "MEGRE data converted by qsmbids-convert", "BIDSVersion": BIDS_VERSION, "DatasetType": "raw",
            "GeneratedBy": [{"Name": "qsmbids-convert", "Version": __version__,
                             "Description": f"dcm2niix {version} for the voxels, pydicom for the headers"}]},
            indent=2) + "\n")
    tsv = root / "participants.tsv"
    rows = tsv.read_text().splitlines() if tsv.is_file() else ["participant_id"]
    if f"sub-{sub}" not in {r.split("\t")[0] for r in rows[1:]}:
        ncol = len(rows[0].split("\t"))
        rows.append("\t".join([f"sub-{sub}"] + ["n/a"] * (ncol - 1)))
    write_text_atomic(tsv, "\n".join(rows) + "\n")
    readme = root / "README"
    line = (f"{datetime.date.today().isoformat()}: sub-{sub} converted with `qsmbids-convert "
            f"{shlex.join(argv)}` (qsmbids {__version__}, dcm2niix {version}).")
    text = readme.read_text() if readme.is_file() else (
        "Multi-echo gradient-echo (MEGRE) data converted from DICOM by qsmbids-convert: voxels by dcm2niix, series "
        "and image types by pydicom; phase in radians where the vendor scaling is known.\n\nConversions:\n")
    readme.write_text(text.rstrip("\n") + "\n" + line + "\n")


def convert(args, argv: list[str], warn) -> int:
    dicom_dir = args.dicom_dir
    if not dicom_dir.is_dir():
        raise InputError(EX_NOINPUT, f"{dicom_dir}: the DICOM folder does not exist")
    series = scan(dicom_dir, warn)
    if not series:
        raise InputError(EX_NOINPUT, f"{dicom_dir}: no DICOM files found")
    chosen = select(series, args.series)
    runs = pair_series([s for s in chosen if s.kind in ("megre", "t1w")])
    megre = [r for r in runs if r.kind == "megre"]
    listing = "; ".join(f"{s.number} {s.description or s.protocol!s} ({s.kind}, {','.join(s.parts) or '?'})"
                        for s in series[:8]) + (" …" if len(series) > 8 else "")
    if not megre:
        raise InputError(EX_NO_MATCH, f"{dicom_dir}: no multi-echo GRE series among the {len(chosen)} selected; "
                                      f"series found: {listing}")
    if not any("phase" in run_parts(r) or {"real", "imag"} <= set(run_parts(r)) for r in megre):
        raise InputError(EX_NO_MATCH, f"{dicom_dir}: the GRE series have magnitude images only; enable the phase "
                                      f"export (magnitude and phase) on the scanner; series found: {listing}")
    megre_ok = [r for r in megre if "phase" in run_parts(r) or {"real", "imag"} <= set(run_parts(r))]
    for r in megre:
        if r not in megre_ok:
            warn(f"series {r.numbers}: magnitude only (no phase); skipped")
    runs = [r for r in runs if r.kind == "t1w" or r in megre_ok]
    for r in runs:
        for s in r.series:
            check_series(s)
    sub, ses = _labels(runs, args)
    if args.dry_run:
        _print_table(plan_table(series, runs, sub, ses))
        return 0

    out = args.bids_dir.absolute()
    existing = out.exists()
    if existing and not out.is_dir():
        raise InputError(EX_CANTCREAT, f"{out}: exists and is not a folder")
    if existing and any(out.iterdir()) and not (out / "dataset_description.json").is_file():
        raise InputError(EX_USAGE, f"{out}: not empty and not a BIDS dataset (no dataset_description.json)")
    subdir = out / f"sub-{sub}" / (f"ses-{ses}" if ses else "")
    target = subdir if ses else out / f"sub-{sub}"
    if target.exists() and not args.overwrite:
        raise InputError(EX_USAGE, f"{target}: already in the dataset; use --overwrite to replace it")
    parent = out if existing else out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(EX_CANTCREAT, f"{parent}: cannot create it ({exc.strerror or exc})") from exc
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(EX_CANTCREAT, f"{parent}: cannot write here")
    version = dcm2niix_version()
    stage = Path(tempfile.mkdtemp(prefix=".qsmbids-convert-", dir=parent))
    try:
        new = stage / "ds"
        anat = new / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
        anat.mkdir(parents=True)
        for k, r in enumerate(runs):
            _stage_inputs(r.series, stage / f"r{k}" / "in")
            outputs = _run_dcm2niix(stage / f"r{k}" / "in", stage / f"r{k}" / "out")
            stem = _stem(sub, ses, r.run)
            if r.kind == "megre":
                _convert_megre(r, outputs, anat, stem, warn)
            else:
                mags = [(n, m) for n, m in outputs if _part_of(m) == "mag"] or outputs
                _write(mags[0][0], mags[0][1], anat / f"{stem}_T1w.nii.gz")
        if not existing:
            _dataset_files(new, sub, argv, version)
            os.replace(new, out)
        else:
            _dataset_files(out, sub, argv, version)  # small files, each replaced atomically
            src = new / f"sub-{sub}" / (f"ses-{ses}" if ses else "")
            src = src if ses else new / f"sub-{sub}"
            if target.exists():
                old = stage / "old"
                os.replace(target, old)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, target)
    except OSError as exc:
        raise InputError(EX_CANTCREAT, f"{getattr(exc, 'filename', None) or out}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    print(f"qsmbids-convert: wrote {target} ({len(megre_ok)} MEGRE run(s), "
          f"{sum(r.kind == 't1w' for r in runs)} T1w)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EX_USAGE if exc.code not in (0, None) else 0

    def warn(msg: str) -> None:
        print(f"qsmbids-convert: warning: {msg}", file=sys.stderr)

    try:
        return convert(args, argv, warn)
    except InputError as exc:
        print(f"qsmbids-convert: error: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
