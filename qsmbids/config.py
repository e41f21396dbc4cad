"""Settings of one qsmbids run: three frozen dataclasses, saved to and loaded from TOML.

fMRIPrep keeps its settings in module-level globals that workflows read; we keep fMRIPrep's split (parser →
settings → workflows) but pass plain values down instead, so that a workflow can be built and tested without a
command line. Importing this module has no side effects and does not import torch: ``qsmbids --version`` and
``--help`` stay fast. The method names below are therefore copies of the tuples in :mod:`qsmbids.qsm`; a unit
test keeps them equal.

Settings are validated when made (``SettingsError``, one line), from the command line
(:func:`qsmbids.cli.parser.settings_from_args`) or from an earlier run's TOML (:meth:`Settings.from_toml`) alike.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import keyword
import math
import os
import re
import sys
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from . import __version__
from .files import write_text_atomic

# Copies of the qsmbids.qsm tuples (tests/test_config.py asserts they are equal).
#: deepbet (qsmbids.deep.brain.BRAIN_EXTRACTION_METHODS) followed by qsm.mask.MASK_METHODS
MASK_METHODS: tuple[str, ...] = ("deepbet", "combined", "magnitude", "quality")
UNWRAP_METHODS: tuple[str, ...] = ("laplacian", "quality", "skimage")  # qsm.unwrap.UNWRAP_METHODS
COMBINE_METHODS: tuple[str, ...] = ("snr", "magnitude", "uniform")  # qsm.echoes.WEIGHTINGS
BGREMOVE_METHODS: tuple[str, ...] = ("vsharp", "sharp", "resharp", "pdf", "lbv")  # qsm.background
CLASSICAL_INVERSIONS: tuple[str, ...] = ("tkd", "tsvd", "tikhonov", "ilsqr", "tv", "rts", "medi", "tgv")
#: deep-learning inversions of :mod:`qsmbids.deep` (qsmbids.deep.models.MODELS), run with shipped weights
DEEP_MODELS: tuple[str, ...] = ("unet", "xqsm", "ir2qsm", "modl", "nsidl")
INVERSION_METHODS: tuple[str, ...] = CLASSICAL_INVERSIONS + DEEP_MODELS
# qsm.reference.REFERENCE_METHODS without "roi", which needs a label image the App does not have.
REFERENCE_METHODS: tuple[str, ...] = ("mean", "csf", "none")
R2STAR_METHODS: tuple[str, ...] = ("loglinear", "arlo")  # qsm.relax.R2STAR_METHODS (no CLI option yet)

#: Chosen because it was the most accurate on the simulator (V-SHARP + MEDI NRMSE 28.6 % vs RTS 52.9 %).
DEFAULT_INVERSION = "medi"

#: Chosen by measurement on two simulators' heads (ours and qsm-forward; deepbet mask eroded 3 mm, MEDI): χ NRMSE
#: RESHARP 47.0 / 63.7 % vs V-SHARP 53.5 / 67.9 % at 3 mm, 45.7 / 45.4 % vs 59.9 / 59.9 % at 1.5 mm; on the voxels
#: both keep 45.7 vs 48.7 % (1.5 mm). The cost is a thinner kept rim (coverage 0.74 vs 0.86 at 1.5 mm).
DEFAULT_BGREMOVE = "resharp"

#: Stage → the methods the command line offers for it.
STAGE_CHOICES: MappingProxyType[str, tuple[str, ...]] = MappingProxyType({
    "mask": MASK_METHODS, "unwrap": UNWRAP_METHODS, "combine": COMBINE_METHODS, "bgremove": BGREMOVE_METHODS,
    "inversion": INVERSION_METHODS, "reference": REFERENCE_METHODS,
})
#: Stage names that may key ``--param`` (parameters for whatever method the stage runs).
STAGES: tuple[str, ...] = ("mask", "unwrap", "combine", "bgremove", "reference", "relax", "swi")
#: The processing nodes of one run, in order (node names, progress lines, resource monitoring).
RUN_STAGES: tuple[str, ...] = ("load", "mask", "unwrap", "combine", "bgremove", "invert", "reference", "relax", "swi")
#: Every key accepted before the dot of ``--param KEY.NAME=VALUE``: stage names and method names.
PARAM_KEYS: tuple[str, ...] = tuple(dict.fromkeys(
    STAGES + MASK_METHODS + UNWRAP_METHODS + COMBINE_METHODS + BGREMOVE_METHODS + INVERSION_METHODS
    + tuple(m for m in REFERENCE_METHODS if m != "none") + R2STAR_METHODS
))

OUTPUTS: tuple[str, ...] = ("chimap", "mask", "fields", "r2star", "t2star", "swi", "minip")
#: Atlases of ``qsmbids/data/atlas/*.json`` (a copy: tests/test_config.py keeps it equal to the files there).
ATLASES: tuple[str, ...] = ("HarvardOxford",)
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
ANALYSIS_LEVELS: tuple[str, ...] = ("participant", "group")

#: Defaults of :class:`ProcessingSettings` (read-only).
DEFAULTS: MappingProxyType[str, Any] = MappingProxyType({
    "mask": "deepbet", "unwrap": "quality", "combine": "snr", "bgremove": DEFAULT_BGREMOVE,
    "inversion": DEFAULT_INVERSION, "reference": "mean", "b0_direction": "auto", "echo_times": None,
    "field_strength": None, "outputs": OUTPUTS, "roi": True, "atlas": "HarvardOxford",
})

# Echo times at or above this are surely milliseconds given by mistake (GRE TEs are well below 200 ms).
MAX_ECHO_TIME_S = 0.2
_LABEL = re.compile(r"[A-Za-z0-9]+")


class SettingsError(ValueError):
    """A setting, or a combination of settings, that cannot be used; the message is one line."""


def new_run_uuid() -> str:
    """Run identifier in fMRIPrep's format, ``YYYYmmdd-HHMMSS_<uuid4>``: sortable by time, unique."""
    return f"{datetime.now():%Y%m%d-%H%M%S}_{uuid.uuid4()}"


