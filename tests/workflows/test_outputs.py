"""init_ds_run_wf and the derivative dataset's description: exact names, sidecars, validator, concurrency."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nipype.interfaces.base import isdefined

from qsmbids.config import DEFAULT_INVERSION
from qsmbids.sim import bids as B
from qsmbids.utils.derivatives import BIDSIGNORE_PATTERNS, write_bidsignore, write_derivative_description
from qsmbids.workflows.outputs import MAP_NAMES, expand_outputs, init_ds_run_wf

VALIDATOR = shutil.which("bids-validator-deno")
ALL = ("chimap", "mask", "fields", "r2star", "t2star", "swi", "minip")
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _raw_run(root: Path, prefix: str, ses: str | None, n_echoes: int = 2) -> list[Path]:
    """A tiny raw MEGRE run named ``<prefix>_echo-<i>_part-<p>_MEGRE`` (any entities, e.g. ``rec``)."""
    B.write_dataset_description(root, name="tiny raw")
    anat = root / prefix.split("_")[0] / (f"ses-{ses}" if ses else "") / "anat"
    rng = np.random.default_rng(1)
    files = []
    for echo in range(1, n_echoes + 1):
        for part in ("mag", "phase"):
            stem = anat / f"{prefix}_echo-{echo}_part-{part}_MEGRE"
            B.write_json(f"{stem}.json", {"EchoTime": 0.004 * echo, "MagneticFieldStrength": 3.0})
            files.append(B.save_nifti(f"{stem}.nii.gz", rng.random((8, 8, 8)), AFFINE, dtype=np.float32))
    return files


def _maps(work: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    data = {m: rng.normal(size=(8, 8, 8)).astype(np.float32) for m in MAP_NAMES}
    data["mask"] = (rng.random((8, 8, 8)) > 0.4).astype(np.uint8)
    for m, arr in data.items():
        B.save_nifti(work / f"{m}.nii.gz", arr, AFFINE)
    return data


def _run(tmp: Path, *, prefix: str, ses: str | None, inversion: str, outputs=ALL):
    raw, out, work = tmp / "raw", tmp / "out", tmp / "work"
    work.mkdir(parents=True)
    sources = _raw_run(raw, prefix, ses)
    data = _maps(work)
    wf = init_ds_run_wf(bids_root=str(raw), output_dir=str(out), outputs=outputs, inversion=inversion)
    wf.base_dir = str(work)
    wf.inputs.inputnode.source_files = [str(s) for s in sources]
    for m in MAP_NAMES:
        setattr(wf.inputs.inputnode, m, str(work / f"{m}.nii.gz"))
    wf.inputs.inputnode.chimap_meta = {"Units": "ppm", "InversionMethod": inversion, "Lambda": 1000.0}
    wf.inputs.inputnode.total_field_meta = {"Units": "Hz", "EchoTime": [0.004, 0.008], "B0Direction": [0.0, 0.1, 0.99],
                                            "EchoCombination": {"Method": "snr", "Parameters": {"order": None}}}
    wf.inputs.inputnode.local_field_meta = {"Units": "ppm", "BackgroundRemovalMethod": "vsharp"}
    wf.inputs.inputnode.mask_meta = {"MaskMethod": "combined"}
    wf.inputs.inputnode.r2star_meta = {"Units": "1/s", "SkullStripped": False}  # a stage may override the default
    wf.inputs.inputnode.swi_meta = {"Units": "arbitrary"}
    res = wf.run(plugin="Linear")
    # IdentityInterface nodes are pruned from the executed graph: outputnode.out_files comes from the merge
    out_files = next(n for n in res.nodes() if n.name == "merge_out_files").result.outputs.out
    return raw, out, sources, data, out_files


def _validator_errors(path: Path) -> list[dict]:
    proc = subprocess.run([VALIDATOR, "--json", str(path)], capture_output=True, text=True, timeout=120, check=False)
    return [i for i in json.loads(proc.stdout)["issues"]["issues"] if i["severity"] == "error"]


CASES = [
    # (raw prefix, session, inversion, expected output prefix, desc of the Chimap)
    ("sub-01", None, DEFAULT_INVERSION, "sub-01/anat/sub-01", None),
    ("sub-02_ses-pre_acq-fast_rec-mag_run-02", "pre", "rts",
     "sub-02/ses-pre/anat/sub-02_ses-pre_acq-fast_rec-mag_run-02", "rts"),
]


@pytest.mark.parametrize(("raw_prefix", "ses", "inversion", "prefix", "chi_desc"), CASES)
def test_run_outputs_names_sidecars_and_validator(tmp_path, raw_prefix, ses, inversion, prefix, chi_desc):
    raw, out, sources, data, out_files = _run(tmp_path, prefix=raw_prefix, ses=ses, inversion=inversion)
    chimap = f"{prefix}_desc-{chi_desc}_Chimap" if chi_desc else f"{prefix}_Chimap"
    stems = [f"{prefix}_desc-brain_mask", chimap, f"{prefix}_desc-total_fieldmap", f"{prefix}_desc-local_fieldmap",
             f"{prefix}_R2starmap", f"{prefix}_T2starmap", f"{prefix}_swi", f"{prefix}_minIP"]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted(f"{s}{ext}" for s in stems for ext in (".nii.gz", ".json"))
    assert out_files == [str(out / f"{s}.nii.gz") for s in stems]
    assert not any("echo-" in w or "part-" in w for w in written)
    assert ("desc-" + inversion + "_Chimap" in " ".join(written)) is (inversion != DEFAULT_INVERSION)

    side = {m: json.loads((out / f"{s}.json").read_text()) for m, s in zip(MAP_NAMES, stems)}
    uris = [f"bids:raw:{s.relative_to(raw).as_posix()}" for s in sources]
    assert all(s["Sources"] == uris for s in side.values())
    assert len(uris) == 4 and uris[0].endswith("_echo-1_part-mag_MEGRE.nii.gz")
    assert side["mask"]["Type"] == "Brain" and "SkullStripped" not in side["mask"]
    assert side["mask"]["MaskMethod"] == "combined"
    assert side["chimap"] == {"Description": "Magnetic susceptibility (QSM), referenced", "InversionMethod": inversion,
                              "Lambda": 1000.0, "SkullStripped": True, "Sources": uris, "Units": "ppm"}
    assert [side[m]["Units"] for m in MAP_NAMES[1:]] == ["ppm", "Hz", "ppm", "1/s", "s", "arbitrary", "arbitrary"]
    assert side["total_field"]["EchoCombination"] == {"Method": "snr", "Parameters": {"order": None}}
    assert side["total_field"]["EchoTime"] == [0.004, 0.008]
    assert side["local_field"]["BackgroundRemovalMethod"] == "vsharp"
    assert [side[m]["SkullStripped"] for m in MAP_NAMES[1:]] == [True, True, True, False, True, False, False]

    mask = nib.load(out / f"{stems[0]}.nii.gz")
    assert mask.get_data_dtype() == np.uint8 and np.array_equal(np.asanyarray(mask.dataobj), data["mask"])
    chi = nib.load(out / f"{chimap}.nii.gz")
    np.testing.assert_array_equal(chi.get_fdata(dtype=np.float32), data["chimap"])
    np.testing.assert_allclose(chi.affine, AFFINE)
    assert int(chi.header["sform_code"]) == 1 and chi.header.get_xyzt_units()[0] == "mm"

    write_derivative_description(raw, out)
    if VALIDATOR is None:
        pytest.skip("bids-validator-deno is a dependency; install qsmbids to run the validator check")
    # Everything else a participant run leaves in the dataset must be ignored or valid too.
    (out / "logs").mkdir()
    (out / "logs" / "CITATION.md").write_text("Methods.\n")
    sub = prefix.split("/")[0]
    (out / f"{sub}.html").write_text("<html></html>\n")
    (out / sub / "figures").mkdir()
    (out / sub / "figures" / f"{Path(prefix).name}_desc-brain_mask.svg").write_text("<svg/>\n")
    (out / sub / "log" / "20250101-000000_x").mkdir(parents=True)
    (out / sub / "log" / "20250101-000000_x" / "qsmbids.toml").write_text("x = 1\n")
    assert _validator_errors(out) == []


def test_outputs_subset_and_fields(tmp_path):
    _, out, _, _, out_files = _run(tmp_path, prefix="sub-01", ses=None, inversion="tv",
                                   outputs=("fields", "chimap"))
    written = sorted(p.relative_to(out / "sub-01" / "anat").as_posix() for p in out.rglob("*.nii.gz"))
    assert written == ["sub-01_desc-local_fieldmap.nii.gz", "sub-01_desc-total_fieldmap.nii.gz",
                       "sub-01_desc-tv_Chimap.nii.gz"]
    assert [Path(f).name for f in out_files] == ["sub-01_desc-tv_Chimap.nii.gz", "sub-01_desc-total_fieldmap.nii.gz",
                                                  "sub-01_desc-local_fieldmap.nii.gz"]


def test_sink_nodes_and_bad_arguments():
    wf = init_ds_run_wf(bids_root="/raw", output_dir="/out", outputs=("mask", "swi", "minip"), inversion="medi")
    assert sorted(n for n in wf.list_node_names() if n.startswith("ds_")) == ["ds_mask", "ds_minip", "ds_swi"]
    wf = init_ds_run_wf(bids_root="/raw", output_dir="/out", outputs=ALL, inversion="medi")
    assert sorted(n for n in wf.list_node_names() if n.startswith("ds_")) == sorted(f"ds_{m}" for m in MAP_NAMES)
    assert not isdefined(wf.get_node("ds_chimap").inputs.desc)
    assert wf.get_node("ds_total_field").inputs.desc == "total"
    assert expand_outputs(["minip", "fields"]) == ("total_field", "local_field", "minip")
    with pytest.raises(ValueError, match="outputs: expected some of"):
        init_ds_run_wf(bids_root="/raw", output_dir="/out", outputs=("chimap", "qsm"), inversion="medi")
    with pytest.raises(ValueError, match="alphanumeric"):
        init_ds_run_wf(bids_root="/raw", output_dir="/out", outputs=("chimap",), inversion="deep-qsm")


def test_description_links_license_container(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "ds", "BIDSVersion": "1.10.0",
                                                              "License": "PDDL"}))
    monkeypatch.setenv("QSMBIDS_CONTAINER_TYPE", "docker")
    monkeypatch.setenv("QSMBIDS_CONTAINER_TAG", "qsmbids/qsmbids:1.2.3")
    path = write_derivative_description(raw, tmp_path / "out", version="1.2.3")
    desc = json.loads(path.read_text())
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"] == "1.10.0"
    assert desc["GeneratedBy"][0]["Name"] == "qsmbids" and desc["GeneratedBy"][0]["Version"] == "1.2.3"
    assert desc["GeneratedBy"][0]["Container"] == {"Type": "docker", "Tag": "qsmbids/qsmbids:1.2.3"}
    assert desc["SourceDatasets"] == [{"URI": "bids:raw:"}]
    assert desc["DatasetLinks"] == {"raw": raw.absolute().as_uri()} and desc["License"] == "PDDL"
    ignore = (tmp_path / "out" / ".bidsignore").read_text().splitlines()
    assert ignore == list(BIDSIGNORE_PATTERNS)

    (raw / "dataset_description.json").write_text(json.dumps({"Name": "ds", "DatasetDOI": "https://doi.org/10.1/x"}))
    monkeypatch.delenv("QSMBIDS_CONTAINER_TYPE")
    monkeypatch.delenv("QSMBIDS_CONTAINER_TAG")
    desc = json.loads(write_derivative_description(raw, tmp_path / "out").read_text())
    assert desc["DatasetLinks"] == {"raw": "doi:10.1/x"}
    assert desc["SourceDatasets"] == [{"URI": "bids:raw:", "DOI": "doi:10.1/x"}]
    assert "Container" not in desc["GeneratedBy"][0] and "License" not in desc


def test_bidsignore_keeps_user_lines(tmp_path):
    (tmp_path / ".bidsignore").write_text("extra/\n*_swi.*\n")
    write_bidsignore(tmp_path)
    write_bidsignore(tmp_path)
    lines = (tmp_path / ".bidsignore").read_text().splitlines()
    assert lines[:2] == ["extra/", "*_swi.*"]
    assert sorted(lines[2:]) == sorted(p for p in BIDSIGNORE_PATTERNS if p != "*_swi.*")


_WRITER = """
import sys
from qsmbids.utils.derivatives import write_derivative_description
for _ in range(int(sys.argv[3])):
    write_derivative_description(sys.argv[1], sys.argv[2], version=sys.argv[4])
"""


def test_description_concurrent_writers(tmp_path):
    """Two processes rewriting the description at once: both succeed, the file is always complete JSON."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    (raw / "dataset_description.json").write_text('{"Name": "ds", "BIDSVersion": "1.10.0"}')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(raw), str(out), "150", v], env=env,
                              stderr=subprocess.PIPE, text=True) for v in ("1.0", "2.0")]
    reads = []
    while any(p.poll() is None for p in procs):
        try:
            reads.append(json.loads((out / "dataset_description.json").read_text())["GeneratedBy"][0]["Version"])
        except FileNotFoundError:
            continue
    assert [p.wait() for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    assert reads and set(reads) <= {"1.0", "2.0"}  # never a partial file (json.loads would raise)
    assert json.loads((out / "dataset_description.json").read_text())["GeneratedBy"][0]["Version"] in {"1.0", "2.0"}
    assert sorted(p.name for p in out.iterdir()) == [".bidsignore", "dataset_description.json"]
    assert (out / ".bidsignore").read_text().splitlines() == list(BIDSIGNORE_PATTERNS)
