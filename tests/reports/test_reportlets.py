"""Reportlet figures: valid, reproducible SVG; windows, orientation and fitted slope as documented."""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET

import matplotlib
import nibabel as nb
import numpy as np
import pytest
from PIL import Image

from qsmbids.reports import reportlets as R

from ._synth import AFFINE, SHAPE, truth_volumes

SVG_NS = "{http://www.w3.org/2000/svg}"


def _images(svg: bytes) -> list[np.ndarray]:
    """The raster images embedded in an SVG, as RGBA arrays (matplotlib writes them as base64 PNG)."""
    found = re.findall(rb"data:image/png;base64,([A-Za-z0-9+/=\s]+)", svg)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b"".join(b.split()))))) for b in found]


@pytest.fixture(scope="module")
def vols():
    return truth_volumes()


def test_map_svg_valid_deterministic_and_windowed(tmp_path, vols):
    rc_before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    data = np.where(vols["mask"], 5.0, 0.0)  # far outside the window everywhere...
    data[vols["labels"] == 8] = 0.0  # ...except white matter, exactly mid-window
    data[vols["labels"] == 1] = -0.15  # and the CSF core at the lower end
    a = R.plot_map(data, vols["mask"], tmp_path / "a.svg", vmin=-0.15, vmax=0.15, cmap="gray", label="χ", units="ppm")
    b = R.plot_map(data, vols["mask"], tmp_path / "b.svg", vmin=-0.15, vmax=0.15, cmap="gray", label="χ", units="ppm")
    raw = (tmp_path / "a.svg").read_bytes()
    assert raw == (tmp_path / "b.svg").read_bytes()
    assert ET.fromstring(raw).tag == f"{SVG_NS}svg"
    assert (a["vmin"], a["vmax"]) == (-0.15, 0.15) and a == {**b, "out_file": a["out_file"]}
    text = raw.decode()
    assert ">\u22120.15</text>" in text and ">0.15</text>" in text and ">0</text>" in text and "χ (ppm)" in text
    assert "dc:date" not in text and ">L</text>" in text and ">A</text>" in text  # text stays text; no date
    greys = set()
    for img in _images(raw)[:3]:  # three planes (the fourth image is the colourbar)
        opaque = img[..., 3] > 0
        greys |= set(np.unique(img[..., 0][opaque]).tolist())
    assert greys <= {0, 127, 128, 255} and {255} <= greys and greys & {127, 128}  # clipped; 0 ppm is mid-grey
    assert dict(matplotlib.rcParams) == rc_before and matplotlib.get_backend() == backend  # no global leaks


def test_map_auto_windows(tmp_path, vols):
    rng = np.random.default_rng(1)
    data = rng.normal(3.0, 20.0, SHAPE)
    m = vols["mask"]
    sym = R.plot_map(data, m, tmp_path / "s.svg", auto="symmetric")
    a = np.percentile(np.abs(data[m]), 99)
    assert sym["vmin"] == pytest.approx(-a) and sym["vmax"] == pytest.approx(a)
    pct = R.plot_map(data, m, tmp_path / "p.svg", vmax=100.0)  # only vmin from the data
    assert pct["vmin"] == pytest.approx(np.percentile(data[m], 1)) and pct["vmax"] == 100.0
    assert R.map_window(data, None, "percentile") == pytest.approx(tuple(np.percentile(data, [1, 99])))
    with pytest.raises(ValueError, match="vmax"):
        R.plot_map(data, m, tmp_path / "x.svg", vmin=1.0, vmax=0.5)
    for key, (lo, hi) in {"chimap": (-0.15, 0.15), "localfield": (-0.05, 0.05), "r2star": (0.0, 60.0)}.items():
        assert (R.MAP_STYLES[key].vmin, R.MAP_STYLES[key].vmax) == (lo, hi)


def test_reorientation_to_ras(tmp_path):
    data = np.zeros(SHAPE, np.float32)
    data[0, 5, 7] = 1.0  # voxel i = 0 of a LAS image is the subject's right-most column
    nb.Nifti1Image(data, AFFINE).to_filename(tmp_path / "las.nii.gz")
    ras, zooms, affine = R.load_ras(tmp_path / "las.nii.gz")
    assert nb.aff2axcodes(affine) == ("R", "A", "S") and zooms == (2.0, 2.0, 2.0)
    assert np.argwhere(ras).tolist() == [[SHAPE[0] - 1, 5, 7]]  # now at the right end of the x axis
    assert np.allclose(affine @ [SHAPE[0] - 1, 5, 7, 1], AFFINE @ [0, 5, 7, 1])


def test_mask_figure(tmp_path, vols):
    m = vols["mask"]
    mag = np.where(m, 1.0, 0.2) + 0.01 * np.arange(SHAPE[2])[None, None, :]
    four_d = np.stack([mag, np.full(SHAPE, np.nan)], axis=-1)  # the second echo must not be used
    nb.Nifti1Image(four_d.astype(np.float32), AFFINE).to_filename(tmp_path / "mag.nii.gz")
    nb.Nifti1Image(m.astype(np.uint8), AFFINE).to_filename(tmp_path / "mask.nii.gz")
    r1 = R.plot_mask(tmp_path / "mag.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "m1.svg")
    R.plot_mask(tmp_path / "mag.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "m2.svg")
    raw = (tmp_path / "m1.svg").read_bytes()
    assert raw == (tmp_path / "m2.svg").read_bytes() and ET.fromstring(raw).tag == f"{SVG_NS}svg"
    centroid = np.argwhere(R.load_ras(tmp_path / "mask.nii.gz")[0] > 0).mean(0)
    assert r1["cuts"] == tuple(round(c) for c in centroid)
    assert f"{m.sum() * 8 / 1000:.1f} mL" in raw.decode()
    assert raw.count(b"#ff3b30") >= 3  # one mask outline per plane
    for letter in "LRAPSI":
        assert f">{letter}<" in raw.decode()
    with pytest.raises(ValueError, match="same grid"):
        R.plot_mask(mag, m[:-1], tmp_path / "bad.svg")


def test_accuracy_scatter(tmp_path):
    truth = np.array([0.02, 0.05, 0.09, 0.11, 0.19])
    est = 0.8 * truth + 0.01
    names = ["thalamus", "caudate", "putamen", "red_nucleus_left", "pallidum"]
    res = R.plot_accuracy(est, truth, names, tmp_path / "a.svg")
    assert res["slope"] == pytest.approx(0.8) and res["intercept"] == pytest.approx(0.01)
    text = (tmp_path / "a.svg").read_text()
    assert "slope 0.80" in text and "red nucleus L" in text and "identity" in text
    one = R.plot_accuracy([0.1], [0.1], None, tmp_path / "one.svg")
    assert np.isnan(one["slope"])
    with pytest.raises(ValueError, match="equal length"):
        R.plot_accuracy([0.1, 0.2], [0.1], None, tmp_path / "bad.svg")
