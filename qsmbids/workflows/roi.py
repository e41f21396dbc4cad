"""Regions of interest of one run: atlas (or existing segmentation) in the run's space, χ statistics per region,
their derivatives and their reportlets.

Outputs (in ``sub-<l>[/ses-<l>]/anat/``, named after the run like every other output):

=======================================================  =========================================================
``<prefix>_desc-<atlas>_dseg.nii.gz`` + ``.tsv``        labels in the run's space and their names (BIDS dseg)
``<prefix>_from-<space>_to-MEGRE_mode-image_xfm.h5``    ANTs composite resampling template images into the run
``<prefix>_from-MEGRE_to-<space>_mode-image_xfm.h5``    its inverse (run images into the template)
``<prefix>_from-MEGRE_to-T1w_mode-image_xfm.mat``       with a T1w: the rigid magnitude → T1w step (the two
                                                         composites are then ``from-T1w``/``to-T1w``)
``<prefix>_seg-<atlas>[_desc-<inv>]_stats.tsv`` + json  χ statistics per region (``.bidsignore``: no BIDS suffix
                                                         for tables of regional values yet); ``desc`` names a
                                                         non-default inversion, as the Chimap does
=======================================================  =========================================================

and the reportlets ``sub-<l>/figures/<prefix>_desc-roi_dseg.svg`` (regions over the magnitude) and
``<prefix>_desc-roistats_Chimap.html`` (the table).
"""

from __future__ import annotations

import re
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from ..config import DEFAULT_INVERSION
from ..interfaces.roi import (
    ApplyAtlas,
    RegisterTemplate,
    ResampleSegmentation,
    RoiDataSink,
    RoiOverlay,
    RoiStats,
    load_atlas,
)

__all__ = ["INPUT_FIELDS", "init_roi_wf", "segmentation_name"]

INPUT_FIELDS: tuple[str, ...] = ("source_files", "magnitude", "mask", "support", "chimap")
_SEED = 20240607


def segmentation_name(dseg: str | Path) -> str:
    """Name of an existing segmentation for output names: its ``desc`` (``aseg``), else ``segmentation``.

    >>> segmentation_name("/d/sub-01/anat/sub-01_desc-aseg_dseg.nii.gz"), segmentation_name("sub-01_dseg.nii")
    ('aseg', 'segmentation')
    """
    m = re.search(r"_desc-([A-Za-z0-9]+)_", Path(dseg).name)
    return m.group(1) if m else "segmentation"


def _sink(name: str, output_dir: str, bids_root: str | None, **entities) -> pe.Node:
    """A sink; with ``bids_root`` its sidecar gets ``Sources`` (not for label tables and figures: their JSON would
    collide with the image's sidecar or become a report item)."""
    kw = {"bids_root": bids_root} if bids_root else {}
    return pe.Node(RoiDataSink(base_directory=output_dir, **kw, **entities), name=name, run_without_submitting=True)


