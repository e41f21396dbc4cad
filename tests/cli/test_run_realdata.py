"""Real-data smoke run on ../shared/data/romeo_small (ROMEO.jl test data, MIT; Eckstein & Dymerska).

The data carry no echo times or field strength; as the data README says, the nominal TE = 4, 8, 12 ms and
B0 = 3 T of the source's own tests are written into the sidecars here. The files are 4-D (echoes on the last axis,
no ``echo-`` entity), which BIDS does not allow for MEGRE, so the run skips validation: this also exercises the 4-D
discovery path. No ground truth: the test asserts plausible, finite maps.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "romeo_small"


@pytest.fixture(scope="module")
def romeo_bids(tmp_path_factory):
    if not (DATA / "Phase.nii").is_file():
        pytest.skip(f"no real data at {DATA}")
    ds = tmp_path_factory.mktemp("romeo") / "ds"
    anat = ds / "sub-romeo" / "anat"
    anat.mkdir(parents=True)
    (ds / "dataset_description.json").write_text(json.dumps({"Name": "romeo_small", "BIDSVersion": "1.10.0"}))
    shutil.copy(DATA / "Mag.nii", anat / "sub-romeo_part-mag_MEGRE.nii")
    shutil.copy(DATA / "Phase.nii", anat / "sub-romeo_part-phase_MEGRE.nii")
    nominal = {"EchoTime": [0.004, 0.008, 0.012], "MagneticFieldStrength": 3.0,
               "Description": "nominal TEs and B0 from the ROMEO.jl tests, not stored in the data"}
    (anat / "sub-romeo_part-mag_MEGRE.json").write_text(json.dumps(nominal))
    (anat / "sub-romeo_part-phase_MEGRE.json").write_text(json.dumps({**nominal, "Units": "arbitrary"}))
    return ds


@pytest.mark.parametrize("bgremove", ["pdf"])
def test_romeo_small(romeo_bids, tmp_path, bgremove):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "qsmbids", str(romeo_bids), str(out), "participant", "-w",
                           str(tmp_path / "work"), "--skip-bids-validation", "--bgremove", bgremove, "--nprocs", "2",
                           "--omp-nthreads", "1"], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    anat = out / "sub-romeo" / "anat"
    mask = nib.load(anat / "sub-romeo_desc-brain_mask.nii.gz").get_fdata() > 0
    assert 0.2 < mask.mean() < 1.0
    chi = nib.load(anat / "sub-romeo_Chimap.nii.gz").get_fdata()
    assert chi.shape == (51, 51, 41) and np.isfinite(chi).all()
    inside = chi[chi != 0]
    assert inside.size > 0.5 * mask.sum()
    assert 0.005 < inside.std() < 0.2  # ppm: tissue contrast, not noise blow-up
    field = nib.load(anat / "sub-romeo_desc-total_fieldmap.nii.gz").get_fdata()
    assert np.isfinite(field).all() and np.abs(field[mask]).max() < 500  # Hz
    r2s = nib.load(anat / "sub-romeo_R2starmap.nii.gz").get_fdata()
    assert np.isfinite(r2s).all() and 5 < np.median(r2s[mask]) < 100  # 1/s
    assert (out / "sub-romeo.html").is_file()
    meta = json.loads((anat / "sub-romeo_Chimap.json").read_text())
    assert meta["EchoTime"] == [0.004, 0.008, 0.012]


def _mni_white_matter_in_run(anat: Path, ref: nib.Nifti1Image, tmp: Path) -> np.ndarray:
    """Deep white matter (ICBM 2009c WM probability ≥ 0.95 shipped in nilearn, eroded 2 voxels) brought into the
    run with the app's own MNI → run transform (its ROI step saves it)."""
    import ants
    import nilearn
    from scipy import ndimage

    base = Path(nilearn.__file__).parent / "datasets" / "data"
    wm = nib.load(next(base.glob("mni_icbm152_wm_tal_nlin_sym_09a*.nii.gz")))
    core = ndimage.binary_erosion(wm.get_fdata() >= 0.95, iterations=2).astype(np.float32)
    nib.save(nib.Nifti1Image(core, wm.affine), tmp / "wm.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(ref.shape[:3], np.float32), ref.affine), tmp / "ref.nii.gz")
    moving, fixed = ants.image_read(str(tmp / "wm.nii.gz")), ants.image_read(str(tmp / "ref.nii.gz"))
    xfm = next(anat.glob("*_from-MNI152NLin6Asym_to-MEGRE_mode-image_xfm.h5"))
    warped = ants.apply_transforms(fixed=fixed, moving=moving, transformlist=[str(xfm)], interpolator="linear")
    ants.image_write(warped, str(tmp / "wm_run.nii.gz"))
    return nib.load(tmp / "wm_run.nii.gz").get_fdata() > 0.5


@pytest.mark.slow
def test_philips_whole_head(philips_bids, tmp_path):
    """The real 3 T head with scalp, face and neck (../shared/data/philips_dualecho) at the defaults: a brain-sized
    mask that keeps off the scalp, finite maps and the globus pallidus above white matter in χ."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "qsmbids", str(philips_bids), str(out), "participant", "-w",
                           str(tmp_path / "work"), "--nprocs", "2", "--omp-nthreads", "2"],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    anat = out / "sub-philips" / "anat"
    img = nib.load(anat / "sub-philips_desc-brain_mask.nii.gz")
    mask = img.get_fdata() > 0
    vs = img.header.get_zooms()[:3]
    litres = mask.sum() * float(np.prod(vs)) / 1e6
    assert 1.1 <= litres <= 1.8, litres  # the old default: 2.8 L (the whole head)
    chi = nib.load(anat / "sub-philips_Chimap.nii.gz").get_fdata()
    assert np.isfinite(chi).all()
    stats = {row.split("\t")[1]: row.split("\t") for row in
             (anat / "sub-philips_seg-HarvardOxford_stats.tsv").read_text().splitlines()[1:]}
    header = (anat / "sub-philips_seg-HarvardOxford_stats.tsv").read_text().splitlines()[0].split("\t")
    mean = header.index("mean")
    pallidum = np.mean([float(stats[k][mean]) for k in ("Left_Pallidum", "Right_Pallidum")])
    wm = _mni_white_matter_in_run(anat, img, tmp_path) & (chi != 0)
    assert wm.sum() > 200
    assert pallidum > float(np.mean(chi[wm])) + 0.01, (pallidum, float(np.mean(chi[wm])))
    meta = json.loads((anat / "sub-philips_desc-brain_mask.json").read_text())
    assert meta["Method"] == "deepbet" and meta["Model"].startswith("deepbet")
