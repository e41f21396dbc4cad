"""Loading a MEGRE run into the working format, and the small NIfTI/JSON helpers of the stage interfaces.

Working format (work directory only, never a derivative): phase and magnitude as 4-D float32 NIfTI with echoes on
the last axis, phase in radians wrapped to [−π, π); a ``meta`` JSON per stage (see :func:`write_meta`) that carries
what later stages and the report need (echo times, field strength, B0 direction, voxel size, timings, warnings).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

__all__ = ["LoadMegre", "SidecarMetadata", "echoes_first", "echoes_last", "load_nifti", "peak_memory_gb", "read_meta",
           "save_nifti", "write_meta"]


def load_nifti(path: str, dtype=np.float32) -> tuple[np.ndarray, Any]:
    import nibabel as nib

    img = nib.load(path)
    return np.asanyarray(img.dataobj).astype(dtype, copy=False), img


def save_nifti(data: np.ndarray, ref_img, path: str | Path, *, dtype=np.float32, intent: str | None = None) -> str:
    """Write ``data`` on the grid of ``ref_img`` (affine, qform/sform codes) and return the absolute path."""
    import nibabel as nib

    arr = np.asarray(data).astype(dtype, copy=False)
    hdr = ref_img.header.copy()
    hdr.set_data_shape(arr.shape)
    hdr.set_data_dtype(dtype)
    hdr.set_slope_inter(1.0, 0.0)
    hdr.set_xyzt_units("mm", "sec")
    if intent:
        hdr.set_intent(intent)
    hdr["descrip"] = b"qsmbids"
    img = nib.Nifti1Image(arr, ref_img.affine, hdr)
    img.set_qform(ref_img.affine, int(ref_img.header["qform_code"]) or 1)
    img.set_sform(ref_img.affine, int(ref_img.header["sform_code"]) or 1)
    path = Path(path).absolute()
    img.to_filename(str(path))
    return str(path)


def echoes_first(x: np.ndarray) -> np.ndarray:
    """(X, Y, Z, E) → (E, X, Y, Z), the layout of :mod:`qsmbids.qsm`."""
    return np.ascontiguousarray(np.moveaxis(x, -1, 0)) if x.ndim == 4 else x[None]


def echoes_last(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 0, -1))


def read_meta(path: str) -> dict:
    return json.loads(Path(path).read_text())


def write_meta(path: str | Path, *, stage: str, label: str, method: str | None, params: dict, runtime_s: float,
               warnings: list[str], info: dict) -> str:
    """One stage's record for the report and the sidecars (plain JSON, floats rounded for readability)."""
    doc = {"stage": stage, "label": label, "method": method, "params": _plain(params),
           "runtime_s": round(float(runtime_s), 3), "warnings": list(warnings), "info": _plain(info)}
    path = Path(path).absolute()
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return str(path)


def peak_memory_gb(runtime) -> float | None:
    """Peak resident memory (GB) of this process and its children so far, from nipype's resource monitor.

    With the monitor on (``qsmbids`` enables it when psutil is installed), nipype samples the process every
    ``resource_monitor_frequency`` seconds into the file named by ``runtime.resmon`` while the interface runs; the
    stage reads those samples and adds one of its own now, so the value lands in the stage's meta record (and the
    report) although nipype only totals it after the interface returns. ``None`` when the monitor is off.
    """
    fname = getattr(runtime, "resmon", None)
    if not fname or fname == "off" or not Path(fname).is_file():
        return _peak_rss_gb()
    try:
        import psutil

        proc = psutil.Process()
        now_mb = proc.memory_info().rss / 2**20
        for child in proc.children(recursive=True):
            try:
                now_mb += child.memory_info().rss / 2**20
            except psutil.Error:
                pass
    except (ImportError, OSError):
        now_mb = 0.0
    try:
        rows = [line.split(",") for line in Path(fname).read_text().splitlines() if line.count(",") >= 3]
        sampled_mb = max((float(r[2]) for r in rows), default=0.0)
    except (OSError, ValueError):
        sampled_mb = 0.0
    peak = max(now_mb, sampled_mb)
    return round(peak / 1024, 3) if peak > 0 else None


