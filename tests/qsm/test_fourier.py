"""Dipole physics against closed forms, and kernel properties (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import binary_dilation, binary_erosion

from qsmbids.qsm.fourier import (
    backward_difference,
    backward_difference_into,
    crop,
    dipole_kernel,
    divergence,
    fast_len,
    forward_difference,
    forward_difference_into,
    forward_field,
    gradient,
    gradient_kernels,
    laplacian,
    laplacian_kernel,
    pad,
    padded_shape,
    smv_kernel,
    sphere_kernel,
)
from qsmbids.qsm.phantoms import cylinder, cylinder_field, sphere, sphere_field


def _shell(indicator: np.ndarray, width: int) -> np.ndarray:
    """Voxels within ``width`` voxels of the boundary of an indicator (partial volume > 0.5)."""
    inside = indicator > 0.5
    return binary_dilation(inside, iterations=width) & ~binary_erosion(inside, iterations=width)


@pytest.mark.parametrize(
    ("b0", "voxel_size", "oversample"),
    [((0.0, 0.0, 1.0), (1.0, 1.0, 1.0), 1),
     ((0.0, math.sin(0.5), math.cos(0.5)), (1.0, 1.0, 1.0), 2),
     ((0.3, -0.2, 0.93), (0.8, 0.8, 1.2), 2)],
)
def test_sphere_field_matches_closed_form(b0, voxel_size, oversample):
    """Uniformly magnetised sphere: 0 inside, χ(a/r)³(3cos²θ−1)/3 outside; error < 2 % off a 2-voxel shell.

    For an oblique B0 the field of a *voxelised* sphere aliases (the continuous kernel is not aligned with the
    lattice): the forward model is then evaluated on a 2× finer grid and averaged over each voxel, as the
    simulator does. At native resolution the oblique error is bounded separately below.
    """
    shape = (64, 64, 64)
    radius, chi_val = 9.0, 0.1
    ind = sphere(shape, voxel_size, radius, n_sub=4)
    true = sphere_field(shape, voxel_size, radius, chi_val, b0)
    if oversample == 1:
        sim = forward_field(ind * chi_val, voxel_size, b0, pad_factor=2.0)
    else:
        fine_vs = tuple(v / oversample for v in voxel_size)
        fine = sphere(tuple(n * oversample for n in shape), fine_vs, radius, n_sub=2)
        sim_fine = forward_field(fine * chi_val, fine_vs, b0, pad_factor=1.5)
        o = oversample
        sim = sim_fine.reshape(shape[0], o, shape[1], o, shape[2], o).mean(axis=(1, 3, 5))
    keep = ~_shell(ind, 2)
    err = np.abs(sim - true)[keep].max() / np.abs(true).max()
    assert err < 0.02, f"max error {100 * err:.2f} % of the peak field"
    # inside the sphere the field is (nearly) zero: Lorentz-corrected kernel
    inner = binary_erosion(ind > 0.5, iterations=2)
    assert np.abs(sim[inner]).max() < 0.02 * (2 / 3) * chi_val


def test_sphere_oblique_native_resolution_aliasing_is_bounded():
    """Native-resolution oblique forward model of a voxelised sphere: measured 5.6 % max error, 2 % beyond 5 voxels."""
    shape, vs, b0 = (64, 64, 64), (1.0, 1.0, 1.0), (0.0, math.sin(0.5), math.cos(0.5))
    ind = sphere(shape, vs, 9.0, n_sub=4)
    sim = forward_field(ind * 0.1, vs, b0, pad_factor=1.5)
    true = sphere_field(shape, vs, 9.0, 0.1, b0)
    err = np.abs(sim - true) / np.abs(true).max()
    assert err[~_shell(ind, 2)].max() < 0.07
    assert err[~_shell(ind, 5)].max() < 0.025


@pytest.mark.parametrize("theta_deg", [0.0, 30.0, 54.7356, 90.0])
def test_infinite_cylinder_at_an_angle(theta_deg):
    """Infinite cylinder along z, B0 at θ: inside χ(3cos²θ−1)/6, outside χ/2·sin²θ(a/ρ)²cos2φ; error < 2 %.

    The cylinder is infinite along z (periodic, unpadded), padded ×4 in x and y to suppress the neighbours.
    """
    shape, vs, radius, chi_val = (48, 48, 16), (1.0, 1.0, 1.0), 5.0, 0.2
    t = math.radians(theta_deg)
    b0 = (math.sin(t), 0.0, math.cos(t))
    ind = cylinder(shape, vs, radius, (0, 0, 1), n_sub=4)
    big = (192, 192, 16)
    x = pad(torch.from_numpy(ind * chi_val), big)
    sim = crop(forward_field(x, vs, b0, pad_factor=1.0), shape).numpy()
    true = cylinder_field(shape, vs, radius, chi_val, (0, 0, 1), b0)
    keep = ~_shell(ind, 2)
    peak = max(abs(chi_val * (3 * math.cos(t) ** 2 - 1) / 6), chi_val / 2 * math.sin(t) ** 2)
    err = np.abs(sim - true)[keep].max() / peak
    assert err < 0.02, f"max error {100 * err:.2f} % of the peak field at θ={theta_deg}°"


def test_magic_angle_cylinder_has_no_inside_field():
    """At θ = 54.74° the field inside a cylinder vanishes; outside stays χ/2·sin²θ(a/ρ)²cos2φ (peak χ/3)."""
    shape, vs, chi_val = (32, 32, 8), (1.0, 1.0, 1.0), 0.3
    t = math.acos(1 / math.sqrt(3))
    ind = cylinder(shape, vs, 6.0, (0, 0, 1))
    x = pad(torch.from_numpy(ind * chi_val), (128, 128, 8))
    sim = crop(forward_field(x, vs, (math.sin(t), 0, math.cos(t)), pad_factor=1.0), shape).numpy()
    inner = binary_erosion(ind > 0.5, iterations=2)
    peak_outside = chi_val / 2 * math.sin(t) ** 2
    assert np.abs(sim[inner]).max() < 0.02 * peak_outside
    keep = ~_shell(ind, 2)
    true = cylinder_field(shape, vs, 6.0, chi_val, (0, 0, 1), (math.sin(t), 0, math.cos(t)))
    assert np.abs(sim[keep]).max() == pytest.approx(np.abs(true[keep]).max(), rel=0.05)


def test_dipole_kernel_values_and_range():
    D = dipole_kernel((16, 12, 10), (1.0, 1.5, 2.0), (0.2, 0.3, 0.9))
    assert D.dtype == torch.float32
    assert float(D[0, 0, 0]) == 0.0
    assert float(D.min()) >= -2 / 3 - 1e-6 and float(D.max()) <= 1 / 3 + 1e-6
    Dz = dipole_kernel((8, 8, 8), (1, 1, 1))
    assert float(Dz[0, 0, 3]) == pytest.approx(-2 / 3)
    assert float(Dz[3, 0, 0]) == pytest.approx(1 / 3)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(*[st.integers(4, 12)] * 3),
    vs=st.tuples(*[st.floats(0.3, 3.0)] * 3),
    b0=st.tuples(*[st.floats(-1, 1)] * 3).filter(lambda v: sum(x * x for x in v) > 0.01),
)
def test_kernel_symmetry_property(shape, vs, b0):
    """D is real and even: D(k) = D(−k); D(b) = D(−b); inverse FFT of D is real."""
    D = dipole_kernel(shape, vs, b0, dtype=torch.float64)
    flipped = torch.roll(torch.flip(D, dims=(0, 1, 2)), shifts=(1, 1, 1), dims=(0, 1, 2))
    assert torch.allclose(D, flipped, atol=1e-12)
    assert torch.allclose(D, dipole_kernel(shape, vs, tuple(-x for x in b0), dtype=torch.float64), atol=1e-12)
    d_img = torch.fft.ifftn(D)
    assert float(d_img.imag.abs().max()) < 1e-10


@settings(max_examples=25, deadline=None)
@given(
    a=st.floats(-5, 5),
    b=st.floats(-5, 5),
    seed=st.integers(0, 2**16),
    b0=st.tuples(*[st.floats(-1, 1)] * 3).filter(lambda v: sum(x * x for x in v) > 0.01),
)
def test_forward_model_linearity_property(a, b, seed, b0):
    rng = np.random.default_rng(seed)
    x1 = torch.from_numpy(rng.standard_normal((10, 9, 8)))
    x2 = torch.from_numpy(rng.standard_normal((10, 9, 8)))
    vs = (1.0, 1.1, 1.3)
    lhs = forward_field(a * x1 + b * x2, vs, b0)
    rhs = a * forward_field(x1, vs, b0) + b * forward_field(x2, vs, b0)
    assert lhs.dtype == torch.float64
    assert torch.allclose(lhs, rhs, atol=1e-9 * (1 + abs(a) + abs(b)))


@settings(max_examples=20, deadline=None)
@given(perm=st.permutations([0, 1, 2]), b0=st.tuples(*[st.floats(-1, 1)] * 3).filter(lambda v: sum(x * x for x in v) > 0.01))
def test_kernel_axis_permutation_property(perm, b0):
    """Permuting voxel axes together with B0 components and voxel sizes permutes the kernel."""
    shape, vs = (6, 8, 10), (0.7, 1.0, 1.6)
    D = dipole_kernel(shape, vs, b0, dtype=torch.float64)
    Dp = dipole_kernel(tuple(shape[i] for i in perm), tuple(vs[i] for i in perm), tuple(b0[i] for i in perm),
                       dtype=torch.float64)
    assert torch.allclose(D.permute(*perm), Dp, atol=1e-12)


def test_numpy_in_numpy_out_and_dtype():
    chi = np.zeros((8, 8, 8))
    chi[4, 4, 4] = 1
    out = forward_field(chi, (1, 1, 1))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == chi.shape
    t = forward_field(torch.from_numpy(chi.astype(np.float32)), (1, 1, 1))
    assert isinstance(t, torch.Tensor) and np.allclose(t.numpy(), out, atol=1e-7)


def test_padding_helpers():
    assert fast_len(97) == 100 and fast_len(128) == 128 and fast_len(1) == 1
    assert padded_shape((100, 90, 7), 1.5) == (150, 135, 12)
    assert all(s % 8 == 0 for s in padded_shape((37, 41, 23), 1.0, multiple=8))
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    p = pad(x, (7, 8, 9))
    assert p.shape == (2, 7, 8, 9) and float(p.sum()) == float(x.sum())
    assert torch.equal(crop(p, (3, 4, 5)), x)
    with pytest.raises(ValueError, match="shape"):
        pad(x, (2, 4, 5))
    with pytest.raises(ValueError, match="factor"):
        padded_shape((4, 4, 4), 0.5)


def test_gradient_divergence_adjoint_and_kernels():
    rng = np.random.default_rng(0)
    vs = (1.0, 0.5, 2.0)
    x = torch.from_numpy(rng.standard_normal((6, 7, 8)))
    g = torch.from_numpy(rng.standard_normal((3, 6, 7, 8)))
    # <∇x, g> = <x, -div g>
    assert float((gradient(x, vs) * g).sum()) == pytest.approx(float((x * -divergence(g, vs)).sum()), rel=1e-10)
    # k-space symbols agree with the image-space operators
    G = gradient_kernels(x.shape, vs, dtype=torch.complex128)
    for i in range(3):
        via_k = torch.fft.ifftn(torch.fft.fftn(x) * G[i]).real
        assert torch.allclose(via_k, gradient(x, vs)[i], atol=1e-10)
    L = laplacian_kernel(x.shape, vs, dtype=torch.float64)
    assert torch.allclose(torch.fft.ifftn(torch.fft.fftn(x) * L).real, laplacian(x, vs), atol=1e-10)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_differences_in_place_and_adjoint(axis):
    """The solvers' allocation-free differences equal the plain ones; −backward is the adjoint of forward."""
    rng = np.random.default_rng(axis)
    x = torch.from_numpy(rng.standard_normal((2, 5, 6, 7)))
    y = torch.from_numpy(rng.standard_normal((2, 5, 6, 7)))
    assert torch.equal(forward_difference_into(x, axis, torch.empty_like(x)), forward_difference(x, axis))
    assert torch.equal(backward_difference_into(x, axis, torch.empty_like(x)), backward_difference(x, axis))
    fwd, bwd = forward_difference(x, axis, 0.7), backward_difference(y, axis, 0.7)
    assert float((fwd * y).sum()) == pytest.approx(-float((x * bwd).sum()), rel=1e-10)
    assert torch.allclose(gradient(x, (0.7, 0.7, 0.7))[:, axis], fwd, atol=0)


