"""Shared fixtures: small analytic phantoms and a device switch for GPU variants."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no network from nipype's version check in tests

from qsmbids.qsm.phantoms import head_phantom


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Unit-test volumes are small: one intra-op thread is faster and avoids oversubscribing CI's two cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def head64():
    """64³ piecewise-smooth head phantom at 1 mm (seed 0)."""
    return head_phantom((64, 64, 64), (1.0, 1.0, 1.0), seed=0)


@pytest.fixture(scope="session")
def head48_aniso():
    """48×48×32 head phantom with anisotropic 1×1×1.5 mm voxels."""
    return head_phantom((48, 48, 32), (1.0, 1.0, 1.5), seed=1)


@pytest.fixture(scope="session")
def sim_bids(tmp_path_factory):
    """A ``qsmbids-sim --preset test`` dataset (3 mm, 3 echoes, 1 subject, ground truth); treat as read-only."""
    from qsmbids.cli.sim import main as sim_main

    out = tmp_path_factory.mktemp("sim") / "ds"
    assert sim_main([str(out), "--preset", "test", "--seed", "3"]) == 0
    return out


PHILIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "philips_dualecho" / "nifti_ref"


@pytest.fixture(scope="session")
def philips_bids(tmp_path_factory):
    """The real Philips 3 T whole head (../shared/data/philips_dualecho, BSD-2-Clause, dcm2niix's reference NIfTIs:
    80×80×53 at 3 mm, TE 2.3/4.6 ms) as a BIDS dataset, sidecars made from dcm2niix's. Phase is in rad (Philips
    rescale applied by dcm2niix); magnitude carries Philips float scaling."""
    import json
    import shutil

    src = PHILIPS / "2001_WIP_fcMRI_Field_Mapping_cl_{echo}{part}"
    if not Path(str(src).format(echo="e1", part="_ph") + ".nii.gz").is_file():
        pytest.skip(f"no real data at {PHILIPS}")
    ds = tmp_path_factory.mktemp("philips") / "ds"
    anat = ds / "sub-philips" / "anat"
    anat.mkdir(parents=True)
    (ds / "dataset_description.json").write_text(json.dumps({
        "Name": "philips_dualecho (dcm_qa_philips_enh series 2001, BSD-2-Clause)", "BIDSVersion": "1.10.0"}))
    for n in (1, 2):
        for part, suffix in (("mag", ""), ("phase", "_ph")):
            stem = str(src).format(echo=f"e{n}", part=suffix)
            side = json.loads(Path(stem + ".json").read_text())
            keep = {k: side[k] for k in ("EchoTime", "MagneticFieldStrength", "ImagingFrequency", "Manufacturer",
                                         "EchoNumber", "RepetitionTime", "FlipAngle") if k in side}
            if part == "phase":
                keep["Units"] = "rad"
            name = f"sub-philips_echo-{n}_part-{part}_MEGRE"
            shutil.copy(stem + ".nii.gz", anat / f"{name}.nii.gz")
            (anat / f"{name}.json").write_text(json.dumps(keep, indent=1))
    return ds
