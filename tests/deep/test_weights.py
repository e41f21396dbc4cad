"""qsmbids.deep.weights: save/load round trip, model cards, checksum verification and clear errors naming files.

No weights are needed in the repository for these tests: they save untrained (seeded) models to temporary folders.
The last test checks every *shipped* weight file (there may be none yet: then it is skipped).
"""

from __future__ import annotations

import json

import pytest
import torch

from qsmbids.deep import weights as W
from qsmbids.deep.models import build_model

SMALL = {"width": 4, "depth": 2}


def _model(name="unet", seed=0, **cfg):
    torch.manual_seed(seed)
    return build_model(name, **(cfg or SMALL)).eval()


def _inputs(n=16):
    g = torch.Generator().manual_seed(1)
    field = 0.05 * torch.randn((1, 1, n, n, n), generator=g)
    return field, torch.ones_like(field)


@pytest.fixture
def saved(tmp_path):
    model = _model()
    card = W.save_weights(model, tmp_path / "unet.pt", {"seed": 0, "steps": 0, "name": "ignored"})
    return model, tmp_path / "unet.pt", card


def test_round_trip_card_and_float16_storage(saved):
    model, pt, card = saved
    on_disk = json.loads(pt.with_suffix(".json").read_text())
    assert on_disk == card
    assert card["sha256"] == W.sha256_file(pt) and len(card["sha256"]) == 64
    assert card["name"] == "unet" and card["config"] == model.config and card["kind"] == "feedforward"
    assert card["parameters"] == sum(p.numel() for p in model.parameters()) and card["seed"] == 0
    assert card["dtype"] == "float16" and card["size_bytes"] == pt.stat().st_size
    loaded, card2 = W.load_model(pt, return_card=True)
    assert card2 == card and not loaded.training and next(loaded.parameters()).dtype == torch.float32
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2
        if torch.is_floating_point(a):  # exactly the float16 rounding of the original
            torch.testing.assert_close(b, a.half().float(), rtol=0, atol=0)
            assert (b - a).abs().max() <= 1e-3 * a.abs().max()
    f, m = _inputs()
    with torch.no_grad():
        ref, out = model(f, m), loaded(f, m)
    assert (out - ref).abs().max() < 1e-2 * ref.abs().max()


def test_float32_when_float16_would_lose_precision(tmp_path):
    model = _model()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = 1e6  # beyond float16's range
    card = W.save_weights(model, tmp_path / "m.pt", {})
    assert card["dtype"] == "float32"
    loaded = W.load_model(tmp_path / "m.pt")
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_names_resolve_in_the_weights_dir(saved, tmp_path, monkeypatch):
    _, pt, _ = saved
    W.save_weights(_model("modl", iterations=2, width=4, depth=2), tmp_path / "modl.pt", {})
    (tmp_path / "orphan.pt").write_bytes(b"no card")
    assert W.available_models(tmp_path) == ["modl", "unet"]
    assert W.resolve_weights("unet", tmp_path) == pt
    assert W.resolve_weights(str(pt)) == pt and W.resolve_weights("x/y.pt").name == "y.pt"
    monkeypatch.setattr(W, "WEIGHTS_DIR", tmp_path)
    assert W.available_models() == ["modl", "unet"]
    m = W.load_model("modl")
    assert m.name == "modl" and m.kind == "unrolled"


def test_missing_files_name_the_file(tmp_path):
    with pytest.raises(W.WeightsError, match=r"nope\.pt: weight file not found"):
        W.load_model(tmp_path / "nope.pt")
    with pytest.raises(W.WeightsError, match="unet.pt"):
        W.load_model("unet", weights_dir=tmp_path)
    W.save_weights(_model(), tmp_path / "a.pt", {})
    (tmp_path / "a.json").unlink()
    with pytest.raises(W.WeightsError, match=r"a\.json: model card not found"):
        W.load_model(tmp_path / "a.pt")


def test_corrupt_file_is_a_checksum_mismatch(saved):
    _, pt, _ = saved
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    with pytest.raises(W.WeightsError, match=rf"{pt.name}: checksum mismatch"):
        W.load_model(pt)


def test_unreadable_or_mismatched_weights_are_clear_errors(saved):
    _, pt, card = saved
    cp = pt.with_suffix(".json")
    cp.write_text("{not json")
    with pytest.raises(W.WeightsError, match="unet.json: unreadable model card"):
        W.load_model(pt)
    # a card describing another architecture (checksum right): the weights do not fit
    cp.write_text(json.dumps({**card, "config": {"width": 8, "depth": 2}}))
    with pytest.raises(W.WeightsError, match="unet.pt: the weights do not fit model 'unet'"):
        W.load_model(pt)
    cp.write_text(json.dumps({**card, "name": "resnet"}))
    with pytest.raises(W.WeightsError, match="unet.json: cannot build model 'resnet'"):
        W.load_model(pt)
    # a truncated file whose card was (wrongly) re-hashed: still refused, naming the file
    pt.write_bytes(pt.read_bytes()[:100])
    cp.write_text(json.dumps({**card, "sha256": W.sha256_file(pt)}))
    with pytest.raises(W.WeightsError, match="unet.pt: cannot read the weights"):
        W.load_model(pt)


def test_save_refuses_what_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match=r"\.pt"):
        W.save_weights(_model(), tmp_path / "m.pth", {})
    with pytest.raises(ValueError, match="QSMModel"):
        W.save_weights(torch.nn.Linear(2, 2), tmp_path / "m.pt", {})


@pytest.mark.parametrize("name", W.available_models() or [pytest.param(None, marks=pytest.mark.skip("no weights"))])
def test_shipped_weights_load_and_match_their_cards(name):
    model, card = W.load_model(name, return_card=True)
    assert card["sha256"] == W.sha256_file(W.resolve_weights(name))
    assert model.name == card["name"] == name and model.config == card["config"]
    assert sum(p.numel() for p in model.parameters()) == card["parameters"]
    n = 2 * model.multiple
    f, m = _inputs(max(n, 16))
    kernel = None
    if model.kind == "unrolled":
        from qsmbids.deep.physics import dipole_half

        kernel = dipole_half(f.shape[-3:])
    with torch.no_grad():
        assert torch.isfinite(model(f, m, kernel)).all()
