"""Training loop for the deep dipole inversions: synthetic stream in, verified weight file and model card out.

One function, :func:`train`, does everything the ``qsmbids-train`` command needs, with the habits that make a
trained network trustworthy and repeatable:

* **reproducible**: the data stream is a pure function of (seed, step) (:class:`qsmbids.deep.data.TrainingStream`),
  the model is initialised after ``torch.manual_seed(seed)``, the learning rate is a pure function of the step
  (cosine decay from ``lr`` to ``lr/20``, Loshchilov & Hutter, ICLR 2017) and the optimiser is Adam (Kingma & Ba,
  ICLR 2015). On CPU, an interrupted run resumed from its checkpoint ends with the same weights as an
  uninterrupted one;
* **checkpoints** (``out_dir/checkpoint.pt``, written atomically every ``checkpoint_every`` steps and at the end):
  model, optimiser, AMP scaler, step, RNG states, metric rows, cumulative wall time and the run's arguments
  (resuming with different arguments is refused);
* **metrics**: ``out_dir/metrics.csv`` (one row per logged step: training loss averaged since the last row,
  learning rate, wall time; validation NRMSE/HFEN/XSIM on the rows where validation ran) and ``metrics.json``
  (the same rows plus the run's settings); validation runs every ``val_every`` steps and at the end on the fixed
  held-out crops of :func:`qsmbids.deep.data.validation_set` (heads never used in training), with
  :mod:`qsmbids.qsm.metrics` (NRMSE and HFEN in %, XSIM as a fraction, Gaussian 7³ window, maps zeroed outside the
  mask as in the challenges);
* **devices**: ``device="auto"`` takes CUDA when available; automatic mixed precision (float16 autocast +
  gradient scaling) only on CUDA and only when ``amp`` — losses are computed in float32, and if the first
  autocast step fails (e.g. an FFT size cuFFT cannot do in half precision) training falls back to float32 and
  says so;
* **time budget**: ``time_budget_s`` caps the cumulative training wall time; the run stops cleanly (checkpoint,
  metrics, weights) when it is spent, and the learning-rate schedule then follows the larger of the step and time
  fractions so that it anneals before the budget ends (which makes such a run depend on the machine's speed:
  the card says so);
* **weights**: ``out_dir/<model>.pt`` and its card via :func:`qsmbids.deep.weights.save_weights`, with the seed,
  steps, patch, batch, data recipe, hardware, torch version, training time and validation metrics.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import atomic_path, write_text_atomic
from .data import TrainingStream, validation_set

__all__ = [
    "CHECKPOINT",
    "METRICS_CSV",
    "METRICS_JSON",
    "TrainArgumentError",
    "command_line",
    "lr_at",
    "resolve_device",
    "train",
    "validate",
]

CHECKPOINT = "checkpoint.pt"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
_COLUMNS = ("step", "loss", "lr", "val_nrmse", "val_hfen", "val_xsim", "wall_s")
# the run arguments that must match when resuming
_RESUME_KEYS = ("model", "config", "seed", "patch", "batch_size", "lr", "steps", "data", "val")


class TrainArgumentError(ValueError):
    """An argument of :func:`train` is invalid or does not match the checkpoint being resumed."""


def _build_model(name: str, config: dict):
    from .models import build_model

    return build_model(name, **config)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without a CUDA device is a :class:`TrainArgumentError`."""
    d = str(device)
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise TrainArgumentError("device: 'cuda' was asked for but no CUDA device is available")
    if d != "cpu" and not d.startswith("cuda"):
        raise TrainArgumentError(f"device: expected 'auto', 'cpu' or 'cuda', got {device!r}")
    return torch.device(d)


def lr_at(progress: float, lr: float) -> float:
    """Cosine decay from ``lr`` (progress 0) to ``lr/20`` (progress ≥ 1).

    >>> lr_at(0.0, 1e-3), round(lr_at(0.5, 1e-3), 7), lr_at(2.0, 1e-3)
    (0.001, 0.000525, 5e-05)
    """
    p = min(max(float(progress), 0.0), 1.0)
    lo = lr / 20.0
    return lo + (lr - lo) * 0.5 * (1.0 + math.cos(math.pi * p))


