"""The five inversion networks: interface, sizes, padding, determinism, unrolled-iteration properties, losses."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from qsmbids.deep.models import FIELD_SCALE, MODELS, QSMModel, build_model, model_summary, pad_to_multiple
from qsmbids.deep.physics import (
    apply_dipole,
    dipole_half,
    linear_data_grad,
    nonlinear_data_grad,
    nonlinear_data_term,
    phase_scale,
)

TINY = {  # small configurations that keep every test fast
    "unet": {"width": 4, "depth": 2},
    "xqsm": {"width": 4, "depth": 1},
    "ir2qsm": {"width": 4, "depth": 1, "iterations": 2},
    "modl": {"width": 4, "depth": 1, "iterations": 2},
    "nsidl": {"width": 4, "depth": 1, "iterations": 2},
}
OBLIQUE = (0.3, -0.2, 0.93)


def _ball_mask(shape, radius_frac=0.4):
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in shape], indexing="ij")
    r = torch.sqrt(sum((g / (radius_frac * n)) ** 2 for g, n in zip(grids, shape)))
    return (r <= 1).float()[None, None]


def _inputs(shape, batch=1, seed=0, b0=(0.0, 0.0, 1.0)):
    """A smooth random χ (ppm), its field, the mask and the kernel."""
    g = torch.Generator().manual_seed(seed)
    chi = torch.randn(batch, 1, *[n // 2 for n in shape], generator=g)
    chi = 0.1 * torch.nn.functional.interpolate(chi, size=shape, mode="trilinear", align_corners=False)
    mask = _ball_mask(shape).expand(batch, 1, *shape).contiguous()
    chi = chi * mask
    D = dipole_half(shape, b0_dir=b0)
    return apply_dipole(chi, D), chi, mask, D


def _kernel_for(model, D):
    return D if model.kind == "unrolled" else None


# ------------------------------------------------------------------------------------------------ padding
@pytest.mark.parametrize("shape", [(13, 17, 11), (16, 16, 16), (1, 2, 31)])
@pytest.mark.parametrize("m", [1, 4, 16])
def test_pad_to_multiple_round_trip(shape, m):
    x = torch.randn(2, 1, *shape)
    xp, crop = pad_to_multiple(x, m)
    assert all(n % m == 0 and 0 <= n - s < m for n, s in zip(xp.shape[-3:], shape))
    assert torch.equal(xp[crop], x)
    assert float(xp.abs().sum()) == pytest.approx(float(x.abs().sum()), rel=1e-6)  # zeros only
    for n, s, sl in zip(xp.shape[-3:], shape, crop[1:]):
        before, after = sl.start, n - sl.stop
        assert before == (n - s) // 2 and after - before in (0, 1)  # centred
    with pytest.raises(ValueError, match="multiple"):
        pad_to_multiple(x, 0)


# ---------------------------------------------------------------------------------------- default models
def test_every_default_model_builds_is_small_and_runs_on_32_cubed():
    field, _, mask, D = _inputs((32, 32, 32))
    total_fp16_bytes = 0
    for name in MODELS:
        torch.manual_seed(0)
        model = build_model(name).eval()
        assert isinstance(model, QSMModel) and model.name == name
        assert model.kind == ("unrolled" if name in ("modl", "nsidl") else "feedforward")
        s = model_summary(model)
        assert set(s) == {"name", "kind", "parameters", "multiple", "config"}
        assert 50_000 < s["parameters"] <= 2_000_000, (name, s["parameters"])
        assert 2 * s["parameters"] <= 8 * 2**20  # ≤ 8 MB each in float16
        total_fp16_bytes += 2 * s["parameters"]
        assert 32 % model.multiple == 0
        json.dumps(s)  # the config is JSON-able, it is stored in the model card
        with torch.no_grad():
            out = model(field, mask, _kernel_for(model, D))
        assert out.shape == field.shape and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        assert float(out[mask == 0].abs().max()) == 0.0  # χ is zero outside the mask
        assert float(out.abs().max()) > 0.0
    assert total_fp16_bytes <= 60 * 2**20


def test_field_scale_and_registry():
    assert FIELD_SCALE == 10.0
    assert MODELS == ("unet", "xqsm", "ir2qsm", "modl", "nsidl")
    with pytest.raises(ValueError, match="unknown model 'qsmnet'"):
        build_model("qsmnet")
    with pytest.raises(ValueError, match="invalid configuration for model 'unet'"):
        build_model("unet", nonsense=3)


@pytest.mark.parametrize("name", MODELS)
def test_config_round_trip_rebuilds_the_same_architecture(name):
    torch.manual_seed(0)
    model = build_model(name, **TINY[name])
    config = json.loads(json.dumps(model.config))
    again = build_model(name, **config)
    assert again.config == model.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    again.load_state_dict(model.state_dict())  # a saved state dict loads into a rebuilt model


# --------------------------------------------------------------------------------- shapes and determinism
@pytest.mark.parametrize("name", MODELS)
def test_odd_sizes_through_pad_to_multiple(name):
    torch.manual_seed(0)
    model = build_model(name, **TINY[name]).eval()
    shape = (13, 10, 7)
    field, _, mask, _ = _inputs(shape)
    if model.multiple > 1:
        with pytest.raises(ValueError, match="multiple"):
            model(field, mask, dipole_half(shape))
    fp, crop = pad_to_multiple(field, model.multiple)
    mp, _ = pad_to_multiple(mask, model.multiple)
    with torch.no_grad():
        out = model(fp, mp, dipole_half(fp.shape))[crop]
    assert out.shape == field.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_eval_mode_is_deterministic_and_draws_no_random_numbers(name):
    torch.manual_seed(0)
    model = build_model(name, **TINY[name]).eval()
    field, _, mask, D = _inputs((16, 16, 16), batch=2)
    k = _kernel_for(model, D)
    with torch.no_grad():
        torch.manual_seed(1)
        before = torch.get_rng_state()
        a = model(field, mask, k)
        assert torch.equal(torch.get_rng_state(), before)  # inference draws no random numbers
        torch.manual_seed(2)
        b = model(field, mask, k)
    assert torch.equal(a, b)
    # the same seed gives the same initial weights
    torch.manual_seed(0)
    twin = build_model(name, **TINY[name]).eval()
    with torch.no_grad():
        assert torch.equal(twin(field, mask, k), a)
    # samples are independent in eval mode (no batch coupling: BatchNorm uses running statistics)
    with torch.no_grad():
        single = model(field[:1], mask[:1], k)
    assert torch.allclose(single, a[:1], atol=1e-6)


@pytest.mark.parametrize("name", ["unet", "xqsm", "ir2qsm"])
def test_receptive_field_bounds_the_influence_of_a_voxel_at_every_alignment(name):
    """Tiling relies on it: an output voxel depends on no input farther than (receptive_field − 1)/2 voxels."""
    torch.manual_seed(0)
    model = build_model(name, **TINY[name]).eval()
    radius = (model.receptive_field - 1) // 2
    m, n, c = model.multiple, 80, 40
    # one sample per alignment to the pooling grid; along x only (kernels are isotropic), thin in y and z
    x = torch.randn(m, 1, n, 8, 8).requires_grad_(True)
    out = model(x, torch.ones_like(x))
    sum(out[b, 0, c + b, 4, 4] for b in range(m)).backward()
    reaches = []
    for b in range(m):
        support = torch.nonzero(x.grad[b, 0].abs().sum(dim=(1, 2)) > 0).flatten()
        reaches += [c + b - int(support.min()), int(support.max()) - c - b]
    assert 0 < max(reaches) <= radius < c, (name, reaches, radius)
    if name in ("unet", "xqsm"):
        assert max(reaches) == radius  # the bound is tight for these architectures


# ----------------------------------------------------------------------------------------- unrolled models
def test_unrolled_models_need_a_matching_kernel():
    model = build_model("modl", **TINY["modl"])
    field, _, mask, _ = _inputs((16, 16, 16))
    with pytest.raises(ValueError, match="needs the dipole kernel"):
        model(field, mask)
    with pytest.raises(ValueError, match="kernel"):
        model(field, mask, dipole_half((16, 16, 32)))


@pytest.mark.parametrize("name", ["modl", "nsidl"])
def test_untrained_unrolled_model_is_projected_gradient_descent(name):
    """Zero-initialised prox head: the iterates are exactly PGD on the model's data term, which decreases."""
    torch.manual_seed(0)
    model = build_model(name, **{**TINY[name], "iterations": 5}).eval()
    field, _, mask, D = _inputs((16, 16, 16), b0=OBLIQUE)
    with torch.no_grad():
        outs = model.forward_all(field, mask, D)
    assert len(outs) == 6
    c = model.config.get("phase_scale")
    if name == "modl":
        step, grad = 4.0, (lambda x: linear_data_grad(x, field, D, mask))
    else:
        step, grad = 4.0 / c**2, (lambda x: nonlinear_data_grad(x, field, D, c, mask))
    x = (-step * grad(torch.zeros_like(field))) * mask
    residuals, objective = [], []
    for out in outs:
        assert torch.allclose(out, x, atol=1e-6, rtol=1e-4)
        residuals.append(float((mask * (apply_dipole(out, D) - field)).norm()))
        objective.append(float(nonlinear_data_term(out, field, D, phase_scale(), mask).sum()))
        x = (x - step * grad(x)) * mask
    assert all(b < a for a, b in itertools.pairwise(residuals)), residuals
    assert residuals[-1] < 0.5 * float((mask * field).norm())
    if name == "nsidl":
        assert all(b < a for a, b in itertools.pairwise(objective)), objective