def reset_peak_rss() -> None:
    """Reset this process's peak-RSS counter (Linux ``/proc/self/clear_refs``), so that :func:`peak_memory_gb`
    measures one stage even in a worker process that ran others before. A no-op where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_rss_gb() -> float | None:
    """Peak resident memory of this process since :func:`reset_peak_rss` (``VmHWM``), when nipype's monitor did not
    sample the stage (e.g. a worker started by a fork server, whose nipype configuration has the monitor off)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 2**20, 3)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return round(v, 6) if math.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, Path):
        return str(x)
    return x


class _LoadInputSpec(BaseInterfaceInputSpec):
    phase_files = traits.List(File(exists=True), mandatory=True, desc="phase per echo (or one 4-D file)")
    magnitude_files = traits.List(File(exists=True), desc="magnitude per echo (or one 4-D file); may be empty")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")
    field_strength = traits.Float(mandatory=True, desc="B0 (T)")
    phase_units = traits.Str("", usedefault=True, desc="sidecar Units of the phase ('rad', 'arbitrary' or '')")
    representation = traits.Enum("mag-phase", "real-imag", usedefault=True,
                                 desc="'real-imag': phase_files hold the real, magnitude_files the imaginary parts")
    b0_direction = traits.Either(traits.Enum("auto"), traits.List(traits.Float, minlen=3, maxlen=3),
                                 default="auto", usedefault=True, desc="'auto' (from the affine) or a vector")
    entities = traits.Dict(desc="BIDS entities of the run")
    sources = traits.List(traits.Str, desc="BIDS URIs of the inputs")
    warnings = traits.List(traits.Str, desc="warnings found during discovery")


class _LoadOutputSpec(TraitedSpec):
    phase = File(exists=True, desc="4-D phase (rad, wrapped), echoes last")
    magnitude = File(desc="4-D magnitude, echoes last (absent for phase-only data)")
    out_meta = File(exists=True, desc="load-stage meta JSON")


