"""Options checked before anything runs (#14): ``--param`` values against the types and ranges of the functions
that receive them, and ``--use-plugin`` files against nipype (exit 64, one line, nothing written)."""

from __future__ import annotations

import inspect

import pytest

from qsmbids.cli.options import INTERNAL, check_param_values, param_targets
from qsmbids.cli.parser import parse_param_value
from qsmbids.cli.run import _main
from qsmbids.config import PARAM_KEYS, STAGE_CHOICES, ProcessingSettings, SettingsError


def _check(text: str, **methods) -> None:
    key_name, _, value = text.partition("=")
    key, _, name = key_name.partition(".")
    check_param_values(ProcessingSettings(**methods, params={key: {name: parse_param_value(value)}}))


@pytest.mark.parametrize("inversion", STAGE_CHOICES["inversion"])
def test_every_default_of_every_function_passes(inversion):
    """The ranges must not refuse what the functions themselves use by default (nor the values typed back from
    the command line's text form)."""
    for bgremove in STAGE_CHOICES["bgremove"]:
        pr = ProcessingSettings(inversion=inversion, bgremove=bgremove)
        for key, fns in param_targets(pr).items():
            if key not in PARAM_KEYS:
                continue
            for fn in fns:
                for name, p in inspect.signature(fn).parameters.items():
                    if p.kind != p.KEYWORD_ONLY or name in INTERNAL or p.default is None:
                        continue
                    if isinstance(p.default, (bool, int, float, str, tuple)):
                        check_param_values(ProcessingSettings(inversion=inversion, bgremove=bgremove,
                                                              params={key: {name: p.default}}))


@pytest.mark.parametrize("text, methods", [
    ("medi.lambda_=1000", {}), ("medi.max_iter=5", {}), ("medi.merit=true", {}), ("vsharp.radii=12,10,8", {"bgremove": "vsharp"}),
    ("vsharp.radii=12", {"bgremove": "vsharp"}), ("unwrap.sigma_mm=4,4,2", {}), ("tkd.threshold=auto", {"inversion": "tkd"}),
    ("tgv.alpha=0.002,0.001", {"inversion": "tgv"}), ("swi.phase_sign=1", {}), ("deepbet.threshold=0.3", {}),
    ("medi.lambda_=discrepancy", {}), ("tv.lambda_=discrepancy", {"inversion": "tv"}),
    ("ilsqr.max_iter=discrepancy", {"inversion": "ilsqr"}), ("tv.noise_std=0.002", {"inversion": "tv"}),
])
def test_good_values_pass(text, methods):
    _check(text, **methods)


@pytest.mark.parametrize("text, methods, message", [
    ("medi.lambda_=abc", {}, "--param medi.lambda_: expected a number or discrepancy, got 'abc'"),
    ("medi.max_iter=-5", {}, "--param medi.max_iter: expected a value >= 1, got -5"),
    ("medi.max_iter=2.5", {}, "--param medi.max_iter: expected a whole number, got 2.5"),
    ("medi.merit=1", {}, "--param medi.merit: expected true or false, got 1"),
    ("medi.pad_factor=0.5", {}, "--param medi.pad_factor: expected a value >= 1, got 0.5"),
    ("vsharp.radii=12,0", {"bgremove": "vsharp"}, "--param vsharp.radii: expected a value > 0, got 12,0"),
    ("bgremove.threshold=1", {"bgremove": "vsharp"}, "--param bgremove.threshold: expected a value in (0, 1), got 1"),
    ("tkd.threshold=0.7", {"inversion": "tkd"}, "expected a value in (0, 0.667), got 0.7"),
    ("tkd.threshold=best", {"inversion": "tkd"}, "expected a number or auto, l-curve, got 'best'"),
    ("tv.lambda_=l-curve", {"inversion": "tv"}, "--param tv.lambda_: expected a number or discrepancy, got 'l-curve'"),
    ("ilsqr.max_iter=0", {"inversion": "ilsqr"}, "--param ilsqr.max_iter: expected a value >= 1, got 0"),
    ("tv.noise_std=-1", {"inversion": "tv"}, "--param tv.noise_std: expected a value > 0, got -1"),
    ("tgv.alpha=0.002", {"inversion": "tgv"}, "--param tgv.alpha: expected 2 values, got 0.002"),
    ("unwrap.offset=magic", {}, "--param unwrap.offset: expected one of mcpc3ds, none, got 'magic'"),
    ("swi.axis=3", {}, "--param swi.axis: expected one of 0, 1, 2, got 3"),
    ("relax.r2_max=0,1", {}, "--param relax.r2_max: expected a number, not a list, got 0,1"),
    ("medi.noise_std=2", {}, "medi.noise_std: computed by the workflow; it cannot be set on the command line"),
    ("medi.bogus=1", {}, "--param medi.bogus: not a parameter of medi (accepted: "),
])
def test_bad_values_are_refused(text, methods, message):
    with pytest.raises(SettingsError) as exc:
        _check(text, **methods)
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("text, message", [
    ("plugin: MultiProcc\n", "'MultiProcc' is not a nipype plugin (did you mean MultiProc?"),
    ("plugin: MultiProc\nplugin_args:\n  memory_gb: -3\n", "plugin_args memory_gb: expected a positive number"),
    ("plugin: MultiProc\nplugin_args:\n  n_procs: 0\n", "plugin_args n_procs: expected a whole number >= 1, got 0"),
])
def test_bad_plugin_file_refused_before_anything(sim_bids, tmp_path, capsys, text, message):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text(text)
    out, work = tmp_path / "out", tmp_path / "work"
    with pytest.raises(SystemExit) as exc:  # a usage error, refused while parsing
        _main([str(sim_bids), str(out), "participant", "-w", str(work), "--use-plugin", str(plugin),
               "--skip-bids-validation"])
    assert exc.value.code == 64
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qsmbids: error: ") and message in lines[0]
    assert str(plugin) in lines[0] and "Traceback" not in captured.err + captured.out
    assert not out.exists() and not work.exists()