def default_nprocs() -> int:
    """CPUs this process may use: the affinity mask where there is one (containers, ``taskset``)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def strip_label(value: str, prefix: str) -> str:
    """A BIDS label without its entity prefix, checked to be alphanumeric.

    >>> strip_label("sub-01", "sub"), strip_label("01", "sub")
    ('01', '01')
    """
    text = str(value).strip()
    if text.startswith(f"{prefix}-"):
        text = text[len(prefix) + 1:]
    if not _LABEL.fullmatch(text):
        raise SettingsError(f"{prefix} label {value!r}: expected letters and digits (with or without '{prefix}-')")
    return text


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # normalising in __post_init__ of a frozen dataclass


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SettingsError(f"{name}: expected an integer >= 1, got {value!r}")
    return value


def _positive(value: Any, name: str, unit: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise SettingsError(f"{name}: expected a positive number in {unit}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ExecutionSettings:
    """Where the data are and what to do with them.

    ``analysis_level`` is not checked here: the run module reports an unknown level with its own exit code (17).
    Labels are stored without their ``sub-``/``ses-`` prefix, in the order given, without duplicates.
    ``bids_filters`` is the parsed ``--bids-filter-file`` (pybids query per input type).
    """

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    bids_filters: dict | None = None
    skip_bids_validation: bool = False
    reports_only: bool = False
    boilerplate_only: bool = False
    ground_truth_dir: Path | None = None
    segmentation_dir: Path | None = None
    derivatives: tuple[Path, ...] = ()
    run_uuid: str = field(default_factory=new_run_uuid)
    verbosity: int = 0
    version: str = ""

    def __post_init__(self):
        for name in ("bids_dir", "output_dir", "work_dir"):
            _set(self, name, Path(getattr(self, name)))
        for name in ("ground_truth_dir", "segmentation_dir"):
            if getattr(self, name) is not None:
                _set(self, name, Path(getattr(self, name)))
        derivs = (self.derivatives,) if isinstance(self.derivatives, (str, Path)) else tuple(self.derivatives or ())
        _set(self, "derivatives", tuple(dict.fromkeys(Path(d) for d in derivs)))
        for name, prefix in (("participant_label", "sub"), ("session_label", "ses")):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            _set(self, name, tuple(dict.fromkeys(strip_label(v, prefix) for v in value)))
        if self.bids_filters is not None and not isinstance(self.bids_filters, dict):
            raise SettingsError(f"bids_filters: expected a JSON object, got {type(self.bids_filters).__name__}")
        if self.reports_only and self.boilerplate_only:
            raise SettingsError("--reports-only and --boilerplate-only cannot be used together")
        if not isinstance(self.verbosity, int) or self.verbosity < 0:
            raise SettingsError(f"verbosity: expected a count >= 0, got {self.verbosity!r}")
        if not self.version:
            _set(self, "version", __version__)


def default_plugin_settings(nprocs: int, mem_gb: float | None) -> dict:
    """nipype MultiProc settings as fMRIPrep makes them (fresh worker per task keeps memory from growing)."""
    args: dict[str, Any] = {"n_procs": nprocs, "raise_insufficient": False, "maxtasksperchild": 1}
    if mem_gb is not None:
        args["memory_gb"] = mem_gb
    return {"plugin": "MultiProc", "plugin_args": args}


@dataclass(frozen=True)
class PerformanceSettings:
    """How much of the machine to use. ``omp_nthreads`` defaults to ``min(nprocs, 8)``: beyond 8 threads the
    FFT-bound solvers gain little, and parallel runs gain more. ``plugin_settings`` defaults to MultiProc."""

    nprocs: int = field(default_factory=default_nprocs)
    omp_nthreads: int | None = None
    mem_gb: float | None = None
    use_plugin: Path | None = None
    plugin_settings: dict | None = None
    stop_on_first_crash: bool = False
    device: str = "auto"

    def __post_init__(self):
        if self.omp_nthreads is None:
            _set(self, "omp_nthreads", min(_count(self.nprocs, "nprocs"), 8))
        if _count(self.omp_nthreads, "omp_nthreads") > _count(self.nprocs, "nprocs"):
            raise SettingsError(f"--omp-nthreads ({self.omp_nthreads}) cannot exceed --nprocs ({self.nprocs})")
        _set(self, "mem_gb", _positive(self.mem_gb, "mem_gb", "GB"))
        if self.use_plugin is not None:
            _set(self, "use_plugin", Path(self.use_plugin))
        if self.plugin_settings is None:
            _set(self, "plugin_settings", default_plugin_settings(self.nprocs, self.mem_gb))
        if not isinstance(self.plugin_settings, dict) or not isinstance(self.plugin_settings.get("plugin"), str):
            raise SettingsError("plugin settings: expected a mapping with a 'plugin' name (e.g. plugin: MultiProc)")
        if self.device not in DEVICES:
            raise SettingsError(f"device: expected one of {', '.join(DEVICES)}, got {self.device!r}")


def _check_param_value(key: str, name: str, value: Any) -> Any:
    if isinstance(value, list):
        value = tuple(value)
    items = value if isinstance(value, tuple) else (value,)
    for v in items:
        if isinstance(v, float) and not math.isfinite(v):
            raise SettingsError(f"--param {key}.{name}: expected a finite number, got {v}")
        if not isinstance(v, (bool, int, float, str)) or (isinstance(value, tuple) and isinstance(v, (bool, str))):
            raise SettingsError(f"--param {key}.{name}: expected a number, true/false, text or a list of numbers, "
                                f"got {v!r}")
    if isinstance(value, tuple) and not value:
        raise SettingsError(f"--param {key}.{name}: empty list")
    return value


def normalise_b0_direction(value: Any) -> str | tuple[float, float, float]:
    """``"auto"`` (take B0 from the image header) or a nonzero 3-vector scaled to unit length.

    >>> normalise_b0_direction([0, 0, 2])
    (0.0, 0.0, 1.0)
    """
    if isinstance(value, str):
        if value == "auto":
            return "auto"
        raise SettingsError(f"b0_direction: expected 'auto' or three numbers, got {value!r}")
    try:
        vec = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise SettingsError(f"b0_direction: expected 'auto' or three numbers, got {value!r}") from None
    if len(vec) != 3 or not all(math.isfinite(v) for v in vec):
        raise SettingsError(f"b0_direction: expected three finite numbers, got {value!r}")
    norm = math.sqrt(sum(v * v for v in vec))
    if norm == 0.0:
        raise SettingsError("b0_direction: the zero vector has no direction")
    if abs(norm - 1.0) < 1e-12:  # already unit: keep the bits, so that a TOML round trip is exact
        return vec
    return tuple(v / norm for v in vec)


@dataclass(frozen=True)
class ProcessingSettings:
    """Which method each stage runs, with what parameters, on what acquisition values.

    ``params`` maps a method or stage name (see :data:`PARAM_KEYS`) to keyword arguments for it, values typed.
    ``echo_times`` (s) and ``field_strength`` (T) override the sidecars when given; ``b0_direction`` is
    ``"auto"`` (from the affine) or a unit vector in voxel coordinates. ``outputs`` keeps the order of
    :data:`OUTPUTS`. ``roi``: regional χ statistics per run (atlas registered into the run, or the segmentations
    of ``ExecutionSettings.segmentation_dir``); ``atlas``: one of :data:`ATLASES`.
    """

    mask: str = DEFAULTS["mask"]
    unwrap: str = DEFAULTS["unwrap"]
    combine: str = DEFAULTS["combine"]
    bgremove: str = DEFAULTS["bgremove"]
    inversion: str = DEFAULTS["inversion"]
    reference: str = DEFAULTS["reference"]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    b0_direction: str | tuple[float, float, float] = DEFAULTS["b0_direction"]
    echo_times: tuple[float, ...] | None = None
    field_strength: float | None = None
    outputs: tuple[str, ...] = OUTPUTS
    roi: bool = DEFAULTS["roi"]
    atlas: str = DEFAULTS["atlas"]

    def __post_init__(self):
        if not isinstance(self.roi, bool):
            raise SettingsError(f"roi: expected true or false, got {self.roi!r}")
        if self.atlas not in ATLASES:
            raise SettingsError(f"atlas: expected one of {', '.join(ATLASES)}, got {self.atlas!r}")
        for stage, choices in STAGE_CHOICES.items():
            if getattr(self, stage) not in choices:
                raise SettingsError(f"{stage}: expected one of {', '.join(choices)}, got {getattr(self, stage)!r}")
        params: dict[str, dict[str, Any]] = {}
        for key, values in dict(self.params or {}).items():
            if key not in PARAM_KEYS:
                raise SettingsError(f"--param {key}: unknown method or stage (known: {', '.join(PARAM_KEYS)})")
            if not isinstance(values, dict):
                raise SettingsError(f"--param {key}: expected a mapping of parameter names to values")
            for name in values:
                if not str(name).isidentifier() or keyword.iskeyword(name):
                    raise SettingsError(f"--param {key}.{name}: parameter names are Python identifiers")
            params[key] = {name: _check_param_value(key, name, v) for name, v in values.items()}
        _set(self, "params", params)
        _set(self, "b0_direction", normalise_b0_direction(self.b0_direction))
        if self.echo_times is not None:
            te = tuple(self.echo_times)
            if not te or any(isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0)
                             for t in te):
                raise SettingsError(f"echo_times: expected positive echo times in seconds, got {list(te)}")
            if max(te) >= MAX_ECHO_TIME_S:
                raise SettingsError(f"echo_times: {max(te)} s is too long; echo times are in seconds "
                                    f"(e.g. 0.004 for 4 ms)")
            if any(b <= a for a, b in itertools.pairwise(te)):
                raise SettingsError(f"echo_times: expected strictly increasing echo times, got {list(te)}")
            _set(self, "echo_times", tuple(float(t) for t in te))
        _set(self, "field_strength", _positive(self.field_strength, "field_strength", "tesla"))
        outputs = (self.outputs,) if isinstance(self.outputs, str) else tuple(self.outputs)
        unknown = [o for o in outputs if o not in OUTPUTS]
        if unknown or not outputs:
            raise SettingsError(f"outputs: expected some of {', '.join(OUTPUTS)}, got {list(outputs)}")
        _set(self, "outputs", tuple(o for o in OUTPUTS if o in outputs))


def _plain(value: Any, keep_none: bool = True) -> Any:
    """TOML/JSON-friendly copy: Paths as strings, tuples as lists, dict entries that are None dropped or not."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, keep_none) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, keep_none) for k, v in value.items() if keep_none or v is not None}
    return value


