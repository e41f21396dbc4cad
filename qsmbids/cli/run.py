"""``qsmbids bids_dir output_dir {participant,group}``: parse → check → Settings → build → run → report.

Every refusal is one line on stderr and a BIDS-Apps exit code (see :mod:`qsmbids.cli.exit_codes`); the dataset is
checked completely (sidecars, headers and every voxel) before anything is written to the output folder, so a bad
input leaves no half-written derivative behind. Progress: one line per finished stage per run.

Reliability on shared clusters (:mod:`qsmbids.cli.recovery`): derivatives are written atomically, a rerun with the
same work folder recomputes only what did not finish (after repairing a damaged work folder), and a full disk or a
read-only folder while running is reported like a refusal (one line, exit 73), not as a crash.
How a run ends among other processes (:mod:`qsmbids.cli.lifecycle`, :mod:`qsmbids.cli.multiproc`): a second run on a
subject that another run holds in the same work folder is refused (73); SIGTERM and SIGINT stop every process of the
run and exit 143/130 with one line; a full disk in a worker ends the run instead of hanging nipype's MultiProc.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .. import __version__
from ..config import RUN_STAGES
from ..files import write_text_atomic
from .exit_codes import (
    EX_CANTCREAT,
    EX_DATAERR,
    EX_NOINPUT,
    EX_OK,
    EX_SOFTWARE,
    EX_UNKNOWN_LEVEL,
    EX_USAGE,
)
from .exit_codes import Refusal as _Refusal
from .folders import check_folders
from .lifecycle import Interrupted, WorkFolderBusy, end_children, lock_subjects, stop_on_signals
from .recovery import (
    WRITE_ERRNOS,
    missing_inputs,
    remove_monitor_files,
    remove_stale_staging,
    repair_work_dir,
    unwritable_folder,
    write_error_in,
    write_error_line,
)

LOG = logging.getLogger("qsmbids")
#: methods that need the magnitude images
_NEEDS_MAGNITUDE = {"mask": {"deepbet", "combined", "magnitude"}, "inversion": {"medi"}, "reference": {"csf"}}
#: the per-run stage nodes (progress lines, resource monitoring), in order
STAGES = RUN_STAGES


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
    with stop_on_signals():
        return _level(settings)


def _level(settings) -> int:
    try:
        if settings.execution.analysis_level == "participant":
            return participant(settings)
        if settings.execution.analysis_level == "group":
            from .group import group

            return group(settings)
        raise _Refusal(EX_UNKNOWN_LEVEL, f"unknown analysis level {settings.execution.analysis_level!r} "
                                         "(expected participant or group)")
    except _Refusal as err:
        print(f"qsmbids: error: {err}", file=sys.stderr)
        return err.code
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        ex = settings.execution
        if (err.filename and _inside(err.filename, ex.bids_dir) and not _inside(err.filename, ex.output_dir)
                and not _inside(err.filename, ex.work_dir)):
            # the input could not be read (e.g. a container user without access): not an output problem
            print(f"qsmbids: error: {err.filename}: cannot read the input ({err.strerror}); check its permissions",
                  file=sys.stderr)
            return EX_NOINPUT
        where = err.filename or settings.execution.output_dir
        print(f"qsmbids: error: {write_error_line(where, err.errno)}", file=sys.stderr)
        return EX_CANTCREAT
    except (Interrupted, KeyboardInterrupt) as sig:
        end_children()  # the MultiProc workers, their fork server, and whatever a node started
        name, code = (sig.name, sig.code) if isinstance(sig, Interrupted) else ("SIGINT", 130)
        print(f"qsmbids: stopped by {name}; what finished is kept in the work folder: rerun the same command to "
              "resume", file=sys.stderr)
        return code


def _inside(path, folder) -> bool:
    try:
        return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))
    except (TypeError, ValueError):
        return False


def _setup_logging(verbosity: int) -> None:
    # one per user: /tmp is shared between the users of a cluster node (and bound into Apptainer containers)
    os.environ.setdefault("MPLCONFIGDIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"qsmbids-mpl-{os.getuid()}"))
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOG.handlers[:] = [handler]
    LOG.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
    LOG.propagate = False
    from nipype import config as ncfg
    from nipype import logging as nlogging

    for key, level in _nipype_levels(verbosity, worker=False).items():
        ncfg.set("logging", key, level)
    nlogging.update_logging(ncfg)


def _nipype_levels(verbosity: int, *, worker: bool) -> dict[str, str]:
    """Nipype's logging levels in this process or in a MultiProc worker.

    At default verbosity a crashed node is reported by qsmbids in one line naming its crash file, so nipype's own
    error log (with the traceback) is kept for -v; workers start from nipype's defaults (a line per node on stdout),
    and at default verbosity print nothing: progress is qsmbids' one line per finished stage."""
    levels = {"workflow_level": {0: "CRITICAL", 1: "INFO"}.get(verbosity, "DEBUG"),
              "interface_level": "WARNING" if verbosity < 2 else "DEBUG"}
    if worker:
        levels["utils_level"] = levels["workflow_level"]
        if verbosity == 0:
            levels["interface_level"] = "CRITICAL"
    return levels


