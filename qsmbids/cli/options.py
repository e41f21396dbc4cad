"""Options checked before anything runs: ``--param`` values against the functions that receive them, and the
nipype plugin of ``--use-plugin``.

A wrong value must be a usage error (exit 64, one line) at once, not a crash after minutes of processing: a
``--param`` name has to be a keyword of a function the run will call (for the chosen methods), its value of the
type that function's signature declares, and inside the range the function accepts (:data:`RANGES`, the limits
the functions enforce at run time). A plugin must be one nipype has, with arguments nipype can use.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import DEEP_MODELS, SettingsError

__all__ = ["RANGES", "check_param_values", "check_plugin", "param_targets"]

#: keywords the workflow sets itself (images, geometry, resources): never from ``--param``
INTERNAL = frozenset({"magnitude", "return_info", "unwrapper", "weighting", "method", "voxel_size", "mask", "b0_dir",
                      "weights_dir", "device", "affine", "threads"})


@dataclass(frozen=True)
class Range:
    """Accepted values of one keyword: numbers in ``lo``..``hi`` (open or closed ends), ``choices`` for text or
    numbers out of a set, ``count`` for a list of exactly that many numbers."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple = ()
    count: int | None = None

    def problem(self, v: Any) -> str | None:
        """Why the single value ``v`` is out of range, or None."""
        if v in self.choices:
            return None
        if isinstance(v, str) or (self.lo is None and self.hi is None):
            if not self.choices:
                return None
            words = ", ".join(map(str, self.choices))
            numeric = self.lo is not None or self.hi is not None
            return f"expected a number or {words}" if numeric else f"expected one of {words}"
        below = self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo)
        above = self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi)
        if below or above:
            return f"expected {self.describe()}"
        return None

    def describe(self) -> str:
        """``a value >= 1``, ``a value in (0, 1)``."""
        if self.hi is None:
            return f"a value {'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"a value {'<' if self.hi_open else '<='} {self.hi:g}"
        return f"a value in {'(' if self.lo_open else '['}{self.lo:.3g}, {self.hi:.3g}{')' if self.hi_open else ']'}"


_POS = Range(0, lo_open=True)
_NONNEG = Range(0)
_COUNT = Range(1)
_FRACTION = Range(0, 1, lo_open=True, hi_open=True)
#: Ranges by keyword (the same meaning in every function that has it), as the functions check them at run time.
RANGES: dict[str, Range] = {
    **{n: _COUNT for n in ("max_iter", "cg_max_iter", "lsmr_iter", "check_every", "tile")},
    **{n: _NONNEG for n in ("tol", "cg_tol", "erode_mm", "rim_mm", "sigma_mm", "peel", "erosions", "template",
                            "overlap")},
    **{n: _POS for n in ("lambda_", "mu", "rho", "delta", "gamma", "tau", "alpha", "phase_scale", "step_ratio",
                         "r2_max", "threshold_factor", "power", "radius", "radii", "smv_radius", "filter_size_mm",
                         "slab_mm", "ic_threshold")},
    "pad_factor": Range(1),
    "edge_percentage": Range(0, 3),
    "quality_threshold": Range(0, 1, hi_open=True),
    "tkd_threshold": _POS,
    "noise_std": _POS,
    "phase_sign": Range(choices=(-1, 1)),
    "axis": Range(choices=(0, 1, 2)),
}
#: Ranges of one function's keyword where its meaning differs from :data:`RANGES` (``threshold`` in particular).
FUNCTION_RANGES: dict[str, dict[str, Range]] = {
    "tkd": {"threshold": Range(0, 2 / 3, lo_open=True, hi_open=True, choices=("auto", "l-curve"))},
    "tsvd": {"threshold": Range(0, 2 / 3, lo_open=True, hi_open=True, choices=("auto", "l-curve"))},
    "tikhonov": {"lambda_": Range(0, lo_open=True, choices=("auto", "l-curve")),
                 "regulariser": Range(choices=("identity", "gradient"))},
    "vsharp": {"threshold": _FRACTION},
    "sharp": {"threshold": _FRACTION},
    **{fn: {"tol": _POS} for fn in ("resharp", "pdf", "lbv")},
    # the discrepancy principle (noise of the echo fit): λ of MEDI and TV, the LSQR iteration count of iLSQR
    **{fn: {"lambda_": Range(0, lo_open=True, choices=("discrepancy",))} for fn in ("medi", "tv")},
    "ilsqr": {"tol": _POS, "max_iter": Range(1, choices=("discrepancy",))},
    "deepbet_mask": {"threshold": _FRACTION},
    "tgv": {"alpha": Range(0, lo_open=True, count=2)},
    "combine_echoes": {"offset": Range(choices=("mcpc3ds", "none")),
                       "offset_smoothing": Range(choices=("linear", "gaussian"))},
    "brain_mask": {"magnitude_method": Range(choices=("otsu", "percentile"))},
}
#: what the annotation words of the functions' signatures accept from the command line
_ACCEPTS: dict[str, Callable[[Any], bool]] = {
    "float": lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
    "int": lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
}
_KIND_WORDS = {"float": "a number", "int": "a whole number", "bool": "true or false", "str": "text"}


