"""Dipole physics of the networks: operator vs the numerical core, adjointness, data terms and their gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qsmbids.deep.physics import (
    apply_dipole,
    dipole_half,
    linear_data_grad,
    linear_data_term,
    nonlinear_data_grad,
    nonlinear_data_term,
    phase_scale,
)
from qsmbids.qsm.fourier import forward_field
from qsmbids.qsm.phantoms import sphere, sphere_field

OBLIQUE = (0.3, -0.2, 0.93)
CASES = [  # shape, voxel size, B0 direction: even/odd sizes, anisotropic voxels, oblique B0
    ((16, 16, 16), (1.0, 1.0, 1.0), (0.0, 0.0, 1.0)),
    ((15, 12, 9), (1.0, 1.0, 1.0), OBLIQUE),
    ((12, 10, 14), (0.8, 1.0, 1.6), OBLIQUE),
]


@pytest.mark.parametrize(("shape", "vs", "b0"), CASES)
def test_apply_dipole_matches_core_forward_field_on_periodic_grid(shape, vs, b0):
    g = torch.Generator().manual_seed(0)
    chi = torch.randn(2, 1, *shape, generator=g, dtype=torch.float64)
    D = dipole_half(shape, vs, b0)
    ours = apply_dipole(chi, D)
    ref = forward_field(chi, vs, b0, pad_factor=1.0)  # full complex FFT, circular convolution
    assert ours.shape == chi.shape and ours.dtype == torch.float64
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)
    # float32 path agrees to float32 precision
    ours32 = apply_dipole(chi.float(), D)
    assert ours32.dtype == torch.float32
    assert torch.allclose(ours32.double(), ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize(("shape", "vs", "b0"), CASES)
def test_dipole_operator_is_self_adjoint(shape, vs, b0):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, *shape, generator=g, dtype=torch.float64)
    y = torch.randn(1, 1, *shape, generator=g, dtype=torch.float64)
    D = dipole_half(shape, vs, b0)
    lhs = (apply_dipole(x, D) * y).sum()
    rhs = (x * apply_dipole(y, D)).sum()
    assert abs(float(lhs - rhs)) < 1e-10 * float(x.norm() * y.norm())


def test_dipole_half_values_and_operator_properties():
    D = dipole_half((8, 8, 8))
    assert D.shape == (8, 8, 5) and D.dtype == torch.float32
    assert float(D[0, 0, 0]) == 0.0  # D(0) = 0
    assert float(D[1, 0, 0]) == pytest.approx(1 / 3)  # k ⟂ B0
    assert float(D[0, 0, 1]) == pytest.approx(-2 / 3)  # k ∥ B0
    assert float(D.min()) >= -2 / 3 - 1e-6 and float(D.max()) <= 1 / 3 + 1e-6
    # a uniform susceptibility produces no field (D(0) = 0)
    assert float(apply_dipole(torch.full((1, 1, 8, 8, 8), 0.3), D).abs().max()) < 1e-7


def test_apply_dipole_sphere_matches_closed_form_outside():
    shape, a, chi = (48, 48, 48), 5.0, 0.4
    r = np.sqrt(sum(c**2 for c in np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")))
    shell = (r > 7) & (r < 15)
    for b0 in ((0.0, 0.0, 1.0), (0.6, 0.0, 0.8)):
        x = torch.from_numpy(chi * sphere(shape, (1, 1, 1), a)).float()[None, None]
        ours = apply_dipole(x, dipole_half(shape, b0_dir=b0))[0, 0].numpy()
        ref = sphere_field(shape, (1, 1, 1), a, chi, b0_dir=b0)
        nrmse = np.linalg.norm(ours[shell] - ref[shell]) / np.linalg.norm(ref[shell])
        assert nrmse < 0.05, (b0, nrmse)


def test_apply_dipole_rejects_a_mismatched_kernel():
    with pytest.raises(ValueError, match="kernel"):
        apply_dipole(torch.zeros(1, 1, 8, 8, 8), dipole_half((8, 8, 10)))
    with pytest.raises(ValueError, match="kernel"):
        apply_dipole(torch.zeros(1, 1, 8, 8, 9), torch.zeros(8, 8, 4))  # full-grid size instead of half


def test_phase_scale():
    assert phase_scale() == pytest.approx(2 * math.pi * 42.5774785178 * 3.0 * 0.02, rel=1e-12)
    assert phase_scale() == pytest.approx(16.05, abs=0.01)
    assert phase_scale(7.0, 0.01) == pytest.approx(phase_scale(3.0, 0.02) * 7 / 6)
    with pytest.raises(ValueError, match="positive"):
        phase_scale(3.0, 0.0)


def _problem(shape=(10, 9, 8), b0=OBLIQUE, seed=2):
    g = torch.Generator().manual_seed(seed)
    chi = 0.05 * torch.randn(2, 1, *shape, generator=g, dtype=torch.float64)
    field = 0.05 * torch.randn(2, 1, *shape, generator=g, dtype=torch.float64)
    weight = torch.rand(2, 1, *shape, generator=g, dtype=torch.float64)
    return chi, field, weight, dipole_half(shape, b0_dir=b0)


def test_linear_data_gradient_equals_autograd():
    chi, field, weight, D = _problem()
    chi.requires_grad_(True)
    linear_data_term(chi, field, D, weight).sum().backward()
    assert torch.allclose(linear_data_grad(chi.detach(), field, D, weight), chi.grad, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("c", [1.0, phase_scale(), 60.0])  # small, default and strongly wrapping phase scales
def test_nonlinear_data_gradient_equals_autograd(c):
    chi, field, weight, D = _problem(seed=3)
    chi = 5 * chi  # residual phases of several radians: the nonlinear regime
    chi.requires_grad_(True)
    nonlinear_data_term(chi, field, D, c, weight).sum().backward()
    grad = nonlinear_data_grad(chi.detach(), field, D, c, weight)
    assert torch.allclose(grad, chi.grad, atol=1e-10, rtol=1e-8)
    # and it is a descent direction with the expected first-order decrease
    eps = 1e-6
    f0 = nonlinear_data_term(chi.detach(), field, D, c, weight).sum()
    f1 = nonlinear_data_term(chi.detach() - eps * grad, field, D, c, weight).sum()
    assert float(f0 - f1) == pytest.approx(eps * float((grad * grad).sum()), rel=1e-3)


def test_nonlinear_data_term_equals_complex_form_and_ignores_phase_wraps():
    chi, field, weight, D = _problem(seed=4)
    c = phase_scale()
    u = apply_dipole(chi, D)
    complex_form = 0.5 * (weight**2 * (torch.exp(1j * c * u) - torch.exp(1j * c * field)).abs() ** 2).flatten(1).sum(1)
    ours = nonlinear_data_term(chi, field, D, c, weight)
    assert ours.shape == (2,)
    assert torch.allclose(ours, complex_form, atol=1e-10, rtol=1e-10)
    wrapped = field + 2 * math.pi / c * torch.randint(-2, 3, field.shape, dtype=torch.float64)
    assert torch.allclose(nonlinear_data_term(chi, wrapped, D, c, weight), ours, atol=1e-9)
    assert torch.allclose(
        nonlinear_data_grad(chi, wrapped, D, c, weight), nonlinear_data_grad(chi, field, D, c, weight), atol=1e-9
    )


def test_nonlinear_term_linearises_to_c_squared_times_linear_term():
    chi, field, _, D = _problem(seed=5)
    c = phase_scale()
    small_chi, small_field = 1e-4 * chi, 1e-4 * field  # c·residual ~ 1e-4 rad
    lin = linear_data_term(small_chi, small_field, D)
    nonlin = nonlinear_data_term(small_chi, small_field, D, c)
    assert torch.allclose(nonlin, c * c * lin, rtol=1e-6)
