"""Image checks before any work (qsmbids.utils.images): the voxels and the header geometry of tiny NIfTIs.

The CLI matrix (tests/cli/test_run_errors.py) runs each refusal through ``qsmbids``; these tests pin the edges:
which echo of a 4-D file is named, what is still phase, complex data, and where a header disagreement turns from a
warning into a refusal.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsmbids.utils.bids import InputError
from qsmbids.utils.images import as_part, check_data, check_geometry

RNG = np.random.default_rng(0)


def _nii(path: Path, data: np.ndarray, affine=None) -> str:
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine), path)
    return str(path)


def _phase(shape=(8, 8, 8)) -> np.ndarray:
    return RNG.uniform(-np.pi, np.pi, shape).astype(np.float32)


def test_constant_echo_of_a_4d_phase_is_named(tmp_path):
    data = _phase((8, 8, 8, 3))
    data[..., 1] = np.pi
    p = _nii(tmp_path / "p.nii.gz", data)
    with pytest.raises(InputError) as info:
        check_data([p], [])
    assert info.value.code == 65
    assert str(info.value) == f"{p}: echo 2: every voxel holds the same value (3.14159), which cannot be phase data"


def test_integer_vendor_phase_and_tiny_images_are_phase(tmp_path):
    """Integer phase (−4096..4095) has thousands of values; an image too small to tell (< 128 voxels) passes."""
    ints = np.round(_phase() * 4096 / np.pi).astype(np.int16)
    tiny = np.round(_phase((4, 4, 2)))  # 32 voxels, 7 values
    check_data([_nii(tmp_path / "a.nii.gz", ints), _nii(tmp_path / "b.nii.gz", tiny)], [])


def test_complex_phase_and_magnitude(tmp_path):
    ph, mag = _phase(), RNG.uniform(1, 2, (8, 8, 8))
    signal = (mag * np.exp(1j * ph)).astype(np.complex64)
    p, m = _nii(tmp_path / "p.nii.gz", signal), _nii(tmp_path / "m.nii.gz", signal)
    check_data([p], [m])
    loaded = np.asanyarray(nib.load(p).dataobj)
    assert np.allclose(as_part(loaded, is_phase=True), ph, atol=1e-5)
    assert np.allclose(as_part(loaded, is_phase=False), mag, rtol=1e-5)
    assert not np.allclose(as_part(loaded, is_phase=True), signal.real, atol=0.1)


def test_all_nan_magnitude_says_nan(tmp_path):
    m = _nii(tmp_path / "m.nii.gz", np.full((8, 8, 8), np.nan, np.float32))
    with pytest.raises(InputError, match=r"all voxels are NaN/Inf \(magnitude\)"):
        check_data([_nii(tmp_path / "p.nii.gz", _phase())], [m])


def _with_forms(path: Path, qform: np.ndarray, sform: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(_phase(), None)
    img.set_qform(qform, 1)
    img.set_sform(sform, 1)
    nib.save(img, path)
    return nib.load(path)


def _rot_z(deg: float) -> np.ndarray:
    t = np.radians(deg)
    return np.array([[np.cos(t), -np.sin(t), 0, 0], [np.sin(t), np.cos(t), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


@pytest.mark.parametrize(("deg", "refused"), [(0.5, False), (1.5, True)])
def test_qform_sform_rotation_tolerance(tmp_path, deg, refused):
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    img = _with_forms(tmp_path / "x.nii.gz", aff, _rot_z(deg) @ aff)
    if refused:
        with pytest.raises(InputError, match="B0 direction is ambiguous"):
            check_geometry("x.nii.gz", img)
    else:
        assert check_geometry("x.nii.gz", img) == []


def test_mirrored_sform_is_refused(tmp_path):
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    img = _with_forms(tmp_path / "x.nii.gz", aff, np.diag([-1.0, 1.0, 1.0, 1.0]) @ aff)
    with pytest.raises(InputError, match="one is mirrored"):
        check_geometry("x.nii.gz", img)


def test_qform_only_header_is_fine(tmp_path):
    """A header with only a qform (sform code 0) has nothing to disagree with."""
    img = nib.Nifti1Image(_phase(), None)
    img.set_qform(_rot_z(30) @ np.diag([1.0, 1.0, 2.0, 1.0]), 1)
    img.set_sform(None, 0)
    nib.save(img, tmp_path / "q.nii.gz")
    assert check_geometry("q.nii.gz", nib.load(tmp_path / "q.nii.gz")) == []
