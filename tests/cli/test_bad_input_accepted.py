"""Unusual inputs that qsmbids accepts (the other half of the troubleshooting matrix of test_run_errors.py).

Decisions, as the README documents them:

* integer vendor phase (e.g. Siemens −4096..4095, sidecar ``Units: arbitrary``) is scaled to radians;
* phase that is already unwrapped (radians beyond ±π) is wrapped again, with a warning in the report;
* a single echo is processed (no R2*/T2*, a warning) unless a method needs several echoes (exit 65, see the matrix);
* a slab more than 45° oblique to B0 is processed with B0 taken from the affine, with a warning in the report;
* a few NaN/Inf phase voxels are set to 0 (outside the mask), with a warning; mostly NaN phase is refused;
* all echoes in one 4-D file per part (``EchoTime`` as a list) is as good as one 3-D file per echo;
* complex-valued phase and magnitude files (complex64/complex128) are taken as what they are: the angle of the phase
  file, the modulus of the magnitude file (never the real part), with a warning;
* small header inconsistencies that leave voxel size and B0 direction clear (qform and sform a few mm apart, a shear
  below 1°) are warnings; larger ones are refused (see the matrix);
* images that are symlinks into a store outside the dataset (DataLad/git-annex, ``cp -s``) are read through the
  links, and ``Sources`` name the paths inside the dataset.

The fast tests check discovery and the load stage (where units and geometry are decided); the slow ones run the
whole participant level on each variant.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsmbids.interfaces.io import LoadMegre, read_meta
from qsmbids.utils.bids import collect_runs

ANAT = Path("sub-01") / "anat"


def _echo(ds: Path, echo: int, part: str) -> Path:
    return ds / ANAT / f"sub-01_echo-{echo}_part-{part}_MEGRE.nii.gz"


def _edit_json(path: Path, **changes) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def _phase_files(ds: Path) -> list[Path]:
    return sorted((ds / ANAT).glob("*_part-phase_MEGRE.nii.gz"))


def _rewrite(path: Path, data: np.ndarray, affine=None) -> None:
    img = nib.load(path)
    out = nib.Nifti1Image(data, img.affine if affine is None else affine)
    if np.issubdtype(data.dtype, np.integer):
        out.header.set_data_dtype(data.dtype)
    nib.save(out, path)


def integer_phase(ds: Path, units: str = "arbitrary") -> None:
    """Siemens-style int16 phase: round(φ·4096/π) in −4096..4095."""
    for p in _phase_files(ds):
        ph = np.asanyarray(nib.load(p).dataobj).astype(np.float64)
        _rewrite(p, np.clip(np.round(ph * 4096 / np.pi), -4096, 4095).astype(np.int16))
        _edit_json(p.with_name(p.name.replace(".nii.gz", ".json")), Units=units)


def unwrapped_phase(ds: Path) -> None:
    """Phase as an unwrapping tool would leave it: the wrapped phase plus 2π steps along x (beyond ±π)."""
    for p in _phase_files(ds):
        ph = np.asanyarray(nib.load(p).dataobj).astype(np.float32)
        steps = (np.arange(ph.shape[0]) // 20).astype(np.float32)[:, None, None]
        _rewrite(p, ph + 2 * np.pi * steps)


def single_echo(ds: Path) -> None:
    for e in (2, 3):
        for part in ("mag", "phase"):
            _echo(ds, e, part).unlink()
            _echo(ds, e, part).with_suffix("").with_suffix(".json").unlink()


OBLIQUE_DEG = 50.0


def oblique(ds: Path, degrees: float = OBLIQUE_DEG) -> None:
    """Tilt every image's grid by ``degrees`` about x (the data stay; the affine says how the slab lies), the
    simulator's ground truth included (it lives on the acquisition grid)."""
    t = math.radians(degrees)
    rot = np.array([[1, 0, 0, 0], [0, math.cos(t), -math.sin(t), 0], [0, math.sin(t), math.cos(t), 0], [0, 0, 0, 1]])
    for p in sorted(ds.rglob("*.nii.gz")):
        img = nib.load(p)
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), rot @ img.affine), p)


