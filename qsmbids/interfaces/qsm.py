"""Thin nipype interfaces over :mod:`qsmbids.qsm`: load NIfTI → call the numerics → save NIfTI + a meta JSON.

Every stage reads the load-stage meta (echo times, field strength, B0 direction, voxel size), runs one function of
the numerical core with the method and parameters it was given, and writes its outputs and a meta record (method,
parameters, runtime, peak memory, warnings, solver information) for the report and the derivative sidecars.
``num_threads`` and ``device`` do not enter the node hash, so changing them never invalidates the work directory.

Stages are deterministic on the CPU: the same inputs and thread count give bit-identical outputs (torch's
deterministic algorithms are requested and its generator seeded, in case a method ever draws random numbers), which
is what lets a resumed run reproduce an uninterrupted one.
"""

from __future__ import annotations

import time

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from .io import (
    echoes_first,
    echoes_last,
    load_nifti,
    peak_memory_gb,
    read_meta,
    reset_peak_rss,
    save_nifti,
    write_meta,
)

__all__ = [
    "BackgroundRemoval",
    "BrainMask",
    "CombineEchoes",
    "DipoleInversion",
    "Reference",
    "Relaxometry",
    "Swi",
    "Unwrap",
]


class _StageInputSpec(BaseInterfaceInputSpec):
    in_meta = File(exists=True, mandatory=True, desc="load-stage meta JSON")
    method = traits.Str(mandatory=True, desc="method name")
    params = traits.Dict(usedefault=True, desc="method parameters (keyword arguments of the qsm function)")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="torch threads")
    device = traits.Enum("cpu", "cuda", "auto", usedefault=True, nohash=True, desc="torch device")


class _Stage(SimpleInterface):
    """Shared plumbing: threads, device, timing, meta record. Subclasses implement ``_compute``."""

    stage = ""
    label = ""

    def _run_interface(self, runtime):
        import torch

        torch.set_num_threads(max(1, int(self.inputs.num_threads)))
        reset_peak_rss()
        t0 = time.perf_counter()
        self._load_meta = read_meta(self.inputs.in_meta)["info"]
        self._warnings: list[str] = []
        # deterministic CPU algorithms and a fixed seed for this stage only: the process may be the caller's own
        # (Linear plugin, tests), whose generator state and flags are put back afterwards
        deterministic = (torch.are_deterministic_algorithms_enabled(),
                         torch.is_deterministic_algorithms_warn_only_enabled())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            torch.use_deterministic_algorithms(self._device().type == "cpu", warn_only=True)
            try:
                info = self._compute() or {}
            finally:
                torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        info["peak_memory_gb"] = peak_memory_gb(runtime)
        self._results["out_meta"] = write_meta(
            f"{self.stage}_meta.json", stage=self.stage, label=self.label, method=self.inputs.method,
            params=dict(self.inputs.params), runtime_s=time.perf_counter() - t0, warnings=self._warnings, info=info)
        return runtime

    # helpers ------------------------------------------------------------------------------------------------
    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return tuple(self._load_meta["voxel_size_mm"])

    @property
    def b0_dir(self) -> tuple[float, float, float]:
        return tuple(self._load_meta["b0_direction"])

    @property
    def echo_times(self) -> list[float]:
        return list(self._load_meta["echo_times_s"])

    @property
    def field_strength(self) -> float:
        return float(self._load_meta["field_strength_t"])

    def _magnitude(self) -> np.ndarray | None:
        """The optional 4-D magnitude input as (E, X, Y, Z), or None for phase-only runs."""
        if not isdefined(self.inputs.magnitude):
            return None
        return echoes_first(load_nifti(self.inputs.magnitude)[0])

    def _device(self):
        import torch

        dev = self.inputs.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(dev)

    def _tensor(self, x: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(x)).to(self._device())

    @staticmethod
    def _np(t) -> np.ndarray:
        return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)

    def _box(self, mask: np.ndarray, margin_mm: float = 16.0) -> tuple[slice, ...]:
        """Bounding box of the mask plus ``margin_mm`` (at least 4 voxels) on each side.

        The FFT-based stages run on this box instead of the whole field of view: a 1 mm head grid is mostly air
        and scalp, and their cost scales with the grid. The margin keeps the periodic wrap-around of the FFT
        convolutions at least twice the margin away from the brain (the V-SHARP kernel reaches 18 mm, so a 16 mm
        margin keeps wrapped SMV support outside the mask; the inversions pad internally where they need to).
        """
        idx = np.nonzero(mask)
        box = []
        for axis, ix in enumerate(idx):
            m = max(4, int(np.ceil(margin_mm / self.voxel_size[axis])))
            box.append(slice(max(0, int(ix.min()) - m), min(mask.shape[axis], int(ix.max()) + m + 1)))
        return tuple(box)

    @staticmethod
    def _paste(values: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
        out = np.zeros(shape, dtype=values.dtype)
        out[box] = values
        return out

    @staticmethod
    def _mask(path: str) -> tuple[np.ndarray, object]:
        data, img = load_nifti(path, dtype=np.float32)
        return data > 0, img


class _OutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="main output")
    out_meta = File(exists=True, desc="stage meta JSON")


