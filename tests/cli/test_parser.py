"""qsmbids.cli.parser: every option declared, values typed, usage errors exit 64 with one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from qsmbids import __version__
from qsmbids.cli.exit_codes import EX_USAGE
from qsmbids.cli.parser import build_parser, parse_args, parse_param_value, settings_from_args
from qsmbids.config import OUTPUTS, ProcessingSettings, Settings, SettingsError

POS = ["ds", "out", "participant"]

ISSUE_OPTIONS = [
    "--participant-label", "--session-label", "--bids-filter-file", "-w", "--work-dir", "--nprocs", "--omp-nthreads",
    "--mem-gb", "--use-plugin", "--skip-bids-validation", "--stop-on-first-crash", "--reports-only",
    "--boilerplate-only", "--device", "-v", "--version", "--mask", "--unwrap", "--combine", "--bgremove",
    "--inversion", "--reference", "--param", "--b0-direction", "--echo-times", "--field-strength", "--outputs",
    "--ground-truth",
]


def _settings(*extra: str, cwd: Path = Path("/home/me")) -> Settings:
    return settings_from_args(build_parser().parse_args([*POS, *extra]), cwd=cwd)


def _usage_error(argv, capsys) -> str:
    """Parse ``argv``, expect exit 64 and exactly one line on stderr; return that line."""
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == EX_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qsmbids: error: "), err
    return err


def test_help_lists_every_option_of_the_issue(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    words = set(out.replace(",", " ").split())
    missing = [opt for opt in ISSUE_OPTIONS if opt not in words]
    assert not missing
    for group in ("BIDS filtering", "Processing options", "Performance", "Workflow and other options"):
        assert f"{group}:" in out
    assert "{participant,group}" in out and "--participant_label" in out and "--skip_bids_validation" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"qsmbids {__version__}"


def test_defaults_equal_the_contract(monkeypatch):
    monkeypatch.setattr("qsmbids.cli.parser.default_nprocs", lambda: 12)
    s = _settings()
    assert s.processing == ProcessingSettings()
    assert s.processing.inversion == "medi" and s.processing.outputs == OUTPUTS
    e, p = s.execution, s.performance
    assert e.bids_dir == Path("/home/me/ds") and e.output_dir == Path("/home/me/out")
    assert e.work_dir == Path("/home/me/work")  # fMRIPrep's default: ./work
    assert e.analysis_level == "participant" and e.participant_label == () and e.session_label == ()
    assert e.bids_filters is None and e.ground_truth_dir is None and e.verbosity == 0 and e.version == __version__
    assert not (e.skip_bids_validation or e.reports_only or e.boilerplate_only or p.stop_on_first_crash)
    assert (p.nprocs, p.omp_nthreads, p.mem_gb, p.use_plugin, p.device) == (12, 8, None, None, "auto")
    assert p.plugin_settings == {"plugin": "MultiProc",
                                 "plugin_args": {"n_procs": 12, "raise_insufficient": False, "maxtasksperchild": 1}}


def test_unknown_analysis_level_is_left_to_the_run_module():
    args = build_parser().parse_args(["ds", "out", "everything"])
    assert args.analysis_level == "everything"


def test_labels_with_or_without_prefix():
    s = _settings("--participant-label", "sub-01", "02", "01", "--session_label", "ses-pre", "post")
    assert s.execution.participant_label == ("01", "02")
    assert s.execution.session_label == ("pre", "post")


def test_paths_and_flags():
    s = _settings("-w", "scratch", "--ground-truth", "/gt", "--skip_bids_validation", "--stop-on-first-crash",
                  "--reports-only", "-vv", "--device", "cpu", cwd=Path("/x"))
    assert s.execution.work_dir == Path("/x/scratch") and s.execution.ground_truth_dir == Path("/gt")
    assert s.execution.skip_bids_validation and s.execution.reports_only and s.execution.verbosity == 2
    assert s.performance.stop_on_first_crash and s.performance.device == "cpu"


def test_processing_choices_and_values():
    s = _settings("--mask", "magnitude", "--unwrap", "laplacian", "--combine", "uniform", "--bgremove", "lbv",
                  "--inversion", "tgv", "--reference", "none", "--echo-times", "0.0045", "0.009",
                  "--field-strength", "7", "--outputs", "swi", "chimap", "--b0-direction", "0,3,4")
    p = s.processing
    assert (p.mask, p.unwrap, p.combine, p.bgremove, p.inversion, p.reference) == (
        "magnitude", "laplacian", "uniform", "lbv", "tgv", "none")
    assert p.echo_times == (0.0045, 0.009) and p.field_strength == 7.0
    assert p.outputs == ("chimap", "swi") and p.b0_direction == (0.0, 0.6, 0.8)


def test_b0_direction_is_normalised_and_accepts_a_leading_minus():
    d = _settings("--b0-direction=-1,0,1").processing.b0_direction
    assert d == pytest.approx((-math.sqrt(0.5), 0.0, math.sqrt(0.5)))
    assert math.isclose(sum(v * v for v in d), 1.0)
    assert _settings("--b0-direction", "AUTO").processing.b0_direction == "auto"


def test_param_values_are_typed():
    s = _settings("--param", "medi.lambda_=1000", "--param", "medi.lambda_=1e3", "--param", "rts.max_iter=40",
                  "--param", "vsharp.radii=12, 10,8", "--param", "swi.filter=hann", "--param", "tv.verbose=False",
                  "--param", "unwrap.threshold=-0.5", "--param", "medi.solver=a=b")
    assert s.params_for("medi") == {"lambda_": 1000.0, "solver": "a=b"}  # the last of repeated names wins
    assert type(s.params_for("rts")["max_iter"]) is int
    assert s.params_for("vsharp") == {"radii": (12, 10, 8)}
    assert s.params_for("swi") == {"filter": "hann"} and s.params_for("tv") == {"verbose": False}
    assert s.params_for("quality", stage="unwrap") == {"threshold": -0.5}


@pytest.mark.parametrize("text, value", [
    ("0", 0), ("-3", -3), ("2.5", 2.5), ("1E-2", 0.01), ("true", True), ("FALSE", False), ("x", "x"),
    ("1,2.5", (1, 2.5)), ("a,1", "a,1"), (" 7 ", 7),
])
def test_parse_param_value(text, value):
    got = parse_param_value(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("argv, fragment", [
    ([], "the following arguments are required: bids_dir, output_dir, {participant,group}"),
    ([*POS, "--participant-label", "sub-01_x"], "argument --participant-label/--participant_label: sub label"),
    ([*POS, "--session-label", "a-b"], "ses label 'a-b'"),
    ([*POS, "--param", "medi.lambda_"], "expected METHOD.NAME=VALUE"),
    ([*POS, "--param", "lambda_=3"], "expected METHOD.NAME=VALUE"),
    ([*POS, "--param", "medi.=3"], "expected METHOD.NAME=VALUE"),
    ([*POS, "--param", "medi.lambda_="], "expected METHOD.NAME=VALUE"),
    ([*POS, "--param", "qsmnet.depth=3"], "'qsmnet' is not a method or stage"),
    ([*POS, "--param", "medi.lambda=3"], "'lambda' is spelt 'lambda_'"),
    ([*POS, "--param", "medi.2x=3"], "not a parameter name"),
    ([*POS, "--param", "medi.lambda_=nan"], "expected a finite number"),
    ([*POS, "--param", "vsharp.radii=1,inf"], "expected a finite number"),
    ([*POS, "--echo-times", "4", "8"], "give echo times in seconds, not milliseconds (e.g. 0.004 for 4 ms)"),
    ([*POS, "--echo-times", "0.004", "0.2"], "too long for an echo time in seconds"),
    ([*POS, "--echo-times", "0.008", "0.004"], "argument --echo-times: expected strictly increasing values"),
    ([*POS, "--echo-times", "0.004", "0.004"], "strictly increasing"),
    ([*POS, "--echo-times", "-0.004"], "expected a positive number, got '-0.004'"),
    ([*POS, "--echo-times", "x"], "expected a positive number, got 'x'"),
    ([*POS, "--b0-direction", "0,0,0"], "not all zero"),
    ([*POS, "--b0-direction", "0,1"], "three comma-separated numbers"),
    ([*POS, "--b0-direction", "up"], "got 'up'"),
    ([*POS, "--field-strength", "0"], "argument --field-strength: expected a positive number"),
    ([*POS, "--field-strength", "nan"], "expected a positive number"),
    ([*POS, "--outputs", "qsm"], "invalid choice: 'qsm'"),
    ([*POS, "--inversion", "qsmnet"], "invalid choice: 'qsmnet'"),
    ([*POS, "--reference", "roi"], "invalid choice: 'roi'"),
    ([*POS, "--device", "gpu"], "invalid choice: 'gpu'"),
    ([*POS, "--nprocs", "0"], "argument --nprocs: expected a whole number >= 1, got '0'"),
    ([*POS, "--omp-nthreads", "two"], "argument --omp-nthreads: expected a whole number >= 1"),
    ([*POS, "--mem-gb", "-4"], "argument --mem-gb"),
    ([*POS, "--use-plugin", "/no/such/plugin.yml"], "/no/such/plugin.yml: no such file"),
    ([*POS, "--bids-filter-file", "/no/such.json"], "/no/such.json: no such file"),
    ([*POS, "--reports-only", "--boilerplate-only"], "not allowed with argument --reports-only"),
    ([*POS, "--colour"], "unrecognized arguments: --colour"),
])
def test_usage_errors_exit_64_with_one_line(argv, fragment, capsys):
    assert fragment in _usage_error(argv, capsys)


def test_bids_filter_file(tmp_path, capsys):
    good = tmp_path / "filter.json"
    good.write_text(json.dumps({"megre": {"acquisition": "fast", "run": None}}))
    s = _settings("--bids-filter-file", str(good))
    assert s.execution.bids_filters == {"megre": {"acquisition": "fast", "run": None}}
    (tmp_path / "bad.json").write_text('{"megre": {"acquisition": ')
    assert "not a readable JSON file" in _usage_error([*POS, "--bids-filter-file", str(tmp_path / "bad.json")],
                                                      capsys)
    (tmp_path / "list.json").write_text('["megre"]')
    assert "expected a JSON object of queries" in _usage_error(
        [*POS, "--bids-filter-file", str(tmp_path / "list.json")], capsys)


def test_plugin_file_and_performance(tmp_path, monkeypatch):
    monkeypatch.setattr("qsmbids.cli.parser.default_nprocs", lambda: 16)
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: MultiProc\nplugin_args:\n  n_procs: 3\n  raise_insufficient: false\n")
    p = _settings("--use-plugin", str(plugin)).performance
    assert p.nprocs == 3 and p.omp_nthreads == 3 and p.use_plugin == plugin
    assert p.plugin_settings == {"plugin": "MultiProc", "plugin_args": {"n_procs": 3, "raise_insufficient": False}}
    p = _settings("--use-plugin", str(plugin), "--nprocs", "6", "--mem-gb", "20", "--omp-nthreads", "2").performance
    assert (p.nprocs, p.omp_nthreads, p.mem_gb) == (6, 2, 20.0)
    assert p.plugin_settings["plugin_args"] == {"n_procs": 6, "raise_insufficient": False, "memory_gb": 20.0}
    plugin.write_text("plugin: Linear\n")
    p = _settings("--use-plugin", str(plugin)).performance
    assert p.plugin_settings == {"plugin": "Linear", "plugin_args": {}} and p.nprocs == 16
    p = _settings("--nprocs", "4", "--mem-gb", "7.5").performance
    assert p.omp_nthreads == 4 and p.plugin_settings["plugin_args"]["n_procs"] == 4
    assert p.plugin_settings["plugin_args"]["memory_gb"] == 7.5


@pytest.mark.parametrize("text, match", [
    ("plugin_args:\n  n_procs: 2\n", "expected a mapping with a 'plugin' name"),
    ("plugin: MultiProc\nplugin_args: 3\n", "'plugin_args' must be a mapping"),
    ("plugin: [unclosed\n", "not a readable YAML file"),
    # checked against nipype before anything runs (#14): a typo, and arguments nipype would choke on or misuse
    ("plugin: MultiProcc\n", "'MultiProcc' is not a nipype plugin (did you mean MultiProc?"),
    ("plugin: multiproc\n", "'multiproc' is not a nipype plugin (did you mean MultiProc?"),
    ("plugin: MultiProc\nplugin_args:\n  memory_gb: -3\n", "plugin_args memory_gb: expected a positive number"),
    ("plugin: MultiProc\nplugin_args:\n  n_procs: 0\n", "plugin_args n_procs: expected a whole number >= 1, got 0"),
    ("plugin: MultiProc\nplugin_args:\n  n_procs: four\n", "n_procs: expected a whole number >= 1, got 'four'"),
    ("plugin: LegacyMultiProc\nplugin_args:\n  maxtasksperchild: 0\n", "maxtasksperchild: expected a whole number"),
    ("plugin: SLURM\nplugin_args:\n  max_jobs: -1\n", "max_jobs: expected a whole number >= 1"),
    ("plugin: MultiProc\nplugin_args:\n  mp_context: thread\n", "mp_context: expected fork, spawn or forkserver"),
])
def test_bad_plugin_files(tmp_path, text, match):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text(text)
    with pytest.raises(SettingsError) as exc:
        _settings("--use-plugin", str(plugin))
    assert match in str(exc.value) and "\n" not in str(exc.value) and str(plugin) in str(exc.value)


def test_plugin_files_nipype_accepts(tmp_path):
    plugin = tmp_path / "plugin.yml"
    for text in ("plugin: Linear\n", "plugin: SLURMGraph\nplugin_args:\n  sbatch_args: '-p short'\n",
                 "plugin: MultiProc\nplugin_args:\n  n_procs: 2\n  memory_gb: 0.5\n  mp_context: spawn\n"):
        plugin.write_text(text)
        assert _settings("--use-plugin", str(plugin)).performance.plugin_settings["plugin"] in text


def test_cross_argument_errors_are_usage_errors(capsys):
    with pytest.raises(SettingsError, match=r"--omp-nthreads \(4\) cannot exceed --nprocs \(2\)"):
        _settings("--nprocs", "2", "--omp-nthreads", "4")
    with pytest.raises(SystemExit) as exc:
        parse_args([*POS, "--nprocs", "2", "--omp-nthreads", "4"])
    assert exc.value.code == EX_USAGE
    assert capsys.readouterr().err == "qsmbids: error: --omp-nthreads (4) cannot exceed --nprocs (2)\n"


def test_settings_from_the_command_line_round_trip_through_toml(tmp_path):
    s = _settings("--participant-label", "01", "--param", "medi.lambda_=800", "--param", "vsharp.radii=10,8",
                  "--echo-times", "0.004", "0.008", "0.012", "--b0-direction", "1,1,1", "--mem-gb", "3",
                  "--outputs", "chimap", "mask", "--ground-truth", "gt", cwd=tmp_path)
    assert Settings.from_toml(s.to_toml(tmp_path / "work" / "qsmbids.toml")) == s