def some_nan_phase(ds: Path) -> None:
    p = _echo(ds, 2, "phase")
    ph = np.asanyarray(nib.load(p).dataobj).astype(np.float32)
    ph[:4] = np.nan  # a few border slices, far from the brain
    ph[-1] = np.inf
    _rewrite(p, ph)


def four_d_files(ds: Path) -> None:
    """One 4-D file per part with EchoTime as a list."""
    for part in ("mag", "phase"):
        files = [_echo(ds, e, part) for e in (1, 2, 3)]
        sidecars = [f.with_suffix("").with_suffix(".json") for f in files]
        img = nib.load(files[0])
        data = np.stack([np.asanyarray(nib.load(f).dataobj) for f in files], -1)
        meta = json.loads(sidecars[0].read_text())
        meta["EchoTime"] = [json.loads(s.read_text())["EchoTime"] for s in sidecars]
        meta.pop("EchoNumber", None)
        for f, s in zip(files, sidecars, strict=True):
            f.unlink()
            s.unlink()
        nib.save(nib.Nifti1Image(data, img.affine), ds / ANAT / f"sub-01_part-{part}_MEGRE.nii.gz")
        (ds / ANAT / f"sub-01_part-{part}_MEGRE.json").write_text(json.dumps(meta))


@pytest.fixture
def dataset(sim_bids, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(sim_bids, ds)
    return ds


def _load(run, cwd: Path) -> tuple[np.ndarray, dict]:
    """Run the load stage (units, geometry, warnings) on a discovered run."""
    cwd.mkdir(parents=True, exist_ok=True)
    res = LoadMegre(phase_files=list(run.phase), magnitude_files=list(run.magnitude),
                    echo_times=list(run.echo_times), field_strength=run.field_strength,
                    phase_units=run.phase_units or "", warnings=list(run.warnings),
                    entities=dict(run.entities)).run(cwd=str(cwd))
    return np.asanyarray(nib.load(res.outputs.phase).dataobj), read_meta(res.outputs.out_meta)


def _wrapped(sim_bids: Path) -> np.ndarray:
    return np.stack([np.asanyarray(nib.load(p).dataobj) for p in _phase_files(sim_bids)], -1).astype(np.float64)


def _angle_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.angle(np.exp(1j * (a - b)))).max())


@pytest.mark.parametrize("units", ["arbitrary", "rad"])
def test_integer_vendor_phase_is_scaled(dataset, sim_bids, tmp_path, units):
    integer_phase(dataset, units)
    (run,) = collect_runs(dataset)
    assert nib.load(run.phase[0]).get_data_dtype() == np.int16
    phase, meta = _load(run, tmp_path / "load")
    assert meta["info"]["phase_units"] == "integer"
    assert _angle_error(phase, _wrapped(sim_bids)) <= 1.01 * np.pi / 4096  # rounding only
    assert phase.min() >= -np.pi and phase.max() < np.pi
    wrong_units = [w for w in meta["warnings"] if "sidecar Units is 'rad'" in w]
    assert len(wrong_units) == (1 if units == "rad" else 0)


def test_unwrapped_phase_is_wrapped_with_a_warning(dataset, sim_bids, tmp_path):
    unwrapped_phase(dataset)
    (run,) = collect_runs(dataset)
    raw = np.asanyarray(nib.load(run.phase[0]).dataobj)
    assert raw.max() - raw.min() > 4 * np.pi
    phase, meta = _load(run, tmp_path / "load")
    assert any("treated as unwrapped radians and wrapped again" in w for w in meta["warnings"])
    assert _angle_error(phase, _wrapped(sim_bids)) < 1e-4


def test_single_echo_is_accepted_with_default_methods(dataset, tmp_path):
    single_echo(dataset)
    (run,) = collect_runs(dataset)
    assert run.n_echoes == 1 and len(run.magnitude) == 1
    phase, meta = _load(run, tmp_path / "load")
    assert phase.shape[3] == 1 and meta["info"]["n_echoes"] == 1


