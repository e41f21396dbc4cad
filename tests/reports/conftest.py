"""Fixtures of the report tests: synthetic run outputs, and a full output tree made by the report workflow."""

from __future__ import annotations

import os

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no etelemetry network check when interfaces are instantiated

import pytest

from ._synth import write_run, write_truth

RUN_UUID = "20250101-120000_abcdef"
CITATION = """# Methods

Susceptibility maps were computed with *qsmbids* 0.1 [@qsmbids], using **MEDI** for the dipole inversion.

- echoes were combined with SNR weights
- the background field was removed with V-SHARP

Escaped: <script>alert(1)</script>
"""


@pytest.fixture(scope="session")
def synth_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    run = write_run(root)
    run["truth"] = write_truth(root / "truth")
    return run


@pytest.fixture(scope="session")
def report_tree(tmp_path_factory, synth_run):
    """Output dir after running init_report_wf (all outputs, with truth), plus logs and crash files, then the page."""
    from qsmbids.reports.core import generate_reports
    from qsmbids.workflows.reports import init_report_wf

    base = tmp_path_factory.mktemp("tree")
    out = base / "out"
    wf = init_report_wf(output_dir=str(out), outputs=("chimap", "mask", "fields", "r2star", "t2star", "swi", "minip"),
                        has_truth=True)
    wf.base_dir = str(base / "work")
    wf.config["execution"]["crashdump_dir"] = str(base / "crash")
    for key in ("source_file", "magnitude", "mask", "total_field", "local_field", "chimap", "r2star", "swi", "minip",
                "meta"):
        setattr(wf.inputs.inputnode, key, synth_run[key])
    for key, value in synth_run["truth"].items():
        setattr(wf.inputs.inputnode, f"truth_{key}", value)
    wf.run(plugin="Linear")

    (out / "logs").mkdir(parents=True)
    (out / "logs" / "CITATION.md").write_text(CITATION)
    (out / "logs" / "CITATION.bib").write_text("@misc{qsmbids}\n")
    log = out / "sub-01" / "log"
    (log / RUN_UUID).mkdir(parents=True)
    (log / RUN_UUID / "crash-20250101-120001-user-swi_rpt-1234.txt").write_text(
        "Node: qsmbids_wf.sub_01_wf.swi_wf.swi\nWorking directory: /work/swi\n\nNode inputs:\n\n"
        "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: phase has NaN voxels\n"
    )
    (log / "19990101-000000_old").mkdir()
    (log / "19990101-000000_old" / "crash-old.txt").write_text("Node: old\nRuntimeError: from another execution\n")
    before = sorted(p.name for p in base.iterdir())
    n_errors = generate_reports(["sub-01"], out, RUN_UUID)
    return {"out": out, "base": base, "n_errors": n_errors, "before": before}
