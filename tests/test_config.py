"""qsmbids.config: defaults of the contract, validation, and an exact TOML round trip."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qsmbids import __version__
from qsmbids import config as C
from qsmbids.config import (
    ExecutionSettings,
    PerformanceSettings,
    ProcessingSettings,
    Settings,
    SettingsError,
)


def _execution(**kw) -> ExecutionSettings:
    base = {"bids_dir": Path("/data/ds"), "output_dir": Path("/data/out"), "analysis_level": "participant",
            "work_dir": Path("/scratch/work")}
    return ExecutionSettings(**{**base, **kw})


def _full_settings() -> Settings:
    """Every field away from its default, including values TOML cannot hold directly (None, null in filters)."""
    return Settings(
        execution=_execution(participant_label=("sub-01", "02"), session_label=("ses-pre",),
                             bids_filters={"megre": {"acquisition": "fast", "session": None}},
                             skip_bids_validation=True, reports_only=True, ground_truth_dir="/data/ds/derivatives/t",
                             verbosity=2),
        performance=PerformanceSettings(nprocs=6, omp_nthreads=3, mem_gb=12, use_plugin="/etc/plugin.yml",
                                        plugin_settings={"plugin": "Linear", "plugin_args": {}},
                                        stop_on_first_crash=True, device="cpu"),
        processing=ProcessingSettings(mask="magnitude", unwrap="laplacian", combine="uniform", bgremove="pdf",
                                      inversion="rts", reference="csf",
                                      params={"rts": {"delta": 0.2, "max_iter": 30, "verbose": True},
                                              "vsharp": {"radii": [12, 10.5, 8]}, "swi": {"filter": "hann"}},
                                      b0_direction=(0.0, 3.0, 4.0), echo_times=(0.004, 0.008, 0.012),
                                      field_strength=7, outputs=("mask", "chimap")),
    )


def test_method_tuples_equal_those_of_the_numerics():
    from qsmbids.qsm import background, echoes, inversion, mask, reference, relax, unwrap

    from qsmbids.deep import brain

    assert C.MASK_METHODS == brain.BRAIN_EXTRACTION_METHODS + mask.MASK_METHODS
    assert C.UNWRAP_METHODS == unwrap.UNWRAP_METHODS
    assert C.COMBINE_METHODS == echoes.WEIGHTINGS
    assert C.BGREMOVE_METHODS == background.BGREMOVE_METHODS
    assert C.CLASSICAL_INVERSIONS == inversion.METHODS
    assert C.INVERSION_METHODS == C.CLASSICAL_INVERSIONS + C.DEEP_MODELS
    assert C.REFERENCE_METHODS == tuple(m for m in reference.REFERENCE_METHODS if m != "roi")
    assert C.R2STAR_METHODS == relax.R2STAR_METHODS


def test_defaults_are_the_contract():
    assert C.DEFAULT_INVERSION == "medi"
    assert C.OUTPUTS == ("chimap", "mask", "fields", "r2star", "t2star", "swi", "minip")
    p = ProcessingSettings()
    assert (p.mask, p.unwrap, p.combine, p.bgremove, p.inversion, p.reference) == (
        "deepbet", "quality", "snr", "resharp", "medi", "mean")
    assert p.outputs == C.OUTPUTS and p.params == {} and p.b0_direction == "auto"
    assert p.echo_times is None and p.field_strength is None
    assert {k: getattr(p, k) for k in C.DEFAULTS} == dict(C.DEFAULTS)
    with pytest.raises(TypeError):
        C.DEFAULTS["mask"] = "quality"  # read-only


def test_param_keys_cover_stages_and_methods_but_not_roi():
    keys = set(C.PARAM_KEYS)
    assert {"mask", "unwrap", "combine", "bgremove", "reference", "relax", "swi"} <= keys
    assert {"medi", "rts", "vsharp", "quality", "snr", "csf", "arlo"} <= keys
    assert "roi" not in keys and "none" not in keys
    assert len(C.PARAM_KEYS) == len(keys)  # no duplicates although "quality"/"magnitude" serve two stages


def test_import_is_light():
    """--help and --version must not pay for torch."""
    code = "import sys, qsmbids.config, qsmbids.cli.parser; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_run_uuid_format():
    u = C.new_run_uuid()
    assert re.fullmatch(r"\d{8}-\d{6}_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", u)
    assert C.new_run_uuid() != u
    assert re.fullmatch(r"\d{8}-\d{6}_.+", _execution().run_uuid)


def test_execution_labels_paths_and_version():
    e = _execution(participant_label=("sub-01", "01", "02"), session_label="ses-A1", bids_dir="rel/ds",
                   ground_truth_dir="gt")
    assert e.participant_label == ("01", "02")
    assert e.session_label == ("A1",)
    assert e.bids_dir == Path("rel/ds") and e.ground_truth_dir == Path("gt")
    assert e.version == __version__
    assert _execution(analysis_level="groupie").analysis_level == "groupie"  # the run module answers with 17


@pytest.mark.parametrize("kw, match", [
    ({"participant_label": ("sub-01_x",)}, "sub label 'sub-01_x'"),
    ({"session_label": ("ses-",)}, "ses label"),
    ({"reports_only": True, "boilerplate_only": True}, "cannot be used together"),
    ({"bids_filters": ["megre"]}, "JSON object"),
    ({"verbosity": -1}, "verbosity"),
])
def test_execution_errors(kw, match):
    with pytest.raises(SettingsError, match=match) as exc:
        _execution(**kw)
    assert "\n" not in str(exc.value)


def test_performance_defaults_follow_fmriprep():
    p = PerformanceSettings(nprocs=12)
    assert p.omp_nthreads == 8
    assert p.plugin_settings == {"plugin": "MultiProc",
                                 "plugin_args": {"n_procs": 12, "raise_insufficient": False, "maxtasksperchild": 1}}
    q = PerformanceSettings(nprocs=3, mem_gb=4)
    assert q.omp_nthreads == 3 and q.mem_gb == 4.0 and isinstance(q.mem_gb, float)
    assert q.plugin_settings["plugin_args"]["memory_gb"] == 4.0
    assert PerformanceSettings().nprocs == C.default_nprocs() >= 1


@pytest.mark.parametrize("kw, match", [
    ({"nprocs": 0}, "nprocs: expected an integer >= 1"),
    ({"nprocs": True}, "nprocs"),
    ({"nprocs": 2, "omp_nthreads": 4}, r"--omp-nthreads \(4\) cannot exceed --nprocs \(2\)"),
    ({"nprocs": 2, "omp_nthreads": 0}, "omp_nthreads"),
    ({"mem_gb": -1.0}, "mem_gb: expected a positive number in GB"),
    ({"mem_gb": math.inf}, "mem_gb"),
    ({"device": "gpu"}, "device: expected one of auto, cpu, cuda"),
    ({"plugin_settings": {"plugin_args": {}}}, "'plugin' name"),
])
def test_performance_errors(kw, match):
    with pytest.raises(SettingsError, match=match):
        PerformanceSettings(**kw)


def test_processing_normalises():
    p = ProcessingSettings(b0_direction=[0, 0, -2], echo_times=[0.003, 0.006], field_strength=3,
                           outputs=["swi", "chimap", "swi"], params={"vsharp": {"radii": [8, 6]}})
    assert p.b0_direction == (0.0, 0.0, -1.0)
    assert p.echo_times == (0.003, 0.006) and p.field_strength == 3.0 and isinstance(p.field_strength, float)
    assert p.outputs == ("chimap", "swi")  # canonical order, no duplicates
    assert p.params == {"vsharp": {"radii": (8, 6)}}
    tilted = ProcessingSettings(b0_direction=(1.0, 1.0, 1.0)).b0_direction
    assert math.isclose(sum(v * v for v in tilted), 1.0, rel_tol=1e-15) and tilted[0] == pytest.approx(3 ** -0.5)
    # normalising again keeps every bit (what makes the TOML round trip exact)
    assert ProcessingSettings(b0_direction=tilted).b0_direction == tilted


@pytest.mark.parametrize("kw, match", [
    ({"inversion": "qsmnet"}, "inversion: expected one of tkd, tsvd"),
    ({"reference": "roi"}, "reference: expected one of mean, csf, none"),
    ({"mask": "quality", "unwrap": "snr"}, "unwrap"),
    ({"params": {"medj": {"x": 1}}}, "--param medj: unknown method or stage"),
    ({"params": {"medi": {"lambda": 1}}}, "Python identifiers"),
    ({"params": {"medi": {"lambda_": math.nan}}}, "finite"),
    ({"params": {"medi": {"lambda_": None}}}, "expected a number"),
    ({"params": {"vsharp": {"radii": [1, "a"]}}}, "list of numbers"),
    ({"params": {"vsharp": {"radii": []}}}, "empty list"),
    ({"params": {"medi": 3}}, "mapping"),
    ({"b0_direction": (0, 0, 0)}, "zero vector"),
    ({"b0_direction": (0, 1)}, "three finite numbers"),
    ({"b0_direction": "z"}, "'auto' or three numbers"),
    ({"echo_times": (4.0, 8.0)}, "8.0 s is too long; echo times are in seconds"),
    ({"echo_times": (0.008, 0.004)}, "strictly increasing"),
    ({"echo_times": (0.0, 0.004)}, "positive"),
    ({"echo_times": ()}, "positive"),
    ({"field_strength": 0}, "field_strength: expected a positive number in tesla"),
    ({"outputs": ("chimap", "qsm")}, "outputs: expected some of"),
    ({"outputs": ()}, "outputs"),
])
def test_processing_errors(kw, match):
    with pytest.raises(SettingsError, match=match) as exc:
        ProcessingSettings(**kw)
    assert "\n" not in str(exc.value)


def test_params_for_merges_stage_and_method():
    s = Settings(execution=_execution(), processing=ProcessingSettings(
        params={"unwrap": {"a": 1, "b": 2}, "quality": {"b": 3}, "mask": {"c": 4}}))
    assert s.params_for("quality", stage="unwrap") == {"a": 1, "b": 3}
    assert s.params_for("quality") == {"b": 3}
    assert s.params_for("medi") == {}
    s.params_for("quality")["b"] = 99  # a copy: the frozen settings do not change
    assert s.processing.params["quality"] == {"b": 3}


def test_toml_round_trip_is_exact(tmp_path):
    s = _full_settings()
    path = s.to_toml(tmp_path / "log" / "qsmbids.toml")
    text = path.read_text()
    assert text.startswith(f"# qsmbids {__version__} settings of run {s.execution.run_uuid}\n")
    assert "mem_gb = 12.0" in text and 'device = "cpu"' in text and "[processing.params.rts]" in text
    back = Settings.from_toml(path)
    assert back == s
    assert back.execution.bids_filters == {"megre": {"acquisition": "fast", "session": None}}
    assert back.processing.params["rts"] == {"delta": 0.2, "max_iter": 30, "verbose": True}
    assert type(back.processing.params["rts"]["max_iter"]) is int
    assert back.processing.params["vsharp"]["radii"] == (12, 10.5, 8)
    assert back.processing.b0_direction == (0.0, 0.6, 0.8)
    assert back.execution.ground_truth_dir == Path("/data/ds/derivatives/t")
    assert not list(tmp_path.glob("log/.*tmp"))  # written through a temporary file, nothing left behind


def test_toml_round_trip_of_defaults_leaves_none_out(tmp_path):
    s = Settings(execution=_execution())
    text = s.to_toml(tmp_path / "s.toml").read_text()
    for key in ("bids_filters", "ground_truth_dir", "mem_gb", "use_plugin", "echo_times", "field_strength"):
        assert f"{key} =" not in text
    assert Settings.from_toml(tmp_path / "s.toml") == s


def test_to_dict_is_plain_json():
    s = _full_settings()
    d = s.to_dict()
    assert set(d) == {"execution", "performance", "processing"}
    assert d["execution"]["bids_dir"] == "/data/ds" and d["execution"]["participant_label"] == ["01", "02"]
    assert d["processing"]["b0_direction"] == [0.0, 0.6, 0.8]
    assert Settings(execution=_execution()).to_dict()["processing"]["echo_times"] is None  # None kept
    assert json.loads(json.dumps(d)) == d
    assert Settings.from_dict(d) == s


_HEAD = '[execution]\nbids_dir = "/a"\noutput_dir = "/b"\nanalysis_level = "participant"\nwork_dir = "/w"\n'


@pytest.mark.parametrize("text, match", [
    (_HEAD + "colour = 1\n", r"\[execution\]: unknown setting\(s\) colour"),
    ('[performance]\nnprocs = 2\n', r"expected tables execution\[, performance, processing\], got \['performance'\]"),
    ('[execution]\nbids_dir = "/a"\n[extra]\n', r"got \['execution', 'extra'\]"),
    ('[execution]\nbids_dir = "/a"\n', r"\[execution\]: .*missing"),
    ('[execution\n', "not valid TOML"),
    ("processing = 3\n" + _HEAD, r"\[processing\]: expected a table"),
    (_HEAD + "bids_filters = '{bad'\n", "bids_filters: not valid JSON"),
])
def test_from_toml_errors(tmp_path, text, match):
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(SettingsError, match=match):
        Settings.from_toml(tmp_path / "bad.toml")