def init_roi_wf(*, output_dir: str, bids_root: str, inversion: str, reference: str, atlas: str = "HarvardOxford",
                t1w: str | None = None, segmentation: tuple[str, str, str | None] | None = None,
                seed: int = _SEED, name: str = "roi_wf") -> Workflow:
    """ROIs of one run.

    Parameters
    ----------
    atlas
        Atlas of ``qsmbids/data/atlas/`` registered into the run (ignored with ``segmentation``).
    t1w
        The subject's T1w: registered to the template instead of the magnitude (rigid magnitude → T1w first).
    segmentation
        ``(dseg, labels tsv, anatomical image on the dseg's grid or None)`` of an existing segmentation
        (``--segmentation-dir``), used instead of the atlas.
    inversion, reference
        The χ methods, recorded in the statistics sidecar; a non-default inversion names the table
        ``desc-<inversion>``.

    Inputs (``inputnode``): :data:`INPUT_FIELDS`: the run's raw ``source_files``, ``magnitude`` (4-D), brain
    ``mask``, ``support`` (where χ is defined) and the referenced ``chimap``.
    Outputs (``outputnode``): ``dseg``, ``dseg_tsv``, ``stats``; with the atlas also the template → run
    ``transforms`` and ``invert`` flags (ANTs order).

    >>> wf = init_roi_wf(output_dir="/tmp/o", bids_root="/tmp/r", inversion="medi", reference="mean")
    >>> sorted(n for n in wf.list_node_names() if n.startswith("ds_"))  # doctest: +NORMALIZE_WHITESPACE
    ['ds_report_roi', 'ds_report_roistats', 'ds_roi_dseg', 'ds_roi_dseg_tsv', 'ds_roi_stats', 'ds_roi_xfm_from',
     'ds_roi_xfm_to']
    """
    wf = Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=list(INPUT_FIELDS)), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["dseg", "dseg_tsv", "stats", "transforms", "invert"]),
                         name="outputnode")

    if segmentation is not None:
        dseg, tsv, anat = segmentation
        seg_name, space = segmentation_name(dseg), "native"
        roi_labels = pe.Node(ResampleSegmentation(in_dseg=dseg, in_tsv=tsv, seed=seed), name="roi_labels",
                             mem_gb=1.0)
        if anat:
            roi_labels.inputs.anat = anat
        wf.connect(inputnode, "magnitude", roi_labels, "reference")
        wf.__desc__ = (f"Regions of interest were taken from an existing segmentation (`{Path(dseg).name}`), "
                       "brought onto the run's grid " + ("by a rigid registration of the first-echo magnitude to "
                       "its anatomical image with ANTs [@avants2008] (nearest-neighbour labels). " if anat else
                       "by nearest-neighbour resampling in world coordinates. "))
    else:
        spec = load_atlas(atlas)
        seg_name, space = spec.name, spec.space
        roi_register = pe.Node(RegisterTemplate(atlas=atlas, seed=seed), name="roi_register", mem_gb=2.0)
        if t1w:
            roi_register.inputs.t1w = t1w
        roi_labels = pe.Node(ApplyAtlas(atlas=atlas), name="roi_labels", mem_gb=1.0)
        src = "T1w" if t1w else "MEGRE"
        ds_roi_xfm_to = _sink("ds_roi_xfm_to", output_dir, bids_root, suffix="xfm", to=space, mode="image",
                              **{"from": src})
        ds_roi_xfm_from = _sink("ds_roi_xfm_from", output_dir, bids_root, suffix="xfm", to=src, mode="image",
                                **{"from": space})
        wf.connect([
            (inputnode, roi_register, [("magnitude", "in_file"), ("mask", "in_mask")]),
            (inputnode, roi_labels, [("magnitude", "reference")]),
            (roi_register, roi_labels, [("transforms", "transforms"), ("invert", "invert")]),
            (roi_register, outputnode, [("transforms", "transforms"), ("invert", "invert")]),
            (inputnode, ds_roi_xfm_to, [("source_files", "source_file")]),
            (inputnode, ds_roi_xfm_from, [("source_files", "source_file")]),
            (roi_register, ds_roi_xfm_to, [("xfm_to_template", "in_file")]),
            (roi_register, ds_roi_xfm_from, [("xfm_from_template", "in_file")]),
        ])
        if t1w:
            ds_roi_xfm_t1w = _sink("ds_roi_xfm_t1w", output_dir, bids_root, suffix="xfm", to="T1w", mode="image",
                                   **{"from": "MEGRE"})
            wf.connect([(inputnode, ds_roi_xfm_t1w, [("source_files", "source_file")]),
                        (roi_register, ds_roi_xfm_t1w, [("xfm_to_t1w", "in_file")])])
        target = ("the subject's T1w image (skull-stripped with the run's brain mask after a rigid alignment of the "
                  "first-echo magnitude)" if t1w else "the first-echo magnitude inside the brain mask")
        wf.__desc__ = (f"For regional analyses, {target} was registered to the {space} template with affine and "
                       "symmetric normalization (SyN) transforms [@avants2008] in ANTs (antspyx; Mattes mutual "
                       "information, one thread and a fixed seed for reproducibility), and the "
                       f"{spec.name} subcortical atlas [@desikan2006] (maximum probability labels, "
                       f"{spec.threshold:g} % threshold) was resampled into the run's space with nearest-neighbour "
                       "interpolation. ")
    wf.__desc__ += ("The number of voxels, volume, mean, median, standard deviation, interquartile range and 5th and "
                    "95th percentiles of the referenced susceptibility were computed in each region, over the voxels "
                    "where the susceptibility map is defined.")

    method_desc = {} if inversion == DEFAULT_INVERSION else {"desc": inversion}
    roi_stats = pe.Node(RoiStats(atlas=seg_name, space=space, method=inversion, reference=reference),
                        name="roi_stats", mem_gb=1.0)
    roi_overlay = pe.Node(RoiOverlay(), name="roi_overlay", mem_gb=0.5)
    ds_roi_dseg = _sink("ds_roi_dseg", output_dir, bids_root, desc=seg_name, suffix="dseg", compress=True,
                        meta_defaults={"Description": f"{seg_name} labels in the run's space",
                                       "Atlas": seg_name, "AtlasSpace": space})
    ds_roi_dseg_tsv = _sink("ds_roi_dseg_tsv", output_dir, None, desc=seg_name, suffix="dseg")
    ds_roi_stats = _sink("ds_roi_stats", output_dir, bids_root, segmentation=seg_name, suffix="stats",
                         **method_desc)
    ds_report_roi = _sink("ds_report_roi", output_dir, None, datatype="figures", desc="roi", suffix="dseg")
    ds_report_roistats = _sink("ds_report_roistats", output_dir, None, datatype="figures", desc="roistats",
                               suffix="Chimap")
    wf.connect([
        (inputnode, roi_stats, [("chimap", "in_chimap"), ("support", "in_mask")]),
        (roi_labels, roi_stats, [("out_dseg", "in_dseg"), ("out_tsv", "in_tsv")]),
        (inputnode, roi_overlay, [("magnitude", "in_file")]),
        (roi_labels, roi_overlay, [("out_dseg", "in_dseg"), ("out_tsv", "in_tsv")]),
        (inputnode, ds_roi_dseg, [("source_files", "source_file")]),
        (roi_labels, ds_roi_dseg, [("out_dseg", "in_file")]),
        (inputnode, ds_roi_dseg_tsv, [("source_files", "source_file")]),
        (roi_labels, ds_roi_dseg_tsv, [("out_tsv", "in_file")]),
        (inputnode, ds_roi_stats, [("source_files", "source_file")]),
        (roi_stats, ds_roi_stats, [("out_tsv", "in_file"), ("out_meta", "meta_dict")]),
        (inputnode, ds_report_roi, [("source_files", "source_file")]),
        (roi_overlay, ds_report_roi, [("out_report", "in_file")]),
        (inputnode, ds_report_roistats, [("source_files", "source_file")]),
        (roi_stats, ds_report_roistats, [("out_report", "in_file")]),
        (roi_labels, outputnode, [("out_dseg", "dseg"), ("out_tsv", "dseg_tsv")]),
        (ds_roi_stats, outputnode, [("out_file", "stats")]),
    ])
    return wf
