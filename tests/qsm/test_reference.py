"""Susceptibility referencing and the automatic ventricular CSF mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qsmbids.qsm import reference as RF
from qsmbids.qsm.phantoms import coordinates

R2 = {"white_matter": 20.0, "grey_matter": 15.0, "ventricles": 2.0, "vein": 50.0, "calcification": 100.0,
      "haemorrhage": 80.0}
PD = {"white_matter": 0.7, "grey_matter": 0.8, "ventricles": 1.0}


def _label(h, name):
    return h.labels == {v: k for k, v in h.names.items()}[name]


def _synthetic_r2star(h, seed=0, noise=1.0, peripheral_csf=True):
    """R2* (s⁻¹) per label (deep nuclei 30) + N(0, noise²), and a low-R2* sulcal-CSF blob at the brain rim."""
    r2 = np.zeros(h.chi.shape, np.float32)
    for k, name in h.names.items():
        if name != "background":
            r2[h.labels == k] = R2.get(name, 30.0)
    r2 += noise * np.random.default_rng(seed).standard_normal(r2.shape).astype(np.float32)
    blob = np.zeros_like(h.mask)
    if peripheral_csf:
        X, Y, Z = coordinates(h.chi.shape, h.voxel_size)
        ax = 0.78 * h.chi.shape[0] / 2 * h.voxel_size[0]
        blob = ((X - 0.85 * ax) ** 2 + Y**2 + Z**2 <= 3.0**2) & h.mask
        r2[blob] = 2.0
    return np.where(h.mask, r2, 0).astype(np.float32), blob


# ------------------------------------------------------------------------------------------------ reference


def test_mean_reference(head64):
    chi = head64.chi + 0.1 * head64.mask  # arbitrary offset
    out, ref = RF.reference(chi, head64.mask)
    assert out.dtype == np.float32 and np.ndim(ref) == 0
    assert abs(out[head64.mask].mean()) < 1e-6
    assert float(ref) == pytest.approx(chi[head64.mask].mean(), abs=1e-6)
    np.testing.assert_allclose(chi - out, np.where(head64.mask, ref, 0), atol=1e-6)


def test_csf_and_roi_reference(head64):
    vent = _label(head64, "ventricles")
    chi = head64.chi + 0.05 * head64.mask
    out, ref = RF.reference(chi, head64.mask, method="csf", csf_mask=vent)
    assert abs(out[vent].mean()) < 1e-6
    assert float(ref) == pytest.approx(chi[vent].mean(), abs=1e-6)
    # every other voxel in the mask moves by the same constant; outside the mask nothing changes
    shift = chi - out
    assert np.ptp(shift[head64.mask]) < 1e-6
    assert np.array_equal(out[~head64.mask], chi[~head64.mask])
    # roi with the ventricle label gives the same, two labels average over both
    k = {v: kk for kk, v in head64.names.items()}
    out2, ref2 = RF.reference(chi, head64.mask, method="roi", labels=head64.labels, roi_labels=k["ventricles"])
    np.testing.assert_allclose(out2, out, atol=1e-6)
    both = vent | _label(head64, "putamen_l")
    out3, ref3 = RF.reference(chi, head64.mask, method="roi", labels=head64.labels,
                              roi_labels=[k["ventricles"], k["putamen_l"]])
    assert float(ref3) == pytest.approx(chi[both].mean(), abs=1e-6)
    assert abs(out3[both].mean()) < 1e-6


def test_none_and_batch(head64):
    chi = torch.from_numpy(head64.chi)
    out, ref = RF.reference(chi, torch.from_numpy(head64.mask), method="none")
    assert torch.equal(out, chi) and float(ref) == 0.0
    batch = torch.stack([chi, chi + 1.0])
    out_b, ref_b = RF.reference(batch, torch.from_numpy(head64.mask))
    assert ref_b.shape == (2,) and float(ref_b[1] - ref_b[0]) == pytest.approx(1.0, abs=1e-5)
    m = torch.from_numpy(head64.mask)
    assert torch.allclose(out_b[0][m], out_b[1][m], atol=1e-5)
    assert torch.equal(out_b[1][~m], batch[1][~m])  # outside the mask: untouched


# ------------------------------------------------------------------------------------------------ CSF mask


def test_csf_mask_from_r2star(head64):
    """Measured on the 64³ phantom: 72 of 216 ventricle voxels kept (1 mm erosion), none elsewhere; the
    peripheral low-R2* blob (sulcal CSF) is rejected by the centrality test."""
    r2, blob = _synthetic_r2star(head64)
    vent = _label(head64, "ventricles")
    cm = RF.csf_mask(r2, head64.mask)
    assert cm.dtype == bool and cm.shape == vent.shape
    assert np.all(vent[cm])  # only ventricle voxels
    assert cm.sum() >= 50
    assert not (cm & blob).any()
    # without the centrality test, the blob would be taken too
    loose = RF.csf_mask(r2, head64.mask, central_fraction=1.5)
    assert (loose & blob).any()
    # without erosion more of the ventricles is kept (partial volume is not an issue on this phantom)
    assert RF.csf_mask(r2, head64.mask, erode_mm=0).sum() > cm.sum()
    # referencing to it sets the ventricle mean (of the kept voxels) to zero
    out, ref = RF.reference(head64.chi, head64.mask, method="csf", csf_mask=cm)
    assert abs(out[cm].mean()) < 1e-6


def test_csf_mask_from_magnitude(head64):
    """Late-echo magnitude PD·exp(−TE·R2*), TE = 30 ms: CSF 0.94, GM 0.51, WM 0.38."""
    r2, _ = _synthetic_r2star(head64, noise=0.0, peripheral_csf=False)
    pd = np.full(r2.shape, 0.75, np.float32)
    for name, v in PD.items():
        pd[_label(head64, name)] = v
    mag = np.where(head64.mask, pd * np.exp(-0.030 * r2), 0).astype(np.float32)
    cm = RF.csf_mask(mag, head64.mask, contrast="magnitude")
    vent = _label(head64, "ventricles")
    assert np.all(vent[cm]) and cm.sum() >= 50
    np.testing.assert_array_equal(cm, RF.csf_mask(r2, head64.mask))


def test_csf_mask_anisotropic(head48_aniso):
    r2, _ = _synthetic_r2star(head48_aniso, peripheral_csf=False)
    cm = RF.csf_mask(r2, head48_aniso.mask, voxel_size=head48_aniso.voxel_size, erode_mm=0.0, min_size_mm3=5.0)
    vent = _label(head48_aniso, "ventricles")
    assert cm.any() and np.all(vent[cm])


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_inputs(head64):
    chi, mask = head64.chi, head64.mask
    with pytest.raises(ValueError, match="method"):
        RF.reference(chi, mask, method="median")
    with pytest.raises(ValueError, match="csf_mask"):
        RF.reference(chi, mask, method="csf")
    with pytest.raises(ValueError, match="csf_mask"):
        RF.reference(chi, mask, method="csf", csf_mask=~mask & (np.arange(64)[:, None, None] < 2))
    with pytest.raises(ValueError, match="labels"):
        RF.reference(chi, mask, method="roi")
    with pytest.raises(ValueError, match="roi_labels"):
        RF.reference(chi, mask, method="roi", labels=head64.labels, roi_labels=[999])
    with pytest.raises(ValueError, match="mask"):
        RF.reference(chi, mask[:, :, :10])
    with pytest.raises(ValueError, match="mask"):
        RF.reference(chi, np.zeros_like(mask))
    bad = chi.copy()
    bad[32, 32, 32] = np.nan
    with pytest.raises(ValueError, match="chi"):
        RF.reference(bad, mask)
    r2, _ = _synthetic_r2star(head64)
    with pytest.raises(ValueError, match="image"):
        RF.csf_mask(r2, mask, threshold=1.0)  # nothing below 1 s⁻¹
    with pytest.raises(ValueError, match="contrast"):
        RF.csf_mask(r2, mask, contrast="t1")
    with pytest.raises(ValueError, match="image"):
        RF.csf_mask(r2[None], mask)
    with pytest.raises(ValueError, match="voxel_size"):
        RF.csf_mask(r2, mask, voxel_size=(1, 1, 0))
    with pytest.raises(ValueError, match="erode_mm"):
        RF.csf_mask(r2, mask, erode_mm=-1)


@pytest.mark.gpu
def test_gpu_parity(head64):
    chi = torch.from_numpy(head64.chi)
    mask = torch.from_numpy(head64.mask)
    cpu, ref_c = RF.reference(chi, mask)
    gpu, ref_g = RF.reference(chi.cuda(), mask.cuda())
    assert gpu.is_cuda and torch.allclose(cpu, gpu.cpu(), atol=1e-4) and abs(float(ref_c - ref_g.cpu())) < 1e-4
    r2, _ = _synthetic_r2star(head64)
    cm_c = RF.csf_mask(torch.from_numpy(r2), mask)
    cm_g = RF.csf_mask(torch.from_numpy(r2).cuda(), mask.cuda())
    assert cm_g.is_cuda and torch.equal(cm_c, cm_g.cpu())