# ------------------------------------------------------------------------------------------------------------
def _check_output(path: Path, what: str) -> bool:
    """Create ``path`` if needed and prove it writable by creating a file in it; returns whether it was created.

    ``os.access`` alone is not enough: it does not see read-only bind mounts of some container runtimes, full
    file systems or NFS squashing, and root passes it for any mode bits. The probe file is removed at once.
    """
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _Refusal(EX_CANTCREAT, f"{path}: cannot create the {what} ({err.strerror or err})") from None
    problem = None
    if not os.access(path, os.W_OK | os.X_OK):
        problem = f"{path}: the {what} is not writable"
    else:
        try:
            fd, probe = tempfile.mkstemp(prefix=".qsmbids-probe-", dir=path)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            problem = f"{path}: cannot write into the {what} ({err.strerror or err})"
    if problem:
        if not existed:
            shutil.rmtree(path, ignore_errors=True)
        raise _Refusal(EX_CANTCREAT, problem)
    return not existed


def _check_space(runs, out: Path, work: Path) -> None:
    """Warn (not refuse: the numbers are rough) when the output or work folder has less room than a run needs.

    Measured on the simulator: the work folder holds about 4·(6·echoes + 2) bytes per voxel and run (uncompressed
    float32 intermediates), the derivatives about 12 bytes per voxel and run (gzip)."""
    need_work = sum(4 * (6 * r.n_echoes + 2) * _n_voxels(r) for r in runs)
    need_out = sum(12 * _n_voxels(r) for r in runs)
    for folder, need in ((work, need_work), (out, need_out)):
        free = shutil.disk_usage(folder).free
        if free < need:
            LOG.warning("qsmbids: warning: %s has %.2f GB free; this run needs about %.2f GB there", folder,
                        free / 1e9, need / 1e9)


def _n_voxels(run) -> int:
    import nibabel as nib

    shape = nib.load(run.phase[0]).shape
    return int(shape[0] * shape[1] * shape[2])


def _preflight(settings):
    """Everything that can refuse the input, before anything is written."""
    from ..utils.bids import InputError, check_bids_root, collect_runs, validate_bids

    ex, pr = settings.execution, settings.processing
    bids_dir, out = Path(ex.bids_dir), Path(ex.output_dir)
    try:
        check_bids_root(bids_dir)
        check_folders(bids_dir, out, ex.work_dir)  # never into foreign data; work and output kept apart
        for folder in ex.derivatives:
            if not Path(folder).is_dir():
                raise _Refusal(EX_NOINPUT, f"{folder}: --derivatives folder does not exist")
        if not ex.skip_bids_validation and not ex.reports_only:
            validate_bids(bids_dir)
        need_mag = (pr.mask in _NEEDS_MAGNITUDE["mask"] or pr.inversion in _NEEDS_MAGNITUDE["inversion"]
                    or pr.reference in _NEEDS_MAGNITUDE["reference"])
        multi_echo_only = pr.reference == "csf" or bool(pr.params.get("unwrap", {}).get("bipolar"))
        min_echoes = 2 if multi_echo_only else 1
        runs = collect_runs(bids_dir, participant_label=ex.participant_label, session_label=ex.session_label,
                            bids_filters=ex.bids_filters, echo_times=pr.echo_times, field_strength=pr.field_strength,
                            need_magnitude=need_mag, min_echoes=min_echoes, ground_truth_dir=ex.ground_truth_dir,
                            check_data=not (ex.reports_only or ex.boilerplate_only),
                            derivatives=tuple(ex.derivatives))
    except InputError as err:
        raise _Refusal(err.code, str(err)) from None
    return runs


