"""Writing one run's outputs into the derivative dataset (every ``ds_*`` sink of a run lives here).

Names, all in ``sub-<l>[/ses-<l>]/anat/`` and keeping the run's ``ses``/``task``/``acq``/``ce``/``rec``/``run``
entities (never ``echo``/``part``, since each output combines all echoes and both parts):

=============  =====================================  =======  ====================================================
output         name                                   units    why this name
=============  =====================================  =======  ====================================================
mask           ``<prefix>_desc-brain_mask``           —        BIDS derivative mask, ``Type: Brain``
chimap         ``<prefix>[_desc-<inv>]_Chimap``       ppm      BIDS suffix for susceptibility maps; ``desc`` names
                                                               the inversion only when it is not the default
total_field    ``<prefix>_desc-total_fieldmap``       Hz       a B0 field map, but BIDS allows ``fieldmap`` only
                                                               in ``fmap/`` (without ``rec``/``ce``/``task``):
                                                               in ``.bidsignore``, named as the simulator's truth
local_field    ``<prefix>_desc-local_fieldmap``       ppm      no BIDS name; ``.bidsignore``, as the truth
r2star         ``<prefix>_R2starmap``                 1/s      BIDS parametric map
t2star         ``<prefix>_T2starmap``                 s        BIDS parametric map
swi            ``<prefix>_swi``                       a.u.     suffix proposed for BIDS (PRs #2343, #2538);
                                                               ``.bidsignore`` until it is in the schema
minip          ``<prefix>_minIP``                     a.u.     as ``swi``
=============  =====================================  =======  ====================================================

Sidecars hold the stage's metadata dict, ``Sources`` (BIDS URIs of every raw input of the run), a default
``Description`` and ``Units``, and ``SkullStripped`` for every map. ``SkullStripped`` means, in BIDS, that non-brain
voxels are zero: that is true of the fields, χ, R2* and T2* (each stage of :mod:`qsmbids.qsm` returns zeros
outside the mask) and false of SWI and minIP (magnitude kept outside the mask). A metadata dict that says otherwise
wins.
"""

from __future__ import annotations

import re
from typing import Any

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from ..config import DEFAULT_INVERSION, OUTPUTS
from ..interfaces.bids import DerivativesDataSink

__all__ = ["MAP_NAMES", "expand_outputs", "init_ds_run_wf"]

#: Image inputs of :func:`init_ds_run_wf`, in the order they are written.
MAP_NAMES: tuple[str, ...] = ("mask", "chimap", "total_field", "local_field", "r2star", "t2star", "swi", "minip")

# output → (entities, fixed sidecar fields, default sidecar fields)
_SINKS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "mask": ({"desc": "brain", "suffix": "mask"}, {"Type": "Brain"},
             {"Description": "Brain mask the susceptibility and relaxation maps were computed in"}),
    "chimap": ({"suffix": "Chimap"}, {},
               {"Units": "ppm", "SkullStripped": True,
                "Description": "Magnetic susceptibility (QSM), referenced"}),
    "total_field": ({"desc": "total", "suffix": "fieldmap"}, {},
                    {"Units": "Hz", "SkullStripped": True,
                     "Description": "Total field offset fitted from the multi-echo phase"}),
    "local_field": ({"desc": "local", "suffix": "fieldmap"}, {},
                    {"Units": "ppm", "SkullStripped": True,
                     "Description": "Local field (background field removed), relative to B0"}),
    "r2star": ({"suffix": "R2starmap"}, {},
               {"Units": "1/s", "SkullStripped": True, "Description": "Apparent transverse relaxation rate R2*"}),
    "t2star": ({"suffix": "T2starmap"}, {},
               {"Units": "s", "SkullStripped": True, "Description": "Apparent transverse relaxation time T2*"}),
    "swi": ({"suffix": "swi"}, {},
            {"Units": "arbitrary", "SkullStripped": False, "Description": "Susceptibility-weighted image"}),
    "minip": ({"suffix": "minIP"}, {},
              {"Units": "arbitrary", "SkullStripped": False,
               "Description": "Minimum intensity projection of the susceptibility-weighted image"}),
}
_LABEL = re.compile(r"[A-Za-z0-9]+")


def expand_outputs(outputs: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The images to write for the user-facing ``outputs`` (``"fields"`` is both fields), in :data:`MAP_NAMES` order.

    >>> expand_outputs(("fields", "chimap"))
    ('chimap', 'total_field', 'local_field')
    """
    unknown = [o for o in outputs if o not in OUTPUTS]
    if unknown:
        raise ValueError(f"outputs: expected some of {', '.join(OUTPUTS)}, got {list(outputs)}")
    wanted = set(outputs)
    if "fields" in wanted:
        wanted |= {"total_field", "local_field"}
    return tuple(m for m in MAP_NAMES if m in wanted)


def init_ds_run_wf(*, bids_root: str, output_dir: str, outputs: tuple[str, ...], inversion: str,
                   name: str = "ds_run_wf") -> Workflow:
    """Sink one run's maps into ``output_dir`` (the derivative dataset root), named after its raw files.

    Parameters
    ----------
    bids_root
        Raw dataset root: ``Sources`` are written as ``bids:raw:`` URIs relative to it.
    output_dir
        Derivative dataset root.
    outputs
        Which of :data:`qsmbids.config.OUTPUTS` to write; ``"fields"`` writes the total and the local field.
    inversion
        The dipole-inversion method; the susceptibility map is named ``desc-<inversion>`` when it is not
        :data:`qsmbids.config.DEFAULT_INVERSION`, so that maps from other solvers never overwrite the default one.

    Inputs
    ------
    source_files
        Every raw file of the run (phase and magnitude of all echoes): their common entities name the outputs.
    mask, chimap, total_field, local_field, r2star, t2star, swi, minip
        The images (only those in ``outputs`` are connected to a sink).
    mask_meta, chimap_meta, ...
        Sidecar dicts for each image (``Units``, method and parameters).

    Outputs
    -------
    out_files
        The written images, in :data:`MAP_NAMES` order.
    """
    maps = expand_outputs(outputs)
    if "chimap" in maps and not _LABEL.fullmatch(inversion or ""):
        raise ValueError(f"inversion: expected an alphanumeric method name, got {inversion!r}")
    workflow = Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["source_files", *MAP_NAMES, *(f"{m}_meta" for m in MAP_NAMES)]),
        name="inputnode",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    merge = pe.Node(niu.Merge(max(len(maps), 1)), name="merge_out_files", run_without_submitting=True)
    workflow.connect(merge, "out", outputnode, "out_files")

    for i, m in enumerate(maps, start=1):
        entities, fixed, defaults = _SINKS[m]
        entities = dict(entities)
        if m == "chimap" and inversion != DEFAULT_INVERSION:
            entities["desc"] = inversion
        sink = pe.Node(
            DerivativesDataSink(base_directory=output_dir, bids_root=bids_root, compress=True,
                                meta_defaults=defaults, **entities, **fixed),
            name=f"ds_{m}",
            run_without_submitting=True,
        )
        workflow.connect([
            (inputnode, sink, [("source_files", "source_file"), (m, "in_file"), (f"{m}_meta", "meta_dict")]),
            (sink, merge, [("out_file", f"in{i}")]),
        ])
    return workflow
