"""The ROI workflow: graphs for the atlas, T1w and segmentation variants, its place in the run workflow, and one
execution with an existing segmentation whose outputs pass the BIDS validator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

os.environ.setdefault("NIPYPE_NO_ET", "1")

import nibabel as nb
import numpy as np
import pytest

from qsmbids.reports.tables import read_stats_tsv
from qsmbids.utils.derivatives import write_bidsignore, write_derivative_description
from qsmbids.workflows.base import init_single_run_wf, roi_inputs
from qsmbids.workflows.roi import init_roi_wf

PROC = {"mask": "combined", "unwrap": "quality", "combine": "snr", "bgremove": "vsharp", "inversion": "medi",
        "reference": "mean", "params": {}, "b0_direction": "auto", "outputs": ("chimap", "mask")}


def _sinks(wf) -> list[str]:
    return sorted(n.split(".")[-1] for n in wf.list_node_names() if n.split(".")[-1].startswith("ds_"))


def test_atlas_and_t1w_graphs_and_boilerplate(tmp_path):
    t1w = tmp_path / "sub-01_T1w.nii"
    t1w.write_bytes(b"")
    wf = init_roi_wf(output_dir="/o", bids_root="/r", inversion="tkd", reference="mean", t1w=str(t1w))
    assert "ds_roi_xfm_t1w" in _sinks(wf)
    nodes = {n.split(".")[-1]: wf.get_node(n) for n in wf.list_node_names()}
    assert nodes["roi_register"].inputs.t1w == str(t1w)
    assert nodes["ds_roi_stats"].inputs.desc == "tkd"  # a non-default inversion names the table
    assert getattr(nodes["ds_roi_xfm_to"].inputs, "from") == "T1w"
    assert "[@avants2008]" in wf.__desc__ and "HarvardOxford" in wf.__desc__ and "T1w" in wf.__desc__
    for name in ("sub-01_desc-aseg_dseg.nii.gz", "x.tsv"):
        (tmp_path / name).write_bytes(b"")
    seg = init_roi_wf(output_dir="/o", bids_root="/r", inversion="medi", reference="mean",
                      segmentation=(str(tmp_path / "sub-01_desc-aseg_dseg.nii.gz"), str(tmp_path / "x.tsv"), None))
    assert not any("xfm" in s for s in _sinks(seg)) and "roi_register" not in seg.list_node_names()
    assert "world coordinates" in seg.__desc__


def _run(tmp_path, magnitude=True):
    raw = tmp_path / "raw" / "sub-01" / "anat"
    raw.mkdir(parents=True, exist_ok=True)
    for part in ("phase", "mag"):
        (raw / f"sub-01_echo-1_part-{part}_MEGRE.nii").write_bytes(b"")
    return {"name": "sub-01", "entities": {"subject": "01"}, "phase": [str(raw / "sub-01_echo-1_part-phase_MEGRE.nii")],
            "magnitude": [str(raw / "sub-01_echo-1_part-mag_MEGRE.nii")] if magnitude else [],
            "echo_times": [0.004, 0.008], "field_strength": 3.0, "truth": {}}


def test_roi_step_in_the_run_workflow(tmp_path):
    run = _run(tmp_path)
    names = init_single_run_wf(run=run, output_dir="/o", bids_root=str(tmp_path / "raw"),
                               processing=PROC).list_node_names()
    assert "roi_wf.roi_register" in names and "roi_wf.ds_roi_stats" in names
    assert roi_inputs(run, str(tmp_path / "raw"), PROC) == {"atlas": "HarvardOxford", "t1w": None,
                                                           "segmentation": None}
    off = init_single_run_wf(run=run, output_dir="/o", bids_root="/r", processing={**PROC, "roi": False})
    assert not any(n.startswith("roi_wf") for n in off.list_node_names())
    phase_only = {**PROC, "mask": "quality", "inversion": "rts", "combine": "uniform"}
    assert roi_inputs(_run(tmp_path, magnitude=False), "/r", phase_only) is None
    t1 = tmp_path / "raw" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    t1.write_bytes(b"")
    assert roi_inputs(run, str(tmp_path / "raw"), PROC)["t1w"] == str(t1)


@pytest.fixture(scope="module")
def seg_outputs(sim_bids, tmp_path_factory):
    """Run the ROI workflow on the simulator's truth χ with its own labels as --segmentation-dir."""
    tmp = tmp_path_factory.mktemp("roiwf")
    truth = sim_bids / "derivatives" / "qsmbids-sim" / "sub-01" / "anat"
    mags = sorted((sim_bids / "sub-01" / "anat").glob("*part-mag_MEGRE.nii.gz"))
    imgs = [nb.load(m) for m in mags]
    nb.save(nb.Nifti1Image(np.stack([np.asanyarray(i.dataobj) for i in imgs], -1).astype(np.float32),
                           imgs[0].affine), tmp / "mag.nii.gz")
    out = tmp / "out"
    run = {"name": "sub-01", "entities": {"subject": "01"}, "magnitude": [str(m) for m in mags]}
    roi = roi_inputs(run, str(sim_bids), {"segmentation_dir": str(sim_bids / "derivatives" / "qsmbids-sim")})
    wf = init_roi_wf(output_dir=str(out), bids_root=str(sim_bids), inversion="medi", reference="mean",
                     segmentation=roi["segmentation"])
    wf.base_dir = str(tmp / "work")
    phase = sorted((sim_bids / "sub-01" / "anat").glob("*part-phase_MEGRE.nii.gz"))
    wf.inputs.inputnode.source_files = [str(p) for p in phase + mags]
    wf.inputs.inputnode.magnitude = str(tmp / "mag.nii.gz")
    wf.inputs.inputnode.chimap = str(truth / "sub-01_Chimap.nii.gz")
    wf.inputs.inputnode.support = str(truth / "sub-01_desc-brain_mask.nii.gz")
    wf.inputs.inputnode.mask = str(truth / "sub-01_desc-brain_mask.nii.gz")
    wf.run(plugin="Linear")
    return out, truth, roi