# ------------------------------------------------------------------------------------------------------------
class _MaskInputSpec(_StageInputSpec):
    phase = File(exists=True, mandatory=True)
    magnitude = File(exists=True)
    user_mask = File(exists=True, desc="brain mask given by the user (--derivatives), on the run's grid")


#: Plausible adult brain-mask volumes (mL); outside them the report warns (the whole head is about 2.8 L).
BRAIN_VOLUME_ML = (800.0, 2000.0)
#: deepbet needs a head in the field of view: below this extent (mm) along any axis (a slab, a brain patch) the
#: mask falls back to ``combined``.
MIN_HEAD_FOV_MM = 100.0


class BrainMask(_Stage):
    """Brain mask: deepbet on the magnitude (:mod:`qsmbids.deep.brain`), optionally with its phase-quality rim
    dropped (:func:`qsmbids.qsm.mask.refine_mask`), or :func:`qsmbids.qsm.mask.brain_mask` (magnitude and/or
    phase quality), or the user's mask from ``--derivatives``."""

    input_spec = _MaskInputSpec
    output_spec = _OutputSpec
    stage, label = "mask", "Brain mask"

    def _compute(self):
        from ..deep.brain import DEFAULT_DEEPBET_ERODE_MM
        from ..qsm.mask import DEFAULT_REFINE_RIM_MM, brain_mask, refine_mask

        phase, img = load_nifti(self.inputs.phase)
        mag = self._magnitude()
        method = self.inputs.method
        params = dict(self.inputs.params)
        info: dict = {}
        if isdefined(self.inputs.user_mask):
            user, _ = load_nifti(self.inputs.user_mask, dtype=np.float32)
            m = np.asarray(user > 0)
            method = "derivatives"
            info["mask_file"] = str(self.inputs.user_mask)
        else:
            if mag is None and method != "quality":
                self._warnings.append(f"no magnitude: mask method '{method}' replaced by 'quality'")
                method = "quality"
            fov = [n * h for n, h in zip(phase.shape[:3], self.voxel_size)]
            if method == "deepbet" and min(fov) < MIN_HEAD_FOV_MM:
                self._warnings.append(f"field of view {' × '.join(f'{x:.0f}' for x in fov)} mm is smaller than a head "
                                      f"(< {MIN_HEAD_FOV_MM:.0f} mm along an axis): mask method 'deepbet' replaced "
                                      "by 'combined'")
                method = "combined"
                params = {k: v for k, v in params.items() if k not in ("threshold", "rim_mm", "quality_threshold",
                                                                       "erode_mm")}
            if method == "deepbet":
                from ..deep.brain import deepbet_info, deepbet_mask

                dev = self._device().type
                erode = float(params.get("erode_mm", DEFAULT_DEEPBET_ERODE_MM))
                m = deepbet_mask(mag, img.affine, threshold=params.get("threshold", 0.5), erode_mm=erode, device=dev)
                info.update(deepbet_info(), device=dev, erode_mm=erode)
                rim = float(params.get("rim_mm", DEFAULT_REFINE_RIM_MM))
                if rim > 0:
                    before = int(m.sum())
                    m = self._np(refine_mask(m, echoes_first(phase), mag, self.echo_times, self.voxel_size,
                                             rim_mm=rim, quality_threshold=params.get("quality_threshold")))
                    info["rim_removed_fraction"] = 1.0 - float(m.sum()) / max(1, before)
                info["rim_mm"] = rim
            else:
                m = brain_mask(mag, echoes_first(phase), self.echo_times, self.voxel_size, method=method,
                               **params)
        m = self._np(m).astype(np.uint8)
        if not m.any():
            raise ValueError(f"{self.inputs.phase}: the brain mask is empty")
        self._results["out_file"] = save_nifti(m, img, "brain_mask.nii", dtype=np.uint8)
        volume = float(m.sum() * np.prod(self.voxel_size) / 1000.0)
        lo, hi = BRAIN_VOLUME_ML
        if volume > hi or volume < lo:
            self._warnings.append(f"brain mask volume {volume / 1000:.2f} L is outside the usual adult range "
                                  f"{lo / 1000:.1f}–{hi / 1000:.1f} L: check the mask contour in the report "
                                  "(a whole-head mask gives wrong χ; see --mask and --derivatives)")
        return {"volume_ml": volume, "voxels": int(m.sum()), "method_used": method, **info}


