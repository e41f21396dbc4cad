"""Where a run may write: the output and work folders checked against the input dataset, each other and the
datasets already on disk, before anything is written.

qsmbids never writes into data that is not its own: not anywhere inside the input dataset (except a folder of its
own in the input's ``derivatives/``), not into the derivative dataset of another pipeline (a
``dataset_description.json`` whose ``GeneratedBy[0].Name`` is not qsmbids), not into a raw BIDS dataset, and not
inside any other dataset except a folder of its own in that dataset's ``derivatives/``. The work folder is
disposable (cluster recipes delete it after a successful run), the derivatives are not: neither may lie inside the
other. Every refusal is a usage error (exit 64): the folders exist or can be made; the command line named the
wrong place, and the remedy is another argument, not fixing permissions or space (that is what 73 says).
"""

from __future__ import annotations

import json
from pathlib import Path

from .exit_codes import EX_USAGE, Refusal

__all__ = ["DESCRIPTION", "PIPELINE", "check_folders"]

PIPELINE = "qsmbids"
DESCRIPTION = "dataset_description.json"
#: files a qsmbids run writes into its output folder first (its settings), before any dataset description
_OUR_MARKERS = ("sub-*/log/*/qsmbids.toml", "logs/CITATION.md")


def _resolved(path) -> Path:
    return Path(path).expanduser().resolve()


def _generator(folder: Path) -> tuple[str | None, str]:
    """The dataset in ``folder``: (the ``GeneratedBy[0].Name`` of its description or None, how to call it)."""
    desc = folder / DESCRIPTION
    try:
        doc = json.loads(desc.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"a dataset whose {DESCRIPTION} cannot be read ({type(err).__name__})"
    if not isinstance(doc, dict):
        return None, f"a dataset whose {DESCRIPTION} is not a JSON object"
    generated = doc.get("GeneratedBy")
    name = generated[0].get("Name") if isinstance(generated, list) and generated and isinstance(generated[0], dict) \
        else None
    if isinstance(name, str) and name.strip():
        return name.strip(), f"the derivative dataset of {name.strip()}"
    if doc.get("DatasetType") == "derivative":
        return None, "a derivative dataset of an unnamed pipeline (no GeneratedBy)"
    return None, "a raw BIDS dataset"


def _is_ours(folder: Path) -> bool:
    return _generator(folder)[0] == PIPELINE


def _has_description(folder: Path) -> bool:
    try:
        return (folder / DESCRIPTION).is_file()
    except OSError:  # a folder this user may not enter: nothing can be written below it either (73 later)
        return False


def _foreign_files(folder: Path) -> bool:
    """Whether ``folder`` holds files but neither a description nor the settings a qsmbids run writes first."""
    try:
        return folder.is_dir() and any(folder.iterdir()) and not any(next(folder.glob(m), None) for m in _OUR_MARKERS)
    except OSError:
        return False


def _new_folder(parent: Path, taken: Path) -> Path:
    """A folder name to suggest in ``parent``: ``qsmbids``, unless that is the refused folder itself."""
    return parent / (PIPELINE if (parent / PIPELINE).resolve() != taken else f"{PIPELINE}-new")


def _nested(inner: Path, outer: Path) -> bool:
    return inner.is_relative_to(outer)  # also when they are the same folder


def check_folders(bids_dir, output_dir, work_dir=None) -> None:
    """Refuse (:class:`Refusal`, exit 64, one line naming the folder) an output or work folder that would make
    qsmbids write into data that is not its own, or mix the disposable work folder with the derivatives."""
    bids, out = _resolved(bids_dir), _resolved(output_dir)
    if work_dir is not None:
        _check_work(bids, out, _resolved(work_dir), Path(work_dir), Path(output_dir))
    if _nested(out, bids) and out.parent != bids / "derivatives":
        raise Refusal(EX_USAGE, f"{output_dir}: the output folder lies inside the input dataset; use "
                                f"{Path(bids_dir) / 'derivatives' / PIPELINE} or a folder outside it")
    if _has_description(out) and not _is_ours(out):
        what = _generator(out)[1]
        raise Refusal(EX_USAGE, f"{output_dir}: the output folder holds {what}; qsmbids does not write into it "
                                f"(use a new folder, e.g. {_new_folder(Path(output_dir).parent, out)})")
    for folder in out.parents:  # the nearest dataset around the output folder
        if not _has_description(folder):
            continue
        if out.parent != folder / "derivatives":
            raise Refusal(EX_USAGE, f"{output_dir}: the output folder lies inside {_generator(folder)[1]} "
                                    f"({folder}); use {folder / 'derivatives' / PIPELINE} or a folder outside it")
        if not _has_description(out) and _foreign_files(out):
            raise Refusal(EX_USAGE, f"{output_dir}: the output folder holds files of another tool (and no {DESCRIPTION}"
                                    f" of {PIPELINE}); qsmbids does not write into it (use a new folder, e.g. "
                                    f"{_new_folder(Path(output_dir).parent, out)})")
        break


def _check_work(bids: Path, out: Path, work: Path, work_arg: Path, out_arg: Path) -> None:
    if work == out:
        raise Refusal(EX_USAGE, f"{work_arg}: the work folder is the output folder; give -w a folder of its own "
                                "(intermediate files do not belong in the derivatives)")
    if _nested(work, out):
        raise Refusal(EX_USAGE, f"{work_arg}: the work folder lies inside the output folder {out_arg}; give -w a "
                                "folder outside it (intermediate files do not belong in the derivatives)")
    if _nested(out, work):
        raise Refusal(EX_USAGE, f"{out_arg}: the output folder lies inside the work folder {work_arg}; a work "
                                "folder is disposable (cleaning it would delete the derivatives): keep them apart")
    if _nested(work, bids):
        raise Refusal(EX_USAGE, f"{work_arg}: the work folder lies inside the input dataset")
    if _nested(bids, work):
        raise Refusal(EX_USAGE, f"{work_arg}: the input dataset lies inside the work folder; a work folder is "
                                "disposable (cleaning it would delete the input): give -w a folder of its own")