def test_oblique_slab_is_accepted_with_a_warning(dataset, tmp_path):
    oblique(dataset)
    (run,) = collect_runs(dataset)
    _, meta = _load(run, tmp_path / "load")
    info = meta["info"]
    assert info["b0_angle_deg"] == pytest.approx(OBLIQUE_DEG, abs=0.01)
    assert info["obliquity_deg"] == pytest.approx(90 - OBLIQUE_DEG, abs=0.01)  # nibabel: to the nearest axis
    assert np.allclose(info["b0_direction"], [0, math.sin(math.radians(OBLIQUE_DEG)),
                                              math.cos(math.radians(OBLIQUE_DEG))], atol=1e-4)
    assert any("B0 is 50° from the slice axis" in w for w in meta["warnings"])


def test_a_few_nan_phase_voxels_are_zeroed_with_a_warning(dataset, tmp_path):
    some_nan_phase(dataset)
    (run,) = collect_runs(dataset)
    phase, meta = _load(run, tmp_path / "load")
    assert np.isfinite(phase).all()
    n_bad = 4 * phase.shape[1] * phase.shape[2] + phase.shape[1] * phase.shape[2]
    assert any(w.startswith(f"{n_bad} NaN/Inf phase voxels set to 0") for w in meta["warnings"])


def test_four_d_files_equal_per_echo_files(dataset, sim_bids, tmp_path):
    four_d_files(dataset)
    (run,) = collect_runs(dataset)
    (ref,) = collect_runs(sim_bids)
    assert len(run.phase) == len(run.magnitude) == 1 and run.echo_times == ref.echo_times
    a, _ = _load(run, tmp_path / "a")
    b, _ = _load(ref, tmp_path / "b")
    assert np.array_equal(a, b)


def complex_images(ds: Path, dtype=np.complex64) -> None:
    """Phase and magnitude files both holding the complex signal m·e^{iφ} (as some reconstructions export it)."""
    for e in (1, 2, 3):
        mag = np.asanyarray(nib.load(_echo(ds, e, "mag")).dataobj).astype(np.float64)
        ph = np.asanyarray(nib.load(_echo(ds, e, "phase")).dataobj).astype(np.float64)
        signal = (mag * np.exp(1j * ph)).astype(dtype)
        for part in ("mag", "phase"):
            img = nib.load(_echo(ds, e, part))
            nib.save(nib.Nifti1Image(signal, img.affine), _echo(ds, e, part))


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_images_are_taken_as_angle_and_modulus(dataset, sim_bids, tmp_path, dtype):
    complex_images(dataset, dtype)
    (run,) = collect_runs(dataset)
    assert nib.load(run.phase[0]).get_data_dtype() == dtype
    notes = [w for w in run.warnings if "complex-valued" in w]
    assert sorted(notes) == [
        f"sub-01_echo-1_part-mag_MEGRE.nii.gz (+2 more): complex-valued ({np.dtype(dtype).name}); its modulus as the "
        "magnitude is used",
        f"sub-01_echo-1_part-phase_MEGRE.nii.gz (+2 more): complex-valued ({np.dtype(dtype).name}); its angle as the "
        "phase is used"]
    phase, meta = _load(run, tmp_path / "load")
    assert meta["info"]["phase_units"] == "rad"
    assert _angle_error(phase, _wrapped(sim_bids)) < 1e-4
    mag = np.asanyarray(nib.load(tmp_path / "load" / "magnitude.nii").dataobj)
    (ref,) = collect_runs(sim_bids)
    _load(ref, tmp_path / "ref")
    ref_mag = np.asanyarray(nib.load(tmp_path / "ref" / "magnitude.nii").dataobj)
    assert np.allclose(mag, ref_mag, rtol=1e-5, atol=1e-5 * float(ref_mag.max()))
    assert any("complex-valued" in w for w in meta["warnings"])  # reaches the report


def _geometry(path: Path, *, sform: np.ndarray) -> None:
    img = nib.load(path)
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), None, img.header)
    out.set_qform(img.affine, 1)
    out.set_sform(sform, 1)
    nib.save(out, path)


def _shifted(aff: np.ndarray) -> np.ndarray:
    return np.array([[1, 0, 0, 3.0], [0, 1, 0, 2.0], [0, 0, 1, 0], [0, 0, 0, 1]]) @ aff


def _sheared(aff: np.ndarray) -> np.ndarray:
    shear = np.eye(4)
    shear[0, 1] = np.tan(np.radians(0.5))
    return aff @ shear


