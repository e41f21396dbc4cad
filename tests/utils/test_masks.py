"""User brain masks from --derivatives: which file matches which run, and what is refused."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from qsmbids.utils.bids import InputError
from qsmbids.utils.masks import check_user_mask, find_user_mask, mask_entities


def _touch(root, rel):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")
    return p


def test_entities_from_names():
    assert mask_entities("sub-01_ses-a_acq-qsm_run-01_desc-brain_mask.nii") == {
        "sub": "01", "ses": "a", "acq": "qsm", "run": "01"}
    assert mask_entities("sub-01_desc-brain_mask.json") is None
    assert mask_entities("sub-01_desc-aseg_dseg.nii.gz") is None


def test_matching_by_entities(tmp_path):
    d = tmp_path / "deriv"
    plain = _touch(d, "sub-01/anat/sub-01_desc-brain_mask.nii.gz")
    run2 = _touch(d, "sub-01/anat/sub-01_run-02_desc-brain_mask.nii.gz")
    _touch(d, "sub-01/anat/sub-01_space-MNI152NLin6Asym_desc-brain_mask.nii.gz")  # another space: skipped
    ses = _touch(d, "sub-01/ses-pre/anat/sub-01_ses-pre_acq-fast_desc-brain_mask.nii")
    assert find_user_mask([d], {"subject": "01"}) == plain
    assert find_user_mask([d], {"subject": "01", "run": 2}) == run2  # pybids gives run as a number
    assert find_user_mask([d], {"subject": "01", "run": 3}) is None
    assert find_user_mask([d], {"subject": "01", "session": "pre", "acquisition": "fast"}) == ses
    assert find_user_mask([d], {"subject": "01", "session": "pre"}) is None
    assert find_user_mask([d], {"subject": "02"}) is None
    # the first folder that has one wins
    other = _touch(tmp_path / "first", "sub-01/anat/sub-01_desc-brain_mask.nii.gz")
    assert find_user_mask([tmp_path / "first", d], {"subject": "01"}) == other


def test_ambiguous_is_refused(tmp_path):
    d = tmp_path / "deriv"
    _touch(d, "sub-01/anat/sub-01_desc-brain_mask.nii.gz")
    _touch(d, "sub-01/anat/sub-01_space-orig_desc-brain_mask.nii.gz")
    with pytest.raises(InputError, match="several brain masks") as err:
        find_user_mask([d], {"subject": "01"})
    assert err.value.code == 65


def _img(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_checks(tmp_path):
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    ref = _img(tmp_path / "ref.nii.gz", np.zeros((80, 80, 80), np.float32), aff)
    good = np.zeros((80, 80, 80), np.uint8)
    good[10:50, 10:50, 10:40] = 1  # 48 000 voxels × 8 mm³ = 384 mL
    check_user_mask(_img(tmp_path / "good.nii.gz", good, aff), ref)
    check_user_mask(_img(tmp_path / "good4d.nii.gz", good[..., None], aff), ref)
    cases = {
        "shape": (good[:-1], aff, "shape"),
        "affine": (good, np.diag([2.0, 2.0, 2.1, 1.0]), "affine differs"),
        "empty": (0 * good, aff, "empty"),
        "small": (np.pad(np.ones((2, 2, 2), np.uint8), ((0, 78),) * 3), aff, "outside 100–3000 mL"),
        "large": (np.ones_like(good), aff, "outside 100–3000 mL"),  # 4.1 L,
    }
    for name, (data, affine, needle) in cases.items():
        p = _img(tmp_path / f"{name}.nii.gz", data, affine)
        with pytest.raises(InputError, match=needle) as err:
            check_user_mask(p, ref)
        assert err.value.code == 65 and str(p) in str(err.value)
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="cannot read") as err:
        check_user_mask(bad, ref)
    assert err.value.code == 65