def test_smv_kernel_normalised_and_radius():
    S = smv_kernel((32, 32, 32), (1, 1, 1), 5.0)
    assert float(S[0, 0, 0]) == pytest.approx(1.0, abs=1e-6)
    s = sphere_kernel((32, 32, 32), (1, 1, 1), 5.0)
    n = int((s > 0).sum())
    assert abs(n - 4 / 3 * math.pi * 125) / (4 / 3 * math.pi * 125) < 0.05
    # anisotropic voxels: fewer voxels along the coarse axis
    s2 = sphere_kernel((32, 32, 32), (1, 1, 2), 5.0)
    assert int((s2[0, 0] > 0).sum()) == 5  # z offsets 0, ±2, ±4 mm
    with pytest.raises(ValueError, match="radius"):
        smv_kernel((8, 8, 8), (1, 1, 1), 0.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"voxel_size": (1, 0, 1)}, "voxel_size"), ({"voxel_size": (1, -1, 1)}, "voxel_size"),
     ({"voxel_size": (1, 1)}, "voxel_size"), ({"b0_dir": (0, 0, 0)}, "b0_dir"),
     ({"b0_dir": (0, float("nan"), 1)}, "b0_dir")],
)
def test_bad_geometry_raises(kwargs, match):
    args = {"voxel_size": (1, 1, 1), "b0_dir": (0, 0, 1)} | kwargs
    with pytest.raises(ValueError, match=match):
        forward_field(np.zeros((4, 4, 4)), args["voxel_size"], args["b0_dir"])


def test_complex_chi_refused():
    with pytest.raises(ValueError, match="chi"):
        forward_field(np.zeros((4, 4, 4), dtype=np.complex64), (1, 1, 1))


@pytest.mark.gpu
def test_forward_field_cpu_cuda_agree():
    ind = sphere((48, 48, 48), (1, 1, 1), 8.0) * 0.1
    cpu = forward_field(torch.from_numpy(ind), (1, 1, 1), (0.1, 0.2, 0.97))
    gpu = forward_field(torch.from_numpy(ind).cuda(), (1, 1, 1), (0.1, 0.2, 0.97))
    assert gpu.device.type == "cuda"
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-4 * float(cpu.abs().max()))
