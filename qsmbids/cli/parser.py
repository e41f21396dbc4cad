"""The ``qsmbids`` command line: argument declarations and their types (fMRIPrep's parser/run split).

This module only declares arguments and checks each value's type, so that a malformed value is a usage error
(exit 64, one line ``qsmbids: error: …``, as the BIDS-Apps execution spec asks) before anything runs.
:func:`settings_from_args` then checks values against each other and builds one :class:`~qsmbids.config.Settings`.
Datasets, folders and crash recovery are the run module's business (exit codes 16, 17, 18, 66, 73).

The analysis level is a plain string, not an argparse choice: an unknown level has its own exit code (17).
"""

from __future__ import annotations

import argparse
import itertools
import json
import keyword
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__
from ..config import (
    ANALYSIS_LEVELS,
    ATLASES,
    DEFAULTS,
    DEVICES,
    MAX_ECHO_TIME_S,
    OUTPUTS,
    PARAM_KEYS,
    STAGE_CHOICES,
    STAGES,
    ExecutionSettings,
    PerformanceSettings,
    ProcessingSettings,
    Settings,
    SettingsError,
    default_nprocs,
    default_plugin_settings,
    normalise_b0_direction,
    strip_label,
)
from .exit_codes import EX_DATAERR, EX_NOINPUT, EX_USAGE

__all__ = ["QSMBIDSArgumentParser", "build_parser", "parse_args", "parse_param_value", "settings_from_args"]

_MULTIPROC = ("MultiProc", "LegacyMultiProc")


class QSMBIDSArgumentParser(argparse.ArgumentParser):
    """argparse, but usage errors exit with 64 (BSD ``EX_USAGE``, the BIDS-Apps choice) and print one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EX_USAGE, f"{self.prog}: error: {' '.join(str(message).split())}\n")


def _type_error(message: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(message)


def _label(prefix: str):
    def convert(value: str) -> str:
        try:
            return strip_label(value, prefix)
        except SettingsError as exc:
            raise _type_error(str(exc)) from None

    convert.__name__ = f"{prefix}_label"
    return convert


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise _type_error(f"expected a whole number >= 1, got {value!r}") from None
    if number < 1:
        raise _type_error(f"expected a whole number >= 1, got {value!r}")
    return number


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise _type_error(f"expected a positive number, got {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise _type_error(f"expected a positive number, got {value!r}")
    return number


def _echo_time(value: str) -> float:
    te = _positive_float(value)
    if te >= MAX_ECHO_TIME_S:
        raise _type_error(f"{value} is too long for an echo time in seconds; give echo times in seconds, "
                          f"not milliseconds (e.g. {te / 1000:g} for {value} ms)")
    return te


class _IncreasingAction(argparse.Action):
    """Store a list that must be strictly increasing (echo times)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if any(b <= a for a, b in itertools.pairwise(values)):
            parser.error(f"argument {option_string}: expected strictly increasing values, got "
                         f"{' '.join(f'{v:g}' for v in values)}")
        setattr(namespace, self.dest, tuple(values))


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise _type_error(f"{value}: no such file")
    return path.absolute()


def _bids_filter_file(value: str) -> dict:
    """Read a JSON file of pybids queries, e.g. ``{"megre": {"acquisition": "fast"}}``."""
    path = _existing_file(value)
    try:
        filters = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _type_error(f"{value}: not a readable JSON file ({exc})") from None
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise _type_error(f"{value}: expected a JSON object of queries, e.g. {{\"megre\": {{\"acquisition\": \"x\"}}}}")
    return filters


def parse_param_value(text: str) -> Any:
    """Type a ``--param`` value: int, float, ``true``/``false``, a comma-separated list of numbers, else text.

    >>> [parse_param_value(v) for v in ("3", "1e-3", "True", "12,10,8", "pcg")]
    [3, 0.001, True, (12, 10, 8), 'pcg']
    """
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "," in text:
        items = [parse_param_value(t) for t in text.split(",")]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            return tuple(items)
        return text
    for kind in (int, float):
        try:
            number = kind(text)
        except ValueError:
            continue
        if isinstance(number, float) and not math.isfinite(number):
            raise _type_error(f"expected a finite number, got {text!r}")
        return number
    return text


