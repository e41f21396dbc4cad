"""Writing derivatives: niworkflows' ``DerivativesDataSink`` taught the QSM names.

niworkflows' sink builds output names with pybids path patterns, but its patterns (``nipreps.json``) know neither
``Chimap`` nor the outputs of a multi-echo GRE run. :class:`DerivativesDataSink` swaps in our own entities and
patterns (``qsmbids/data/bids_config.json``) and changes three behaviours:

* files go straight into ``base_directory`` (``out_path_base = ""``): qsmbids' ``output_dir`` *is* the derivative
  dataset root, as the BIDS-Apps convention has it;
* the ``echo`` and ``part`` entities of the ``MEGRE`` source files are always dropped, because every output combines
  all echoes and both parts (when several source files are given niworkflows already keeps only their common
  entities, but a single-echo run would otherwise leak ``echo-1_part-phase`` into every name);
* a NIfTI and its sidecar never appear half-written: the parent class writes them into a hidden staging folder
  inside the output dataset, and each file is then moved into place with :func:`os.replace` (atomic within one
  file system). A crash leaves at most a ``.qsmbids-sink-*`` folder, which BIDS tools ignore.

Two inputs are added. ``bids_root`` makes the sink write ``Sources``: every ``source_file`` as a BIDS URI
``bids:raw:<path relative to bids_root>`` (the derivative dataset's ``DatasetLinks`` names ``raw``). ``meta_defaults``
holds sidecar fields written unless ``meta_dict`` sets the same key, so a workflow can give a default ``Units``
or ``Description`` that the stage that made the image may refine. Keywords given at construction (e.g.
``Type="Brain"``) take priority over both, as in niworkflows.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from nipype.interfaces.base import Directory, isdefined, traits

__all__ = ["BIDS_CONFIG", "DISMISSED_ENTITIES", "TEMPLATEFLOW_ENV", "DerivativesDataSink", "bids_uri"]

#: qsmbids never uses TemplateFlow, but niworkflows' sink asks it for its template list when imported: pointed at
#: this empty home with auto-update off it answers at once, never indexes, writes or downloads anything
#: (data/templateflow/README)
TEMPLATEFLOW_ENV: dict[str, str] = {
    "TEMPLATEFLOW_HOME": str(resources.files("qsmbids").joinpath("data", "templateflow")),
    "TEMPLATEFLOW_AUTOUPDATE": "0",
}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``values`` inside the block, as it was (set or unset) after it."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# TemplateFlow reads its settings once, when niworkflows imports it: set them for that import only, so that importing
# this module leaves the environment as it was (the command line sets them for its run: qsmbids.cli.run)
with _environment(TEMPLATEFLOW_ENV):
    from niworkflows.interfaces.bids import DerivativesDataSink as _NiDerivativesDataSink
    from niworkflows.interfaces.bids import _DerivativesDataSinkInputSpec
    from niworkflows.utils.bids import relative_to_root

#: The pybids configuration (entities and ``default_path_patterns``) of qsmbids' outputs.
BIDS_CONFIG: dict = json.loads(resources.files("qsmbids").joinpath("data", "bids_config.json").read_text())
#: Entities of the raw ``MEGRE`` files that never reach an output name.
DISMISSED_ENTITIES: tuple[str, ...] = ("echo", "part")
_STAGE_PREFIX = ".qsmbids-sink-"


def bids_uri(path: str | os.PathLike, bids_root: str | os.PathLike | None = None, dataset: str = "raw") -> str:
    """``bids:<dataset>:<relative path>`` for a file of the dataset rooted at ``bids_root``.

    Without ``bids_root`` (or for a file outside it) the path is taken from the first ``sub-`` folder on, which is
    where a BIDS dataset's subject data start.

    >>> bids_uri("/data/ds/sub-01/anat/sub-01_echo-1_part-phase_MEGRE.nii.gz", "/data/ds")
    'bids:raw:sub-01/anat/sub-01_echo-1_part-phase_MEGRE.nii.gz'
    >>> bids_uri("/elsewhere/sub-02/ses-1/anat/sub-02_ses-1_Chimap.nii.gz")
    'bids:raw:sub-02/ses-1/anat/sub-02_ses-1_Chimap.nii.gz'
    """
    p = Path(path).absolute()
    rel = None
    if bids_root is not None:
        try:
            rel = p.relative_to(Path(bids_root).absolute())
        except ValueError:
            rel = None
    if rel is None:
        rel = relative_to_root(p)
    return f"bids:{dataset}:{rel.as_posix()}"


class _DerivativesDataSinkInputSpec(_DerivativesDataSinkInputSpec):
    bids_root = Directory(desc="root of the raw dataset holding source_file; when set, the sidecar gets Sources "
                               "with every source_file as a bids:raw: URI")
    meta_defaults = traits.Dict(traits.Str, desc="sidecar fields written unless meta_dict sets the same key")


class DerivativesDataSink(_NiDerivativesDataSink):
    """niworkflows' sink with qsmbids' entities and patterns, ``echo``/``part`` dropped, atomic writes.

    >>> import tempfile
    >>> import nibabel as nb
    >>> import numpy as np
    >>> tmp = Path(tempfile.mkdtemp())
    >>> src = tmp / "raw" / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_run-01_echo-1_part-phase_MEGRE.nii.gz"
    >>> src.parent.mkdir(parents=True)
    >>> _ = src.write_bytes(b"")
    >>> nb.save(nb.Nifti1Image(np.zeros((2, 2, 2), "float32"), np.eye(4)), tmp / "chi.nii.gz")
    >>> sink = DerivativesDataSink(base_directory=str(tmp / "out"), bids_root=str(tmp / "raw"),
    ...                            source_file=str(src), in_file=str(tmp / "chi.nii.gz"), suffix="Chimap",
    ...                            desc="rts", Units="ppm")
    >>> res = sink.run()
    >>> Path(res.outputs.out_file).relative_to(tmp / "out").as_posix()
    'sub-01/ses-2/anat/sub-01_ses-2_run-01_desc-rts_Chimap.nii.gz'
    >>> json.loads(Path(res.outputs.out_meta).read_text())["Sources"]
    ['bids:raw:sub-01/ses-2/anat/sub-01_ses-2_run-01_echo-1_part-phase_MEGRE.nii.gz']
    >>> sorted(p.name for p in (tmp / "out").iterdir())  # no staging folder left behind
    ['sub-01']
    >>> shutil.rmtree(tmp)
    """

    input_spec = _DerivativesDataSinkInputSpec
    out_path_base = ""
    _config_entities = frozenset(e["name"] for e in BIDS_CONFIG["entities"])
    _config_entities_dict = BIDS_CONFIG["entities"]
    _file_patterns = tuple(BIDS_CONFIG["default_path_patterns"])

    def _run_interface(self, runtime):
        given = self.inputs.base_directory
        base = Path(given if isdefined(given) else runtime.cwd)
        final = base.absolute() / self.out_path_base
        final.mkdir(parents=True, exist_ok=True)

        dismissed = [e for e in (self.inputs.dismiss_entities or []) if e]
        self.inputs.dismiss_entities = list(dict.fromkeys([*dismissed, *DISMISSED_ENTITIES]))
        meta = dict(self.inputs.meta_defaults) if isdefined(self.inputs.meta_defaults) else {}
        if isdefined(self.inputs.meta_dict):
            meta.update(self.inputs.meta_dict)
        if isdefined(self.inputs.bids_root):
            meta["Sources"] = [bids_uri(f, self.inputs.bids_root) for f in self.inputs.source_file]
        if meta:
            self.inputs.meta_dict = meta

        stage = Path(tempfile.mkdtemp(prefix=_STAGE_PREFIX, dir=final))
        staged_root = stage / self.out_path_base
        self.inputs.base_directory = str(stage)
        try:
            runtime = super()._run_interface(runtime)
            for key in ("out_file", "out_meta"):
                if key not in self._results:
                    continue
                moved = []
                for staged in _as_list(self._results[key]):
                    dest = final / Path(staged).relative_to(staged_root)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staged, dest)
                    moved.append(str(dest))
                self._results[key] = moved if isinstance(self._results[key], list) else moved[0]
        finally:
            self.inputs.base_directory = given
            shutil.rmtree(stage, ignore_errors=True)
        return runtime


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]
