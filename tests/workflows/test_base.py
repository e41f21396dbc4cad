"""Build-only workflow tests over a grid of options, on the simulated BIDS dataset (no execution)."""

from __future__ import annotations

import itertools

import pytest

from qsmbids.config import OUTPUTS
from qsmbids.utils.bids import collect_runs
from qsmbids.workflows.base import init_qsmbids_wf, run_stages, wf_name


def _runs(sim_bids, *, magnitude=True):
    runs = []
    for r in collect_runs(sim_bids, check_data=False):
        runs.append({"name": r.name, "entities": r.entities, "phase": list(r.phase),
                     "magnitude": list(r.magnitude) if magnitude else [], "echo_times": list(r.echo_times),
                     "field_strength": r.field_strength, "phase_units": r.phase_units, "warnings": [],
                     "truth": r.truth, "sources": [], "n_voxels": 64 ** 3})
    return runs


def _processing(**kw):
    base = {"mask": "combined", "unwrap": "quality", "combine": "snr", "bgremove": "vsharp", "inversion": "medi",
            "reference": "mean", "params": {}, "b0_direction": "auto", "outputs": OUTPUTS}
    return {**base, **kw}


def _nodes(wf):
    return {n.fullname.split(".")[-1] for n in wf._get_all_nodes()}


GRID = list(itertools.product(["combined", "quality"], ["quality", "laplacian"], ["vsharp", "pdf", "lbv"],
                              ["tkd", "rts", "medi", "tgv"], ["mean", "csf"]))


@pytest.mark.parametrize(("mask", "unwrap", "bgremove", "inversion", "reference"), GRID[::5])
def test_build_grid(sim_bids, tmp_path, mask, unwrap, bgremove, inversion, reference):
    wf = init_qsmbids_wf(runs=_runs(sim_bids), output_dir=str(tmp_path / "out"), bids_root=str(sim_bids),
                         run_uuid="x", processing=_processing(mask=mask, unwrap=unwrap, bgremove=bgremove,
                                                              inversion=inversion, reference=reference))
    nodes = _nodes(wf)
    for stage in run_stages(has_magnitude=True, n_echoes=3, outputs=OUTPUTS):
        assert stage in nodes
    assert "ds_chimap" in nodes
    text = wf.visit_desc()
    assert "MCPC-3D-S" in text and "[@" in text
    inv_node = next(n for n in wf._get_all_nodes() if n.name == "invert")
    assert inv_node.inputs.method == inversion


def test_phase_only_drops_magnitude_stages(sim_bids, tmp_path):
    proc = _processing(mask="quality", inversion="rts", outputs=("chimap", "mask", "fields", "r2star", "swi"))
    wf = init_qsmbids_wf(runs=_runs(sim_bids, magnitude=False), output_dir=str(tmp_path), bids_root=str(sim_bids),
                         run_uuid="x", processing=proc)
    nodes = _nodes(wf)
    assert "relax" not in nodes and "swi" not in nodes
    assert {"load", "mask", "unwrap", "combine", "bgremove", "invert", "reference"} <= nodes


def test_outputs_select_stages(sim_bids, tmp_path):
    wf = init_qsmbids_wf(runs=_runs(sim_bids), output_dir=str(tmp_path), bids_root=str(sim_bids), run_uuid="x",
                         processing=_processing(outputs=("chimap",)))
    nodes = _nodes(wf)
    assert "relax" not in nodes and "swi" not in nodes and "invert" in nodes


def test_params_reach_nodes(sim_bids, tmp_path):
    proc = _processing(inversion="tkd", params={"tkd": {"threshold": 0.19}, "vsharp": {"threshold": 0.04}})
    wf = init_qsmbids_wf(runs=_runs(sim_bids), output_dir=str(tmp_path), bids_root=str(sim_bids), run_uuid="x",
                         processing=proc)
    nodes = {n.name: n for n in wf._get_all_nodes()}
    assert nodes["invert"].inputs.params == {"threshold": 0.19}
    assert nodes["bgremove"].inputs.params == {"threshold": 0.04}
    assert "threshold = 0.19" in wf.visit_desc()


@pytest.mark.parametrize(("inversion", "params", "wired"), [
    ("tv", {"tv": {"lambda_": "discrepancy"}}, True), ("ilsqr", {"inversion": {"max_iter": "discrepancy"}}, True),
    ("medi", {"medi": {"lambda_": "Discrepancy"}}, True), ("medi", {"medi": {"lambda_": 1000}}, False),
    ("tv", {}, False)])
def test_discrepancy_wires_the_echo_fit_noise_map(sim_bids, tmp_path, inversion, params, wired):
    wf = init_qsmbids_wf(runs=_runs(sim_bids), output_dir=str(tmp_path), bids_root=str(sim_bids), run_uuid="x",
                         processing=_processing(inversion=inversion, params=params))
    def edges(w):  # (source, destination, connections) of every nested workflow
        for u, v, d in w._graph.edges(data=True):
            yield u.name, v.name, d.get("connect", [])
        for n in w._graph.nodes():
            if hasattr(n, "_graph"):
                yield from edges(n)

    noise = [(u, v, c) for u, v, cs in edges(wf) for c in cs if v == "invert_wf" and "noise" in str(c)]
    assert bool(noise) is wired, noise
    if wired:
        assert {u for u, _, _ in noise} == {"combine_wf"}
        assert {c for _, _, c in noise} == {("outputnode.noise", "inputnode.noise")}
    text = wf.visit_desc()
    assert ("discrepancy principle [@morozov1966]" in text) is wired


def test_crashdump_per_subject(sim_bids, tmp_path):
    wf = init_qsmbids_wf(runs=_runs(sim_bids), output_dir=str(tmp_path), bids_root=str(sim_bids), run_uuid="U",
                         processing=_processing())
    sub = wf.get_node("sub_01_wf")
    assert sub.config["execution"]["crashdump_dir"] == f"{tmp_path}/sub-01/log/U"


def test_wf_name():
    assert wf_name("sub-01_ses-pre_run-2") == "sub_01_ses_pre_run_2_wf"