def param_targets(pr) -> dict[str, list]:
    """Stage/method key of ``--param`` → the qsmbids.qsm functions that receive it (for the chosen methods)."""
    from ..qsm import background, echoes, reference, relax, swi
    from ..qsm.inversion import get_method

    if pr.inversion in DEEP_MODELS:
        from ..deep.infer import infer as inversion_fn
    else:
        inversion_fn = get_method(pr.inversion)
    stages = {
        "mask": (pr.mask, _mask_functions(pr.mask)),
        "unwrap": (pr.unwrap, [echoes.combine_echoes]),
        "combine": (pr.combine, [echoes.fit_field]),
        "bgremove": (pr.bgremove, [getattr(background, pr.bgremove)]),
        "inversion": (pr.inversion, [inversion_fn]),
        "reference": (pr.reference, [reference.reference]),
        "relax": ("loglinear", [relax.r2star_loglinear]),
        "swi": (None, [swi.swi, swi.minip]),
    }
    targets: dict[str, list] = {}
    for stage, (method, fns) in stages.items():
        targets.setdefault(stage, []).extend(fns)
        if method:
            targets.setdefault(method, []).extend(fns)
    return targets


def _mask_functions(method: str) -> list:
    """The functions the mask stage calls for ``method`` (their keywords are what ``--param mask.*`` accepts)."""
    from ..qsm import mask

    if method == "deepbet":
        from ..deep.brain import deepbet_mask

        return [deepbet_mask, mask.refine_mask]
    return [mask.brain_mask]


def check_param_values(pr, warn: Callable[[str], None] | None = None) -> None:
    """Every ``--param KEY.NAME=VALUE`` names a keyword of a function the run will call, with a value of the type
    and in the range that function accepts; else :class:`SettingsError` (exit 64). Keys the chosen methods do not
    use are reported through ``warn`` and ignored."""
    if not pr.params:
        return
    targets = param_targets(pr)
    for key, values in dict(pr.params).items():
        if key not in targets:
            if warn is not None:
                warn(f"--param {key}.*: {key} is not used by the chosen methods; ignored")
            continue
        keywords: dict[str, list] = {}
        for fn in targets[key]:
            for n, p in inspect.signature(fn).parameters.items():
                if p.kind == p.KEYWORD_ONLY and n not in INTERNAL:
                    keywords.setdefault(n, []).append((fn, p.annotation))
        if key == "swi":
            keywords.setdefault("slab_mm", [])
        for name, value in values.items():
            if name not in keywords:
                raise SettingsError(f"--param {key}.{name}: not a parameter of {key} (accepted: "
                                    f"{', '.join(sorted(keywords)) or 'none'})")
            for fn, annotation in keywords[name]:
                problem = _value_problem(fn.__name__, name, annotation, value)
                if problem:
                    got = f", got {_show(value)}" if problem.startswith("expected") else ""
                    raise SettingsError(f"--param {key}.{name}: {problem}{got}")


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else repr(value) if isinstance(value, str) \
        else str(value).lower() if isinstance(value, bool) else str(value)


