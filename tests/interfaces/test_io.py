"""LoadMegre (phase scaling, NaN handling, B0 direction, the load-stage record) and the NIfTI/JSON helpers of
qsmbids.interfaces.io, on tiny synthetic images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nipype.interfaces.base import isdefined

from qsmbids.interfaces.io import (
    LoadMegre,
    SidecarMetadata,
    echoes_first,
    echoes_last,
    load_nifti,
    read_meta,
    save_nifti,
    write_meta,
)
from qsmbids.qsm.phase import b0_angle, b0_direction_from_affine

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
SHAPE = (8, 8, 8)
META_KEYS = {"stage", "label", "method", "params", "runtime_s", "warnings", "info"}
LOAD_INFO_KEYS = {"subject", "session", "acquisition", "reconstruction", "run", "echo_times_s", "field_strength_t",
                  "b0_direction", "b0_angle_deg", "obliquity_deg", "voxel_size_mm", "shape", "n_echoes",
                  "phase_units", "has_magnitude", "sources"}


def nii(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return str(path)


def load(tmp_path: Path, phases: list[np.ndarray], *, mags: list[np.ndarray] | None = None, tes=None,
         affine: np.ndarray = AFFINE, **inputs):
    """Write the echoes as files and run LoadMegre in tmp_path/work; returns (outputs, phase array, meta)."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    phase_files = [nii(tmp_path / f"phase{i}.nii.gz", p, affine) for i, p in enumerate(phases)]
    mag_files = [nii(tmp_path / f"mag{i}.nii.gz", m, affine) for i, m in enumerate(mags or [])]
    n = sum(1 if p.ndim == 3 else p.shape[3] for p in phases)
    tes = tes if tes is not None else [0.005 * (i + 1) for i in range(n)]
    iface = LoadMegre(phase_files=phase_files, echo_times=tes, field_strength=3.0, **inputs)
    if mag_files:
        iface.inputs.magnitude_files = mag_files
    out = iface.run(cwd=str(work)).outputs
    img = nib.load(out.phase)
    return out, np.asanyarray(img.dataobj), read_meta(out.out_meta)


def angular_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.angle(np.exp(1j * (np.asarray(a, float) - np.asarray(b, float))))).max())


def in_wrapped_range(x: np.ndarray) -> bool:
    return bool(x.min() >= -math.pi - 1e-6 and x.max() < math.pi)


