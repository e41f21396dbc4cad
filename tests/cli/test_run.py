"""The participant level end to end on ``qsmbids-sim --preset test`` data: derivatives, validator, accuracy,
report in a real browser, work-directory reuse, boilerplate-only and reports-only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsmbids.qsm import metrics

MANIFEST = Path(__file__).resolve().parents[1] / "data" / "participant_manifest.txt"
#: demeaned NRMSE (%) of the default Chimap vs the simulator's truth inside both masks, at 3 mm (test preset).
#: Measured 49.2 % (deepbet, RESHARP, MEDI with discrepancy-principle λ; 3 mm voxels, 3 echoes; fixed λ 48.0 %,
#: V-SHARP 53.5 %); room for platforms only.
NRMSE_BOUND = 60.0


def _qsmbids(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run([sys.executable, "-m", "qsmbids", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def _files(root: Path) -> list[str]:
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and "/log/" not in f"/{rel}":
            out.append(rel)
    return out


@pytest.fixture(scope="module")
def run_once(sim_bids, tmp_path_factory):
    base = tmp_path_factory.mktemp("app")
    out, work = base / "out", base / "work"
    proc = _qsmbids(sim_bids, out, "participant", "-w", work, "--nprocs", "2", "--omp-nthreads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "work": work, "proc": proc, "bids": sim_bids}


def test_derivatives_match_manifest(run_once):
    got = _files(run_once["out"])
    expected = MANIFEST.read_text().split()
    assert got == expected


def test_progress_lines_and_summary(run_once):
    stdout = run_once["proc"].stdout
    lines = [ln for ln in stdout.splitlines() if ln.startswith("[sub-01]")]
    assert len(lines) == 9
    assert lines[-1].startswith("[sub-01] 9/9 ")
    assert all(" done, " in ln and ln.endswith(" s") for ln in lines)
    assert f"report: {run_once['out'] / 'sub-01.html'}" in stdout
    assert run_once["proc"].stderr.count("Traceback") == 0


def test_output_is_valid_bids(run_once):
    proc = subprocess.run(["bids-validator-deno", "--json", str(run_once["out"])], capture_output=True, text=True,
                          check=False)
    issues = json.loads(proc.stdout)["issues"]["issues"]
    errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
    assert errors == []


def test_sidecars(run_once):
    anat = run_once["out"] / "sub-01" / "anat"
    chi = json.loads((anat / "sub-01_Chimap.json").read_text())
    assert chi["Units"] == "ppm"
    assert chi["DipoleInversion"]["Method"] == "medi"
    assert chi["B0Direction"] == [0.0, 0.0, 1.0]
    assert chi["Sources"][0].startswith("bids:raw:sub-01/anat/sub-01_echo-1_part-phase_MEGRE")
    assert "SkullStripped" in chi
    mask = json.loads((anat / "sub-01_desc-brain_mask.json").read_text())
    assert mask["Type"] == "Brain"
    total = json.loads((anat / "sub-01_desc-total_fieldmap.json").read_text())
    assert total["Units"] == "Hz"
    desc = json.loads((run_once["out"] / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "qsmbids"
    assert desc["SourceDatasets"] == [{"URI": "bids:raw:"}]
    toml = list((run_once["out"] / "sub-01" / "log").glob("*/qsmbids.toml"))
    assert len(toml) == 1 and "inversion" in toml[0].read_text()
    assert (run_once["work"] / "qsmbids.toml").is_file()


def test_accuracy_against_truth(run_once):
    anat = run_once["out"] / "sub-01" / "anat"
    truth = run_once["bids"] / "derivatives" / "qsmbids-sim" / "sub-01" / "anat"
    chi = nib.load(anat / "sub-01_Chimap.nii.gz").get_fdata()
    ref = nib.load(truth / "sub-01_Chimap.nii.gz").get_fdata()
    mask = (chi != 0) & (nib.load(truth / "sub-01_desc-brain_mask.nii.gz").get_fdata() > 0)
    assert mask.sum() > 0.5 * (nib.load(anat / "sub-01_desc-brain_mask.nii.gz").get_fdata() > 0).sum()
    err = metrics.nrmse(chi, ref, mask, mode="demeaned")
    assert err < NRMSE_BOUND
    assert np.isfinite(chi).all()
    report = json.loads((run_once["out"] / "sub-01" / "figures" / "sub-01_desc-accuracy_Chimap.json").read_text())
    assert "nrmse" in json.dumps(report).lower()


def test_plausibility_on_the_simulated_head(run_once):
    """The report's real-data checks pass on a head whose truth is known to be plausible: brain-sized mask, clean
    echo fit, pallidum above the ICBM deep white matter brought in through the ROI registration."""
    d = json.loads((run_once["out"] / "sub-01" / "figures" / "sub-01_desc-plausibility_Chimap.json").read_text())
    status = {c["name"]: c["status"] for c in d["checks"]}
    assert status == {"brain_volume": "ok", "echo_fit": "ok", "nuclei_above_white_matter": "ok"}, d
    assert d["regions"]["white_matter"]["n_voxels"] > 100
    assert "ICBM" in d["regions"]["white_matter"]["source"]
    html = (run_once["out"] / "sub-01.html").read_text()
    assert "Plausibility checks" in html and "Deep grey nuclei" in html


def test_boilerplate(run_once):
    text = (run_once["out"] / "logs" / "CITATION.md").read_text()
    for needle in ("MCPC-3D-S", "RESHARP", "MEDI", "[@liu2011medi"):
        assert needle in text
    bib = (run_once["out"] / "logs" / "CITATION.bib").read_text()
    assert "@article{liu2011medi" in bib


def test_report_in_browser(run_once, tmp_path):
    from tests.reports._browser import browser_unavailable, check_page

    why = browser_unavailable()
    if why:
        pytest.skip(why)
    res = check_page(run_once["out"] / "sub-01.html", tmp_path / "shot.png")
    assert res["console_errors"] == [] and res["page_errors"] == []
    assert res["blocked_requests"] == [] and res["failed_requests"] == []
    assert res["broken_images"] == []
    assert res["pixel_std"] > 5
    html = (run_once["out"] / "sub-01.html").read_text()
    for section in ("Summary", "Susceptibility", "Accuracy", "Methods"):
        assert section in html


def test_rerun_recomputes_nothing(run_once):
    work = run_once["work"]
    results = {p: p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")
               if p.parent.name in ("load", "mask", "unwrap", "combine", "bgremove", "invert", "reference", "relax",
                                    "swi")}
    assert len(results) == 9
    before = nib.load(run_once["out"] / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").get_fdata()
    proc = _qsmbids(run_once["bids"], run_once["out"], "participant", "-w", work, "--nprocs", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = {p: p.stat().st_mtime_ns for p in results}
    assert after == results
    again = nib.load(run_once["out"] / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").get_fdata()
    assert np.array_equal(before, again)


def test_boilerplate_only_and_reports_only(run_once, tmp_path):
    out = tmp_path / "bp"
    proc = _qsmbids(run_once["bids"], out, "participant", "-w", tmp_path / "w", "--boilerplate-only",
                    "--inversion", "tkd")
    assert proc.returncode == 0, proc.stderr
    assert "thresholded k-space division" in (out / "logs" / "CITATION.md").read_text()
    assert not (out / "sub-01" / "anat").exists()
    html = run_once["out"] / "sub-01.html"
    html.unlink()
    proc = _qsmbids(run_once["bids"], run_once["out"], "participant", "-w", tmp_path / "w2", "--reports-only")
    assert proc.returncode == 0, proc.stderr
    assert html.is_file()