def _check_params(pr) -> None:
    """``--param`` names and values against the functions that receive them (:mod:`.options`), else exit 64."""
    from ..config import SettingsError
    from .options import check_param_values

    try:
        check_param_values(pr, warn=LOG.warning)
    except SettingsError as err:
        raise _Refusal(EX_USAGE, str(err)) from None


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
    """The run as the workflow builder takes it. ``Sources`` are BIDS URIs of the paths *inside* the dataset, never
    of resolved symlinks: with DataLad/git-annex or ``cp -s`` copies the images point into a store elsewhere."""
    import nibabel as nib

    from ..interfaces.bids import bids_uri

    shape = nib.load(run.phase[0]).shape
    sources = [bids_uri(p, bids_dir) for p in run.source_files]
    return {"name": run.name, "entities": dict(run.entities), "phase": list(run.phase),
            "magnitude": list(run.magnitude), "echo_times": list(run.echo_times),
            "field_strength": run.field_strength, "phase_units": run.phase_units, "warnings": list(run.warnings),
            "representation": run.representation,
            "truth": dict(run.truth), "sources": sources, "mask_file": run.mask_file,
            "n_voxels": int(shape[0] * shape[1] * shape[2])}


def participant(settings) -> int:
    with contextlib.ExitStack() as held:  # the work folder's locks of this run's subjects, released on return
        try:
            return _participant(settings, held)
        except (Interrupted, KeyboardInterrupt):
            end_children()  # before the locks are released
            raise


def _participant(settings, held: contextlib.ExitStack) -> int:
    ex, perf, pr = settings.execution, settings.performance, settings.processing
    t_start = time.perf_counter()
    _check_params(pr)
    _check_weights(pr.inversion)
    runs = _preflight(settings)
    out, work = Path(ex.output_dir), Path(ex.work_dir)
    created = _check_output(out, "output folder")
    try:
        _check_output(work, "work folder")
    except _Refusal:
        if created:
            shutil.rmtree(out, ignore_errors=True)  # leave no trace of a run that could not start
        raise
    subjects = sorted({r.subject for r in runs})
    try:
        if not (ex.reports_only or ex.boilerplate_only):  # those run no node: nothing in the work folder to guard
            held.enter_context(lock_subjects(work, subjects))
    except WorkFolderBusy as err:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty: the other run may be writing into it
        raise _Refusal(EX_CANTCREAT, str(err)) from None
    LOG.info("qsmbids %s: %d run(s) of %d subject(s): %s", __version__, len(runs), len(subjects),
             ", ".join(r.label for r in runs))
    for r in runs:
        for warning in r.warnings:
            LOG.warning("[%s] warning: %s", r.label, warning)
        if r.n_echoes < 2 and {"r2star", "t2star"} & set(pr.outputs):
            LOG.warning("[%s] warning: a single echo: no R2*/T2* maps", r.label)
    if not (ex.reports_only or ex.boilerplate_only):
        _check_space(runs, out, work)

    for sub in subjects:
        log_dir = out / f"sub-{sub}" / "log" / ex.run_uuid
        log_dir.mkdir(parents=True, exist_ok=True)
        settings.to_toml(log_dir / "qsmbids.toml")
    settings.to_toml(work / "qsmbids.toml")

    if ex.reports_only:
        return _reports(out, subjects, ex.run_uuid)

    processing = {"mask": pr.mask, "unwrap": pr.unwrap, "combine": pr.combine, "bgremove": pr.bgremove,
                  "inversion": pr.inversion, "reference": pr.reference,
                  "params": {k: dict(v) for k, v in dict(pr.params).items()},
                  "b0_direction": pr.b0_direction, "outputs": tuple(pr.outputs),
                  # regional statistics (workflows.base.roi_inputs): --no-roi, --atlas, --segmentation-dir
                  "roi": getattr(pr, "roi", True), "atlas": getattr(pr, "atlas", "HarvardOxford"),
                  "segmentation_dir": (str(ex.segmentation_dir) if getattr(ex, "segmentation_dir", None) else None)}
    omp = perf.omp_nthreads or min(perf.nprocs, 8)
    device = _device(perf.device)
    _configure_nipype(settings)
    try:
        return _build_and_run(settings, runs, subjects, processing, omp, device, t_start)
    finally:
        _monitor_off()