def _param(value: str) -> tuple[str, str, Any]:
    key_name, sep, text = value.partition("=")
    key, dot, name = key_name.strip().partition(".")
    if not sep or not dot or not name or not text.strip():
        raise _type_error(f"expected METHOD.NAME=VALUE (e.g. medi.lambda_=1000), got {value!r}")
    if key not in PARAM_KEYS:
        raise _type_error(f"{key!r} is not a method or stage; expected one of {', '.join(PARAM_KEYS)}")
    if not name.isidentifier() or keyword.iskeyword(name):
        raise _type_error(f"{name!r} is not a parameter name (a Python identifier; 'lambda' is spelt 'lambda_')")
    return key, name, parse_param_value(text)


def _b0_direction(value: str) -> str | tuple[float, float, float]:
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return normalise_b0_direction(value.split(","))
    except SettingsError:
        raise _type_error(f"expected 'auto' or three comma-separated numbers not all zero (e.g. 0,0,1), "
                          f"got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The ``qsmbids`` argument parser: positional arguments and four groups of options."""
    parser = QSMBIDSArgumentParser(
        prog="qsmbids",
        description="qsmbids: quantitative susceptibility maps (χ, ppm) from multi-echo GRE BIDS datasets.",
        epilog="Usage errors exit with 64; see the README for the other exit codes.",
    )
    parser.add_argument("bids_dir", type=Path, help="root folder of the input BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="folder for the derivatives (becomes a BIDS derivative dataset)")
    parser.add_argument("analysis_level", metavar="{" + ",".join(ANALYSIS_LEVELS) + "}",
                        help="'participant' processes each subject; 'group' gathers every run's ROI statistics into "
                             "group/roi_summary.tsv and group.html")

    g = parser.add_argument_group("BIDS filtering")
    g.add_argument("--participant-label", "--participant_label", nargs="+", type=_label("sub"), metavar="LABEL",
                   help="subjects to process, with or without 'sub-' (default: all)")
    g.add_argument("--session-label", "--session_label", nargs="+", type=_label("ses"), metavar="LABEL",
                   help="sessions to process, with or without 'ses-' (default: all)")
    g.add_argument("--bids-filter-file", type=_bids_filter_file, metavar="FILE", dest="bids_filters",
                   help='JSON file of pybids queries per input, e.g. {"megre": {"acquisition": "fast"}}')
    g.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true",
                   help="do not run the BIDS validator on the input dataset")
    g.add_argument("--ground-truth", type=Path, metavar="DIR", dest="ground_truth_dir",
                   help="derivative dataset with true χ maps (e.g. derivatives/qsmbids-sim); adds accuracy to "
                        "the reports")

    g.add_argument("-d", "--derivatives", type=Path, action="append", metavar="DIR", dest="derivatives",
                   help="derivative dataset(s) with precomputed brain masks, repeatable (as in fMRIPrep): a "
                        "sub-<label>/[ses-<label>/]anat/*_desc-brain_mask.nii[.gz] with the run's sub/ses/acq/rec/run "
                        "entities replaces the computed mask; it must be on the run's grid")

    g = parser.add_argument_group("Processing options")
    stage_help = {
        "mask": "brain mask", "unwrap": "spatial phase unwrapping", "combine": "echo weighting of the field fit",
        "bgremove": "background field removal", "inversion": "dipole inversion",
        "reference": "susceptibility reference (mean of the brain, CSF, or none)",
    }
    for stage, choices in STAGE_CHOICES.items():
        g.add_argument(f"--{stage}", choices=choices, default=DEFAULTS[stage],
                       help=f"{stage_help[stage]} (default: %(default)s)")
    g.add_argument("--param", action="append", type=_param, metavar="METHOD.NAME=VALUE", dest="params",
                   help="a keyword argument for one method or stage, repeatable; the value is typed as a number, "
                        "true/false, a comma-separated list of numbers or text (e.g. --param medi.lambda_=1000). "
                        f"Stage keys ({', '.join(STAGES)}) apply to whichever method the stage runs. "
                        "The last of repeated names wins")
    g.add_argument("--b0-direction", type=_b0_direction, default=DEFAULTS["b0_direction"], metavar="auto|X,Y,Z",
                   help="unit B0 direction in voxel axes, or 'auto' to take it from the image affine (default); "
                        "write a leading minus as --b0-direction=-0.1,0,1")
    g.add_argument("--echo-times", type=_echo_time, nargs="+", action=_IncreasingAction, metavar="S",
                   help="echo times in seconds, overriding the sidecars' EchoTime")
    g.add_argument("--field-strength", type=_positive_float, metavar="T",
                   help="B0 field strength in tesla, overriding the sidecars' MagneticFieldStrength")
    g.add_argument("--outputs", nargs="+", choices=OUTPUTS, default=OUTPUTS, metavar="OUTPUT",
                   help=f"derivatives to write, some of {', '.join(OUTPUTS)} (default: all)")
    g.add_argument("--atlas", choices=ATLASES, default=DEFAULTS["atlas"],
                   help="atlas registered into every run for regional χ statistics (default: %(default)s)")
    g.add_argument("--segmentation-dir", type=Path, metavar="DIR", dest="segmentation_dir",
                   help="BIDS derivatives with *_dseg.nii.gz segmentations (+ labels .tsv), e.g. FreeSurfer aseg, "
                        "used for the regional statistics instead of the atlas")
    g.add_argument("--no-roi", action="store_false", dest="roi",
                   help="no regional statistics (no registration, no atlas labels, nothing for the group level)")

    g = parser.add_argument_group("Performance")
    g.add_argument("--nprocs", type=_positive_int, metavar="N",
                   help="processes nipype may run at once (default: the CPUs available to this process)")
    g.add_argument("--omp-nthreads", type=_positive_int, metavar="N",
                   help="threads per process (torch, FFT) (default: min(nprocs, 8))")
    g.add_argument("--mem-gb", type=_positive_float, metavar="GB", help="memory nipype may schedule, in GB")
    g.add_argument("--use-plugin", type=_existing_file, metavar="FILE",
                   help="nipype plugin settings (YAML with 'plugin' and optional 'plugin_args')")
    g.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the numerics run: 'auto' takes a CUDA GPU when there is one (default: %(default)s)")

    g = parser.add_argument_group("Workflow and other options")
    g.add_argument("-w", "--work-dir", type=Path, metavar="DIR",
                   help="folder for intermediate results, kept for reuse (default: ./work)")
    g.add_argument("--stop-on-first-crash", action="store_true", help="stop at the first failing node")
    only = g.add_mutually_exclusive_group()
    only.add_argument("--reports-only", action="store_true",
                      help="only (re)write the HTML reports from the derivatives already in output_dir")
    only.add_argument("--boilerplate-only", action="store_true",
                      help="only write the methods boilerplate (logs/CITATION.md) and stop")
    g.add_argument("-v", "--verbose", action="count", default=0, dest="verbosity",
                   help="more log output (-vv for debug)")
    g.add_argument("--version", action="version", version=f"qsmbids {__version__}")
    return parser


def _load_plugin(path: Path) -> dict:
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml comes with niworkflows
        raise SettingsError("--use-plugin needs PyYAML (pip install pyyaml)") from None
    try:
        plugin = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SettingsError(f"--use-plugin {path}: not a readable YAML file ({' '.join(str(exc).split())})") from None
    if not isinstance(plugin, dict) or not isinstance(plugin.get("plugin"), str):
        raise SettingsError(f"--use-plugin {path}: expected a mapping with a 'plugin' name (e.g. plugin: MultiProc)")
    args = plugin.setdefault("plugin_args", {})
    if not isinstance(args, dict):
        raise SettingsError(f"--use-plugin {path}: 'plugin_args' must be a mapping")
    from .options import check_plugin

    check_plugin(plugin, f"--use-plugin {path}")
    return plugin


def _performance(args: argparse.Namespace) -> PerformanceSettings:
    """Resolve nprocs/omp_nthreads/plugin the way fMRIPrep does: the command line wins over the plugin file,
    the plugin file's n_procs over the CPU count; MultiProc gets n_procs and memory_gb written in."""
    if args.use_plugin is not None:
        plugin = _load_plugin(args.use_plugin)
        file_nprocs = plugin["plugin_args"].get("n_procs")
        nprocs = args.nprocs or (file_nprocs if isinstance(file_nprocs, int) else None) or default_nprocs()
        if plugin["plugin"] in _MULTIPROC:
            plugin["plugin_args"]["n_procs"] = nprocs
            if args.mem_gb is not None:
                plugin["plugin_args"]["memory_gb"] = args.mem_gb
    else:
        nprocs = args.nprocs or default_nprocs()
        plugin = default_plugin_settings(nprocs, args.mem_gb)
    omp = args.omp_nthreads
    if omp is None:
        omp = min(nprocs, 8)
    return PerformanceSettings(nprocs=nprocs, omp_nthreads=omp, mem_gb=args.mem_gb, use_plugin=args.use_plugin,
                               plugin_settings=plugin, stop_on_first_crash=args.stop_on_first_crash,
                               device=args.device)


def settings_from_args(args: argparse.Namespace, *, cwd: Path | None = None) -> Settings:
    """One validated :class:`Settings` from parsed arguments; cross-argument problems raise ``SettingsError``.

    Paths become absolute (relative to ``cwd``, default the current folder); the work folder defaults to
    ``<cwd>/work`` as in fMRIPrep. Nothing on disk is checked here except reading ``--use-plugin``.
    """
    cwd = Path.cwd() if cwd is None else Path(cwd)

    def absolute(path: Path | None) -> Path | None:
        return None if path is None else cwd / Path(path).expanduser()

    params: dict[str, dict[str, Any]] = {}
    for key, name, value in args.params or ():
        params.setdefault(key, {})[name] = value
    execution = ExecutionSettings(
        bids_dir=absolute(args.bids_dir), output_dir=absolute(args.output_dir), analysis_level=args.analysis_level,
        work_dir=absolute(args.work_dir) if args.work_dir is not None else cwd / "work",
        participant_label=tuple(args.participant_label or ()), session_label=tuple(args.session_label or ()),
        bids_filters=args.bids_filters, skip_bids_validation=args.skip_bids_validation,
        reports_only=args.reports_only, boilerplate_only=args.boilerplate_only,
        ground_truth_dir=absolute(args.ground_truth_dir), segmentation_dir=absolute(args.segmentation_dir),
        derivatives=tuple(absolute(d) for d in args.derivatives or ()),
        verbosity=args.verbosity, version=__version__,
    )
    processing = ProcessingSettings(
        **{stage: getattr(args, stage) for stage in STAGE_CHOICES}, params=params,
        b0_direction=args.b0_direction, echo_times=args.echo_times, field_strength=args.field_strength,
        outputs=tuple(args.outputs), roi=args.roi, atlas=args.atlas,
    )
    return Settings(execution=execution, performance=_performance(args), processing=processing)


def parse_args(argv: list[str] | None = None) -> Settings:
    """Parse ``argv`` (default ``sys.argv[1:]``) into :class:`Settings`; a ``SettingsError`` is a usage error."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        parser.error(str(exc))
    _check_segmentation_dir(parser, settings)
    return settings


def _check_segmentation_dir(parser: argparse.ArgumentParser, settings: Settings) -> None:
    """``--segmentation-dir`` is read completely before any work (participant level): a missing folder exits 66, a
    segmentation whose labels TSV is missing or inconsistent with the image exits 65 (one line naming the file)."""
    ex = settings.execution
    if ex.segmentation_dir is None or ex.analysis_level != "participant":
        return
    from ..interfaces.roi import SegmentationError, check_segmentation_dir

    if not Path(ex.segmentation_dir).is_dir():
        parser.exit(EX_NOINPUT, f"{parser.prog}: error: {ex.segmentation_dir}: --segmentation-dir does not exist\n")
    try:
        check_segmentation_dir(ex.segmentation_dir, ex.participant_label or None)
    except SegmentationError as exc:
        parser.exit(EX_DATAERR, f"{parser.prog}: error: {' '.join(str(exc).split())}\n")