def test_nsidl_model_gradient_matches_autograd_and_is_wrap_invariant():
    torch.manual_seed(0)
    model = build_model("nsidl", **TINY["nsidl"]).eval()
    field, chi, mask, D = _inputs((16, 16, 16), batch=2, b0=OBLIQUE)
    c = model.config["phase_scale"]
    assert c == pytest.approx(phase_scale(3.0, 0.02))
    x = (3 * chi).requires_grad_(True)
    nonlinear_data_term(x, field, D, c, mask).sum().backward()
    assert torch.allclose(model.data_grad(x.detach(), field, D, mask), x.grad, atol=1e-5, rtol=1e-4)
    # the model sees the field only through e^{icf}: a field wrapped by whole turns gives the same χ
    wrapped = field + (2 * math.pi / c) * torch.randint(-1, 2, field.shape).float()
    with torch.no_grad():
        assert torch.allclose(model(wrapped, mask, D), model(field, mask, D), atol=1e-5)
        # a voxel weight changes the data term (not ignored)
        weighted = model(field, mask, D, weight=0.5 * torch.ones_like(field))
    assert not torch.allclose(weighted, model(field, mask, D).detach(), atol=1e-6)


def test_unrolled_model_accepts_per_sample_kernels():
    model = build_model("modl", **TINY["modl"]).eval()
    field, _, mask, _ = _inputs((16, 16, 16), batch=2)
    Ds = torch.stack([dipole_half((16, 16, 16)), dipole_half((16, 16, 16), b0_dir=OBLIQUE)])[:, None]
    with torch.no_grad():
        both = model(field, mask, Ds)
        first = model(field[:1], mask[:1], Ds[0])
        second = model(field[1:], mask[1:], Ds[1])
    assert torch.allclose(both, torch.cat([first, second]), atol=1e-6)