def _load_toml(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    with open(path, "rb") as fh:
        return tomllib.load(fh)


_SECTIONS = {"execution": ExecutionSettings, "performance": PerformanceSettings, "processing": ProcessingSettings}


@dataclass(frozen=True)
class Settings:
    """All settings of one run; what ``run.py`` saves as TOML next to the logs so that a run can be repeated."""

    execution: ExecutionSettings
    performance: PerformanceSettings = field(default_factory=PerformanceSettings)
    processing: ProcessingSettings = field(default_factory=ProcessingSettings)

    def __post_init__(self):
        if self.execution.segmentation_dir is not None and not self.processing.roi:
            raise SettingsError("--segmentation-dir and --no-roi cannot be used together")

    def params_for(self, method: str, *, stage: str | None = None) -> dict[str, Any]:
        """Keyword arguments for ``method``; with ``stage``, the stage-wide ones first, the method's overriding.

        Stage keys disambiguate names used by two stages (``quality`` masks and unwraps; ``magnitude`` masks and
        weights echoes).
        """
        params = self.processing.params
        merged = dict(params.get(stage, {})) if stage else {}
        merged.update(params.get(method, {}))
        return merged

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (Paths as strings, tuples as lists, None kept), e.g. for JSON."""
        return {name: _plain({f.name: getattr(getattr(self, name), f.name)
                              for f in dataclasses.fields(getattr(self, name))})
                for name in _SECTIONS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Inverse of :meth:`to_dict` (and of the TOML layout); unknown sections or keys are errors."""
        if set(data) - set(_SECTIONS) or "execution" not in data:
            raise SettingsError(f"settings: expected tables execution[, performance, processing], got {list(data)}")
        parts = {}
        for name, klass in _SECTIONS.items():
            values = data.get(name, {})
            if not isinstance(values, dict):
                raise SettingsError(f"[{name}]: expected a table of settings")
            values = dict(values)
            names = {f.name for f in dataclasses.fields(klass)}
            extra = set(values) - names
            if extra:
                raise SettingsError(f"[{name}]: unknown setting(s) {', '.join(sorted(extra))}")
            if name == "execution" and isinstance(values.get("bids_filters"), str):
                try:
                    values["bids_filters"] = json.loads(values["bids_filters"])
                except ValueError as exc:
                    raise SettingsError(f"[execution] bids_filters: not valid JSON ({exc})") from None
            try:
                parts[name] = klass(**values)
            except TypeError as exc:
                raise SettingsError(f"[{name}]: {exc}") from None
        return cls(**parts)

    def to_toml(self, path: str | os.PathLike) -> Path:
        """Write the settings to ``path`` (atomically: temp file + rename). None values are left out and
        ``bids_filters`` is stored as JSON text, because TOML has no null and pybids filters may use it."""
        import tomli_w

        data = self.to_dict()
        filters = data["execution"].get("bids_filters")
        if filters is not None:
            data["execution"]["bids_filters"] = json.dumps(filters, sort_keys=True)
        return write_text_atomic(path, f"# qsmbids {self.execution.version} settings of run {self.execution.run_uuid}\n"
                                 + tomli_w.dumps(_plain(data, keep_none=False)))

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> Settings:
        """Read settings written by :meth:`to_toml`; the result compares equal to the object written."""
        try:
            data = _load_toml(Path(path))
        except ValueError as exc:  # tomllib.TOMLDecodeError
            raise SettingsError(f"{path}: not valid TOML ({exc})") from None
        return cls.from_dict(data)
