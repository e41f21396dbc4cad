"""``qsmbids-train``: train one of the deep dipole-inversion networks on synthetic data and write its weights.

    qsmbids-train MODEL --out DIR [--steps N] [--batch-size B] [--patch P] [--lr LR] [--seed S]
                  [--device auto|cpu|cuda] [--resume] [--val-every N] [--width W] [--depth D] [--config JSON]
                  [--threads T] [--time-budget SECONDS] [--mix F] [--noise LO HI] [--b0-tilt DEG] [--slice-mm LO HI]
                  [--heads N]
                  [--workers N] [--cache-dir DIR] [--no-amp] [--no-progress]

DIR receives ``checkpoint.pt`` (resume with ``--resume`` and the same arguments), ``metrics.csv``/``metrics.json``
and ``MODEL.pt`` with its model card ``MODEL.json`` (copy both into ``qsmbids/data/weights/`` to ship them).
Usage errors exit with 64 and one line on stderr; a failure while training exits with 70.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from .exit_codes import EX_CANTCREAT, EX_OK, EX_SOFTWARE, EX_USAGE
from .parser import QSMBIDSArgumentParser

__all__ = ["build_parser", "main"]

_MODELS = ("unet", "xqsm", "ir2qsm", "modl", "nsidl")  # == qsmbids.deep.models.MODELS (kept light: no torch here)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}") from None
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return v


def _fraction(text: str) -> float:
    v = _nonneg_float(text)
    if v > 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return v


def _json_object(text: str) -> dict:
    try:
        v = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object of model arguments ({exc.msg})") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object of model arguments, got {text!r}")
    return v


def build_parser() -> QSMBIDSArgumentParser:
    p = QSMBIDSArgumentParser(
        prog="qsmbids-train",
        description="Train a deep dipole-inversion network on synthetic (random-shape and simulated-head) data.",
    )
    p.add_argument("model", choices=_MODELS, metavar="MODEL", help=f"network to train: {', '.join(_MODELS)}")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output folder: checkpoint, metrics and the weight file with its model card")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=_positive_int, default=2000, help="optimiser steps (default 2000)")
    g.add_argument("--batch-size", type=_positive_int, default=2, help="patches per step (default 2)")
    g.add_argument("--patch", type=_positive_int, default=48, help="patch side in 1 mm voxels (default 48)")
    g.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate, cosine decay (default 1e-3)")
    g.add_argument("--seed", type=_nonneg_int, default=0, help="random seed: model init and data (default 0)")
    g.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt (same arguments)")
    g.add_argument("--val-every", type=_positive_int, default=200, help="validation period in steps (default 200)")
    g.add_argument("--time-budget", type=_positive_float, metavar="SECONDS",
                   help="stop cleanly (checkpoint, weights) after this much training time; the learning rate "
                        "anneals within the budget")
    g = p.add_argument_group("model")
    g.add_argument("--width", type=_positive_int, help="channels of the first level (model default otherwise)")
    g.add_argument("--depth", type=_positive_int, help="number of 2x down-samplings (model default otherwise)")
    g.add_argument("--config", type=_json_object, metavar="JSON", help="further model arguments as a JSON object")
    g = p.add_argument_group("data")
    g.add_argument("--mix", type=_fraction, default=0.5, help="fraction of head patches, the rest random shapes")
    g.add_argument("--noise", type=_nonneg_float, nargs=2, metavar=("LO", "HI"), default=(0.0, 0.01),
                   help="range of the field noise std in ppm (default 0 0.01)")
    g.add_argument("--b0-tilt", type=_nonneg_float, default=0.0, metavar="DEG",
                   help="draw B0 directions within this angle of z (default 0; unrolled models use the kernel)")
    g.add_argument("--slice-mm", type=_positive_float, nargs=2, metavar=("LO", "HI"), default=(1.0, 1.0),
                   help="range of simulated slice thickness in mm: the field is low-passed along z (default 1 1: off)")
    g.add_argument("--heads", type=_positive_int, default=4, help="number of simulated training heads (default 4)")
    g.add_argument("--cache-dir", type=Path, metavar="DIR", help="keep the simulated heads here between runs")
    g = p.add_argument_group("performance")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA when available")
    g.add_argument("--threads", type=_positive_int, help="torch intra-op threads")
    g.add_argument("--workers", type=_nonneg_int, default=0, help="data-making processes (default 0: in-process)")
    g.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--version", action="version", version=f"qsmbids-train {__version__}")
    return p


class _Usage(Exception):
    pass


def _check(args: argparse.Namespace) -> dict:
    """Cross-argument checks that argparse cannot do; returns the model configuration."""
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise _Usage(f"--out {out}: exists and is not a folder")
    ckpt = out / "checkpoint.pt"
    if args.resume and not ckpt.is_file():
        raise _Usage(f"--resume: no checkpoint.pt in {out}")
    if not args.resume and ckpt.is_file():
        raise _Usage(f"--out {out}: holds a checkpoint; use --resume to continue it or choose another folder")
    lo, hi = args.noise
    if hi < lo:
        raise _Usage(f"--noise: expected LO <= HI, got {lo} {hi}")
    if not 1.0 <= args.slice_mm[0] <= args.slice_mm[1] <= 6.0:
        raise _Usage(f"--slice-mm: expected 1 <= LO <= HI <= 6 mm, got {args.slice_mm[0]} {args.slice_mm[1]}")
    if args.b0_tilt >= 90:
        raise _Usage(f"--b0-tilt: expected an angle below 90 degrees, got {args.b0_tilt}")
    config = dict(args.config or {})
    for key in ("width", "depth"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    import torch

    from ..deep.models import build_model

    if args.device == "cuda" and not torch.cuda.is_available():
        raise _Usage("--device cuda: no CUDA device is available")
    try:
        model = build_model(args.model, **config)
    except ValueError as exc:
        raise _Usage(f"--config/--width/--depth: {' '.join(str(exc).split())}") from None
    if args.patch % model.multiple:
        raise _Usage(f"--patch: {args.patch} is not a multiple of {model.multiple}, which {args.model} "
                     f"(depth {config.get('depth', 'default')}) needs")
    return config


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage error (64, one line) or --help/--version (0)
        return int(exc.code or 0)
    try:
        config = _check(args)
    except _Usage as exc:
        print(f"qsmbids-train: error: {exc}", file=sys.stderr)
        return EX_USAGE
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"qsmbids-train: error: {args.out}: cannot create the output folder ({exc.strerror})", file=sys.stderr)
        return EX_CANTCREAT

    from ..deep.train import TrainArgumentError, command_line, train

    data = {"mix": args.mix, "noise": tuple(args.noise), "b0_tilt_deg": args.b0_tilt, "heads": args.heads,
            "slice_mm": tuple(args.slice_mm)}
    if args.cache_dir is not None:
        data["cache_dir"] = str(args.cache_dir)
    try:
        summary = train(
            args.model, args.out, steps=args.steps, batch_size=args.batch_size, patch=args.patch, lr=args.lr,
            seed=args.seed, device=args.device, amp=not args.no_amp, val_every=args.val_every, resume=args.resume,
            config=config, data=data, time_budget_s=args.time_budget, threads=args.threads, workers=args.workers,
            command=command_line(argv), progress=not args.no_progress,
            log=lambda msg: print(msg, file=sys.stderr),
        )
    except TrainArgumentError as exc:  # e.g. resuming with different arguments
        print(f"qsmbids-train: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EX_USAGE
    except OSError as exc:
        print(f"qsmbids-train: error: {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EX_CANTCREAT
    except Exception as exc:  # noqa: BLE001 — one line, not a traceback; the checkpoint stays for --resume
        print(f"qsmbids-train: error: training failed: {type(exc).__name__}: {' '.join(str(exc).split())}",
              file=sys.stderr)
        return EX_SOFTWARE
    v = summary["val"]
    print(f"qsmbids-train: {args.model}: {summary['step']} steps, validation NRMSE {v['nrmse']:.1f} %, "
          f"HFEN {v['hfen']:.1f} %, XSIM {v['xsim']:.3f}; wrote {summary['weights']}", file=sys.stderr)
    return EX_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
