"""Weight files and model cards: save, verify and load the networks that qsmbids ships.

A trained model is two files side by side::

    <name>.pt     torch.save({"format": 1, "name", "config", "dtype", "state_dict"})   (loaded with weights_only=True)
    <name>.json   the model card: architecture, parameter count, training recipe, validation metrics, … and the
                  SHA-256 of the .pt file

The card is the trust anchor: :func:`load_model` hashes the .pt and refuses it (:class:`WeightsError` naming the
file) when the digest differs from the card, so a truncated download, a git-LFS pointer or a file swapped by hand is
a clear error instead of a silently wrong susceptibility map. Nothing is ever downloaded at run time (issue 5): a
missing file is an error that names the path and the models that are available.

Weights are stored in float16 when every tensor survives the round trip within 1e-3 (relative to the tensor's
largest magnitude) — half the size in the wheel — and in float32 otherwise; :func:`load_model` always builds a
float32 model. Loading uses ``torch.load(weights_only=True)``: a weight file cannot execute code.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_path

__all__ = [
    "WEIGHTS_DIR",
    "WeightsError",
    "available_models",
    "card_path",
    "load_card",
    "load_model",
    "resolve_weights",
    "save_weights",
    "sha256_file",
]

#: Where the shipped weight files and their model cards live (inside the installed package).
WEIGHTS_DIR = importlib.resources.files("qsmbids") / "data" / "weights"

_FORMAT = 1
_FP16_RTOL = 1e-3


class WeightsError(RuntimeError):
    """A weight file or its model card is missing, unreadable, corrupt or does not fit its model."""


def _weights_dir(weights_dir: str | os.PathLike | None = None) -> Path:
    return Path(str(WEIGHTS_DIR if weights_dir is None else weights_dir))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def card_path(path: str | os.PathLike) -> Path:
    """The model card (JSON) that belongs to a weight file: same name, ``.json`` suffix."""
    return Path(path).with_suffix(".json")


def resolve_weights(name_or_path: str | os.PathLike, weights_dir: str | os.PathLike | None = None) -> Path:
    """Weight file for a model name (``<weights_dir>/<name>.pt``, default :data:`WEIGHTS_DIR`) or a path.

    A string is a path when it has a directory part or ends in ``.pt``; anything else is a model name.
    """
    if isinstance(name_or_path, os.PathLike):
        return Path(name_or_path)
    s = str(name_or_path)
    if not s:
        raise WeightsError("model: expected a model name or a weight file path, got ''")
    if s.endswith(".pt") or os.sep in s or (os.altsep and os.altsep in s):
        return Path(s)
    return _weights_dir(weights_dir) / f"{s}.pt"


def available_models(weights_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of the models with a weight file *and* a card in ``weights_dir`` (default: the shipped ones), sorted.

    Files are not hashed here (that happens in :func:`load_model`); this only says what can be asked for.
    """
    d = _weights_dir(weights_dir)
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.pt") if card_path(p).is_file())