# ------------------------------------------------------------------------------------------------------------
class _UnwrapInputSpec(_StageInputSpec):
    phase = File(exists=True, mandatory=True)
    magnitude = File(exists=True)
    mask = File(exists=True, mandatory=True)


class Unwrap(_Stage):
    """Phase-offset removal (MCPC-3D-S) and spatial + temporal unwrapping of every echo.

    ``params`` may hold ``offset`` ("mcpc3ds"/"none"), ``bipolar``, ``sigma_mm`` and ``template``
    (:func:`qsmbids.qsm.echoes.combine_echoes`); the fit made there is discarded, the combine stage does its own.
    """

    input_spec = _UnwrapInputSpec
    output_spec = _OutputSpec
    stage, label = "unwrap", "Phase unwrapping"

    def _compute(self):
        from ..qsm.echoes import combine_echoes

        phase, img = load_nifti(self.inputs.phase)
        mag = self._magnitude()
        mask, _ = self._mask(self.inputs.mask)
        params = dict(self.inputs.params)
        n = phase.shape[3] if phase.ndim == 4 else 1
        if n < 2 and params.get("offset", "mcpc3ds") != "none":
            self._warnings.append("single echo: no MCPC-3D-S phase-offset removal")
            params["offset"] = "none"
        fit = combine_echoes(self._tensor(echoes_first(phase)), None if mag is None else self._tensor(mag),
                             self.echo_times, self._tensor(mask), voxel_size=self.voxel_size,
                             unwrapper=self.inputs.method, **params)
        unwrapped = self._np(fit.unwrapped)
        self._results["out_file"] = save_nifti(echoes_last(unwrapped), img, "phase_unwrapped.nii")
        return {"offset": params.get("offset", "mcpc3ds")}


# ------------------------------------------------------------------------------------------------------------
class _CombineInputSpec(_StageInputSpec):
    phase = File(exists=True, mandatory=True, desc="unwrapped 4-D phase")
    magnitude = File(exists=True)
    mask = File(exists=True, mandatory=True)


class _CombineOutputSpec(_OutputSpec):
    noise = File(exists=True, desc="standard deviation of the field (Hz)")


#: A voxel fits the echoes poorly when the weighted RMS phase residual of the field fit exceeds this (rad): far
#: above the noise of brain tissue (≈ 1/SNR, below 0.1 rad), typical of unwrapping errors, flow and signal voids.
POOR_FIT_RAD = 0.5
#: Above this fraction of the mask fitting poorly the combine stage (and the report) warns.
POOR_FIT_WARN_FRACTION = 0.10