def _rescaled(aff: np.ndarray) -> np.ndarray:
    return aff @ np.diag([1.005, 1.005, 1.005, 1.0])


@pytest.mark.parametrize(("sform", "needle"), [
    (_shifted, "the qform and sform place the image 3.6 mm apart; the sform is used"),
    (_sheared, "the affine is sheared by 0.50°; treated as orthogonal"),
    (_rescaled, "differ by 0.50 %; pixdim used"),
])
def test_small_header_inconsistencies_are_warnings(dataset, sform, needle):
    """Header disagreements that leave the voxel size and the B0 direction clear: one warning per run (not one per
    file), naming the first file and the count of the others; beyond 1 mm/1°/1 % it is refused (test_run_errors.py)."""
    for p in sorted((dataset / ANAT).glob("*_MEGRE.nii.gz")):
        _geometry(p, sform=sform(nib.load(p).affine))
    (run,) = collect_runs(dataset)
    hits = [w for w in run.warnings if needle in w]
    assert len(hits) == 1 and hits[0].startswith("sub-01_echo-1_part-phase_MEGRE.nii.gz (+5 more): "), run.warnings


def symlinked_images(ds: Path, store: Path) -> None:
    """Every NIfTI of the dataset moved to ``store`` (outside it) and replaced by an absolute symlink, as git-annex
    and ``cp -s`` leave them."""
    store.mkdir()
    for p in sorted(ds.rglob("*.nii.gz")):
        target = store / p.relative_to(ds).as_posix().replace("/", "__")
        shutil.move(p, target)
        p.symlink_to(target)


def test_symlinked_images_into_an_outside_store(dataset, sim_bids, tmp_path, capsys):
    from qsmbids.cli.run import _main, _run_dict

    store = tmp_path / "annex" / "objects"
    store.parent.mkdir()
    symlinked_images(dataset, store)
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    (run,) = collect_runs(dataset)
    assert all(Path(p).is_symlink() and Path(p).parent.parent.parent == dataset for p in run.source_files)
    sources = _run_dict(run, dataset)["sources"]
    assert sources == _run_dict(collect_runs(sim_bids)[0], sim_bids)["sources"]
    assert sources[0] == "bids:raw:sub-01/anat/sub-01_echo-1_part-phase_MEGRE.nii.gz"
    # the whole pre-flight (voxel checks included) and the workflow build
    out = tmp_path / "out"
    rc = _main([str(dataset), str(out), "participant", "-w", str(tmp_path / "w"), "--skip-bids-validation",
                "--boilerplate-only"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert (out / "logs" / "CITATION.md").is_file()
    assert {p.name: p.read_bytes() for p in store.iterdir()} == before
    assert all(p.is_symlink() for p in dataset.rglob("*.nii.gz"))


# ------------------------------------------------------------------------------------------------------------
# the whole participant level on each accepted variant
# ------------------------------------------------------------------------------------------------------------
VARIANTS = {"integer-phase": integer_phase, "unwrapped-phase": unwrapped_phase, "single-echo": single_echo,
            "oblique-50": oblique}


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_accepted_variant_runs_end_to_end(variant, dataset, tmp_path):
    VARIANTS[variant](dataset)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "qsmbids", str(dataset), out, "participant", "-w", tmp_path / "w",
                           "--skip-bids-validation", "--no-roi", "--nprocs", "2", "--omp-nthreads", "1"],
                          capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.strip() == ""
    chi = nib.load(out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").get_fdata()
    mask = nib.load(out / "sub-01" / "anat" / "sub-01_desc-brain_mask.nii.gz").get_fdata() > 0
    assert np.isfinite(chi).all() and mask.sum() > 1000 and np.abs(chi[mask]).max() > 0.01
    html = (out / "sub-01.html").read_text()
    expected = {"integer-phase": "integer", "unwrapped-phase": "wrapped again", "single-echo": "single echo",
                "oblique-50": "B0 is 50°"}[variant]
    assert expected in html
    if variant == "single-echo":
        assert not list(out.glob("sub-01/anat/*R2starmap*"))
        assert "[sub-01] warning: a single echo: no R2*/T2* maps" in proc.stdout
