"""Training loop: the loss goes down, resume is exact, outputs (metrics, checkpoint, weights, card) are complete."""

from __future__ import annotations

import csv
import itertools
import json

import pytest
import torch

from qsmbids.deep.data import TrainingStream, validation_set
from qsmbids.deep.models import build_model
from qsmbids.deep.train import CHECKPOINT, TrainArgumentError, _batches, lr_at, train, validate
from qsmbids.deep.weights import load_model, sha256_file

CONFIG = {"width": 4, "depth": 2}  # ~21 k parameters, multiple 4
TINY = {
    "batch_size": 2,
    "patch": 16,
    "config": CONFIG,
    "progress": False,
    "log": None,
    "data": {"head_voxel_size": 3.0, "heads": 2},  # 3 mm heads treated as 1 mm: fast, tests only
    "val": {"n": 1, "size": 16, "head_voxel_size": 3.0},
}


def _model_from_checkpoint(path):
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model("unet", **CONFIG)
    model.load_state_dict(ck["model"])
    return model, ck


@torch.no_grad()
def _loss_on(model, batches) -> float:
    model.train()  # batch statistics: independent of the running averages
    total = 0.0
    for field, chi, mask in batches:
        total += float(model.loss(model.forward_all(field, mask), chi, mask, field))
    return total / len(batches)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    summary = train("unet", out, steps=40, lr=3e-3, seed=0, val_every=20, log_every=10, **TINY)
    return out, summary


def test_a_few_steps_reduce_the_loss(trained):
    out, summary = trained
    held_out = [TrainingStream(patch=16, batch=2, seed=99, **TINY["data"]).batch(i) for i in range(6)]
    torch.manual_seed(0)
    before = _loss_on(build_model("unet", **CONFIG), held_out)  # the same initial weights as the run (seed 0)
    after = _loss_on(_model_from_checkpoint(out / CHECKPOINT)[0], held_out)
    assert after < 0.8 * before, (before, after)
    assert summary["completed"] and summary["step"] == 40 and summary["stopped"] is None


def test_outputs_metrics_and_card(trained):
    out, summary = trained
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40]
    assert list(rows[0]) == ["step", "loss", "lr", "val_nrmse", "val_hfen", "val_xsim", "wall_s"]
    assert [bool(r["val_nrmse"]) for r in rows] == [False, True, False, True]
    assert float(rows[0]["lr"]) > float(rows[-1]["lr"]) >= 3e-3 / 20
    js = json.loads((out / "metrics.json").read_text())
    assert js["settings"]["seed"] == 0 and js["settings"]["steps"] == 40 and len(js["rows"]) == 4
    card = summary["card"]
    assert card == json.loads((out / "unet.json").read_text())
    assert card["sha256"] == sha256_file(out / "unet.pt")
    for key in (
        "name",
        "architecture",
        "parameters",
        "training_command",
        "seed",
        "steps",
        "patch",
        "batch",
        "data_recipe",
        "hardware",
        "training_time_s",
        "validation",
        "torch",
        "config",
    ):
        assert key in card, key
    assert card["steps"] == 40 and card["patch"] == 16 and card["batch"] == 2 and card["config"]["width"] == 4
    assert card["hardware"]["device"] == "cpu" and card["hardware"]["threads"] >= 1
    assert card["torch"] == torch.__version__ and card["parameters"] == 21437
    v = card["validation"]
    assert v["nrmse_percent"] == pytest.approx(float(rows[-1]["val_nrmse"]))
    assert 0 < v["nrmse_percent"] < 1000 and -1 <= v["xsim"] <= 1
    model = load_model(out / "unet.pt")  # D3's loader verifies the checksum and rebuilds the architecture
    assert model.config["width"] == 4


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    kw = {**TINY, "steps": 8, "lr": 2e-3, "seed": 3, "val_every": 4, "log_every": 2}
    full = train("unet", tmp_path / "full", **kw)
    part = train("unet", tmp_path / "split", stop_at=5, **kw)
    assert part["step"] == 5 and not part["completed"] and part["stopped"] == "stop_at"
    assert (tmp_path / "split" / "unet.pt").is_file()  # a clean stop still leaves usable weights
    resumed = train("unet", tmp_path / "split", resume=True, **kw)
    assert resumed["step"] == 8 and resumed["completed"]
    a, ck_a = _model_from_checkpoint(tmp_path / "full" / CHECKPOINT)
    b, ck_b = _model_from_checkpoint(tmp_path / "split" / CHECKPOINT)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert ck_a["optimizer"]["state"][0]["exp_avg"].equal(ck_b["optimizer"]["state"][0]["exp_avg"])
    assert full["loss"] == pytest.approx(resumed["loss"], rel=1e-6)
    assert full["val"] == pytest.approx(resumed["val"], rel=1e-6)
    with pytest.raises(TrainArgumentError, match="different lr"):
        train("unet", tmp_path / "split", resume=True, **{**kw, "lr": 1e-3})
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train("unet", tmp_path / "empty", resume=True, **kw)


def test_time_budget_stops_cleanly(tmp_path):
    s = train("unet", tmp_path / "b", steps=1000, time_budget_s=0.0, **TINY)
    assert s["stopped"] == "time_budget" and s["step"] == 0 and not s["completed"]
    card = json.loads((tmp_path / "b" / "unet.json").read_text())
    assert card["completed"] is False and card["time_budget_s"] == 0.0 and "not bitwise" in card["reproducibility"]
    assert (tmp_path / "b" / CHECKPOINT).is_file()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"patch": 18}, "multiple of 4"),
        ({"device": "tpu"}, "device"),
        ({"lr": -1.0}, "lr"),
        ({"config": {"width": 4, "depth": 2, "colour": 1}}, "config"),
        ({"data": {"mix": 2.0}}, "mix"),
    ],
)
def test_bad_arguments(tmp_path, kw, match):
    args = {**TINY, "steps": 2, **kw}
    with pytest.raises(TrainArgumentError, match=match):
        train("unet", tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()  # nothing written for a bad call


def test_learning_rate_schedule():
    assert lr_at(0, 1e-3) == 1e-3 and lr_at(1, 1e-3) == pytest.approx(5e-5)
    vals = [lr_at(p / 10, 1.0) for p in range(11)]
    assert all(a > b for a, b in itertools.pairwise(vals))


def test_loader_workers_make_the_same_batches():
    stream = TrainingStream(patch=16, batch=2, seed=4, mix=0.0)
    here = list(_batches(stream, 2, 5, 0))
    there = list(_batches(stream, 2, 5, 1))
    assert len(here) == len(there) == 3
    for a, b in zip(here, there):
        assert a.b0_dir == b.b0_dir and all(torch.equal(x, y) for x, y in zip(a, b))


class _Zero(torch.nn.Module):
    kind, multiple = "feedforward", 1

    def forward(self, field, mask, kernel=None):
        return torch.zeros_like(field)


def test_validate_scores():
    val = validation_set(n=2, size=16, head_voxel_size=3.0)
    s = validate(_Zero(), val)
    assert s["nrmse"] == pytest.approx(100.0) and s["hfen"] == pytest.approx(100.0)
    assert abs(s["xsim"]) < 0.05


@pytest.mark.gpu
def test_cuda_mixed_precision_runs(tmp_path):
    s = train("unet", tmp_path / "g", steps=4, device="cuda", amp=True, **TINY)
    assert s["completed"] and s["card"]["hardware"]["device"] == "cuda" and s["loss"] == s["loss"]