class LoadMegre(SimpleInterface):
    """Read the echoes, scale the phase to radians, find the B0 direction; refuse nothing (discovery did)."""

    input_spec = _LoadInputSpec
    output_spec = _LoadOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib

        from ..qsm.phase import (
            b0_angle,
            b0_direction_from_affine,
            detect_phase_units,
            scale_phase,
            wrap,
        )

        t0 = time.perf_counter()
        reset_peak_rss()
        warnings = list(self.inputs.warnings) if isdefined(self.inputs.warnings) else []
        complex_parts = self.inputs.representation == "real-imag"
        if complex_parts:  # part-real/part-imag: the signal's angle and modulus
            re_part, ref = self._stack(self.inputs.phase_files, is_phase=False)
            im_part, _ = self._stack(self.inputs.magnitude_files, is_phase=False)
            z = re_part.astype(np.complex64) + 1j * im_part.astype(np.complex64)
            phase, mag_from_complex = np.angle(z).astype(np.float32), np.abs(z).astype(np.float32)
            del z, re_part, im_part
        else:
            phase, ref = self._stack(self.inputs.phase_files, is_phase=True)
        n_bad = int((~np.isfinite(phase)).sum())
        if n_bad:
            warnings.append(f"{n_bad} NaN/Inf phase voxels set to 0 (excluded by the mask)")
            phase = np.where(np.isfinite(phase), phase, 0).astype(np.float32)
        units = "rad" if complex_parts else (self.inputs.phase_units or "").lower()
        detected = detect_phase_units(phase)
        lo, hi = float(phase.min()), float(phase.max())
        in_range = (lo >= -math.pi - 1e-3 and hi <= math.pi + 1e-3) or (lo >= -1e-3 and hi <= 2 * math.pi + 1e-3)
        if units in ("rad", "radian", "radians") and in_range:
            scaled = wrap(phase)  # trust the sidecar: a small span (masked or short-TE phase) is no reason to rescale
        elif units in ("rad", "radian", "radians") and detected != "rad":
            if hi - lo > 2 * math.pi + 1e-2 and detected == "arbitrary":
                warnings.append(f"phase values span {lo:.2f}..{hi:.2f} rad (> 2π): treated as unwrapped radians "
                                "and wrapped again")
                scaled = wrap(phase)
            else:
                warnings.append(f"sidecar Units is 'rad' but the values ({lo:g}..{hi:g}) look {detected}; "
                                "scaled as detected")
                scaled = scale_phase(phase, "auto")
        else:
            scaled = scale_phase(phase, "auto")
        phase_file = save_nifti(scaled, ref, "phase.nii")
        self._results["phase"] = phase_file

        has_mag = isdefined(self.inputs.magnitude_files) and len(self.inputs.magnitude_files) > 0
        if has_mag:
            mag = mag_from_complex if complex_parts else self._stack(self.inputs.magnitude_files, is_phase=False)[0]
            mag = np.abs(np.where(np.isfinite(mag), mag, 0)).astype(np.float32)
            self._results["magnitude"] = save_nifti(mag, ref, "magnitude.nii")

        vs = tuple(float(v) for v in ref.header.get_zooms()[:3])
        if self.inputs.b0_direction == "auto":
            b0 = b0_direction_from_affine(ref.affine)
        else:
            v = np.asarray(self.inputs.b0_direction, dtype=float)
            b0 = tuple(float(x) for x in v / np.linalg.norm(v))
        obliquity = float(np.degrees(np.max(nib.affines.obliquity(ref.affine))))
        angle = b0_angle(b0)
        if angle > 45:
            warnings.append(f"B0 is {angle:.0f}° from the slice axis (strongly oblique acquisition)")
        ents = dict(self.inputs.entities) if isdefined(self.inputs.entities) else {}
        info = {
            "subject": ents.get("subject"), "session": ents.get("session"), "acquisition": ents.get("acquisition"),
            "reconstruction": ents.get("reconstruction"), "run": ents.get("run"),
            "echo_times_s": list(self.inputs.echo_times), "field_strength_t": float(self.inputs.field_strength),
            "b0_direction": list(b0), "b0_angle_deg": angle, "obliquity_deg": obliquity,
            "voxel_size_mm": list(vs), "shape": list(scaled.shape[:3]), "n_echoes": int(scaled.shape[3]),
            "phase_units": detected, "phase_units_sidecar": units or None, "has_magnitude": has_mag,
            "representation": self.inputs.representation,
            "sources": list(self.inputs.sources) if isdefined(self.inputs.sources) else [],
        }
        info["peak_memory_gb"] = peak_memory_gb(runtime)
        self._results["out_meta"] = write_meta(
            "load_meta.json", stage="load", label="Load and scale", method=None,
            params={"b0_direction": "auto" if self.inputs.b0_direction == "auto" else list(b0)},
            runtime_s=time.perf_counter() - t0, warnings=warnings, info=info)
        return runtime

    def _stack(self, files: list[str], *, is_phase: bool) -> tuple[np.ndarray, Any]:
        """The echoes as one float32 array, echoes last; complex files as their angle (phase) or modulus
        (magnitude), never their real part (discovery has put a warning about them into the run's warnings)."""
        import nibabel as nib

        from ..utils.images import as_part

        vols, ref = [], None
        for f in files:
            img = nib.load(f)
            data = as_part(np.asanyarray(img.dataobj), is_phase=is_phase).astype(np.float32, copy=False)
            ref = ref or img
            vols.append(data[..., None] if data.ndim == 3 else data.reshape(*data.shape[:3], -1))
        out = np.concatenate(vols, axis=3)
        if out.shape[3] != len(self.inputs.echo_times):
            raise ValueError(f"{files[0]}: {out.shape[3]} echoes in the images, {len(self.inputs.echo_times)} echo "
                             "times")
        return out, ref


_SIDECAR_FIELDS = ("mask_meta", "total_field_meta", "local_field_meta", "chimap_meta", "r2star_meta", "t2star_meta",
                   "swi_meta", "minip_meta")


class _GatherInputSpec(BaseInterfaceInputSpec):
    meta_files = traits.List(File(exists=True), mandatory=True, desc="stage meta JSONs (load first)")


class _GatherOutputSpec(TraitedSpec):
    mask_meta = traits.Dict()
    total_field_meta = traits.Dict()
    local_field_meta = traits.Dict()
    chimap_meta = traits.Dict()
    r2star_meta = traits.Dict()
    t2star_meta = traits.Dict()
    swi_meta = traits.Dict()
    minip_meta = traits.Dict()