class CombineEchoes(_Stage):
    """Total field (Hz) by weighted least squares over echoes (:func:`qsmbids.qsm.echoes.fit_field`)."""

    input_spec = _CombineInputSpec
    output_spec = _CombineOutputSpec
    stage, label = "combine", "Echo combination"

    def _compute(self):
        from ..qsm.echoes import fit_field

        phase, img = load_nifti(self.inputs.phase)
        mag = self._magnitude()
        mask, _ = self._mask(self.inputs.mask)
        fit = fit_field(self._tensor(echoes_first(phase)), self.echo_times, None if mag is None else self._tensor(mag),
                        self._tensor(mask), weighting=self.inputs.method, **self.inputs.params)
        field = self._np(fit.field_hz)
        noise = self._np(fit.noise)
        noise = np.where(np.isfinite(noise), noise, 0)
        self._results["out_file"] = save_nifti(field, img, "total_field_hz.nii")
        self._results["noise"] = save_nifti(noise, img, "field_noise_hz.nii")
        inside = field[mask]
        resid = self._np(fit.residual)[mask]
        info = {"field_hz_p1": float(np.percentile(inside, 1)), "field_hz_p99": float(np.percentile(inside, 99)),
                "residual_rad_median": float(np.median(resid))}
        if len(self.echo_times) >= 2:  # one echo leaves no residual
            poor = float(np.mean(resid > POOR_FIT_RAD))
            info["poor_fit_fraction"] = poor
            if poor > POOR_FIT_WARN_FRACTION:
                self._warnings.append(f"{100 * poor:.0f} % of the brain mask fits the echoes poorly (residual > "
                                      f"{POOR_FIT_RAD:g} rad): unwrapping errors, flow or signal voids; check the "
                                      "total field in the report")
        return info


# ------------------------------------------------------------------------------------------------------------
class _BgInputSpec(_StageInputSpec):
    field = File(exists=True, mandatory=True, desc="total field (Hz)")
    mask = File(exists=True, mandatory=True)


class _BgOutputSpec(_OutputSpec):
    out_mask = File(exists=True, desc="mask of valid local field (eroded)")


class BackgroundRemoval(_Stage):
    """Local field (ppm) from the total field (:func:`qsmbids.qsm.background.remove_background`)."""

    input_spec = _BgInputSpec
    output_spec = _BgOutputSpec
    stage, label = "bgremove", "Background field removal"

    def _compute(self):
        from ..qsm.background import remove_background
        from ..qsm.phase import hz_to_ppm

        field, img = load_nifti(self.inputs.field)
        mask, _ = self._mask(self.inputs.mask)
        box = self._box(mask)
        ppm = hz_to_ppm(self._tensor(field[box]), self.field_strength)
        res = remove_background(ppm, self._tensor(mask[box]), self.voxel_size, self.b0_dir,
                                method=self.inputs.method, **self.inputs.params)
        local = self._paste(self._np(res.local_field), box, mask.shape)
        m = self._paste(self._np(res.mask).astype(np.uint8), box, mask.shape)
        if not m.any():
            raise ValueError(f"{self.inputs.mask}: nothing of the mask is left after background removal "
                             "(mask too small for the kernel radius)")
        self._results["out_file"] = save_nifti(local * (m > 0), img, "local_field_ppm.nii")
        self._results["out_mask"] = save_nifti(m, img, "local_mask.nii", dtype=np.uint8)
        kept = float(m.sum()) / max(1.0, float(mask.sum()))
        if kept < 0.7:
            self._warnings.append(f"background removal kept only {100 * kept:.0f} % of the brain mask")
        return {"mask_kept_fraction": kept, "local_field_ppm_std": float(local[m > 0].std())}


# ------------------------------------------------------------------------------------------------------------
class _InvInputSpec(_StageInputSpec):
    field = File(exists=True, mandatory=True, desc="local field (ppm)")
    mask = File(exists=True, mandatory=True)
    magnitude = File(exists=True, desc="4-D magnitude (MEDI edge weights)")
    noise = File(exists=True, desc="standard deviation of the total field (Hz) from the echo fit (discrepancy rule)")


#: ``--param`` values that ask for the discrepancy principle, and the keyword that holds them per method
DISCREPANCY_KEYS = ("lambda_", "max_iter")


def wants_discrepancy(method: str, params: dict | None) -> bool:
    """Whether the classical ``method`` with ``params`` chooses its regularisation by the discrepancy principle:
    a ``discrepancy`` value given in ``params`` or, where not given, the function's default (MEDI's λ)."""
    import inspect

    from ..qsm.inversion import METHODS, get_method

    if method not in METHODS:
        return False
    sig = inspect.signature(get_method(method)).parameters
    for k in DISCREPANCY_KEYS:
        v = (params or {}).get(k, sig[k].default if k in sig else None)
        if isinstance(v, str) and v.strip().lower() == "discrepancy":
            return True
    return False