def _value_problem(fn_name: str, name: str, annotation: Any, value: Any) -> str | None:
    """Why ``value`` does not suit keyword ``name`` of ``fn_name`` (annotation and range), or None."""
    rng = FUNCTION_RANGES.get(fn_name, {}).get(name, RANGES.get(name))
    if rng is not None and rng.choices and value in rng.choices:
        return None
    alternatives = [a.strip() for a in str(annotation).split("|")]
    scalar = [a for a in alternatives if a in _ACCEPTS]
    sequence = [a[a.index("[") + 1:-1] for a in alternatives if a.split("[")[0] in ("Sequence", "Iterable", "tuple")
                and a[a.index("[") + 1:-1] in _ACCEPTS] if any("[" in a for a in alternatives) else []
    if annotation is inspect.Parameter.empty or (not scalar and not sequence and "None" not in alternatives):
        return None  # an annotation we cannot read: leave it to the function
    if not scalar and not sequence:  # only images or objects the workflow computes (e.g. a noise map)
        return "computed by the workflow; it cannot be set on the command line"
    items = value if isinstance(value, tuple) else (value,)
    if isinstance(value, tuple):
        if not sequence:
            kinds = " or ".join(_KIND_WORDS[k] for k in scalar)
            return f"expected {kinds}, not a list"
        kinds = sequence
    else:
        # a single number also suits a list keyword (one radius, one tile size): the functions accept it
        kinds = scalar + sequence
    for v in items:
        if not any(_ACCEPTS[k](v) for k in kinds):
            if rng is not None and rng.choices and isinstance(v, str):
                return f"expected {' or '.join(_KIND_WORDS[k] for k in dict.fromkeys(kinds))} or one of " \
                       f"{', '.join(map(str, rng.choices))}"
            return f"expected {' or '.join(_KIND_WORDS[k] for k in dict.fromkeys(kinds))}"
    if rng is None:
        return None
    if rng.count is not None and len(items) != rng.count:
        return f"expected {rng.count} values"
    for v in items:
        if isinstance(v, bool):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            return "expected a finite number"
        problem = rng.problem(v)
        if problem:
            return problem
    return None


# ------------------------------------------------------------------------------------------------ plugins
def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _positive_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


#: plugin_args nipype reads, with what they must be (any plugin that has them)
PLUGIN_ARGS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n_procs": (_positive_int, "a whole number >= 1"),
    "memory_gb": (_positive_number, "a positive number of GB"),
    "maxtasksperchild": (_positive_int, "a whole number >= 1"),
    "max_jobs": (_positive_int, "a whole number >= 1"),
    "max_tries": (_positive_int, "a whole number >= 1"),
    "retry_timeout": (lambda v: _positive_number(v) or v == 0, "a number of seconds >= 0"),
    "poll_sleep_duration": (lambda v: _positive_number(v) or v == 0, "a number of seconds >= 0"),
    "raise_insufficient": (lambda v: isinstance(v, bool), "true or false"),
    "mp_context": (lambda v: v in ("fork", "spawn", "forkserver"), "fork, spawn or forkserver"),
    "scheduler": (lambda v: v in ("tsort", "mem_thread"), "tsort or mem_thread"),
    "sbatch_args": (lambda v: isinstance(v, str), "text"),
    "qsub_args": (lambda v: isinstance(v, str), "text"),
    "bsub_args": (lambda v: isinstance(v, str), "text"),
}


def nipype_plugins() -> list[str]:
    """Names nipype's ``Workflow.run(plugin=...)`` accepts (``<name>Plugin`` classes of nipype.pipeline.plugins)."""
    from nipype.pipeline import plugins
    from nipype.pipeline.plugins.base import PluginBase

    return sorted(n[:-len("Plugin")] for n, c in vars(plugins).items()
                  if n.endswith("Plugin") and isinstance(c, type) and issubclass(c, PluginBase) and n != "Plugin")


def check_plugin(plugin: dict, source: str) -> None:
    """A plugin name nipype has and ``plugin_args`` of the right types and ranges; else :class:`SettingsError`
    naming ``source`` (the ``--use-plugin`` file)."""
    name = plugin.get("plugin")
    known = nipype_plugins()
    if name not in known:
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise SettingsError(f"{source}: {name!r} is not a nipype plugin ({hint}known: {', '.join(known)})")
    for arg, value in (plugin.get("plugin_args") or {}).items():
        if arg in PLUGIN_ARGS:
            ok, what = PLUGIN_ARGS[arg]
            if not ok(value):
                raise SettingsError(f"{source}: plugin_args {arg}: expected {what}, got {value!r}")
