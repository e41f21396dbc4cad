"""Reportlets of one run: figures and HTML fragments written to ``sub-XX/figures/`` for the visual report.

Every reportlet is a node (``<desc>_rpt``) followed by a sink ``ds_report_<desc>`` (qsmbids'
:class:`~qsmbids.interfaces.bids.DerivativesDataSink` with ``datatype="figures"``); names come from
:data:`qsmbids.reports.REPORTLETS`, the table :func:`qsmbids.reports.core.generate_reports` also reads. Writing them
as derivatives (rather than building the page in the workflow) lets ``--reports-only`` rebuild the page from what
is on disk, as in fMRIPrep.
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from ..interfaces.plausibility import Plausibility
from ..interfaces.reports import Accuracy, MapReportlet, MaskReportlet, RunSummary
from ..reports import REPORTLETS

__all__ = ["INPUT_FIELDS", "MAP_REPORTLETS", "init_report_wf"]

INPUT_FIELDS: tuple[str, ...] = (
    "source_file", "magnitude", "mask", "total_field", "local_field", "chimap", "r2star", "swi", "minip", "meta",
    "truth_chimap", "truth_mask", "truth_dseg", "truth_dseg_tsv", "roi_dseg", "roi_dseg_tsv", "roi_transforms",
    "roi_invert",
)

#: map reportlet desc (also its style key in reportlets.MAP_STYLES) → (inputnode field, output that enables it)
MAP_REPORTLETS: dict[str, tuple[str, str]] = {
    "totalfield": ("total_field", "fields"),
    "localfield": ("local_field", "fields"),
    "chimap": ("chimap", "chimap"),
    "r2star": ("r2star", "r2star"),
    "swi": ("swi", "swi"),
    "minip": ("minip", "minip"),
}


def _sink(output_dir: str, desc: str, name: str | None = None) -> pe.Node:
    from ..interfaces.bids import DerivativesDataSink

    return pe.Node(
        DerivativesDataSink(base_directory=output_dir, datatype="figures", desc=desc, suffix=REPORTLETS[desc][0],
                            dismiss_entities=("echo", "part")),
        name=name or f"ds_report_{desc}",
        run_without_submitting=True,
    )


def init_report_wf(*, output_dir: str, outputs: tuple[str, ...], has_truth: bool, name: str = "report_wf") -> Workflow:
    """Reportlets of one run and their sinks.

    Always: the run summary (from the stage metadata list ``meta``), the plausibility checks
    (:mod:`qsmbids.interfaces.plausibility`; nuclei vs white matter needs ``roi_dseg``/``roi_dseg_tsv`` and, for
    the white-matter prior, ``roi_transforms``/``roi_invert``) and the mask outline (on the first-echo
    ``magnitude``, or on the mask alone for phase-only runs: the mask is computed whatever ``outputs`` says).
    One map reportlet per map enabled in ``outputs`` ("fields" → total and local field, "chimap", "r2star",
    "swi", "minip"), with the fixed windows of :data:`qsmbids.reports.reportlets.MAP_STYLES`. With ``has_truth``:
    the accuracy fragment, its scatter plot and a metrics JSON (needs ``chimap`` and ``truth_chimap``; the truth
    mask, segmentation and its TSV are optional inputs).

    Inputs (``inputnode``): :data:`INPUT_FIELDS`; ``source_file`` is the run's first phase file, whose entities
    (minus ``echo`` and ``part``) name the figures.

    >>> wf = init_report_wf(output_dir="/tmp/out", outputs=("chimap", "mask"), has_truth=True)
    >>> sorted(n for n in wf.list_node_names() if n.startswith("ds_report_"))  # doctest: +NORMALIZE_WHITESPACE
    ['ds_report_accuracy', 'ds_report_accuracy_metrics', 'ds_report_accuracy_plot', 'ds_report_chimap',
     'ds_report_mask', 'ds_report_plausibility', 'ds_report_plausibility_metrics', 'ds_report_summary']
    """
    from ..reports.reportlets import MAP_STYLES

    wf = Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=list(INPUT_FIELDS)), name="inputnode")

    summary_rpt = pe.Node(RunSummary(), name="summary_rpt", mem_gb=0.1)
    ds_report_summary = _sink(output_dir, "summary")
    mask_rpt = pe.Node(MaskReportlet(), name="mask_rpt", mem_gb=0.5)
    ds_report_mask = _sink(output_dir, "mask")
    wf.connect([
        (inputnode, summary_rpt, [("meta", "in_files")]),
        (inputnode, ds_report_summary, [("source_file", "source_file")]),
        (summary_rpt, ds_report_summary, [("out_report", "in_file")]),
        (inputnode, mask_rpt, [("magnitude", "in_file"), ("mask", "in_mask")]),
        (inputnode, ds_report_mask, [("source_file", "source_file")]),
        (mask_rpt, ds_report_mask, [("out_report", "in_file")]),
    ])

    # plausibility (brain volume, echo fit, nuclei vs white matter): real data have no truth
    plausibility_rpt = pe.Node(Plausibility(), name="plausibility_rpt", mem_gb=1.0)
    ds_report_plausibility = _sink(output_dir, "plausibility")
    ds_report_plausibility_metrics = _sink(output_dir, "plausibility", "ds_report_plausibility_metrics")
    wf.connect([
        (inputnode, plausibility_rpt, [("chimap", "in_chimap"), ("mask", "in_mask"), ("meta", "meta"),
                                       ("roi_dseg", "in_dseg"), ("roi_dseg_tsv", "in_tsv"),
                                       ("roi_transforms", "transforms"), ("roi_invert", "invert")]),
        (inputnode, ds_report_plausibility, [("source_file", "source_file")]),
        (inputnode, ds_report_plausibility_metrics, [("source_file", "source_file")]),
        (plausibility_rpt, ds_report_plausibility, [("out_report", "in_file")]),
        (plausibility_rpt, ds_report_plausibility_metrics, [("out_metrics", "in_file")]),
    ])

    for desc, (field, enabled_by) in MAP_REPORTLETS.items():
        if enabled_by not in outputs:
            continue
        style = MAP_STYLES[desc]
        kw = {k: v for k, v in (("vmin", style.vmin), ("vmax", style.vmax)) if v is not None}
        rpt = pe.Node(MapReportlet(cmap=style.cmap, label=style.label, units=style.units, auto=style.auto,
                                   out_name=f"{desc}.svg", **kw), name=f"{desc}_rpt", mem_gb=0.5)
        ds = _sink(output_dir, desc)
        wf.connect([
            (inputnode, rpt, [(field, "in_file"), ("mask", "in_mask")]),
            (inputnode, ds, [("source_file", "source_file")]),
            (rpt, ds, [("out_report", "in_file")]),
        ])

    if has_truth:
        accuracy_rpt = pe.Node(Accuracy(), name="accuracy_rpt", mem_gb=1.0)
        ds_report_accuracy = _sink(output_dir, "accuracy")
        ds_report_accuracy_plot = _sink(output_dir, "accuracy", "ds_report_accuracy_plot")
        ds_report_accuracy_metrics = _sink(output_dir, "accuracy", "ds_report_accuracy_metrics")
        wf.connect([
            (inputnode, accuracy_rpt, [("chimap", "in_chimap"), ("mask", "in_mask"),
                                       ("truth_chimap", "truth_chimap"), ("truth_mask", "truth_mask"),
                                       ("truth_dseg", "truth_dseg"), ("truth_dseg_tsv", "truth_dseg_tsv")]),
            (inputnode, ds_report_accuracy, [("source_file", "source_file")]),
            (inputnode, ds_report_accuracy_plot, [("source_file", "source_file")]),
            (inputnode, ds_report_accuracy_metrics, [("source_file", "source_file")]),
            (accuracy_rpt, ds_report_accuracy, [("out_report", "in_file")]),
            (accuracy_rpt, ds_report_accuracy_plot, [("out_figure", "in_file")]),
            (accuracy_rpt, ds_report_accuracy_metrics, [("out_metrics", "in_file")]),
        ])
    return wf