def _build_and_run(settings, runs, subjects: list[str], processing: dict, omp: int, device: str,
                   t_start: float) -> int:
    from ..interfaces.bids import TEMPLATEFLOW_ENV
    from ..utils.derivatives import write_bidsignore, write_derivative_description
    from ..workflows.base import init_qsmbids_wf

    os.environ.update(TEMPLATEFLOW_ENV)  # the run's nodes (and any process they start) never reach TemplateFlow
    ex = settings.execution
    out, work = Path(ex.output_dir), Path(ex.work_dir)
    wf = init_qsmbids_wf(runs=[_run_dict(r, Path(ex.bids_dir)) for r in runs], output_dir=str(out),
                         bids_root=str(Path(ex.bids_dir).absolute()), run_uuid=ex.run_uuid,
                         processing=processing, omp_nthreads=omp, device=device)
    wf.base_dir = str(work)
    _monitor_stages_only(wf)
    missing = [] if ex.boilerplate_only else missing_inputs(wf)
    if missing:  # a workflow bug: MultiProc would hang on it, so stop before anything runs
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        print(f"qsmbids: error: internal error: {missing[0]} is never given a value{more}; nothing was run "
              "(please report this with the command line)", file=sys.stderr)
        return EX_SOFTWARE
    _write_boilerplate(wf, out)
    if ex.boilerplate_only:
        LOG.info("Boilerplate written to %s", out / "logs" / "CITATION.md")
        return EX_OK

    write_derivative_description(Path(ex.bids_dir), out, version=__version__)
    write_bidsignore(out)
    # only this run's subjects: array jobs on other subjects may be writing into the same work folder
    repaired = sum(repair_work_dir(work / wf.name / sub_wf.name) for sub_wf in wf._graph.nodes())
    if repaired:
        LOG.info("work folder: %d unusable node result(s) removed (unreadable, or their files are gone); those "
                 "steps are recomputed", repaired)
    remove_stale_staging(out, subjects)
    code = _execute(wf, settings, runs, omp)
    plugin, _ = _plugin(settings.performance)
    if code == EX_OK and _submits_graph(plugin):
        # SLURMGraph, SGEGraph, ...: nipype has submitted every node as a job with its dependencies and returned;
        # nothing has run yet, so there is nothing to report on
        LOG.info("qsmbids: the workflow was submitted as jobs with the %s plugin (scripts in %s). When they have "
                 "finished, run the same command with --reports-only to write the reports.", plugin,
                 work / wf.name / "batch")
        return EX_OK
    if code == EX_CANTCREAT:
        return code  # the disk is full or read-only: writing the reports would only fail again
    try:
        errors = _reports(out, subjects, ex.run_uuid)
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        if code != EX_OK:
            return code  # its one line is printed; the report could not be written either
        raise _Refusal(EX_CANTCREAT, write_error_line(err.filename or ex.output_dir, err.errno)) from None
    elapsed = time.perf_counter() - t_start
    if code == EX_OK:
        LOG.info("qsmbids finished in %.1f s. Derivatives: %s", elapsed, out)
        for sub in subjects:
            LOG.info("  report: %s", out / f"sub-{sub}.html")
    return code if code != EX_OK else (EX_SOFTWARE if errors else EX_OK)


def _plugin(perf) -> tuple[str, dict]:
    """The nipype plugin's name and a copy of its arguments (MultiProc with ``--nprocs`` when none was set)."""
    plugin = perf.plugin_settings or {"plugin": "MultiProc", "plugin_args": {"n_procs": perf.nprocs}}
    return plugin.get("plugin", "MultiProc"), dict(plugin.get("plugin_args") or {})


