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


def _near_head_surface(bids: Path, mask: np.ndarray, vs) -> float:
    """Fraction of ``mask`` within 5 mm of the head's outer surface (head: Otsu on the first-echo magnitude,
    largest component, holes filled)."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    mag = nib.load(next(bids.rglob("*_echo-1_part-mag_MEGRE.nii*"))).get_fdata()
    head = ndimage.binary_closing(mag > threshold_otsu(mag), iterations=2)
    lab, _ = ndimage.label(head)
    head = ndimage.binary_fill_holes(lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    for ax in range(3):  # the mouth and sinuses open to the outside in 3-D: fill slice by slice too
        head = np.moveaxis(np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(head, ax, 0)]), 0, ax)
    depth = ndimage.distance_transform_edt(head, sampling=vs)
    return float(np.mean(depth[mask] <= 5.0))


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
    # a brain mask keeps off the scalp: at most 5 % of it within 5 mm of the head's outer surface (measured 0.6 %;
    # the old default 18 %)
    assert _near_head_surface(philips_bids, mask, vs) <= 0.05
    chi = nib.load(anat / "sub-philips_Chimap.nii.gz").get_fdata()
    assert np.isfinite(chi).all()
    # the report's plausibility checks: brain-sized mask, clean echo fit, pallidum above the ICBM deep white matter
    # brought in through the app's ROI registration
    plaus = json.loads((out / "sub-philips" / "figures" / "sub-philips_desc-plausibility_Chimap.json").read_text())
    assert {c["name"]: c["status"] for c in plaus["checks"]} == {
        "brain_volume": "ok", "echo_fit": "ok", "nuclei_above_white_matter": "ok"}, plaus
    regions = plaus["regions"]
    assert regions["white_matter"]["n_voxels"] > 200
    assert regions["pallidum"]["mean_ppm"] > regions["white_matter"]["mean_ppm"] + 0.01, regions
    meta = json.loads((anat / "sub-philips_desc-brain_mask.json").read_text())
    assert meta["Method"] == "deepbet" and meta["Model"].startswith("deepbet")
