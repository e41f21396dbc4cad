"""Model cards of the shipped weights, and publishing a training run into ``qsmbids/data/weights``.

A card is the JSON written next to each weight file by :func:`qsmbids.deep.weights.save_weights` (architecture,
configuration, parameter count, training command and seed, data recipe, hardware, training time, validation
scores, SHA-256 of the .pt); :func:`publish` adds the papers the model follows, the tiling overlap measured on the
trained weights, and a human-readable Markdown rendering (``<model>.md``).

    python -m qsmbids.deep.cards RUN_DIR MODEL [DEST]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

__all__ = ["PAPERS", "markdown_card", "publish"]

#: the papers each architecture was written from (our own implementation; no code or weights reused)
PAPERS: dict[str, list[str]] = {
    "unet": ["Çiçek et al., 3D U-Net, MICCAI 2016", "Yoon et al., QSMnet, NeuroImage 179:199-206, 2018",
             "Bollmann et al., DeepQSM, NeuroImage 195:373-383, 2019"],
    "xqsm": ["Gao et al., xQSM: octave convolutional and noise-regularized networks, NMR Biomed 34:e4461, 2021"],
    "ir2qsm": ["Li et al., QSM via deep neural networks with iterative reverse concatenations and recurrent modules "
               "(IR2QSM), Med Phys 2025, doi:10.1002/mp.17747"],
    "modl": ["Lai et al., Learned proximal networks for QSM (LPCNN), MICCAI 2020",
             "Feng et al., MoDL-QSM, NeuroImage 240:118376, 2021"],
    "nsidl": ["Nonlinear susceptibility inversion deep learning (NSIDL), Quant Imaging Med Surg 2026"],
}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, sort_keys=True) + "`"
    return str(v)


def markdown_card(card: dict) -> str:
    """The card as Markdown: what it is, how it was trained, how well it did, how to check the file."""
    val = card.get("validation", {})
    hw = card.get("hardware", {})
    lines = [
        f"# qsmbids model card: `{card['name']}`",
        "",
        f"- Architecture: {card.get('architecture', card['name'])} ({card.get('kind', '?')}), "
        f"{card.get('parameters', '?'):,} parameters, configuration {_fmt(card.get('config', {}))}",
        f"- Written from: {'; '.join(card.get('papers', PAPERS.get(card['name'], [])))}. Our own implementation "
        "and our own weights; no code or weights of the authors were used.",
        f"- Weights: `{card.get('file', card['name'] + '.pt')}` ({card.get('dtype', '?')}, "
        f"{card.get('size_bytes', 0) / 1e6:.2f} MB), SHA-256 `{card.get('sha256', '?')}` (checked at load)",
        f"- Input: local field (ppm) at 1 mm isotropic, B0 along z for feed-forward models (inference resamples and "
        f"rotates); unrolled models take the dipole kernel of the true B0 direction. Tiling overlap "
        f"{card.get('tile_overlap', 'default')} voxels.",
        "",
        "## Training",
        f"- Command: `{card.get('training_command', '?')}`",
        f"- Seed {card.get('seed')}, {card.get('steps')} steps (planned {card.get('steps_planned')}), patch "
        f"{card.get('patch')}³, batch {card.get('batch')}, learning rate {card.get('lr')} ({card.get('optimizer')})",
        f"- Data: {_fmt(card.get('data_recipe', {}))}",
        f"- Hardware: {_fmt(hw)}; training time {card.get('training_time_s', 0) / 60:.1f} min"
        + (f" (wall-time budget {card['time_budget_s']:.0f} s)" if card.get("time_budget_s") else ""),
        f"- Reproducibility: {card.get('reproducibility', '?')}; torch {card.get('torch')}",
        "",
        "## Validation (held-out simulated heads, never used in training)",
        f"- NRMSE {_fmt(val.get('nrmse_percent'))} %, HFEN {_fmt(val.get('hfen_percent'))} %, XSIM "
        f"{_fmt(val.get('xsim'))} ({val.get('note', '')})",
    ]
    if card.get("limitations"):
        lines += ["", "## Limitations", *[f"- {x}" for x in card["limitations"]]]
    return "\n".join(lines) + "\n"


def publish(run_dir: str | Path, model: str, dest: str | Path | None = None, *, measure: bool = True,
            limitations: list[str] | None = None) -> dict:
    """Copy ``run_dir/<model>.pt`` and its card to ``dest`` (default: the shipped weights folder), adding the
    papers, the measured tiling overlap and a Markdown card. Returns the final card."""
    from .weights import WEIGHTS_DIR, card_path, load_card, load_model, sha256_file

    run_dir = Path(run_dir)
    dest = Path(str(WEIGHTS_DIR)) if dest is None else Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    src = run_dir / f"{model}.pt"
    card = load_card(src)
    if sha256_file(src) != card["sha256"]:
        raise ValueError(f"{src}: checksum differs from its card")
    card["papers"] = PAPERS.get(card["name"], [])
    if limitations:
        card["limitations"] = list(limitations)
    if measure and card.get("kind") == "feedforward":
        from .infer import measure_overlap

        net = load_model(src)
        card["tile_overlap"] = int(measure_overlap(net, tol=1e-5)["overlap"])
    shutil.copyfile(src, dest / f"{model}.pt")
    card_path(dest / f"{model}.pt").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    (dest / f"{model}.md").write_text(markdown_card(card))
    load_model(dest / f"{model}.pt")  # verifies checksum and architecture
    return card


if __name__ == "__main__":  # pragma: no cover
    run, name = sys.argv[1], sys.argv[2]
    out = publish(run, name, sys.argv[3] if len(sys.argv) > 3 else None)
    print(f"published {name}: sha256 {out['sha256'][:16]}…, validation {out.get('validation')}")