def _submits_graph(plugin: str) -> bool:
    """Whether nipype's ``plugin`` submits the whole graph to a scheduler and returns before anything has run."""
    from nipype.pipeline import plugins
    from nipype.pipeline.plugins.base import GraphPluginBase

    cls = getattr(plugins, f"{plugin}Plugin", None)
    return isinstance(cls, type) and issubclass(cls, GraphPluginBase)


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
    write_text_atomic(logs / "CITATION.md", text)
    write_text_atomic(logs / "CITATION.bib", bib)


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
    # peak memory per stage for the report (nipype's resource monitor needs psutil); sampled every 0.2 s (its
    # minimum) because stages on small data last about a second
    try:
        import psutil  # noqa: F401
    except ImportError:
        LOG.debug("psutil is not installed: no peak memory per stage in the report")
    else:
        ncfg.enable_resource_monitor()
        ncfg.set("execution", "resource_monitor_frequency", "0.2")


def _monitor_off() -> None:
    """Switch nipype's resource monitor off again: its config is global to the process, and an interface run later
    in the same process (a caller's own nodes, the tests) would otherwise write sample files into the current
    folder."""
    from nipype import config as ncfg

    ncfg.disable_resource_monitor()


def _monitor_stages_only(wf) -> None:
    """Keep nipype's resource monitor for the numerical stages only: each monitored interface spends 0.2 s on its
    first sample, which would add up over the dozens of sinks and reportlets of a run."""
    for node in wf._get_all_nodes():
        if node.name not in STAGES:
            node.interface.resource_monitor = False


def _execute(wf, settings, runs, omp: int) -> int:
    """Run the workflow with the chosen plugin, printing one line per finished stage per run."""

    from ..workflows.base import run_stages, wf_name

    name, plugin_args = _plugin(settings.performance)
    labels = {wf_name(r.name): r.label for r in runs}
    totals = {wf_name(r.name): len(run_stages(has_magnitude=bool(r.magnitude), n_echoes=r.n_echoes,
                                              outputs=tuple(settings.processing.outputs))) for r in runs}
    order = STAGES
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
    if name == "MultiProc":
        # workers from a fork server, not forked from this process: a process that has already used torch's
        # thread pool (qsmbids called from Python, or a test session) deadlocks in forked children
        plugin_args.setdefault("mp_context", "forkserver")
        plugin_args["worker_log_levels"] = _nipype_levels(settings.execution.verbosity, worker=True)
    # nipype's resource monitor writes its samples (.proc-<pid>_*) into the current folder of the process that runs
    # a node, and MultiProc workers start in the current folder of this one: keep them in the work folder
    cwd = os.getcwd()
    os.chdir(wf.base_dir)
    try:
        if name == "MultiProc":  # ours: a failed or dead worker never hangs the run, a full disk ends it
            from .multiproc import QsmbidsMultiProcPlugin

            wf.run(plugin=QsmbidsMultiProcPlugin(plugin_args))  # after chdir: the workers start in its folder
        else:
            wf.run(plugin=name, plugin_args=plugin_args)
    except Exception as exc:  # noqa: BLE001 — nipype: "Workflow did not execute cleanly", details in the crash files
        crashes = sorted(Path(settings.execution.output_dir).glob(f"sub-*/log/{settings.execution.run_uuid}/crash*"))
        nodes = sorted({c.name.split("-")[4] for c in crashes if c.name.count("-") >= 5})
        what = f" in {', '.join(nodes)}" if nodes else ""
        where = f"; see {crashes[0]}" + (f" (+{len(crashes) - 1} more)" if len(crashes) > 1 else "") if crashes else ""
        write_error = write_error_in(exc, crashes)
        if write_error is not None:
            path, code = write_error
            path = path or unwritable_folder(code, (Path(settings.execution.output_dir), Path(wf.base_dir),
                                                   Path(tempfile.gettempdir())))
            line = write_error_line(path, code, f"{what}{where}")
            print(f"qsmbids: error: {line}", file=sys.stderr)
            return EX_CANTCREAT
        print(f"qsmbids: error: processing failed{what}{where}", file=sys.stderr)
        return EX_SOFTWARE
    finally:
        os.chdir(cwd)
        remove_monitor_files(Path(wf.base_dir))
    return EX_OK


def _reports(out: Path, subjects: list[str], run_uuid: str) -> int:
    from ..reports.core import generate_reports

    return generate_reports(subjects, out, run_uuid)


if __name__ == "__main__":  # pragma: no cover
    main()