# ---------------------------------------------------------------------------------------------- training
def test_ir2qsm_outputs_and_deep_supervision():
    torch.manual_seed(0)
    model = build_model("ir2qsm", **TINY["ir2qsm"]).eval()
    field, chi, mask, _ = _inputs((16, 16, 16))
    with torch.no_grad():
        outs = model.forward_all(field, mask)
    assert len(outs) == 3  # T = 2 iterates + the fused output
    assert torch.allclose(outs[-1], outs[-2], atol=1e-7)  # fusion starts as "take the last iterate"
    mse = [float((FIELD_SCALE * (o - chi) * mask).pow(2).sum() / mask.sum()) for o in outs]
    expected = mse[2] + 0.5 * mse[0] + 1.0 * mse[1]
    assert float(model.loss(outs, chi, mask, field)) == pytest.approx(expected, rel=1e-5)


def test_unet_loss_is_zero_at_the_truth_and_uses_the_model_loss():
    model = build_model("unet", **TINY["unet"])
    field, chi, mask, D = _inputs((16, 16, 16))
    assert float(model.loss([chi], chi, mask, field)) == 0.0
    shifted = chi + 0.01 * mask  # a constant offset: invisible to the gradient loss, seen by L1 and the model loss
    l1 = 0.1  # FIELD_SCALE × 0.01
    model_term = float(
        (FIELD_SCALE * (apply_dipole(shifted, D) - apply_dipole(chi, D))).abs().mul(mask).sum() / mask.sum()
    )
    interior = float(model.loss([shifted], chi, mask, field, D))
    assert interior > l1
    assert interior == pytest.approx(l1 + 0.5 * model_term + 0.1 * _edge_term(shifted, chi, mask), rel=1e-4)


def _edge_term(pred, target, mask):
    d = FIELD_SCALE * (pred - target)
    total = 0.0
    for dim in (-3, -2, -1):
        n = d.shape[dim]
        diff = (d.narrow(dim, 1, n - 1) - d.narrow(dim, 0, n - 1)).abs()
        both = mask.narrow(dim, 1, n - 1) * mask.narrow(dim, 0, n - 1)
        total += float((diff * both).sum() / both.sum())
    return total / 3


@pytest.mark.parametrize("name", MODELS)
def test_a_few_optimiser_steps_reduce_the_loss_on_a_fixed_batch(name):
    torch.manual_seed(0)
    model = build_model(name, **TINY[name]).train()
    field, chi, mask, D = _inputs((16, 16, 16), batch=2, seed=3)
    k = D if model.kind == "unrolled" else None
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = model.loss(model.forward_all(field, mask, k), chi, mask, field, k)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
