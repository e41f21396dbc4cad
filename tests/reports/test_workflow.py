"""init_report_wf: which reportlets exist for which options, and the names the sinks wrote."""

from __future__ import annotations

import pytest

from qsmbids.workflows.reports import INPUT_FIELDS, init_report_wf

PLAUS = ("plausibility", "plausibility_metrics")  # always: real data have no truth


@pytest.mark.parametrize(
    ("outputs", "has_truth", "expected"),
    [
        (("chimap", "mask"), False, {"summary", "mask", "chimap", *PLAUS}),
        (("fields", "r2star", "t2star"), False, {"summary", "mask", "totalfield", "localfield", "r2star", *PLAUS}),
        (("swi", "minip", "chimap"), True,
         {"summary", "mask", "swi", "minip", "chimap", "accuracy", "accuracy_plot", "accuracy_metrics", *PLAUS}),
    ],
)
def test_nodes_follow_options(outputs, has_truth, expected):
    wf = init_report_wf(output_dir="/nonexistent/out", outputs=outputs, has_truth=has_truth, name="rep_wf")
    names = set(wf.list_node_names())
    assert {n[len("ds_report_"):] for n in names if n.startswith("ds_report_")} == expected
    assert ("accuracy_rpt" in names) == has_truth
    assert set(wf.get_node("inputnode").inputs.copyable_trait_names()) == set(INPUT_FIELDS)
    chimap = wf.get_node("chimap_rpt")
    if chimap is not None:
        assert (chimap.inputs.vmin, chimap.inputs.vmax, chimap.inputs.units) == (-0.15, 0.15, "ppm")
    ds = wf.get_node("ds_report_mask")
    assert ds.inputs.datatype == "figures" and ds.inputs.base_directory == "/nonexistent/out"


def test_sinks_wrote_bids_names(report_tree):
    fig = report_tree["out"] / "sub-01" / "figures"
    names = sorted(p.name for p in fig.iterdir())
    prefix = "sub-01_ses-1_run-01_desc-"
    assert names == sorted(prefix + n for n in (
        "accuracy_Chimap.html", "accuracy_Chimap.json", "accuracy_Chimap.svg", "chimap_Chimap.svg",
        "localfield_MEGRE.svg", "mask_MEGRE.svg", "minip_MEGRE.svg", "plausibility_Chimap.html", "plausibility_Chimap.json",
        "r2star_R2starmap.svg", "summary_MEGRE.html",
        "swi_MEGRE.svg", "totalfield_MEGRE.svg"))
