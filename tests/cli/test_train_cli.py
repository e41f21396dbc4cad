"""``qsmbids-train``: usage errors exit 64 with one line, a tiny run writes weights and card, resume rules."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import qsmbids.deep.train as train_mod
from qsmbids.cli.exit_codes import EX_USAGE
from qsmbids.cli.train import main
from qsmbids.deep.data import validation_set

TINY = ["--patch", "16", "--width", "4", "--depth", "2", "--mix", "0", "--no-progress", "--val-every", "2"]


@pytest.fixture
def fast_validation(monkeypatch):
    """One 16³ crop of a 3 mm head instead of two 64³ crops of 1 mm heads (6 s each)."""
    monkeypatch.setattr(train_mod, "validation_set", lambda **kw: validation_set(n=1, size=16, head_voxel_size=3.0))


def _one_line(capsys, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qsmbids-train: error: ") and "Traceback" not in err[0], err
    for f in fragments:
        assert f in err[0], err[0]


@pytest.mark.parametrize(("args", "fragment"), [
    (["foo"], "invalid choice"),
    ([], "--out"),
    (["--steps", "0"], "--steps"),
    (["--patch", "20"], "multiple of 16"),
    (["--patch", "18", "--depth", "2"], "multiple of 4"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--mix", "1.5"], "--mix"),
    (["--noise", "0.02", "0.01"], "--noise"),
    (["--b0-tilt", "95"], "--b0-tilt"),
    (["--slice-mm", "0.5", "2"], "--slice-mm"),
    (["--slice-mm", "3", "2"], "--slice-mm"),
    (["--config", "[1]"], "--config"),
    (["--config", "{bad json"], "--config"),
    (["--config", '{"colour": 1}'], "colour"),
    (["--device", "tpu"], "--device"),
    (["--resume"], "no checkpoint"),
    (["--threads", "0"], "--threads"),
])
def test_usage_errors_exit_64_with_one_line(tmp_path, capsys, args, fragment):
    out = tmp_path / "run"
    if not args:
        argv = ["unet"]  # no --out
    elif args[0] == "foo":
        argv = ["foo", "--out", str(out)]
    else:
        argv = ["unet", "--out", str(out), *args]
    assert main(argv) == EX_USAGE
    _one_line(capsys, fragment)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_is_a_usage_error(tmp_path, capsys):
    assert main(["unet", "--out", str(tmp_path / "r"), "--device", "cuda"]) == EX_USAGE
    _one_line(capsys, "no CUDA device")


def test_module_entry_point_exit_code(tmp_path):
    p = subprocess.run([sys.executable, "-m", "qsmbids.cli.train", "unet", "--out", str(tmp_path), "--steps", "x"],
                       check=False, capture_output=True, text=True, timeout=120)
    assert p.returncode == EX_USAGE and len(p.stderr.strip().splitlines()) == 1 and "--steps" in p.stderr


def test_tiny_run_writes_weights_card_and_metrics_then_resume_rules(tmp_path, capsys, fast_validation):
    out = tmp_path / "run"
    argv = ["unet", "--out", str(out), "--steps", "4", "--seed", "1", *TINY]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "validation NRMSE" in err and "wrote" in err
    for name in ("unet.pt", "unet.json", "checkpoint.pt", "metrics.csv", "metrics.json"):
        assert (out / name).is_file(), name
    card = json.loads((out / "unet.json").read_text())
    assert card["training_command"].startswith("qsmbids-train unet --out ") and "--seed 1" in card["training_command"]
    assert card["seed"] == 1 and card["steps"] == 4 and card["config"]["width"] == 4 and card["completed"]
    assert card["data_recipe"]["mix_head_fraction"] == 0.0
    # same folder again without --resume: refused, nothing touched
    before = (out / "unet.pt").read_bytes()
    assert main(argv) == EX_USAGE
    _one_line(capsys, "--resume")
    # resume with other settings: refused with one line
    assert main([*argv, "--resume", "--lr", "0.01"]) == EX_USAGE
    _one_line(capsys, "different lr")
    # resume with the same settings: the run is complete, nothing more to train, same weights
    assert main([*argv, "--resume"]) == 0
    assert (out / "unet.pt").read_bytes() == before


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "qsmbids-train" in capsys.readouterr().out