class DipoleInversion(_Stage):
    """Susceptibility (ppm, not yet referenced) by :func:`qsmbids.qsm.inversion.invert`."""

    input_spec = _InvInputSpec
    output_spec = _OutputSpec
    stage, label = "invert", "Dipole inversion"

    def _compute(self):
        from ..qsm.inversion import invert

        field, img = load_nifti(self.inputs.field)
        mask, _ = self._mask(self.inputs.mask)
        box = self._box(mask)
        params = dict(self.inputs.params)
        if self.inputs.method == "medi":
            if not isdefined(self.inputs.magnitude):
                raise ValueError("MEDI needs the magnitude images")
            mag = load_nifti(self.inputs.magnitude)[0][box]
            params["magnitude"] = self._tensor(np.sqrt((mag.reshape(*mag.shape[:3], -1) ** 2).sum(-1)))
        if "noise_std" not in params and wants_discrepancy(self.inputs.method, params):
            sd = self._noise_ppm(mask)
            if sd is not None:
                params["noise_std"] = self._tensor(sd[box])
        chi, info = invert(self._tensor(field[box]), self._tensor(mask[box]), self.voxel_size, self.b0_dir,
                           method=self.inputs.method, return_info=True, **params)
        chi = self._paste(self._np(chi), box, mask.shape) * mask
        self._results["out_file"] = save_nifti(chi, img, "chi_ppm.nii")
        out = {"iterations": info.iterations, "converged": info.converged, "fft_pairs": info.fft_pairs}
        # the regularisation actually used (a value chosen from the data, e.g. by the L-curve, is only known here)
        out["regularisation"] = {k: info.params[k] for k in REGULARISATION_KEYS if k in info.params}
        if info.residual is not None:
            out["residual"] = float(info.residual)
        if info.converged is False:
            self._warnings.append(f"{self.inputs.method} stopped after {info.iterations} iterations without "
                                  "reaching its tolerance")
        return out

    def _noise_ppm(self, mask: np.ndarray) -> np.ndarray | None:
        """The echo fit's noise map in ppm for the discrepancy rule, or None (then the solver estimates σ).

        A single echo leaves the fit no residual to scale its noise by (it is then in units of the magnitude
        noise), so the map is used from two echoes on; voxels without a finite positive value get the median.
        """
        from ..qsm.phase import hz_to_ppm

        if not isdefined(self.inputs.noise) or len(self.echo_times) < 2:
            return None
        hz = np.asarray(load_nifti(self.inputs.noise)[0], dtype=np.float64)
        good = mask & np.isfinite(hz) & (hz > 0)
        if not good.any():
            self._warnings.append("the echo fit's noise map is empty in the mask: the field noise was estimated")
            return None
        hz = np.where(good, hz, np.median(hz[good]))
        return np.asarray(self._np(hz_to_ppm(self._tensor(hz.astype(np.float32)), self.field_strength)))


#: The entries of the stage record's ``regularisation`` (and of the sidecar's, for a value chosen from the data).
REGULARISATION_KEYS = ("lambda_", "lambda_rule", "threshold", "threshold_rule", "alpha", "delta", "max_iter",
                       "max_iter_rule", "erosions", "noise_sigma", "noise_source", "discrepancy_target",
                       "discrepancy_misfit")


# ------------------------------------------------------------------------------------------------------------
class _RefInputSpec(_StageInputSpec):
    chi = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True)
    magnitude = File(exists=True, desc="4-D magnitude (for the automatic CSF mask)")


