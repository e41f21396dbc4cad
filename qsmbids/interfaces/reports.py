"""Nipype interfaces that make the visual report's pieces (SVG figures, HTML fragments, a metrics JSON).

They are thin wrappers: the drawing lives in :mod:`qsmbids.reports.reportlets` and the numbers in
:mod:`qsmbids.qsm.metrics`, so both can be used (and tested) without nipype. Each interface writes into its node
directory; ``ds_report_*`` sinks then copy the results into ``sub-XX/figures/``, where
:func:`qsmbids.reports.core.generate_reports` finds them (also with ``--reports-only``).
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
import re
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

__all__ = [
    "DGM_PATTERN",
    "Accuracy",
    "MapReportlet",
    "MaskReportlet",
    "RunSummary",
    "accuracy_metrics",
    "read_stage_metas",
    "summary_html",
]

#: Label names taken as deep grey matter nuclei (the regions of the QSM challenge's DGM linearity).
DGM_PATTERN = re.compile(r"caudate|putamen|pallid|thalam|nigra|red[ _-]?nucleus|dentate", re.IGNORECASE)

_ENV = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)


class _ReportletOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="the SVG figure")


# --------------------------------------------------------------------------------------------------------------
# figures


class _MaskReportletInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, desc="magnitude (4-D: the first echo is shown); if absent the mask alone is shown")
    in_mask = File(exists=True, mandatory=True, desc="brain mask")
    out_name = traits.Str("mask.svg", usedefault=True, desc="file name in the node directory")


class MaskReportlet(SimpleInterface):
    """First-echo magnitude with the brain-mask outline in three planes (phase-only data: the mask itself)."""

    input_spec = _MaskReportletInputSpec
    output_spec = _ReportletOutputSpec

    def _run_interface(self, runtime):
        from qsmbids.reports.reportlets import plot_mask

        background = self.inputs.in_file if isdefined(self.inputs.in_file) else self.inputs.in_mask
        out = os.path.join(runtime.cwd, self.inputs.out_name)
        self._results["out_report"] = plot_mask(background, self.inputs.in_mask, out)["out_file"]
        return runtime


class _MapReportletInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3-D map")
    in_mask = File(exists=True, desc="voxels to show (others are transparent)")
    vmin = traits.Float(desc="lower end of the window (unset: from the data, see auto)")
    vmax = traits.Float(desc="upper end of the window (unset: from the data, see auto)")
    auto = traits.Enum("percentile", "symmetric", usedefault=True,
                       desc="data window when vmin/vmax are unset: 1..99th percentile or ± 99th percentile of |x|")
    cmap = traits.Str("gray", usedefault=True, desc="matplotlib colour map")
    label = traits.Str("", usedefault=True, desc="quantity shown under the colourbar")
    units = traits.Str("", usedefault=True, desc="units shown under the colourbar")
    out_name = traits.Str("map.svg", usedefault=True, desc="file name in the node directory")


class MapReportlet(SimpleInterface):
    """A map in three planes through the mask centroid with a colourbar (fixed window unless vmin/vmax unset)."""

    input_spec = _MapReportletInputSpec
    output_spec = _ReportletOutputSpec

    def _run_interface(self, runtime):
        from qsmbids.reports.reportlets import plot_map

        i = self.inputs
        res = plot_map(
            i.in_file,
            i.in_mask if isdefined(i.in_mask) else None,
            os.path.join(runtime.cwd, i.out_name),
            vmin=i.vmin if isdefined(i.vmin) else None,
            vmax=i.vmax if isdefined(i.vmax) else None,
            cmap=i.cmap,
            label=i.label,
            units=i.units,
            auto=i.auto,
        )
        self._results["out_report"] = res["out_file"]
        return runtime


# --------------------------------------------------------------------------------------------------------------
# run summary

_SUMMARY = _ENV.from_string("""\
<div class="qsm-summary">
<table class="qsm-table">
<caption>Run</caption>
{% for k, v in run_rows %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>
{% endfor %}
</table>
<table class="qsm-table qsm-stages">
<caption>Processing stages</caption>
<thead><tr><th>Stage</th><th>Method</th><th>Parameters</th><th>Details</th><th>Runtime (s)</th>
<th>Warnings</th></tr></thead>
<tbody>
{% for s in stages %}<tr{% if s.warnings %} class="qsm-warn"{% endif %}><td>{{ s.label }}</td><td>{{ s.method }}</td>\
<td>{{ s.params }}</td><td>{{ s.info }}</td><td class="num">{{ s.runtime }}</td>\
<td>{% for w in s.warnings %}<span class="qsm-warning">&#9888; {{ w }}</span>{% if not loop.last %}<br>{% endif %}\
{% endfor %}</td></tr>
{% endfor %}
</tbody>
{% if total_runtime %}<tfoot><tr><th colspan="4">Total</th><td class="num">{{ total_runtime }}</td><td></td></tr>\
</tfoot>{% endif %}
</table>
</div>
""")

_LOAD_KEYS = {"subject", "session", "acquisition", "reconstruction", "run", "echo_times_s", "field_strength_t",
              "b0_direction", "b0_angle_deg", "obliquity_deg", "voxel_size_mm", "shape", "n_echoes", "phase_units",
              "has_magnitude", "sources"}


def _num(v: Any, fmt: str = "{:.3g}") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        return str(v) if isinstance(v, int) else fmt.format(v)
    return str(v)


def _plain(v: Any) -> str:
    """Compact text of a JSON value (parameters and details)."""
    if isinstance(v, dict):
        return ", ".join(f"{k}={_plain(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_plain(x) for x in v) + "]"
    return _num(v, "{:.4g}")


def _vec(v: Any, fmt: str) -> str:
    if not isinstance(v, (list, tuple)):
        return "n/a"
    return " × ".join(fmt.format(float(x)) for x in v) if fmt else ", ".join(str(x) for x in v)


def summary_html(metas: list[dict[str, Any]]) -> str:
    """HTML fragment (a run table and a stage table) from the per-stage metadata dicts, in stage order."""
    load = next((m for m in metas if m.get("stage") == "load"), {})
    info = load.get("info", {}) or {}
    mask = next((m for m in metas if m.get("stage") == "mask"), {})
    ref = next((m for m in metas if m.get("stage") == "reference"), {})
    tes = info.get("echo_times_s")
    b0 = info.get("b0_direction")
    rows = [
        ("Subject", info.get("subject") or "n/a"),
        *[(name, info[key]) for key, name in (("session", "Session"), ("acquisition", "Acquisition"),
                                              ("reconstruction", "Reconstruction"), ("run", "Run"))
          if info.get(key) not in (None, "")],
        ("Echo times (ms)", ", ".join(f"{1000 * float(t):.2f}" for t in tes) if tes else "n/a"),
        ("Echoes", _num(info.get("n_echoes", len(tes) if tes else None))),
        ("Field strength (T)", _num(info.get("field_strength_t"))),
        ("Voxel size (mm)", _vec(info.get("voxel_size_mm"), "{:.3g}")),
        ("Matrix", _vec(info.get("shape"), "{:.0f}")),
        ("Obliquity (°)", _num(info.get("obliquity_deg"), "{:.2f}")),
        ("B0 direction (voxel axes)", "(" + ", ".join(f"{float(x):.3f}" for x in b0) + ")" if b0 else "n/a"),
        ("B0 angle to the slice axis (°)", _num(info.get("b0_angle_deg"), "{:.2f}")),
        ("Phase units", _num(info.get("phase_units"))),
        ("Magnitude available", _num(info.get("has_magnitude"))),
        ("Brain mask volume (mL)", _num((mask.get("info") or {}).get("volume_ml"), "{:.1f}")),
    ]
    if (ref.get("info") or {}).get("reference_ppm") is not None:
        rows.append(("Reference offset removed (ppm)", _num(ref["info"]["reference_ppm"], "{:.4f}")))
    if info.get("sources"):
        rows.append(("Sources", ", ".join(str(s) for s in info["sources"])))
    stages, total = [], 0.0
    for m in metas:
        rt = m.get("runtime_s")
        if isinstance(rt, (int, float)) and math.isfinite(rt):
            total += float(rt)
        extra = {k: v for k, v in (m.get("info") or {}).items() if not (m.get("stage") == "load" and k in _LOAD_KEYS)}
        stages.append({
            "label": m.get("label") or m.get("stage", "?"),
            "method": _num(m.get("method")) if m.get("method") is not None else "",
            "params": _plain(m.get("params") or {}),
            "info": _plain(extra),
            "runtime": _num(rt, "{:.2f}") if rt is not None else "",
            "warnings": [str(w) for w in (m.get("warnings") or [])],
        })
    return _SUMMARY.render(run_rows=rows, stages=stages, total_runtime=f"{total:.2f}" if stages else "")


def read_stage_metas(files) -> list[dict[str, Any]]:
    """The per-stage metadata JSON files (``stage``, ``method``, ``params``, ``info``, …), in the given order."""
    metas = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            metas.append(json.load(fh))
    return metas


class _RunSummaryInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="per-stage metadata JSON files, stage order")
    out_name = traits.Str("summary.html", usedefault=True, desc="file name in the node directory")


class _RunSummaryOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="HTML fragment")


class RunSummary(SimpleInterface):
    """Summary table of one run: acquisition facts from the load stage, then one row per processing stage."""

    input_spec = _RunSummaryInputSpec
    output_spec = _RunSummaryOutputSpec

    def _run_interface(self, runtime):
        metas = read_stage_metas(self.inputs.in_files)
        out = os.path.join(runtime.cwd, self.inputs.out_name)
        with open(out, "w", encoding="utf-8") as fh:
            fh.write(summary_html(metas))
        self._results["out_report"] = out
        return runtime


# --------------------------------------------------------------------------------------------------------------
# accuracy against a ground truth


def _read_labels(tsv: str) -> dict[int, str]:
    """``index → name`` from a BIDS ``_dseg.tsv`` (columns ``index`` and ``name``)."""
    with open(tsv, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return {int(r["index"]): str(r["name"]) for r in rows if r.get("index", "").strip().lstrip("-").isdigit()}


def _grid(path: str, ref: nb.spatialimages.SpatialImage, name: str) -> np.ndarray:
    img = nb.load(path)
    if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
        raise ValueError(f"{name}: expected the grid of the estimate {ref.shape[:3]}, got {img.shape[:3]} "
                         "(or another affine); resample the ground truth to the acquisition grid first")
    return np.asanyarray(img.dataobj)


def accuracy_metrics(
    chimap: str,
    mask: str,
    truth_chimap: str,
    truth_mask: str | None = None,
    dseg: str | None = None,
    dseg_tsv: str | None = None,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray, list[str] | None]]:
    """Metrics of ``chimap`` against ``truth_chimap`` and the points for the scatter plot.

    Evaluation mask: the estimate's mask ∩ the truth's mask ∩ the estimate's support (its non-zero voxels). The
    support matters because background-field removal (V-SHARP, SHARP, PDF's edge handling) erodes the brain edge
    and the χ map is zero outside what it kept: scoring those voxels would measure the erosion, not the
    reconstruction (the accuracy benchmarks of ``tests/qsm`` score inside the eroded mask for the same reason).
    Both maps are demeaned inside the evaluation mask first, because an estimate referenced to its mean and a
    truth referenced to CSF differ by a constant that says nothing about the reconstruction.

    Metrics: NRMSE (demeaned, 2019 challenge) and detrended NRMSE, HFEN (2016 LoG), XSIM (Gaussian 7³ window
    σ = 1.5 voxels, L = 1 ppm, and the QSM-CI 5³ box), Pearson correlation; with a labelled segmentation the
    regional means and the deep-grey-matter linearity |1 − slope| over the labels matching :data:`DGM_PATTERN`.
    Metrics that cannot be computed (e.g. a constant estimate) are None with a note.
    """
    import torch

    from qsmbids.qsm import metrics as qm

    ref_img = nb.load(chimap)
    est = np.asanyarray(ref_img.dataobj).astype(np.float32)
    tru = _grid(truth_chimap, ref_img, "truth_chimap").astype(np.float32)
    m = (_grid(mask, ref_img, "mask") > 0.5) & np.isfinite(est) & np.isfinite(tru)
    if truth_mask:
        m &= _grid(truth_mask, ref_img, "truth_mask") > 0.5
    both = int(m.sum())
    m &= est != 0
    if not m.any():
        raise ValueError("mask: the estimate's mask, the truth's mask and the estimate's non-zero voxels do not "
                         "overlap")
    # crop to the evaluation mask's bounding box plus the metric windows' reach (LoG 15³, Gaussian 7³): the
    # metrics only read voxels near the mask, and a whole 1 mm head grid in float64 cost ~4 GB and ~40 s
    margin = 8
    box = tuple(slice(max(0, int(ix.min()) - margin), int(ix.max()) + margin + 1) for ix in np.nonzero(m))
    est, tru, m = est[box], tru[box], m[box]
    est = np.where(m, est - est[m].mean(), 0.0).astype(np.float32)
    tru = np.where(m, tru - tru[m].mean(), 0.0).astype(np.float32)
    x, r, mt = torch.from_numpy(est), torch.from_numpy(tru), torch.from_numpy(m)
    out: dict[str, Any] = {
        "evaluation_mask": "estimate mask ∩ truth mask ∩ non-zero estimate",
        "evaluation_voxels": int(m.sum()),
        "excluded_zero_voxels": both - int(m.sum()),
        "referencing": "both maps demeaned inside the evaluation mask (truth is CSF-referenced, estimate "
                       "mean-referenced)",
        "units": {"nrmse": "%", "nrmse_detrended": "%", "hfen": "%", "xsim": "fraction", "xsim_uniform": "fraction",
                  "correlation": "fraction", "dgm_linearity": "unitless", "dgm_slope": "unitless", "rois": "ppm"},
        "notes": [],
    }
    jobs = {
        "nrmse": lambda: qm.nrmse(x, r, mt, mode="demeaned"),
        "nrmse_detrended": lambda: qm.nrmse(x, r, mt, mode="detrended"),
        "hfen": lambda: qm.hfen(x, r, mt),
        "xsim": lambda: qm.xsim(x, r, mt),
        "xsim_uniform": lambda: qm.xsim(x, r, mt, window="uniform"),
        "correlation": lambda: qm.correlation(x, r, mt),
    }
    for key, job in jobs.items():
        try:
            out[key] = float(job())
        except ValueError as exc:
            out[key] = None
            out["notes"].append(f"{key}: {exc}")
    rois: list[dict[str, Any]] = []
    if dseg:
        lab = np.rint(_grid(dseg, ref_img, "truth_dseg")).astype(np.int64)[box]
        names = _read_labels(dseg_tsv) if dseg_tsv else {}
        for idx in sorted(set(np.unique(lab[m]).tolist()) - {0}):
            sel = m & (lab == idx)
            name = names.get(idx, f"label {idx}")
            rois.append({"index": idx, "name": name, "dgm": bool(DGM_PATTERN.search(name)),
                         "n_voxels": int(sel.sum()), "estimate": float(est[sel].mean()),
                         "truth": float(tru[sel].mean())})
        dgm = [q for q in rois if q["dgm"]]
        out["dgm_labels"] = [q["name"] for q in dgm]
        try:
            out["dgm_linearity"] = float(qm.dgm_linearity(x, r, torch.from_numpy(lab), [q["index"] for q in dgm], mt))
            t_, e_ = np.array([q["truth"] for q in dgm]), np.array([q["estimate"] for q in dgm])
            out["dgm_slope"] = float(np.polyfit(t_, e_, 1)[0])
        except (ValueError, TypeError) as exc:
            out["dgm_linearity"] = out["dgm_slope"] = None
            out["notes"].append(f"dgm_linearity: {exc}")
    out["rois"] = rois
    pts = [q for q in rois if q["dgm"]]
    pts = pts if len(pts) >= 2 else rois
    if len(pts) >= 2:
        points = (np.array([q["estimate"] for q in pts]), np.array([q["truth"] for q in pts]),
                  [q["name"] for q in pts])
    else:  # no segmentation: a deterministic voxel subsample
        idx = np.flatnonzero(m.ravel())
        idx = idx[:: max(1, idx.size // 3000)]
        points = (est.ravel()[idx], tru.ravel()[idx], None)
    return out, points


_ACCURACY = _ENV.from_string("""\
<div class="qsm-accuracy">
<p>Estimate compared with the simulator's ground truth inside the evaluation mask: estimate mask ∩ truth mask ∩
voxels where the estimate is defined (non-zero), {{ m.evaluation_voxels }} voxels{% if m.excluded_zero_voxels %};
{{ m.excluded_zero_voxels }} voxels of the masks' intersection are zero in the estimate (brain edge eroded by the
background field removal) and are left out{% endif %}. The truth χ is referenced to CSF and the estimate to its
mean, so <b>both maps are demeaned inside the evaluation mask</b> before every metric.</p>
<table class="qsm-table">
<caption>Whole-brain metrics</caption>
<tr><th>NRMSE (demeaned, 2019 challenge)</th><td class="num">{{ f(m.nrmse, "%") }}</td></tr>
<tr><th>NRMSE (detrended: after a linear fit)</th><td class="num">{{ f(m.nrmse_detrended, "%") }}</td></tr>
<tr><th>HFEN (LoG σ = 1.5 voxels, 2016 challenge)</th><td class="num">{{ f(m.hfen, "%") }}</td></tr>
<tr><th>XSIM (Gaussian window σ = 1.5 voxels, 7³, L = 1 ppm)</th><td class="num">{{ g(m.xsim) }}</td></tr>
<tr><th>XSIM (uniform 5³ window, as QSM-CI)</th><td class="num">{{ g(m.xsim_uniform) }}</td></tr>
<tr><th>Pearson correlation</th><td class="num">{{ g(m.correlation) }}</td></tr>
{% if m.dgm_linearity is defined %}<tr><th>DGM linearity |1 − slope| ({{ m.dgm_labels|length }} nuclei)</th>\
<td class="num">{{ g(m.dgm_linearity) }}</td></tr>
<tr><th>DGM slope (estimate vs truth regional means)</th><td class="num">{{ g(m.dgm_slope) }}</td></tr>{% endif %}
</table>
{% if m.rois %}<table class="qsm-table qsm-rois">
<caption>Regional means (ppm, demeaned)</caption>
<thead><tr><th>Region</th><th>Voxels</th><th>Estimate</th><th>Truth</th><th>Difference</th></tr></thead>
<tbody>
{% for q in m.rois %}<tr{% if q.dgm %} class="qsm-dgm"{% endif %}><td>{{ q.name }}</td><td class="num">{{ q.n_voxels }}\
</td><td class="num">{{ "%.4f"|format(q.estimate) }}</td><td class="num">{{ "%.4f"|format(q.truth) }}</td>\
<td class="num">{{ "%+.4f"|format((q.estimate - q.truth)|round(4) + 0.0) }}</td></tr>
{% endfor %}</tbody></table>{% endif %}
{% for n in m.notes %}<p class="qsm-warning">&#9888; {{ n }}</p>
{% endfor %}
</div>
""")


def _accuracy_html(metrics: dict[str, Any]) -> str:
    def f(v, unit=""):
        return "n/a" if v is None else f"{v:.2f} {unit}".strip()

    def g(v):
        return "n/a" if v is None else f"{v:.4f}"

    return _ACCURACY.render(m=metrics, f=f, g=g)


class _AccuracyInputSpec(BaseInterfaceInputSpec):
    in_chimap = File(exists=True, mandatory=True, desc="estimated χ (ppm)")
    in_mask = File(exists=True, mandatory=True, desc="the estimate's brain mask")
    truth_chimap = File(exists=True, mandatory=True, desc="ground-truth χ (ppm), same grid")
    truth_mask = File(exists=True, desc="ground-truth brain mask")
    truth_dseg = File(exists=True, desc="ground-truth segmentation (integer labels)")
    truth_dseg_tsv = File(exists=True, desc="its BIDS _dseg.tsv (index, name)")


class _AccuracyOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="HTML fragment with the metrics")
    out_figure = File(exists=True, desc="SVG scatter: regional means (or voxels) estimate vs truth")
    out_metrics = File(exists=True, desc="JSON with every number of the fragment")


class Accuracy(SimpleInterface):
    """Accuracy of the χ estimate against a simulated ground truth (NRMSE, HFEN, XSIM, DGM linearity, ROIs)."""

    input_spec = _AccuracyInputSpec
    output_spec = _AccuracyOutputSpec

    def _run_interface(self, runtime):
        from qsmbids.reports.reportlets import plot_accuracy

        i = self.inputs

        def opt(v):
            return v if isdefined(v) else None

        try:
            metrics, (est, tru, names) = accuracy_metrics(
                i.in_chimap, i.in_mask, i.truth_chimap, opt(i.truth_mask), opt(i.truth_dseg), opt(i.truth_dseg_tsv)
            )
        except ValueError as exc:  # e.g. a ground truth on another grid: report it, never fail the run for it
            return self._unavailable(runtime, str(exc))
        fig = plot_accuracy(
            est, tru, names, os.path.join(runtime.cwd, "accuracy.svg"),
            title="Regional means" if names else "Voxels (subsample)",
        )
        metrics["scatter_slope"] = fig["slope"] if math.isfinite(fig["slope"]) else None
        out_json = os.path.join(runtime.cwd, "accuracy.json")
        with open(out_json, "w", encoding="utf-8") as fh:
            json.dump(metrics, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
        out_html = os.path.join(runtime.cwd, "accuracy.html")
        with open(out_html, "w", encoding="utf-8") as fh:
            fh.write(_accuracy_html(metrics))
        self._results.update(out_report=out_html, out_figure=fig["out_file"], out_metrics=out_json)
        return runtime

    def _unavailable(self, runtime, reason: str):
        """The accuracy section says why it is empty; the run itself goes on."""
        out_json = os.path.join(runtime.cwd, "accuracy.json")
        with open(out_json, "w", encoding="utf-8") as fh:
            json.dump({"error": reason}, fh, indent=2)
            fh.write("\n")
        out_html = os.path.join(runtime.cwd, "accuracy.html")
        with open(out_html, "w", encoding="utf-8") as fh:
            fh.write(f'<div class="qsm-accuracy"><p class="warning">Accuracy not computed: {html.escape(reason)}</p>'
                     "</div>\n")
        out_svg = os.path.join(runtime.cwd, "accuracy.svg")
        with open(out_svg, "w", encoding="utf-8") as fh:
            fh.write('<svg xmlns="http://www.w3.org/2000/svg" width="320" height="40"><text x="8" y="24" '
                     'font-family="sans-serif" font-size="13">Accuracy not computed (see the note)</text></svg>\n')
        self._results.update(out_report=out_html, out_figure=out_svg, out_metrics=out_json)
        return runtime