def _to_fp16_if_lossless(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """float16 copy of the floating tensors when each round-trips within 1e-3 of its max |value|, else as is."""
    half = {}
    for k, v in state.items():
        if not torch.is_floating_point(v):
            half[k] = v
            continue
        v32 = v.detach().to(torch.float32)
        h = v32.to(torch.float16)
        back = h.to(torch.float32)
        err = float((back - v32).abs().max()) if v32.numel() else 0.0
        scale = float(v32.abs().max()) if v32.numel() else 0.0
        if not bool(torch.isfinite(back).all()) or err > _FP16_RTOL * scale:
            return {k: (v.detach().to(torch.float32) if torch.is_floating_point(v) else v)
                    for k, v in state.items()}, "float32"
        half[k] = h
    return half, "float16"


def save_weights(model: torch.nn.Module, path: str | os.PathLike, card: dict[str, Any] | None = None) -> dict:
    """Write ``model``'s weights to ``path`` (.pt) and its card to ``path.with_suffix('.json')``; return the card.

    ``card`` holds what only the trainer knows (training command, seed, steps, data recipe, hardware, time,
    validation metrics, …); this function adds ``name``, ``kind``, ``multiple``, ``config`` and ``parameters`` from
    the model, the storage ``dtype``, ``file``, ``size_bytes``, ``torch`` and the ``sha256`` of the written .pt.
    Existing keys of ``card`` other than those are kept as given.
    """
    path = Path(path)
    if path.suffix != ".pt":
        raise ValueError(f"path: expected a .pt file name, got {path}")
    name = getattr(model, "name", None)
    config = getattr(model, "config", None)
    if not name or not isinstance(config, dict):
        raise ValueError("model: expected a QSMModel (with .name and .config), got "
                         f"{type(model).__name__}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    stored, dtype = _to_fp16_if_lossless(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"format": _FORMAT, "name": name, "config": config, "dtype": dtype, "state_dict": stored}, tmp)
    out = dict(card or {})
    out.update({
        "name": name,
        "kind": getattr(model, "kind", None),
        "multiple": int(getattr(model, "multiple", 1)),
        "config": json.loads(json.dumps(config)),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "file": path.name,
        "dtype": dtype,
        "size_bytes": path.stat().st_size,
        "torch": out.get("torch", torch.__version__),
        "sha256": sha256_file(path),
    })
    card_path(path).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    return out


def load_card(name_or_path: str | os.PathLike, weights_dir: str | os.PathLike | None = None) -> dict:
    """The model card of a weight file (not verified against the file: :func:`load_model` does that)."""
    pt = resolve_weights(name_or_path, weights_dir)
    cp = card_path(pt)
    if not cp.is_file():
        raise WeightsError(f"{cp}: model card not found (every weight file needs its card with the SHA-256)")
    try:
        card = json.loads(cp.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{cp}: unreadable model card ({exc})") from exc
    if not isinstance(card, dict) or not all(k in card for k in ("name", "config", "sha256")):
        raise WeightsError(f"{cp}: model card lacks one of 'name', 'config', 'sha256'")
    return card


def _missing(pt: Path) -> WeightsError:
    avail = available_models(pt.parent) if pt.parent.is_dir() else []
    hint = f"available here: {', '.join(avail)}" if avail else "no weight files in that folder"
    return WeightsError(f"{pt}: weight file not found ({hint}); qsmbids never downloads weights — train one with "
                        "qsmbids-train or pass the path of a .pt file with its .json card")


def _build_model(name: str, config: dict) -> torch.nn.Module:
    from .models import build_model  # torch models load lazily: listing or hashing weights needs none of them

    return build_model(name, **config)


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", *,
               weights_dir: str | os.PathLike | None = None, return_card: bool = False):
    """Build a model from a verified weight file, in eval mode, float32, on ``device``.

    ``name_or_path``: a model name (``"unet"`` → ``<weights_dir>/unet.pt``, default :data:`WEIGHTS_DIR`) or the
    path of a .pt file. The card next to it gives the architecture (``build_model(card["name"],
    **card["config"])``) and the SHA-256 that the file must match. Every failure — missing file or card,
    checksum mismatch, unreadable file, weights that do not fit the architecture — raises :class:`WeightsError`
    whose message starts with the offending file. ``return_card=True`` returns ``(model, card)``.
    """
    pt = resolve_weights(name_or_path, weights_dir)
    if not pt.is_file():
        raise _missing(pt)
    card = load_card(pt)
    digest = sha256_file(pt)
    if digest != card["sha256"]:
        raise WeightsError(f"{pt}: checksum mismatch (file sha256 {digest[:16]}…, card {card_path(pt).name} says "
                           f"{str(card['sha256'])[:16]}…): the file is corrupt, truncated or not the one the card "
                           "describes")
    try:
        blob = torch.load(pt, map_location="cpu", weights_only=True)
        state = blob["state_dict"]
    except Exception as exc:  # any unpickling failure means a bad file
        raise WeightsError(f"{pt}: cannot read the weights ({type(exc).__name__}: {exc})") from exc
    try:
        model = _build_model(card["name"], card["config"])
    except Exception as exc:  # a card whose config does not build
        raise WeightsError(f"{card_path(pt)}: cannot build model {card['name']!r} with config {card['config']} "
                           f"({type(exc).__name__}: {exc})") from exc
    ref = model.state_dict()
    state = {k: (v.to(ref[k].dtype) if k in ref and torch.is_floating_point(v) else v) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{pt}: the weights do not fit model {card['name']!r} with config {card['config']} "
                           f"({str(exc).splitlines()[0]})") from exc
    model = model.to(device=device, dtype=torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return (model, card) if return_card else model