# ------------------------------------------------------------------------------------------------------------
# phase scaling
# ------------------------------------------------------------------------------------------------------------
def test_siemens_integer_phase(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(-4096, 4096, SHAPE).astype(np.int16)
    raw[0, 0, :5] = [-4096, 4095, 2048, -2048, 0]
    _out, phase, meta = load(tmp_path, [raw], phase_units="arbitrary")
    assert phase.shape == (*SHAPE, 1) and phase.dtype == np.float32
    np.testing.assert_allclose(phase[0, 0, :5, 0], [-math.pi, math.pi * 4095 / 4096, math.pi / 2, -math.pi / 2, 0],
                               atol=1e-6)
    np.testing.assert_allclose(phase[..., 0], raw * (math.pi / 4096), atol=1e-5)
    assert meta["info"]["phase_units"] == "integer" and meta["warnings"] == []


def test_arbitrary_float_phase_scaled_min_to_max(tmp_path):
    rng = np.random.default_rng(1)
    raw = rng.uniform(-0.0037, 0.0037, SHAPE).astype(np.float32)
    _out, phase, meta = load(tmp_path, [raw], phase_units="arbitrary")
    lo, hi = float(raw.min()), float(raw.max())
    expected = (raw.astype(float) - lo) / (hi - lo) * 2 * math.pi - math.pi
    assert angular_error(phase[..., 0], expected) < 1e-5
    assert in_wrapped_range(phase)
    assert phase.max() - phase.min() > 0.95 * 2 * math.pi
    assert meta["info"]["phase_units"] == "arbitrary" and meta["info"]["phase_units_sidecar"] == "arbitrary"


def test_radian_phase_kept(tmp_path):
    rng = np.random.default_rng(2)
    raw = rng.uniform(-math.pi, math.pi, SHAPE).astype(np.float32)
    _out, phase, meta = load(tmp_path, [raw], phase_units="rad")
    assert angular_error(phase[..., 0], raw) < 1e-6
    assert meta["info"]["phase_units"] == "rad" and meta["warnings"] == []


def test_unwrapped_radians_are_wrapped_again_with_warning(tmp_path):
    rng = np.random.default_rng(3)
    raw = rng.uniform(-10, 10, SHAPE).astype(np.float32)
    _out, phase, meta = load(tmp_path, [raw], phase_units="rad")
    assert in_wrapped_range(phase)
    assert angular_error(phase[..., 0], raw) < 1e-5  # same phase modulo 2π, not rescaled
    assert len(meta["warnings"]) == 1 and "wrapped again" in meta["warnings"][0]


def test_radian_phase_with_small_span_is_not_rescaled(tmp_path):
    rng = np.random.default_rng(4)
    raw = rng.uniform(-1.0, 1.0, SHAPE).astype(np.float32)
    _out, phase, _meta = load(tmp_path, [raw], phase_units="rad")
    np.testing.assert_allclose(phase[..., 0], raw, atol=1e-6)


def test_nan_phase_voxels_set_to_zero_with_warning(tmp_path):
    rng = np.random.default_rng(5)
    raw = rng.uniform(-math.pi, math.pi, SHAPE).astype(np.float32)
    raw[1, 2, 3], raw[4, 5, 6], raw[7, 7, 7] = np.nan, np.inf, -np.inf
    _out, phase, meta = load(tmp_path, [raw], phase_units="rad")
    assert np.isfinite(phase).all()
    assert phase[1, 2, 3, 0] == 0 and phase[4, 5, 6, 0] == 0 and phase[7, 7, 7, 0] == 0
    ok = np.isfinite(raw)
    assert angular_error(phase[..., 0][ok], raw[ok]) < 1e-6
    assert any(w.startswith("3 NaN/Inf phase voxels set to 0") for w in meta["warnings"]), meta["warnings"]


# ------------------------------------------------------------------------------------------------------------
# magnitude, echoes, B0 direction
# ------------------------------------------------------------------------------------------------------------
def test_without_magnitude_no_magnitude_output(tmp_path):
    out, _phase, meta = load(tmp_path, [np.random.default_rng(6).uniform(-3, 3, SHAPE).astype(np.float32)])
    assert not isdefined(out.magnitude)
    assert not (tmp_path / "work" / "magnitude.nii.gz").exists()
    assert meta["info"]["has_magnitude"] is False


def test_magnitude_stacked_echoes_last(tmp_path):
    rng = np.random.default_rng(7)
    phases = [rng.uniform(-3, 3, SHAPE).astype(np.float32) for _ in range(3)]
    mags = [np.full(SHAPE, float(i + 1), np.float32) for i in range(3)]
    mags[1][0, 0, 0] = np.nan
    mags[2][0, 0, 1] = -5.0
    out, phase, meta = load(tmp_path, phases, mags=mags)
    mag, img = load_nifti(out.magnitude)
    assert mag.shape == (*SHAPE, 3) and phase.shape == (*SHAPE, 3)
    assert img.get_data_dtype() == np.float32
    assert mag[1, 1, 1].tolist() == [1.0, 2.0, 3.0]
    assert mag[0, 0, 0, 1] == 0 and mag[0, 0, 1, 2] == 5.0
    np.testing.assert_allclose(img.affine, AFFINE)
    assert meta["info"]["has_magnitude"] is True and meta["info"]["n_echoes"] == 3


def test_one_4d_file_holds_all_echoes(tmp_path):
    raw = np.random.default_rng(8).uniform(-3, 3, (*SHAPE, 4)).astype(np.float32)
    _out, phase, meta = load(tmp_path, [raw], tes=[0.004, 0.008, 0.012, 0.016])
    assert phase.shape == (*SHAPE, 4) and angular_error(phase, raw) < 1e-6
    assert meta["info"]["n_echoes"] == 4 and meta["info"]["echo_times_s"] == [0.004, 0.008, 0.012, 0.016]


def test_echo_time_count_must_match_images(tmp_path):
    with pytest.raises(ValueError, match="2 echoes in the images, 3 echo times"):
        load(tmp_path, [np.ones(SHAPE, np.float32), -np.ones(SHAPE, np.float32)], tes=[0.005, 0.01, 0.015])


def oblique_affine() -> np.ndarray:
    def rot(axis: int, deg: float) -> np.ndarray:
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        return r

    aff = np.eye(4)
    aff[:3, :3] = rot(0, 20.0) @ rot(1, -12.0) @ np.diag([1.0, 1.2, 2.0])
    aff[:3, 3] = [-10.0, 20.0, 5.0]
    return aff


def test_b0_direction_auto_from_oblique_affine(tmp_path):
    aff = oblique_affine()
    out, _phase, meta = load(tmp_path, [np.random.default_rng(9).uniform(-3, 3, SHAPE).astype(np.float32)],
                            affine=aff)
    expected = b0_direction_from_affine(aff)
    assert expected[2] < 0.99  # the test is pointless for an axial affine
    info = meta["info"]
    assert info["b0_direction"] == pytest.approx(expected, abs=2e-6)
    assert info["b0_angle_deg"] == pytest.approx(b0_angle(expected), abs=1e-4)
    assert info["obliquity_deg"] == pytest.approx(
        math.degrees(float(np.max(nib.affines.obliquity(aff)))), abs=1e-4)
    assert info["obliquity_deg"] > 10
    assert info["voxel_size_mm"] == pytest.approx([1.0, 1.2, 2.0], abs=1e-5)
    assert meta["params"] == {"b0_direction": "auto"}
    np.testing.assert_allclose(nib.load(out.phase).affine, aff, atol=1e-5)


@pytest.mark.parametrize("vector, expected, warns", [
    ([0.0, 0.0, 2.0], [0.0, 0.0, 1.0], False),
    ([1.0, 0.0, 1.0], [math.sqrt(0.5), 0.0, math.sqrt(0.5)], False),
    ([3.0, 0.0, 0.3], [3.0 / math.sqrt(9.09), 0.0, 0.3 / math.sqrt(9.09)], True),
])
def test_b0_direction_explicit_is_normalised(tmp_path, vector, expected, warns):
    _out, _phase, meta = load(tmp_path, [np.random.default_rng(10).uniform(-3, 3, SHAPE).astype(np.float32)],
                            b0_direction=vector)
    assert meta["info"]["b0_direction"] == pytest.approx(expected, abs=1e-6)
    assert meta["params"]["b0_direction"] == pytest.approx(expected, abs=1e-6)
    assert meta["info"]["b0_angle_deg"] == pytest.approx(b0_angle(expected), abs=1e-4)
    assert any("strongly oblique" in w for w in meta["warnings"]) is warns


def test_load_meta_record(tmp_path):
    rng = np.random.default_rng(11)
    sources = ["bids:raw:sub-01/ses-2/anat/sub-01_ses-2_run-1_echo-1_part-phase_MEGRE.nii.gz"]
    out, _phase, meta = load(tmp_path, [rng.uniform(-3, 3, SHAPE).astype(np.float32) for _ in range(2)],
                            mags=[np.ones(SHAPE, np.float32)] * 2, tes=[0.004, 0.009],
                            entities={"subject": "01", "session": "2", "run": "1"}, sources=sources,
                            warnings=["MagneticFieldStrength missing; 3.000 T from ImagingFrequency"])
    assert set(meta) == META_KEYS
    assert meta["stage"] == "load" and meta["method"] is None and isinstance(meta["label"], str)
    assert isinstance(meta["runtime_s"], float) and 0 <= meta["runtime_s"] < 30
    assert LOAD_INFO_KEYS <= set(meta["info"])
    info = meta["info"]
    assert (info["subject"], info["session"], info["acquisition"], info["reconstruction"], info["run"]) == (
        "01", "2", None, None, "1")
    assert info["echo_times_s"] == [0.004, 0.009] and info["field_strength_t"] == 3.0
    assert info["voxel_size_mm"] == [2.0, 2.0, 2.0] and info["shape"] == [8, 8, 8] and info["n_echoes"] == 2
    assert info["b0_direction"] == [0.0, 0.0, 1.0] and info["b0_angle_deg"] == 0 and info["obliquity_deg"] == 0
    assert info["phase_units"] == "rad" and info["has_magnitude"] is True and info["sources"] == sources
    assert meta["warnings"] == ["MagneticFieldStrength missing; 3.000 T from ImagingFrequency"]
    assert Path(out.out_meta).name == "load_meta.json" and Path(out.out_meta).is_absolute()


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------
def test_save_nifti_keeps_grid_and_resets_scaling(tmp_path, monkeypatch):
    aff = oblique_affine()
    ref = nib.Nifti1Image(np.zeros(SHAPE, np.int16), aff)
    ref.header.set_slope_inter(2.0, 10.0)
    ref.set_qform(aff, 0)
    ref.set_sform(aff, 2)
    data = np.arange(np.prod(SHAPE), dtype=np.float64).reshape(SHAPE) / 7.0
    monkeypatch.chdir(tmp_path)
    path = save_nifti(data, ref, "out.nii.gz")
    assert path == str(tmp_path / "out.nii.gz")
    back, img = load_nifti(path)
    assert back.dtype == np.float32 and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(back, data.astype(np.float32))
    np.testing.assert_allclose(img.affine, aff, atol=1e-6)
    assert int(img.header["sform_code"]) == 2 and int(img.header["qform_code"]) == 1
    mask_path = save_nifti(data > 500, ref, tmp_path / "mask.nii.gz", dtype=np.uint8)
    m, mimg = load_nifti(mask_path, dtype=np.uint8)
    assert mimg.get_data_dtype() == np.uint8 and int(m.sum()) == int((data > 500).sum())


def test_echoes_first_and_last():
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    f = echoes_first(x)
    assert f.shape == (5, 2, 3, 4) and f[1, 0, 0, 0] == x[0, 0, 0, 1] and f.flags.c_contiguous
    np.testing.assert_array_equal(echoes_last(f), x)
    assert echoes_first(x[..., 0]).shape == (1, 2, 3, 4)


def test_write_meta_is_plain_json(tmp_path):
    path = write_meta(tmp_path / "m.json", stage="x", label="X", method="m",
                      params={"a": np.float32(0.1234567891), "b": (1, 2), "p": tmp_path},
                      runtime_s=np.float64(1.23456), warnings=[],
                      info={"nan": float("nan"), "n": np.int64(3), "ok": np.bool_(True)})
    doc = json.loads(Path(path).read_text())
    assert doc["params"] == {"a": 0.123457, "b": [1, 2], "p": str(tmp_path)}
    assert doc["runtime_s"] == 1.235
    assert doc["info"] == {"nan": None, "n": 3, "ok": True}


def test_sidecar_metadata_with_missing_stages(tmp_path):
    load_meta = write_meta(tmp_path / "load.json", stage="load", label="Load", method=None, params={},
                           runtime_s=0.1, warnings=[],
                           info={"echo_times_s": [0.004, 0.008], "field_strength_t": 7.0,
                                 "b0_direction": [0.0, 0.0, 1.0], "b0_angle_deg": 0.0})
    mask_meta = write_meta(tmp_path / "mask.json", stage="mask", label="Brain mask", method="quality",
                           params={"threshold": 0.5}, runtime_s=0.1, warnings=[], info={"volume_ml": 1.0})
    out = SidecarMetadata(meta_files=[load_meta, mask_meta]).run(cwd=str(tmp_path)).outputs
    assert out.mask_meta == {"Type": "Brain", "Description": "brain mask", "Method": "quality",
                             "Parameters": {"threshold": 0.5}}
    assert out.chimap_meta["MagneticFieldStrength"] == 7.0 and out.chimap_meta["EchoTime"] == [0.004, 0.008]
    assert out.chimap_meta["DipoleInversion"] == {} and out.chimap_meta["Reference"] == {"Value": None}
    assert out.swi_meta["EchoTime"] is None


def test_real_imag_become_phase_and_magnitude(tmp_path):
    rng = np.random.default_rng(2)
    mags = [rng.uniform(1, 3, SHAPE) for _ in range(2)]
    phases = [rng.uniform(-np.pi, np.pi, SHAPE) for _ in range(2)]
    z = [m * np.exp(1j * p) for m, p in zip(mags, phases, strict=True)]
    out, phase, meta = load(tmp_path, [c.real.astype(np.float32) for c in z],
                            mags=[c.imag.astype(np.float32) for c in z], representation="real-imag")
    assert angular_error(phase, np.stack(phases, -1)) < 1e-5
    mag = np.asanyarray(nib.load(out.magnitude).dataobj)
    assert np.allclose(mag, np.stack(mags, -1), rtol=1e-5)
    assert meta["info"]["representation"] == "real-imag" and meta["info"]["phase_units"] == "rad"
