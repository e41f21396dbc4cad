"""DeepInversion: runs a (temporary, untrained) network on NIfTI inputs, writes χ and the stage record; device and
threads stay out of the node hash; a missing weight file is an error naming it."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from qsmbids.deep.infer import infer
from qsmbids.deep.models import build_model
from qsmbids.deep.weights import save_weights
from qsmbids.interfaces.deep import DeepInversion
from qsmbids.interfaces.io import write_meta
from qsmbids.qsm.fourier import forward_field
from qsmbids.qsm.phantoms import head_phantom

VS = (1.0, 1.0, 1.5)
B0 = (0.0, 0.2, 0.98)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("deep")
    ph = head_phantom((28, 32, 20), VS, seed=2)
    field = (forward_field(ph.chi, VS, B0) * ph.mask).astype(np.float32)
    affine = np.diag([*VS, 1.0])
    nib.Nifti1Image(field, affine).to_filename(root / "field.nii.gz")
    nib.Nifti1Image(ph.mask.astype(np.uint8), affine).to_filename(root / "mask.nii.gz")
    meta = write_meta(root / "load_meta.json", stage="load", label="Load", method=None, params={}, runtime_s=0.0,
                      warnings=[], info={"voxel_size_mm": list(VS), "b0_direction": list(B0),
                                         "echo_times_s": [0.01, 0.02], "field_strength_t": 3.0})
    torch.manual_seed(0)
    card = save_weights(build_model("unet", width=4, depth=2), root / "weights" / "unet.pt", {"seed": 0})
    return {"root": root, "field": field, "mask": ph.mask, "meta": meta, "card": card,
            "weights_dir": str(root / "weights")}


def _iface(inputs, **kw):
    return DeepInversion(in_meta=inputs["meta"], field=str(inputs["root"] / "field.nii.gz"),
                         mask=str(inputs["root"] / "mask.nii.gz"), weights_dir=inputs["weights_dir"], **kw)


def test_writes_chi_and_the_stage_record(inputs, tmp_path):
    res = _iface(inputs, method="unet", num_threads=1, device="cpu").run(cwd=str(tmp_path)).outputs
    img = nib.load(res.out_file)
    chi = np.asanyarray(img.dataobj)
    assert chi.shape == inputs["field"].shape and img.header.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, np.diag([*VS, 1.0]))
    assert np.all(chi[~inputs["mask"]] == 0) and np.abs(chi[inputs["mask"]]).max() > 0
    direct = infer(inputs["field"], inputs["mask"], VS, B0, model=f"{inputs['weights_dir']}/unet.pt", device="cpu")
    np.testing.assert_array_equal(chi, direct)
    meta = json.loads(Path(res.out_meta).read_text())
    assert meta["stage"] == "invert" and meta["label"] == "Dipole inversion" and meta["method"] == "unet"
    assert meta["params"] == {} and meta["warnings"] == [] and meta["runtime_s"] >= 0
    info = meta["info"]
    assert info["model"] == "unet" and info["weights_sha256"] == inputs["card"]["sha256"]
    assert info["device"] == "cpu" and info["tiles"] == 1
    assert info["resampled"] is True and 10 < info["rotation_deg"] < 13  # 1.5 mm slices, B0 11.5° off z


def test_tiling_params_reach_inference(inputs, tmp_path):
    res = _iface(inputs, method="unet", params={"tile": 24, "overlap": 4}, device="cpu").run(
        cwd=str(tmp_path)).outputs
    meta = json.loads(Path(res.out_meta).read_text())
    assert meta["params"] == {"tile": 24, "overlap": 4} and meta["info"]["tiles"] > 1
    with pytest.raises(ValueError, match="tile"):
        _iface(inputs, method="unet", params={"tiles": 2}).run(cwd=str(tmp_path))


def test_device_and_threads_do_not_change_the_hash(inputs):
    a, b = _iface(inputs, method="unet"), _iface(inputs, method="unet", num_threads=7, device="cpu")
    assert a.inputs.get_hashval()[1] == b.inputs.get_hashval()[1]
    c = _iface(inputs, method="unet", params={"tile": 24})
    assert c.inputs.get_hashval()[1] != a.inputs.get_hashval()[1]


def test_missing_weights_name_the_file(inputs, tmp_path):
    with pytest.raises(Exception, match=r"xqsm\.pt: weight file not found"):
        _iface(inputs, method="xqsm").run(cwd=str(tmp_path))
