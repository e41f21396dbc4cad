"""qsmbids' DerivativesDataSink: names from MEGRE sources, figures, metadata precedence, atomic writes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from niworkflows.interfaces import bids as nibids

from qsmbids.interfaces.bids import DerivativesDataSink, bids_uri
from qsmbids.sim.bids import save_nifti
from qsmbids.utils.derivatives import write_derivative_description

VALIDATOR = shutil.which("bids-validator-deno")
AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def _source(raw: Path, name: str) -> Path:
    sub, rest = name.split("_", 1)
    ses = next((p for p in rest.split("_") if p.startswith("ses-")), "")
    path = raw / sub / ses / "anat" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # only the name matters to the sink
    return path


def _image(path: Path, value: float = 1.0, dtype=np.float32) -> Path:
    return save_nifti(path, np.full((8, 8, 8), value), AFFINE, dtype=dtype)


def _sink(out: Path, in_file, source, **kwargs):
    return DerivativesDataSink(base_directory=str(out), in_file=str(in_file), source_file=source, **kwargs).run()


def test_single_echo_source_keeps_run_entities_and_drops_echo_part(tmp_path):
    src = _source(tmp_path / "raw", "sub-01_ses-1_task-rest_acq-x_ce-y_rec-z_run-02_echo-1_part-phase_chunk-3_MEGRE.nii.gz")
    res = _sink(tmp_path / "out", _image(tmp_path / "chi.nii.gz"), str(src), suffix="Chimap", desc="tv",
                bids_root=str(tmp_path / "raw"), Units="ppm", SkullStripped=True)
    rel = Path(res.outputs.out_file).relative_to(tmp_path / "out").as_posix()
    assert rel == "sub-01/ses-1/anat/sub-01_ses-1_task-rest_acq-x_ce-y_rec-z_run-02_chunk-3_desc-tv_Chimap.nii.gz"
    side = json.loads(Path(res.outputs.out_meta).read_text())
    assert side == {"SkullStripped": True, "Units": "ppm", "Sources": [
        "bids:raw:sub-01/ses-1/anat/sub-01_ses-1_task-rest_acq-x_ce-y_rec-z_run-02_echo-1_part-phase_chunk-3_MEGRE.nii.gz"]}
    # no write_derivative_description here would make bids:raw: unresolvable; with it the name must be valid BIDS
    write_derivative_description(tmp_path / "raw", tmp_path / "out")
    if VALIDATOR is None:
        pytest.skip("bids-validator-deno is a dependency; install qsmbids to run the validator check")
    proc = subprocess.run([VALIDATOR, "--json", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          check=False)
    assert [i for i in json.loads(proc.stdout)["issues"]["issues"] if i["severity"] == "error"] == []


def test_user_dismissed_entities_add_to_echo_and_part(tmp_path):
    srcs = [str(_source(tmp_path / "raw", f"sub-01_acq-x_run-1_echo-{e}_part-mag_MEGRE.nii.gz")) for e in (1, 2)]
    res = _sink(tmp_path / "out", _image(tmp_path / "m.nii.gz", 0.7), srcs, suffix="mask", desc="brain",
                dismiss_entities=["acquisition"], Type="Brain")
    out = Path(res.outputs.out_file)
    assert out.relative_to(tmp_path / "out").as_posix() == "sub-01/anat/sub-01_run-1_desc-brain_mask.nii.gz"
    img = nib.load(out)
    assert img.get_data_dtype() == np.uint8 and int(np.asanyarray(img.dataobj).max()) == 1  # 0.7 rounded, as uint8
    assert json.loads(Path(res.outputs.out_meta).read_text()) == {"Type": "Brain"}  # no bids_root: no Sources


@pytest.mark.parametrize("ext", [".svg", ".png", ".html", ".json"])
def test_figures_go_to_subject_figures(tmp_path, ext):
    src = _source(tmp_path / "raw", "sub-07_ses-b_run-3_echo-2_part-phase_MEGRE.nii.gz")
    fig = tmp_path / f"fig{ext}"
    fig.write_text("{}" if ext == ".json" else "<svg/>")
    res = _sink(tmp_path / "out", fig, str(src), datatype="figures", desc="brain", suffix="mask")
    assert Path(res.outputs.out_file).relative_to(tmp_path / "out").as_posix() == (
        f"sub-07/figures/sub-07_ses-b_run-3_desc-brain_mask{ext}")
    assert Path(res.outputs.out_file).read_text() == fig.read_text()


def test_metadata_precedence(tmp_path):
    """meta_defaults < meta_dict < keywords at construction; Sources from bids_root wins over both dicts."""
    src = _source(tmp_path / "raw", "sub-01_echo-1_part-phase_MEGRE.nii.gz")
    res = _sink(tmp_path / "out", _image(tmp_path / "r2.nii.gz", 20.0), str(src), suffix="R2starmap",
                bids_root=str(tmp_path / "raw"),
                meta_defaults={"Units": "1/s", "SkullStripped": True, "Description": "default", "Sources": ["x"]},
                meta_dict={"SkullStripped": False, "Method": "arlo"}, Description="fixed")
    assert json.loads(Path(res.outputs.out_meta).read_text()) == {
        "Units": "1/s", "SkullStripped": False, "Method": "arlo", "Description": "fixed",
        "Sources": ["bids:raw:sub-01/anat/sub-01_echo-1_part-phase_MEGRE.nii.gz"]}


def _fail_midway(*args, **kwargs):
    dest = Path(kwargs.get("fname") or args[1])
    dest.write_bytes(b"\x1f\x8b partial")
    raise OSError("disk full")


def test_failed_write_keeps_previous_output_and_leaves_no_staging(tmp_path, monkeypatch):
    src = str(_source(tmp_path / "raw", "sub-01_run-1_echo-1_part-phase_MEGRE.nii.gz"))
    out = tmp_path / "out"
    first = _sink(out, _image(tmp_path / "a.nii.gz", 1.0), src, suffix="Chimap", Units="ppm")
    final = Path(first.outputs.out_file)
    assert final == out / "sub-01" / "anat" / "sub-01_run-1_Chimap.nii.gz"
    second = _sink(out, _image(tmp_path / "b.nii.gz", 2.0), src, suffix="Chimap", Units="ppm")
    assert Path(second.outputs.out_file) == final and float(nib.load(final).get_fdata().mean()) == 2.0

    monkeypatch.setattr(nibids, "_copy_any", _fail_midway)
    monkeypatch.setattr(nibids, "unsafe_write_nifti_header_and_data", _fail_midway)
    with pytest.raises(OSError, match="disk full"):
        _sink(out, _image(tmp_path / "c.nii.gz", 3.0), src, suffix="Chimap", Units="ppm")
    assert float(nib.load(final).get_fdata().mean()) == 2.0  # the previous complete file is untouched
    assert sorted(p.name for p in out.iterdir()) == ["sub-01"]  # no .qsmbids-sink-* staging folder left
    assert sorted(p.name for p in final.parent.iterdir()) == ["sub-01_run-1_Chimap.json", "sub-01_run-1_Chimap.nii.gz"]


def test_unknown_suffix_is_an_error(tmp_path):
    src = str(_source(tmp_path / "raw", "sub-01_echo-1_part-phase_MEGRE.nii.gz"))
    with pytest.raises(ValueError, match="Could not build path"):
        _sink(tmp_path / "out", _image(tmp_path / "x.nii.gz"), src, suffix="QSM")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_bids_uri_relative_to_root_or_subject(tmp_path):
    raw = tmp_path / "data" / "sub-01" / "raw"  # a root whose own path contains "sub-"
    f = raw / "sub-02" / "anat" / "sub-02_echo-1_part-mag_MEGRE.nii.gz"
    assert bids_uri(f, raw) == "bids:raw:sub-02/anat/sub-02_echo-1_part-mag_MEGRE.nii.gz"
    assert bids_uri(f, tmp_path / "other") == "bids:raw:sub-02/anat/sub-02_echo-1_part-mag_MEGRE.nii.gz"


def test_import_leaves_the_environment_alone(tmp_path):
    """Importing the sink changes no environment variable, yet TemplateFlow (read once, by niworkflows) got qsmbids'
    empty home with auto-update off: nothing is indexed, written or downloaded."""
    code = ("import os; os.environ.pop('TEMPLATEFLOW_HOME', None); os.environ['TEMPLATEFLOW_AUTOUPDATE'] = '1'; "
            "before = dict(os.environ); import qsmbids.interfaces.bids as b; import templateflow.conf as c; "
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items()); "
            "assert str(c.TF_HOME) == b.TEMPLATEFLOW_ENV['TEMPLATEFLOW_HOME'], c.TF_HOME; "
            "assert c.TF_AUTOUPDATE is False; "
            "print(sorted(p.name for p in c.TF_HOME.iterdir()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['README']"