def test_segmentation_outputs(seg_outputs):
    out, truth, roi = seg_outputs
    assert roi["segmentation"][0].endswith("sub-01_dseg.nii.gz") and roi["segmentation"][2] is None
    anat = out / "sub-01" / "anat"
    assert sorted(p.name for p in anat.iterdir()) == [
        "sub-01_desc-segmentation_dseg.json", "sub-01_desc-segmentation_dseg.nii.gz",
        "sub-01_desc-segmentation_dseg.tsv", "sub-01_seg-segmentation_stats.json",
        "sub-01_seg-segmentation_stats.tsv"]
    rows = {r["name"]: r for r in read_stats_tsv(anat / "sub-01_seg-segmentation_stats.tsv")}
    chi = np.asanyarray(nb.load(truth / "sub-01_Chimap.nii.gz").dataobj)
    lab = np.asanyarray(nb.load(truth / "sub-01_dseg.nii.gz").dataobj)
    for name, idx in (("putamen_left", 6), ("globus_pallidus_right", 9)):
        sel = (lab == idx) & (chi != 0)
        assert rows[name]["mean"] == pytest.approx(float(chi[sel].mean()), abs=1e-6)
        assert rows[name]["voxels"] == int(sel.sum()) and rows[name]["volume_mm3"] == 27.0 * sel.sum()
    assert json.loads((anat / "sub-01_seg-segmentation_stats.json").read_text())["Sources"][0].startswith("bids:raw:")
    figs = sorted(p.name for p in (out / "sub-01" / "figures").iterdir())
    assert figs == ["sub-01_desc-roi_dseg.svg", "sub-01_desc-roistats_Chimap.html"]


@pytest.mark.skipif(shutil.which("bids-validator-deno") is None, reason="bids-validator-deno not installed")
def test_roi_outputs_pass_the_validator(seg_outputs, sim_bids):
    out = seg_outputs[0]
    write_derivative_description(sim_bids, out, version="0.0.0")
    write_bidsignore(out)
    res = subprocess.run(["bids-validator-deno", str(out), "--json"], capture_output=True, text=True, check=False)
    issues = json.loads(res.stdout)["issues"]["issues"]
    assert [i for i in issues if i["severity"] == "error"] == []
