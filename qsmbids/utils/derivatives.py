"""The derivative dataset's own files: ``dataset_description.json`` and ``.bidsignore``.

Both are rewritten by every participant-level run, and several runs (one per participant, as cluster array jobs
usually do it) may share one output folder. Each file is therefore written to a temporary name in the same folder
and moved over the old one with :func:`os.replace` (:func:`qsmbids.files.write_text_atomic`), which is atomic on
POSIX file systems: a reader, or a second writer, sees either the old or the new complete file, never a half-written
one. The content depends only on the inputs, so concurrent writers agree and the last one to finish changes nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path
from typing import Any

from .. import __version__
from ..files import write_text_atomic

__all__ = [
    "BIDSIGNORE_PATTERNS",
    "BIDS_VERSION",
    "write_bidsignore",
    "write_derivative_description",
    "write_text_atomic",
]

#: BIDS version the outputs follow (``Chimap``, ``R2starmap``, ``T2starmap``, ``mask`` are 1.10 names).
BIDS_VERSION = "1.10.0"

#: Outputs BIDS has no name for yet, and the files of a BIDS App that are not data (reports, figures, logs).
#: ``swi``/``minIP`` are the suffixes proposed for the specification (bids-specification PRs #2343 and #2538).
#: Folders are given without a trailing ``/``: bids-validator 3 does not match folders written ``figures/``.
#: The ROI step's transforms (``_xfm``: BIDS derivatives name them, the validator's schema does not yet) and
#: statistics tables (``_stats``) and the group level's outputs are listed too.
BIDSIGNORE_PATTERNS: tuple[str, ...] = (
    "*_desc-total_fieldmap.*",
    "*_desc-local_fieldmap.*",
    "*_swi.*",
    "*_minIP.*",
    "*_xfm.*",
    "*_stats.*",
    "sub-*.html",
    "sub-*/figures",
    "sub-*/log",
    "logs",
    "group",
    "group.html",
)

_NAME = "qsmbids"


def _read_json(path: Path) -> dict:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def _code_url() -> str | None:
    """The project's source URL from the installed package metadata (``[project.urls]``), if it declares one."""
    try:
        urls = metadata(_NAME).get_all("Project-URL") or []
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return None
    found = dict(u.split(",", 1) for u in urls if "," in u)
    found = {k.strip().lower(): v.strip() for k, v in found.items()}
    for key in ("source", "repository", "code", "homepage"):
        if found.get(key):
            return found[key]
    return None


def _container() -> dict[str, str] | None:
    """``{"Type", "Tag"}`` from ``QSMBIDS_CONTAINER_TYPE``/``QSMBIDS_CONTAINER_TAG`` (set in our images)."""
    spec = {key: os.environ.get(f"QSMBIDS_CONTAINER_{key.upper()}", "").strip() for key in ("Type", "Tag")}
    spec = {k: v for k, v in spec.items() if v}
    return spec or None


def _doi_uri(doi: str) -> str:
    """A DOI as a URI: ``doi:10.x/y`` (BIDS' form for ``DatasetDOI``), whatever form it was given in."""
    doi = doi.strip()
    for prefix in ("https://doi.org/", "http://doi.org/", "https://dx.doi.org/", "doi:"):
        if doi.lower().startswith(prefix):
            doi = doi[len(prefix):]
            break
    return f"doi:{doi}"


def write_derivative_description(bids_dir: str | os.PathLike, output_dir: str | os.PathLike, *,
                                 version: str | None = None) -> Path:
    """Write ``output_dir/dataset_description.json`` (and ``.bidsignore``) for qsmbids' derivative dataset.

    ``GeneratedBy`` names qsmbids, its ``version`` (default: the installed one), the code URL when the package
    declares one, and the container from ``QSMBIDS_CONTAINER_TYPE``/``QSMBIDS_CONTAINER_TAG`` when set.
    ``SourceDatasets`` points at the raw dataset through the ``raw`` key of ``DatasetLinks``, which holds the raw
    dataset's DOI when its description gives one (it survives moving the outputs to another machine) and otherwise
    the absolute ``file://`` URI of ``bids_dir``; ``Sources`` in the sidecars (``bids:raw:...``) resolve through it.
    The raw dataset's ``License`` is copied because derivatives inherit it. Safe to call from several processes at
    once (see the module docstring). Returns the path of the description.
    """
    bids_dir = Path(bids_dir).absolute()
    output_dir = Path(output_dir).absolute()
    raw = _read_json(bids_dir / "dataset_description.json")

    generated: dict[str, Any] = {"Name": _NAME, "Version": version or __version__}
    code_url = _code_url()
    if code_url:
        generated["CodeURL"] = code_url
    container = _container()
    if container:
        generated["Container"] = container

    doi = raw.get("DatasetDOI")
    source: dict[str, Any] = {"URI": "bids:raw:"}
    if isinstance(doi, str) and doi.strip():
        source["DOI"] = _doi_uri(doi)
        link = source["DOI"]
    else:
        link = bids_dir.as_uri()

    raw_name = raw.get("Name")
    desc: dict[str, Any] = {
        "Name": f"qsmbids outputs for {raw_name}" if isinstance(raw_name, str) and raw_name else "qsmbids outputs",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [source],
        "DatasetLinks": {"raw": link},
    }
    if isinstance(raw.get("License"), str) and raw["License"]:
        desc["License"] = raw["License"]
    path = write_text_atomic(output_dir / "dataset_description.json", json.dumps(desc, indent=2) + "\n")
    write_bidsignore(output_dir)
    return path


def write_bidsignore(output_dir: str | os.PathLike, patterns: Iterable[str] = BIDSIGNORE_PATTERNS) -> Path:
    """Make ``output_dir/.bidsignore`` list ``patterns``, keeping any line already there (e.g. a user's).

    Idempotent and safe to call concurrently: lines are only ever added, in a fixed order, atomically.
    """
    path = Path(output_dir) / ".bidsignore"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    present = {line.strip() for line in lines}
    missing = [p for p in patterns if p not in present]
    if not missing and path.exists():
        return path
    return write_text_atomic(path, "\n".join([*lines, *missing]) + "\n")