def _deep_info(record: dict | None) -> dict:
    """Model name, weight checksum and device of a deep inversion (empty for classical methods)."""
    info = (record or {}).get("info", {})
    if "weights_sha256" not in info:
        return {}
    return {"Model": info.get("model"), "WeightsSHA256": info["weights_sha256"], "Device": info.get("device")}


def _chosen_regularisation(record: dict | None) -> dict:
    """``Regularisation`` of the inversion when a rule chose it from the data (L-curve, discrepancy), else nothing."""
    reg = ((record or {}).get("info") or {}).get("regularisation") or {}
    rules = [v for k, v in reg.items() if k.endswith("_rule")]
    return {"Regularisation": reg} if any(r != "fixed" for r in rules) else {}


def _mask_info(record: dict | None) -> dict:
    """What made the brain mask: deepbet's version, weight checksums, device and refinement rim, or the user's
    mask file (``--derivatives``)."""
    info = (record or {}).get("info", {})
    if "mask_file" in info:
        return {"Method": "derivatives", "MaskFile": info["mask_file"]}
    if info.get("model") != "deepbet":
        return {}
    return {"Model": f"deepbet {info.get('version', '')}".strip(), "Device": info.get("device"),
            "WeightsSHA256": {k[len("sha256_"):]: v for k, v in info.items() if k.startswith("sha256_")},
            "ErosionMM": info.get("erode_mm"), "QualityRimMM": info.get("rim_mm")}


class SidecarMetadata(SimpleInterface):
    """Sidecar fields of every derivative, from the stage records (method, parameters, units, B0 direction)."""

    input_spec = _GatherInputSpec
    output_spec = _GatherOutputSpec

    def _run_interface(self, runtime):
        stages = {m["stage"]: m for m in (read_meta(f) for f in self.inputs.meta_files)}
        load = stages["load"]["info"]

        def step(stage: str) -> dict:
            s = stages.get(stage)
            return {} if s is None else {"Method": s["method"], "Parameters": s["params"]}

        acq = {"EchoTime": load["echo_times_s"], "MagneticFieldStrength": load["field_strength_t"],
               "B0Direction": load["b0_direction"], "B0Angle": round(load["b0_angle_deg"], 3)}
        chain = {"Masking": {**step("mask"), **_mask_info(stages.get("mask"))}, "PhaseUnwrapping": step("unwrap"),
                 "EchoCombination": step("combine")}
        bg = {"BackgroundFieldRemoval": step("bgremove")}
        ref = stages.get("reference", {})
        self._results.update({
            "mask_meta": {"Type": "Brain", "Description": "brain mask", **step("mask"),
                          **_mask_info(stages.get("mask"))},
            "total_field_meta": {"Units": "Hz", "Description": "total field from the multi-echo phase", **acq,
                                 **chain},
            "local_field_meta": {"Units": "ppm", "Description": "local field after background field removal",
                                 **acq, **chain, **bg},
            "chimap_meta": {"Units": "ppm", "Description": "magnetic susceptibility", **acq, **chain, **bg,
                            "DipoleInversion": {**step("invert"), **_deep_info(stages.get("invert")),
                                                **_chosen_regularisation(stages.get("invert"))},
                            "Reference": {**step("reference"),
                                          "Value": ref.get("info", {}).get("reference_ppm")}},
            "r2star_meta": {"Units": "1/s", "Description": "R2*", "EchoTime": load["echo_times_s"],
                            **step("relax")},
            "t2star_meta": {"Units": "s", "Description": "T2*", "EchoTime": load["echo_times_s"], **step("relax")},
            "swi_meta": {"Units": "arbitrary", "Description": "susceptibility-weighted image",
                         "EchoTime": stages.get("swi", {}).get("info", {}).get("echo_time_s"), **step("swi")},
            "minip_meta": {"Units": "arbitrary", "Description": "minimum-intensity projection of the SWI",
                           "SlabThickness": stages.get("swi", {}).get("info", {}).get("slab_mm"), **step("swi")},
        })
        return runtime