def _kernel(shape, b0_dir, device) -> torch.Tensor:
    from ..qsm.fourier import dipole_kernel

    return dipole_kernel(tuple(int(s) for s in shape), (1.0, 1.0, 1.0), b0_dir, device=device, half=True)


def _pad_multiple(x: torch.Tensor, m: int) -> tuple[torch.Tensor, tuple]:
    widths, sl = [], []
    for n in x.shape[-3:]:
        t = -n % m
        widths.append((t // 2, t - t // 2))
        sl.append(slice(t // 2, t // 2 + n))
    flat = [w for pair in reversed(widths) for w in pair]
    return (torch.nn.functional.pad(x, flat) if any(flat) else x), (Ellipsis, *sl)


@torch.no_grad()
def validate(model, val: list[dict], device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean NRMSE (%), HFEN (%) and XSIM (fraction) of ``model`` over validation crops (eval mode, B0 ∥ z).

    Both maps are zeroed outside the mask before HFEN and XSIM (as :func:`qsmbids.qsm.metrics.all_metrics`).
    The model's train/eval mode is restored afterwards.
    """
    from ..qsm.metrics import hfen, nrmse, xsim

    device = torch.device(device)
    was_training = model.training
    model.eval()
    scores: dict[str, list[float]] = {"nrmse": [], "hfen": [], "xsim": []}
    try:
        for item in val:
            f = torch.from_numpy(np.asarray(item["field"], np.float32))[None, None].to(device)
            m = torch.from_numpy(np.asarray(item["mask"], np.float32))[None, None].to(device)
            fp, sl = _pad_multiple(f, int(getattr(model, "multiple", 1)))
            mp, _ = _pad_multiple(m, int(getattr(model, "multiple", 1)))
            kernel = _kernel(fp.shape[-3:], (0.0, 0.0, 1.0), device) if model.kind == "unrolled" else None
            chi = model(fp, mp, kernel)[sl][0, 0].double().cpu()
            ref = torch.from_numpy(np.asarray(item["chi"], np.float64))
            mask = torch.from_numpy(np.asarray(item["mask"]) > 0)
            chi, ref = chi * mask, ref * mask
            scores["nrmse"].append(nrmse(chi, ref, mask))
            scores["hfen"].append(hfen(chi, ref, mask))
            scores["xsim"].append(xsim(chi, ref, mask))
    finally:
        model.train(was_training)
    return {k: float(np.mean(v)) for k, v in scores.items()}


def _hardware(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    out = {"device": device.type, "cpu": cpu, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
           "platform": platform.platform()}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def _write_metrics(out_dir: Path, rows: list[dict], settings: dict) -> None:
    with atomic_path(out_dir / METRICS_CSV) as tmp, open(tmp, "x", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in _COLUMNS})
    write_text_atomic(out_dir / METRICS_JSON, json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _jsonable(x):
    return json.loads(json.dumps(x))


def train(
    model_name: str,
    out_dir: str | os.PathLike,
    *,
    steps: int,
    batch_size: int = 2,
    patch: int = 48,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "auto",
    amp: bool = True,
    val_every: int = 200,
    resume: bool = False,
    config: dict | None = None,
    data: dict | None = None,
    val: dict | None = None,
    time_budget_s: float | None = None,
    stop_at: int | None = None,
    checkpoint_every: int | None = None,
    log_every: int = 10,
    threads: int | None = None,
    workers: int = 0,
    command: str | None = None,
    progress: bool = True,
    log: Callable[[str], Any] | None = print,
) -> dict:
    """Train ``model_name`` on the synthetic stream and write checkpoint, metrics and weights into ``out_dir``.

    ``steps``: planned optimiser steps (sets the learning-rate schedule); ``batch_size``, ``patch`` (cube side,
    a multiple of the model's ``multiple``), ``lr`` (Adam, cosine decay), ``seed`` (model init and data);
    ``device`` ``auto|cpu|cuda``; ``amp``: mixed precision on CUDA; ``val_every``: validation period in steps;
    ``resume``: continue from ``out_dir/checkpoint.pt`` (same arguments required); ``config``: model constructor
    arguments (``build_model(model_name, **config)``); ``data``: extra :class:`~qsmbids.deep.data.TrainingStream`
    arguments (mix, noise, b0_tilt_deg, heads, …; ``cache_dir`` keeps heads on disk); ``val``:
    :func:`~qsmbids.deep.data.validation_set` arguments (n, size, seed, …); ``time_budget_s``: cap on the
    cumulative training wall time; ``stop_at``: stop after this global step (checkpoint saved; for splitting a run
    into sessions); ``checkpoint_every``: default ``val_every``; ``threads``: torch intra-op threads; ``workers``:
    data-loader processes making batches ahead (0: in this process; the batches are identical either way);
    ``command``: the command line for the card; ``progress``: tqdm bar on stderr; ``log``: message callback.

    Returns a summary: ``step``, ``completed`` (all ``steps`` done), ``stopped`` (None, "time_budget" or
    "stop_at"), ``loss`` (last logged), ``val`` (last validation), ``wall_s``, ``weights`` (path) and ``card``.
    """
    from .weights import save_weights

    steps = int(steps)
    if steps < 1:
        raise TrainArgumentError(f"steps: expected at least 1 step, got {steps}")
    if int(val_every) < 1 or int(log_every) < 1:
        raise TrainArgumentError(f"val_every/log_every: expected positive periods, got {val_every}, {log_every}")
    if not (lr > 0 and math.isfinite(lr)):
        raise TrainArgumentError(f"lr: expected a positive learning rate, got {lr}")
    if time_budget_s is not None and not time_budget_s >= 0:
        raise TrainArgumentError(f"time_budget_s: expected a non-negative number of seconds, got {time_budget_s}")
    say = log or (lambda _msg: None)
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(int(threads))
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT
    config = dict(config or {})
    data_kw = dict(data or {})
    val_kw = {"n": 2, "size": 64, "seed": 1234, **(val or {})}
    if "cache_dir" in data_kw:
        val_kw.setdefault("cache_dir", data_kw["cache_dir"])
    checkpoint_every = int(checkpoint_every or val_every)

    torch.manual_seed(int(seed))
    try:
        model = _build_model(model_name, config).to(dev)
        stream = TrainingStream(patch=int(patch), batch=int(batch_size), seed=int(seed), **data_kw)
    except (TypeError, ValueError) as exc:
        raise TrainArgumentError(str(exc)) from None
    multiple = int(getattr(model, "multiple", 1))
    if int(patch) % multiple:
        raise TrainArgumentError(f"patch: {patch} is not a multiple of {multiple}, which model {model_name!r} needs")
    recipe = stream.recipe()
    run_args = _jsonable({"model": model_name, "config": dict(model.config), "seed": int(seed), "patch": int(patch),
                          "batch_size": int(batch_size), "lr": float(lr), "steps": steps, "data": recipe,
                          "val": {k: v for k, v in val_kw.items() if k != "cache_dir"}})
    opt = torch.optim.Adam(model.parameters(), lr=float(lr))
    use_amp = bool(amp) and dev.type == "cuda"

    step, rows, wall_prev, ck = 0, [], 0.0, None
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"{ckpt_path}: no checkpoint to resume from")
        ck = torch.load(ckpt_path, map_location=dev, weights_only=False)
        diff = [k for k in _RESUME_KEYS if ck["args"].get(k) != run_args.get(k)]
        if diff:
            raise TrainArgumentError(f"{ckpt_path}: the checkpoint was made with different {', '.join(diff)}; "
                                     "resume with the same arguments or use a new output folder")
        use_amp = use_amp and bool(ck.get("amp", False))  # a run that fell back to float32 stays there
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["torch_rng"].cpu())
        if dev.type == "cuda" and ck.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all([s.cpu() for s in ck["cuda_rng"]])
        step, rows, wall_prev = int(ck["step"]), list(ck["rows"]), float(ck["wall_s"])
        say(f"qsmbids-train: resumed {model_name} at step {step} ({wall_prev:.0f} s trained)")
        del ck
    out.mkdir(parents=True, exist_ok=True)
    settings = {**run_args, "device": dev.type, "amp": use_amp, "torch": torch.__version__,
                "time_budget_s": time_budget_s, "command": command}

    t0 = time.perf_counter()

    def elapsed() -> float:
        return wall_prev + time.perf_counter() - t0

    def progress_fraction(s: int) -> float:
        p = s / steps
        if time_budget_s:
            p = max(p, elapsed() / float(time_budget_s))
        return p

    say(f"qsmbids-train: building the validation set ({val_kw['n']} crops of {val_kw['size']}³)")
    val_set = validation_set(**val_kw)
    val_scores: dict[str, float] | None = next(
        ({k: r[f"val_{k}"] for k in ("nrmse", "hfen", "xsim")} for r in reversed(rows) if r.get("val_nrmse") is not None),
        None)

    def checkpoint() -> None:
        _save_checkpoint(ckpt_path, {
            "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if dev.type == "cuda" else None,
            "rows": rows, "wall_s": elapsed(), "args": run_args, "amp": use_amp,
        })
        _write_metrics(out, rows, settings)

    if step < steps:
        say(f"qsmbids-train: preparing {stream.heads if stream.mix > 0 else 0} training heads")
        stream.prepare()
    end = steps if stop_at is None else min(steps, int(stop_at))
    batches = _batches(stream, step, end, workers)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=step, desc=f"train {model_name}", unit="step", file=sys.stderr,
                   dynamic_ncols=True)
    loss_sum, loss_n, stopped, last_loss = 0.0, 0, None, None
    model.train()
    try:
        while step < end:
            if time_budget_s is not None and elapsed() >= float(time_budget_s):
                stopped = "time_budget"
                break
            b = next(batches)
            field, chi, mask = (t.to(dev, non_blocking=True) for t in b)
            kernel = _kernel(field.shape[-3:], b.b0_dir, dev)
            for group in opt.param_groups:
                group["lr"] = lr_at(progress_fraction(step), float(lr))
            opt.zero_grad(set_to_none=True)
            loss = _loss(model, field, chi, mask, kernel, use_amp)
            if loss is None:  # autocast failed on the first try: fall back to float32 for the whole run
                say("qsmbids-train: mixed precision failed for this model; continuing in float32")
                use_amp = False
                settings["amp"] = False
                scaler = torch.amp.GradScaler("cuda", enabled=False)
                loss = _loss(model, field, chi, mask, kernel, False)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"step {step + 1}: the training loss is {float(loss)}; lower --lr")
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            loss_sum += float(loss.detach())
            loss_n += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            do_val = step % int(val_every) == 0 or step == steps
            if step % int(log_every) == 0 or do_val or step == end:
                last_loss = loss_sum / loss_n
                row = {"step": step, "loss": last_loss, "lr": opt.param_groups[0]["lr"], "val_nrmse": None,
                       "val_hfen": None, "val_xsim": None, "wall_s": round(elapsed(), 3)}
                if do_val:
                    val_scores = validate(model, val_set, dev)
                    row.update({f"val_{k}": v for k, v in val_scores.items()})
                    say(f"qsmbids-train: step {step}: loss {last_loss:.4f}, validation NRMSE "
                        f"{val_scores['nrmse']:.1f} %, HFEN {val_scores['hfen']:.1f} %, XSIM {val_scores['xsim']:.3f}")
                rows.append(row)
                loss_sum, loss_n = 0.0, 0
            if step % checkpoint_every == 0:
                checkpoint()
        else:
            if step < steps:
                stopped = "stop_at"
    finally:
        if bar is not None:
            bar.close()
        with contextlib.suppress(Exception):
            batches.close()
    if loss_n:  # unlogged tail (time budget hit between log rows)
        last_loss = loss_sum / loss_n
        rows.append({"step": step, "loss": last_loss, "lr": opt.param_groups[0]["lr"], "val_nrmse": None,
                     "val_hfen": None, "val_xsim": None, "wall_s": round(elapsed(), 3)})
    if rows and rows[-1]["step"] == step and rows[-1]["val_nrmse"] is None:
        val_scores = validate(model, val_set, dev)
        rows[-1].update({f"val_{k}": v for k, v in val_scores.items()})
    elif val_scores is None:
        val_scores = validate(model, val_set, dev)
    if last_loss is None and rows:
        last_loss = rows[-1]["loss"]
    checkpoint()
    wall = elapsed()
    completed = step >= steps
    card = {
        "architecture": type(model).__name__,
        "training_command": command or _python_call(model_name, steps, batch_size, patch, lr, seed, config, data),
        "seed": int(seed), "steps": step, "steps_planned": steps, "completed": completed, "stopped": stopped,
        "patch": int(patch), "batch": int(batch_size), "lr": float(lr), "optimizer": "Adam, cosine decay to lr/20",
        "loss": "model.loss (the model's own training loss)", "final_training_loss": last_loss,
        "data_recipe": recipe, "validation_set": run_args["val"],
        "validation": {"nrmse_percent": val_scores["nrmse"], "hfen_percent": val_scores["hfen"],
                       "xsim": val_scores["xsim"], "note": "mean over the validation crops; XSIM Gaussian 7^3 window, "
                       "maps zeroed outside the mask"},
        "hardware": _hardware(dev), "amp": use_amp, "training_time_s": round(wall, 1),
        "time_budget_s": time_budget_s,
        "reproducibility": ("bitwise on CPU for the same seed, steps and torch version" if time_budget_s is None else
                            "the learning-rate schedule followed the wall-time budget: not bitwise reproducible"),
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
    }
    weights_path = out / f"{model_name}.pt"
    card = save_weights(model, weights_path, card)
    say(f"qsmbids-train: {'finished' if completed else 'stopped'} at step {step}/{steps} after {wall:.0f} s; "
        f"weights {weights_path}")
    return {"step": step, "completed": completed, "stopped": stopped, "loss": last_loss, "val": val_scores,
            "wall_s": wall, "weights": str(weights_path), "card": card}


def _loss(model, field, chi, mask, kernel, use_amp: bool):
    """The model's own loss (float32); ``None`` when the first autocast attempt raised (caller falls back)."""
    unrolled = getattr(model, "kind", "feedforward") == "unrolled"
    ctx = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
    try:
        with ctx:
            outputs = model.forward_all(field, mask, kernel if unrolled else None)
    except RuntimeError:
        if not use_amp:
            raise
        return None
    outputs = [o.float() for o in outputs]
    return model.loss(outputs, chi, mask, field, kernel)


def _batches(stream: TrainingStream, start: int, stop: int, workers: int):
    """Batches ``start … stop-1`` of the stream, made here or by ``workers`` data-loader processes (same batches)."""
    if int(workers) <= 0:
        return stream.iterate(start, stop)
    from torch.utils.data import DataLoader, Subset

    loader = DataLoader(Subset(stream, range(start, stop)), batch_size=None, num_workers=int(workers),
                        collate_fn=_identity, prefetch_factor=2, persistent_workers=False)

    def gen():
        yield from loader

    return gen()


def _identity(x):
    return x


def _python_call(model_name, steps, batch_size, patch, lr, seed, config, data) -> str:
    args = [f"{model_name!r}", "out_dir", f"steps={steps}", f"batch_size={batch_size}", f"patch={patch}", f"lr={lr}",
            f"seed={seed}"]
    if config:
        args.append(f"config={config!r}")
    if data:
        args.append(f"data={ {k: v for k, v in data.items() if k != 'cache_dir'}!r}")
    return "qsmbids.deep.train.train(" + ", ".join(args) + ")"


def command_line(argv) -> str:
    """The ``qsmbids-train`` command line as typed (for the model card)."""
    return "qsmbids-train " + shlex.join(str(a) for a in argv)
