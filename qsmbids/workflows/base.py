"""The top of the participant-level workflow: ``qsmbids_wf`` → one ``sub_<label>_wf`` per subject → one
``<run>_wf`` per MEGRE run, each made of the stage workflows of :mod:`qsmbids.workflows.qsm`, the derivative
sinks of :mod:`qsmbids.workflows.outputs` and the reportlets of :mod:`qsmbids.workflows.reports`.

Factories receive plain values (a list of run descriptions and the processing choices); nothing reads a global.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from .. import __version__
from ..interfaces.io import LoadMegre, SidecarMetadata
from . import qsm as stages

__all__ = ["init_qsmbids_wf", "init_single_run_wf", "init_single_subject_wf", "roi_inputs", "run_stages", "wf_name"]


def wf_name(run_name: str) -> str:
    """``sub-01_ses-1_run-2`` → ``sub_01_ses_1_run_2_wf`` (nipype names are identifiers)."""
    return re.sub(r"\W", "_", run_name.replace("-", "_")) + "_wf"


def run_stages(*, has_magnitude: bool, n_echoes: int, outputs: tuple[str, ...]) -> tuple[str, ...]:
    """The stages a run goes through (``load`` … ``swi``), in order; relaxometry and SWI need the magnitude."""
    out = ["load", "mask", "unwrap", "combine", "bgremove", "invert", "reference"]
    if has_magnitude and n_echoes >= 2 and {"r2star", "t2star"} & set(outputs):
        out.append("relax")
    if has_magnitude and {"swi", "minip"} & set(outputs):
        out.append("swi")
    return tuple(out)


def roi_inputs(run: dict[str, Any], bids_root: str, processing: dict[str, Any]) -> dict[str, Any] | None:
    """How a run gets its regions: ``{"atlas", "t1w", "segmentation"}``, or None for no ROI step.

    ``processing["roi"]`` (default True) turns the step on; it needs the magnitude to register the atlas, or an
    existing segmentation (``processing["segmentation_dir"]``). The subject's T1w (``run["t1w"]``, else the
    first ``*_T1w.nii*`` of the run's session, then of the subject) is the registration target when there is one.
    A run without a segmentation in the segmentation folder gets no ROI step (the group level lists it as missing).
    """
    from ..interfaces.roi import find_segmentation, find_t1w

    if not processing.get("roi", True):
        return None
    seg_dir = processing.get("segmentation_dir")
    t1w = run["t1w"] if "t1w" in run else find_t1w(bids_root, run["entities"])
    if seg_dir:
        found = find_segmentation(seg_dir, run["entities"])
        if found is None or found[1] is None:
            import logging

            logging.getLogger("qsmbids").warning("[%s] no segmentation with a labels TSV in %s: no ROI statistics",
                                                 run["name"], seg_dir)
            return None
        dseg, tsv = found
        return {"atlas": None, "t1w": None, "segmentation": (str(dseg), str(tsv), _same_grid_anat(dseg, t1w))}
    if not run["magnitude"]:
        return None
    return {"atlas": processing.get("atlas", "HarvardOxford"), "t1w": t1w, "segmentation": None}


def _same_grid_anat(dseg, t1w: str | None) -> str | None:
    """An anatomical image on the segmentation's grid (a preprocessed T1w beside it, or the raw T1w): the target
    of the rigid magnitude registration that brings the segmentation into the run."""
    from pathlib import Path

    import nibabel as nib
    import numpy as np

    ref = nib.load(str(dseg))
    cands = sorted(Path(dseg).parent.glob("*desc-preproc_T1w.nii*")) + ([Path(t1w)] if t1w else [])
    for c in cands:
        img = nib.load(str(c))
        if img.shape[:3] == ref.shape[:3] and np.allclose(img.affine, ref.affine, atol=1e-3):
            return str(c)
    return None


def init_qsmbids_wf(
    *,
    runs: list[dict[str, Any]],
    output_dir: str,
    bids_root: str,
    run_uuid: str,
    processing: dict[str, Any],
    omp_nthreads: int = 1,
    device: str = "cpu",
    name: str = "qsmbids_wf",
) -> Workflow:
    """Everything for the given runs. ``runs``: dicts with name, entities, phase, magnitude, echo_times,
    field_strength, phase_units, sources, warnings, truth, n_voxels. ``processing``: mask, unwrap, combine,
    bgremove, inversion, reference (method names), params ({method or stage: {name: value}}), b0_direction
    ("auto" or 3 floats) and outputs (tuple); optional roi (bool, default True), atlas and segmentation_dir (see
    :func:`roi_inputs`)."""
    wf = Workflow(name=name)
    wf.__desc__ = (f"Results included in this manuscript come from preprocessing performed using *qsmbids* "
                   f"{__version__}, which is based on *Nipype* [@nipype1] and *NiWorkflows*, with inputs found by "
                   "*PyBIDS* [@pybids] and the numerical work done with *PyTorch* [@pytorch]. ")
    by_subject: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_subject[run["entities"]["subject"]].append(run)
    for subject in sorted(by_subject):
        sub_wf = init_single_subject_wf(subject=subject, runs=by_subject[subject], output_dir=output_dir,
                                        bids_root=bids_root, processing=processing, omp_nthreads=omp_nthreads,
                                        device=device)
        crash_dir = f"{output_dir}/sub-{subject}/log/{run_uuid}"
        sub_wf.config["execution"]["crashdump_dir"] = crash_dir
        # nipype merges only the top workflow's config into the nodes: set the crash folder on every node
        for node in sub_wf._get_all_nodes():
            cfg = dict(node.config or {})
            cfg["execution"] = {**cfg.get("execution", {}), "crashdump_dir": crash_dir}
            node.config = cfg
        wf.add_nodes([sub_wf])
    return wf


def init_single_subject_wf(*, subject: str, runs: list[dict[str, Any]], output_dir: str, bids_root: str,
                           processing: dict[str, Any], omp_nthreads: int = 1, device: str = "cpu",
                           name: str | None = None) -> Workflow:
    """All runs of one subject (their crash files go to ``sub-<label>/log/<run uuid>/``)."""
    wf = Workflow(name=name or "sub_" + re.sub(r"\W", "_", subject) + "_wf")
    n = len(runs)
    wf.__desc__ = (f"\n\n### Susceptibility mapping\n\nFor each of the {n} multi-echo gradient-echo run"
                   f"{'s' if n != 1 else ''} found for this participant, the following steps were performed. ")
    for run in runs:
        wf.add_nodes([init_single_run_wf(run=run, output_dir=output_dir, bids_root=bids_root, processing=processing,
                                         omp_nthreads=omp_nthreads, device=device)])
    return wf


def init_single_run_wf(*, run: dict[str, Any], output_dir: str, bids_root: str, processing: dict[str, Any],
                       omp_nthreads: int = 1, device: str = "cpu", name: str | None = None) -> Workflow:
    """One MEGRE run: load → mask → unwrap → combine → background removal → inversion → reference
    (→ R2*/T2*, SWI/minIP), then regions of interest (:func:`roi_inputs`), derivatives and reportlets."""
    from .outputs import init_ds_run_wf
    from .reports import init_report_wf

    outputs = tuple(processing["outputs"])
    params = processing.get("params", {})
    has_mag = bool(run["magnitude"])
    n_echoes = len(run["echo_times"])
    todo = run_stages(has_magnitude=has_mag, n_echoes=n_echoes, outputs=outputs)
    # a run makes only the outputs its stages can: sinks/reportlets for the others would have no input
    outputs = tuple(o for o in outputs if not ((o in ("r2star", "t2star") and "relax" not in todo)
                                               or (o in ("swi", "minip") and "swi" not in todo)))
    nvox = int(run.get("n_voxels", 256 * 256 * 176))

    def mem(stage: str) -> float:
        return stages.stage_mem_gb(stage, nvox, n_echoes)

    def p(stage: str, method: str | None = None) -> dict:
        return {**params.get(stage, {}), **(params.get(method, {}) if method else {})}

    wf = Workflow(name=name or wf_name(run["name"]))
    load = pe.Node(LoadMegre(phase_files=list(run["phase"]), magnitude_files=list(run["magnitude"]),
                             echo_times=list(run["echo_times"]), field_strength=run["field_strength"],
                             phase_units=run.get("phase_units") or "", entities=dict(run["entities"]),
                             representation=run.get("representation", "mag-phase"),
                             sources=list(run.get("sources", [])), warnings=list(run.get("warnings", []))),
                   name="load", mem_gb=mem("load"))
    b0 = processing.get("b0_direction", "auto")
    if b0 != "auto":
        load.inputs.b0_direction = [float(x) for x in b0]

    kw = {"omp_nthreads": omp_nthreads}
    mask_wf = stages.init_mask_wf(method=processing["mask"], params=p("mask", processing["mask"]),
                                  has_magnitude=has_mag, mem_gb=mem("mask"), device=device,
                                  user_mask=run.get("mask_file"), **kw)
    unwrap_wf = stages.init_unwrap_wf(method=processing["unwrap"], params=p("unwrap", processing["unwrap"]),
                                      has_magnitude=has_mag, n_echoes=n_echoes, mem_gb=mem("unwrap"), **kw)
    combine_wf = stages.init_combine_wf(method=processing["combine"], params=p("combine", processing["combine"]),
                                        has_magnitude=has_mag, n_echoes=n_echoes, mem_gb=mem("combine"), **kw)
    bgremove_wf = stages.init_bgremove_wf(method=processing["bgremove"],
                                          params=p("bgremove", processing["bgremove"]), mem_gb=mem("bgremove"),
                                          device=device, **kw)
    invert_wf = stages.init_invert_wf(method=processing["inversion"], params=p("inversion", processing["inversion"]),
                                      has_magnitude=has_mag, mem_gb=mem("invert"), device=device, **kw)
    reference_wf = stages.init_reference_wf(method=processing["reference"],
                                            params=p("reference", processing["reference"]), has_magnitude=has_mag,
                                            mem_gb=mem("reference"), **kw)
    wf.__desc__ = (f"\n\n#### {run['name']}\n\nThe {n_echoes} echo{'es' if n_echoes != 1 else ''} "
                   f"(echo times {', '.join(f'{1000 * t:g}' for t in run['echo_times'])} ms, "
                   f"{run['field_strength']:g} T) were loaded and the phase scaled to radians. ")

    wf.connect([
        (load, mask_wf, [("out_meta", "inputnode.in_meta"), ("phase", "inputnode.phase")]),
        (load, unwrap_wf, [("out_meta", "inputnode.in_meta"), ("phase", "inputnode.phase")]),
        (mask_wf, unwrap_wf, [("outputnode.out_file", "inputnode.mask")]),
        (load, combine_wf, [("out_meta", "inputnode.in_meta")]),
        (unwrap_wf, combine_wf, [("outputnode.out_file", "inputnode.phase")]),
        (mask_wf, combine_wf, [("outputnode.out_file", "inputnode.mask")]),
        (load, bgremove_wf, [("out_meta", "inputnode.in_meta")]),
        (combine_wf, bgremove_wf, [("outputnode.out_file", "inputnode.field")]),
        (mask_wf, bgremove_wf, [("outputnode.out_file", "inputnode.mask")]),
        (load, invert_wf, [("out_meta", "inputnode.in_meta")]),
        (bgremove_wf, invert_wf, [("outputnode.out_file", "inputnode.field"),
                                  ("outputnode.out_mask", "inputnode.mask")]),
        (load, reference_wf, [("out_meta", "inputnode.in_meta")]),
        (invert_wf, reference_wf, [("outputnode.out_file", "inputnode.chi")]),
        *([(combine_wf, invert_wf, [("outputnode.noise", "inputnode.noise")])]
          if stages.uses_noise_map(processing["inversion"], p("inversion", processing["inversion"])) else []),
        (bgremove_wf, reference_wf, [("outputnode.out_mask", "inputnode.mask")]),
    ])
    if has_mag:
        wf.connect([(load, w, [("magnitude", "inputnode.magnitude")]) for w in (mask_wf, unwrap_wf, combine_wf)])
        if processing["inversion"] == "medi":
            wf.connect(load, "magnitude", invert_wf, "inputnode.magnitude")
        if processing["reference"] == "csf":
            wf.connect(load, "magnitude", reference_wf, "inputnode.magnitude")

    # stage records, in order, for the sidecars and the report
    meta_sources = [(load, "out_meta"), (mask_wf, "outputnode.meta"), (unwrap_wf, "outputnode.meta"),
                    (combine_wf, "outputnode.meta"), (bgremove_wf, "outputnode.meta"), (invert_wf, "outputnode.meta"),
                    (reference_wf, "outputnode.meta")]
    relax_wf = swi_wf = None
    if "relax" in todo:
        relax_wf = stages.init_relax_wf(params=p("relax"), mem_gb=mem("relax"), **kw)
        wf.connect([(load, relax_wf, [("out_meta", "inputnode.in_meta"), ("magnitude", "inputnode.magnitude")]),
                    (mask_wf, relax_wf, [("outputnode.out_file", "inputnode.mask")])])
        meta_sources.append((relax_wf, "outputnode.meta"))
    if "swi" in todo:
        swi_wf = init_swi = stages.init_swi_wf(params=p("swi"), mem_gb=mem("swi"), **kw)
        wf.connect([(load, init_swi, [("out_meta", "inputnode.in_meta"), ("magnitude", "inputnode.magnitude"),
                                      ("phase", "inputnode.phase")]),
                    (mask_wf, init_swi, [("outputnode.out_file", "inputnode.mask")])])
        meta_sources.append((swi_wf, "outputnode.meta"))
    merge_meta = pe.Node(niu.Merge(len(meta_sources)), name="merge_meta", run_without_submitting=True)
    for i, (src, field) in enumerate(meta_sources, start=1):
        wf.connect(src, field, merge_meta, f"in{i}")
    sidecars = pe.Node(SidecarMetadata(), name="sidecars", run_without_submitting=True)
    wf.connect(merge_meta, "out", sidecars, "meta_files")

    # derivatives
    ds_run_wf = init_ds_run_wf(bids_root=bids_root, output_dir=output_dir, outputs=outputs,
                               inversion=processing["inversion"])
    ds_run_wf.inputs.inputnode.source_files = list(run["phase"]) + list(run["magnitude"])
    wf.connect([
        (mask_wf, ds_run_wf, [("outputnode.out_file", "inputnode.mask")]),
        (combine_wf, ds_run_wf, [("outputnode.out_file", "inputnode.total_field")]),
        (bgremove_wf, ds_run_wf, [("outputnode.out_file", "inputnode.local_field")]),
        (reference_wf, ds_run_wf, [("outputnode.out_file", "inputnode.chimap")]),
        (sidecars, ds_run_wf, [(f, f"inputnode.{f}") for f in ("mask_meta", "total_field_meta", "local_field_meta",
                                                                "chimap_meta", "r2star_meta", "t2star_meta",
                                                                "swi_meta", "minip_meta")]),
    ])
    if relax_wf is not None:
        wf.connect(relax_wf, "outputnode.r2star", ds_run_wf, "inputnode.r2star")
        wf.connect(relax_wf, "outputnode.t2star", ds_run_wf, "inputnode.t2star")
    if swi_wf is not None:
        wf.connect(swi_wf, "outputnode.swi", ds_run_wf, "inputnode.swi")
        wf.connect(swi_wf, "outputnode.minip", ds_run_wf, "inputnode.minip")

    # regions of interest
    roi = roi_inputs(run, bids_root, processing)
    if roi is not None:
        from .roi import init_roi_wf

        roi_wf = init_roi_wf(output_dir=output_dir, bids_root=bids_root, inversion=processing["inversion"],
                             reference=processing["reference"], atlas=roi["atlas"] or "HarvardOxford",
                             t1w=roi["t1w"], segmentation=roi["segmentation"])
        roi_wf.inputs.inputnode.source_files = list(run["phase"]) + list(run["magnitude"])
        wf.connect([
            (mask_wf, roi_wf, [("outputnode.out_file", "inputnode.mask")]),
            (bgremove_wf, roi_wf, [("outputnode.out_mask", "inputnode.support")]),
            (reference_wf, roi_wf, [("outputnode.out_file", "inputnode.chimap")]),
        ])
        if has_mag:
            wf.connect(load, "magnitude", roi_wf, "inputnode.magnitude")
        else:  # an existing segmentation on a phase-only run: the χ map gives the grid
            wf.connect(reference_wf, "outputnode.out_file", roi_wf, "inputnode.magnitude")

    # reportlets
    truth = run.get("truth") or {}
    report_wf = init_report_wf(output_dir=output_dir, outputs=outputs, has_truth=bool(truth))
    report_wf.inputs.inputnode.source_file = run["phase"][0]
    for key in ("chimap", "mask", "dseg", "dseg_tsv"):
        if truth.get(key):
            setattr(report_wf.inputs.inputnode, f"truth_{key}", truth[key])
    wf.connect([
        (mask_wf, report_wf, [("outputnode.out_file", "inputnode.mask")]),
        (combine_wf, report_wf, [("outputnode.out_file", "inputnode.total_field")]),
        (bgremove_wf, report_wf, [("outputnode.out_file", "inputnode.local_field")]),
        (reference_wf, report_wf, [("outputnode.out_file", "inputnode.chimap")]),
        (merge_meta, report_wf, [("out", "inputnode.meta")]),
    ])
    if has_mag:
        wf.connect(load, "magnitude", report_wf, "inputnode.magnitude")
    if roi is not None:
        wf.connect(roi_wf, "outputnode.dseg", report_wf, "inputnode.roi_dseg")
        wf.connect(roi_wf, "outputnode.dseg_tsv", report_wf, "inputnode.roi_dseg_tsv")
        if roi["segmentation"] is None:
            wf.connect(roi_wf, "outputnode.transforms", report_wf, "inputnode.roi_transforms")
            wf.connect(roi_wf, "outputnode.invert", report_wf, "inputnode.roi_invert")
    if relax_wf is not None:
        wf.connect(relax_wf, "outputnode.r2star", report_wf, "inputnode.r2star")
    if swi_wf is not None:
        wf.connect(swi_wf, "outputnode.swi", report_wf, "inputnode.swi")
        wf.connect(swi_wf, "outputnode.minip", report_wf, "inputnode.minip")
    return wf
