"""``qsmbids bids_dir output_dir {participant,group}``: parse → check → Settings → build → run → report.

Every refusal is one line on stderr and a BIDS-Apps exit code (see :mod:`qsmbids.cli.exit_codes`); the dataset is
checked completely (sidecars, headers and every voxel) before anything is written to the output folder, so a bad
input leaves no half-written derivative behind. Progress: one line per finished stage per run.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from .. import __version__
from .exit_codes import (
    EX_CANTCREAT,
    EX_DATAERR,
    EX_NOINPUT,
    EX_OK,
    EX_SOFTWARE,
    EX_UNKNOWN_LEVEL,
    EX_USAGE,
)

LOG = logging.getLogger("qsmbids")
#: methods that need the magnitude images
_NEEDS_MAGNITUDE = {"mask": {"combined", "magnitude"}, "inversion": {"medi"}, "reference": {"csf"}}


class _Refusal(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qsmbids`` command; returns (and exits with) the exit code."""
    code = _main(argv)
    sys.exit(code)


def _main(argv: list[str] | None) -> int:
    # no network at run time: nipype's etelemetry version check is off unless the user turns it on
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    from .parser import parse_args

    settings = parse_args(argv)  # usage errors exit 64 inside
    _setup_logging(settings.execution.verbosity)
    try:
        if settings.execution.analysis_level == "participant":
            return participant(settings)
        if settings.execution.analysis_level == "group":
            raise _Refusal(EX_USAGE, "group level: not available yet in this version (participant level only)")
        raise _Refusal(EX_UNKNOWN_LEVEL, f"unknown analysis level {settings.execution.analysis_level!r} "
                                         "(expected participant or group)")
    except _Refusal as err:
        print(f"qsmbids: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("qsmbids: interrupted", file=sys.stderr)
        return 130


def _setup_logging(verbosity: int) -> None:
    os.environ.setdefault("MPLCONFIGDIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "qsmbids-mpl"))
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOG.handlers[:] = [handler]
    LOG.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
    LOG.propagate = False
    from nipype import config as ncfg
    from nipype import logging as nlogging

    # at default verbosity a crashed node is reported by qsmbids in one line naming its crash file, so nipype's
    # own error log (with the traceback) is kept for -v
    level = {0: "CRITICAL", 1: "INFO"}.get(verbosity, "DEBUG")
    ncfg.set("logging", "workflow_level", level)
    ncfg.set("logging", "interface_level", "WARNING" if verbosity < 2 else "DEBUG")
    nlogging.update_logging(ncfg)


# ------------------------------------------------------------------------------------------------------------
def _check_output(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _Refusal(EX_CANTCREAT, f"{path}: cannot create the {what} ({err.strerror or err})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise _Refusal(EX_CANTCREAT, f"{path}: the {what} is not writable")


def _preflight(settings):
    """Everything that can refuse the input, before anything is written."""
    from ..utils.bids import InputError, check_bids_root, collect_runs, validate_bids

    ex, pr = settings.execution, settings.processing
    bids_dir, out = Path(ex.bids_dir), Path(ex.output_dir)
    try:
        check_bids_root(bids_dir)
        inside = out.resolve().is_relative_to(bids_dir.resolve())
        if inside and not out.resolve().is_relative_to((bids_dir / "derivatives").resolve()):
            raise _Refusal(EX_USAGE, f"{out}: the output folder lies inside the input dataset; use "
                                     f"{bids_dir / 'derivatives' / 'qsmbids'} or a folder outside it")
        if Path(ex.work_dir).resolve().is_relative_to(bids_dir.resolve()):
            raise _Refusal(EX_USAGE, f"{ex.work_dir}: the work folder lies inside the input dataset")
        if not ex.skip_bids_validation and not ex.reports_only:
            validate_bids(bids_dir)
        need_mag = (pr.mask in _NEEDS_MAGNITUDE["mask"] or pr.inversion in _NEEDS_MAGNITUDE["inversion"]
                    or pr.reference in _NEEDS_MAGNITUDE["reference"])
        multi_echo_only = pr.reference == "csf" or bool(pr.params.get("unwrap", {}).get("bipolar"))
        min_echoes = 2 if multi_echo_only else 1
        runs = collect_runs(bids_dir, participant_label=ex.participant_label, session_label=ex.session_label,
                            bids_filters=ex.bids_filters, echo_times=pr.echo_times, field_strength=pr.field_strength,
                            need_magnitude=need_mag, min_echoes=min_echoes, ground_truth_dir=ex.ground_truth_dir,
                            check_data=not (ex.reports_only or ex.boilerplate_only))
    except InputError as err:
        raise _Refusal(err.code, str(err)) from None
    return runs


def _param_targets(pr) -> dict[str, list]:
    """Stage/method key of ``--param`` → the qsmbids.qsm functions that receive it (for the chosen methods)."""
    from ..config import DEEP_MODELS
    from ..qsm import background, echoes, mask, reference, relax, swi
    from ..qsm.inversion import get_method

    if pr.inversion in DEEP_MODELS:
        from ..deep.infer import infer as inversion_fn
    else:
        inversion_fn = get_method(pr.inversion)
    stages = {
        "mask": (pr.mask, [mask.brain_mask]),
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


def _check_params(pr) -> None:
    """Every ``--param KEY.NAME`` must name a keyword of a function the run will call (else exit 64)."""
    import inspect

    if not pr.params:
        return
    targets = _param_targets(pr)
    internal = {"magnitude", "return_info", "unwrapper", "weighting", "method", "voxel_size", "mask", "b0_dir",
                "threads", "weights_dir"}
    for key, values in dict(pr.params).items():
        if key not in targets:
            LOG.warning("--param %s.*: %s is not used by the chosen methods; ignored", key, key)
            continue
        for name in values:
            accepted = set()
            for fn in targets[key]:
                sig = inspect.signature(fn)
                accepted |= {n for n, p in sig.parameters.items() if p.kind == p.KEYWORD_ONLY}
            if key == "swi":
                accepted.add("slab_mm")
            accepted -= internal
            if name not in accepted:
                raise _Refusal(EX_USAGE, f"--param {key}.{name}: not a parameter of {key} (accepted: "
                                         f"{', '.join(sorted(accepted)) or 'none'})")


def _check_weights(inversion: str) -> None:
    """A deep inversion needs its shipped weight file, intact: missing → 66, corrupt → 65, before any work."""
    from ..config import DEEP_MODELS

    if inversion not in DEEP_MODELS:
        return
    from ..deep.weights import WeightsError, load_card, resolve_weights, sha256_file

    pt = resolve_weights(inversion)
    if not pt.is_file():
        raise _Refusal(EX_NOINPUT, f"{pt}: weight file of --inversion {inversion} is missing (reinstall qsmbids)")
    try:
        card = load_card(pt)
    except WeightsError as err:
        raise _Refusal(EX_NOINPUT, str(err)) from None
    if sha256_file(pt) != card.get("sha256"):
        raise _Refusal(EX_DATAERR, f"{pt}: weight file of --inversion {inversion} is corrupt (SHA-256 differs from "
                                   "its model card; reinstall qsmbids)")


def _run_dict(run, bids_dir: Path) -> dict:
    import nibabel as nib

    shape = nib.load(run.phase[0]).shape
    rel = [Path(p).resolve().relative_to(bids_dir.resolve()).as_posix() for p in run.source_files]
    return {"name": run.name, "entities": dict(run.entities), "phase": list(run.phase),
            "magnitude": list(run.magnitude), "echo_times": list(run.echo_times),
            "field_strength": run.field_strength, "phase_units": run.phase_units, "warnings": list(run.warnings),
            "truth": dict(run.truth), "sources": [f"bids:raw:{r}" for r in rel],
            "n_voxels": int(shape[0] * shape[1] * shape[2])}


def participant(settings) -> int:
    ex, perf, pr = settings.execution, settings.performance, settings.processing
    t_start = time.perf_counter()
    _check_params(pr)
    _check_weights(pr.inversion)
    runs = _preflight(settings)
    out, work = Path(ex.output_dir), Path(ex.work_dir)
    _check_output(out, "output folder")
    _check_output(work, "work folder")
    subjects = sorted({r.subject for r in runs})
    LOG.info("qsmbids %s: %d run(s) of %d subject(s): %s", __version__, len(runs), len(subjects),
             ", ".join(r.label for r in runs))

    for sub in subjects:
        log_dir = out / f"sub-{sub}" / "log" / ex.run_uuid
        log_dir.mkdir(parents=True, exist_ok=True)
        settings.to_toml(log_dir / "qsmbids.toml")
    settings.to_toml(work / "qsmbids.toml")

    if ex.reports_only:
        return _reports(out, subjects, ex.run_uuid)

    from ..utils.derivatives import write_bidsignore, write_derivative_description
    from ..workflows.base import init_qsmbids_wf

    processing = {"mask": pr.mask, "unwrap": pr.unwrap, "combine": pr.combine, "bgremove": pr.bgremove,
                  "inversion": pr.inversion, "reference": pr.reference,
                  "params": {k: dict(v) for k, v in dict(pr.params).items()},
                  "b0_direction": pr.b0_direction, "outputs": tuple(pr.outputs)}
    omp = perf.omp_nthreads or min(perf.nprocs, 8)
    device = _device(perf.device)
    _configure_nipype(settings)
    wf = init_qsmbids_wf(runs=[_run_dict(r, Path(ex.bids_dir)) for r in runs], output_dir=str(out),
                         bids_root=str(Path(ex.bids_dir).absolute()), run_uuid=ex.run_uuid,
                         processing=processing, omp_nthreads=omp, device=device)
    wf.base_dir = str(work)
    _write_boilerplate(wf, out)
    if ex.boilerplate_only:
        LOG.info("Boilerplate written to %s", out / "logs" / "CITATION.md")
        return EX_OK

    write_derivative_description(Path(ex.bids_dir), out, version=__version__)
    write_bidsignore(out)
    code = _execute(wf, settings, runs, omp)
    errors = _reports(out, subjects, ex.run_uuid)
    elapsed = time.perf_counter() - t_start
    if code == EX_OK:
        LOG.info("qsmbids finished in %.1f s. Derivatives: %s", elapsed, out)
        for sub in subjects:
            LOG.info("  report: %s", out / f"sub-{sub}.html")
    return code if code != EX_OK else (EX_SOFTWARE if errors else EX_OK)


def _device(choice: str) -> str:
    if choice == "cpu":
        return "cpu"
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise _Refusal(EX_USAGE, "--device cuda: no CUDA device is available")
    return "cuda" if torch.cuda.is_available() else "cpu"


def _write_boilerplate(wf, out: Path) -> None:
    from importlib.resources import files

    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    text = "# Methods\n\n" + wf.visit_desc().strip() + "\n"
    bib = files("qsmbids").joinpath("data/boilerplate.bib").read_text()
    _atomic_write(logs / "CITATION.md", text)
    _atomic_write(logs / "CITATION.bib", bib)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _configure_nipype(settings) -> None:
    """Global nipype execution settings; set before the workflow is built, since workflows copy the config."""
    from nipype import config as ncfg

    ncfg.set("execution", "stop_on_first_crash", str(bool(settings.performance.stop_on_first_crash)).lower())
    ncfg.set("execution", "crashfile_format", "txt")
    ncfg.set("execution", "remove_unnecessary_outputs", "false")
    ncfg.set("execution", "parameterize_dirs", "false")
    ncfg.set("execution", "hash_method", "timestamp")
    ncfg.set("execution", "check_version", "false")
    # nipype polls its job graph every 2 s by default: with a dozen short nodes per run the polling was most of
    # the wall time on small data; 0.2 s keeps the scheduler loop cheap even for many runs
    ncfg.set("execution", "poll_sleep_duration", "0.2")


def _execute(wf, settings, runs, omp: int) -> int:
    """Run the workflow with the chosen plugin, printing one line per finished stage per run."""

    from ..workflows.base import run_stages, wf_name

    perf = settings.performance
    plugin = dict(perf.plugin_settings or {"plugin": "MultiProc", "plugin_args": {"n_procs": perf.nprocs}})
    plugin_args = dict(plugin.get("plugin_args") or {})
    name = plugin.get("plugin", "MultiProc")
    labels = {wf_name(r.name): r.label for r in runs}
    totals = {wf_name(r.name): len(run_stages(has_magnitude=bool(r.magnitude), n_echoes=r.n_echoes,
                                              outputs=tuple(settings.processing.outputs))) for r in runs}
    order = ("load", "mask", "unwrap", "combine", "bgremove", "invert", "reference", "relax", "swi")
    started: dict[str, float] = {}
    done: dict[str, int] = {}

    def callback(node, status):
        run_key = next((h for h in str(node._hierarchy).split(".") if h in labels), None)
        if run_key is None or node.name not in order:
            return
        key = f"{run_key}.{node.name}"
        if status == "start":
            started[key] = time.perf_counter()
        elif status in ("end", "exception"):
            cached = key not in started  # nipype reports finished cached nodes without a start
            dt = time.perf_counter() - started.get(key, time.perf_counter())
            if status == "end":
                done[run_key] = done.get(run_key, 0) + 1
                took = "cached" if cached else f"{dt:.1f} s"
                LOG.info("[%s] %d/%d %s done, %s", labels[run_key], done[run_key], totals[run_key], node.name, took)
            else:
                LOG.info("[%s] %s FAILED after %.1f s", labels[run_key], node.name, dt)

    if name in ("MultiProc", "LegacyMultiProc", "Linear"):
        plugin_args["status_callback"] = callback
    try:
        wf.run(plugin=name, plugin_args=plugin_args)
    except Exception:  # noqa: BLE001 — nipype: "Workflow did not execute cleanly", details in the crash files
        crashes = sorted(Path(settings.execution.output_dir).glob(f"sub-*/log/{settings.execution.run_uuid}/crash*"))
        nodes = sorted({c.name.split("-")[4] for c in crashes if c.name.count("-") >= 5})
        what = f" in {', '.join(nodes)}" if nodes else ""
        where = f"; see {crashes[0]}" + (f" (+{len(crashes) - 1} more)" if len(crashes) > 1 else "") if crashes else ""
        print(f"qsmbids: error: processing failed{what}{where}", file=sys.stderr)
        return EX_SOFTWARE
    return EX_OK


def _reports(out: Path, subjects: list[str], run_uuid: str) -> int:
    from ..reports.core import generate_reports

    return generate_reports(subjects, out, run_uuid)


if __name__ == "__main__":  # pragma: no cover
    main()