class Reference(_Stage):
    """Referencing (:func:`qsmbids.qsm.reference.reference`): mean of the mask, automatic CSF, or none."""

    input_spec = _RefInputSpec
    output_spec = _OutputSpec
    stage, label = "reference", "Referencing"

    def _compute(self):
        from ..qsm.reference import csf_mask, reference
        from ..qsm.relax import r2star_map

        chi, img = load_nifti(self.inputs.chi)
        mask, _ = self._mask(self.inputs.mask)
        kw = dict(self.inputs.params)
        method = self.inputs.method
        if method == "csf":
            if not isdefined(self.inputs.magnitude) or len(self.echo_times) < 2:
                raise ValueError("CSF referencing needs magnitude images of at least 2 echoes")
            mag = echoes_first(load_nifti(self.inputs.magnitude)[0])
            r2s = r2star_map(mag, self.echo_times, mask)
            scale = self.field_strength / 3.0
            kw["csf_mask"] = csf_mask(r2s, mask, voxel_size=self.voxel_size, threshold=5.0 * scale)
        out, ref = reference(chi, mask, method=method, **kw)
        self._results["out_file"] = save_nifti(self._np(out) * mask, img, "chimap_ppm.nii")
        return {"reference_ppm": float(self._np(ref))}


# ------------------------------------------------------------------------------------------------------------
class _RelaxInputSpec(_StageInputSpec):
    magnitude = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True)


class _RelaxOutputSpec(TraitedSpec):
    r2star = File(exists=True, desc="R2* (1/s)")
    t2star = File(exists=True, desc="T2* (s)")
    out_meta = File(exists=True)


class Relaxometry(_Stage):
    """R2* (1/s) and T2* (s) maps from the multi-echo magnitude (:mod:`qsmbids.qsm.relax`)."""

    input_spec = _RelaxInputSpec
    output_spec = _RelaxOutputSpec
    stage, label = "relax", "R2*/T2* mapping"

    def _compute(self):
        from ..qsm.relax import r2star_map, t2star

        mag, img = load_nifti(self.inputs.magnitude)
        mask, _ = self._mask(self.inputs.mask)
        r2s = r2star_map(self._tensor(echoes_first(mag)), self.echo_times, self._tensor(mask),
                         method=self.inputs.method, **self.inputs.params)
        t2s = self._np(t2star(r2s)) * mask
        r2s = self._np(r2s) * mask
        self._results["r2star"] = save_nifti(r2s, img, "r2star.nii")
        self._results["t2star"] = save_nifti(np.where(np.isfinite(t2s), t2s, 0), img, "t2star.nii")
        return {"r2star_median": float(np.median(r2s[mask]))}


# ------------------------------------------------------------------------------------------------------------
class _SwiInputSpec(_StageInputSpec):
    magnitude = File(exists=True, mandatory=True)
    phase = File(exists=True, mandatory=True, desc="wrapped 4-D phase (rad)")
    mask = File(exists=True, mandatory=True)


class _SwiOutputSpec(TraitedSpec):
    swi = File(exists=True)
    minip = File(exists=True)
    out_meta = File(exists=True)


class Swi(_Stage):
    """SWI (Haacke 2004) of the echo nearest to TE = 20 ms × 3 T / B0, and its sliding minimum-intensity projection.

    ``params``: ``filter_size_mm``, ``power`` (to :func:`qsmbids.qsm.swi.swi`) and ``slab_mm`` (to
    :func:`qsmbids.qsm.swi.minip`, along the slice axis).
    """

    input_spec = _SwiInputSpec
    output_spec = _SwiOutputSpec
    stage, label = "swi", "SWI and minIP"

    def _compute(self):
        from ..qsm.swi import minip, swi

        mag, img = load_nifti(self.inputs.magnitude)
        phase, _ = load_nifti(self.inputs.phase)
        mask, _ = self._mask(self.inputs.mask)
        tes = np.asarray(self.echo_times)
        target = 0.020 * 3.0 / self.field_strength
        e = int(np.argmin(np.abs(tes - target)))
        params = dict(self.inputs.params)
        slab = float(params.pop("slab_mm", 8.0))
        image = swi(self._tensor(echoes_first(mag)[e]), self._tensor(echoes_first(phase)[e]), self._tensor(mask),
                    voxel_size=self.voxel_size, **params)
        image = self._np(image)
        mip = self._np(minip(image, self.voxel_size, slab_mm=slab, axis=2))
        self._results["swi"] = save_nifti(image, img, "swi.nii")
        self._results["minip"] = save_nifti(mip, img, "minip.nii")
        return {"echo_index": e, "echo_time_s": float(tes[e]), "slab_mm": slab}
