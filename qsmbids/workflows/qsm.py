"""Stage workflows of a QSM run: one ``init_<stage>_wf`` per stage, each a LiterateWorkflow whose ``__desc__``
paragraph (with citations into ``data/boilerplate.bib``) goes into ``logs/CITATION.md``.

Each stage workflow has an ``inputnode``/``outputnode`` and one node named after the stage, a thin interface of
:mod:`qsmbids.interfaces.qsm`. Factories take plain values (method, parameters, threads), never a global config.
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from ..config import RUN_STAGES
from ..interfaces import qsm as iq

__all__ = [
    "METHOD_TEXT",
    "STAGES",
    "init_bgremove_wf",
    "init_combine_wf",
    "init_invert_wf",
    "uses_noise_map",
    "init_mask_wf",
    "init_reference_wf",
    "init_relax_wf",
    "init_swi_wf",
    "init_unwrap_wf",
    "stage_mem_gb",
]

#: processing stages in order, as named in progress lines
STAGES = RUN_STAGES

#: one sentence per method, with its citation key(s) in boilerplate.bib
METHOD_TEXT = {
    ("mask", "deepbet"): "deepbet, a pair of 3-D convolutional networks for brain extraction [@fisch2024], applied "
                        "to the root-sum-of-squares of the echo magnitudes",
    ("mask", "combined"): "the intersection of an Otsu-thresholded magnitude mask and a phase-quality mask built from "
                          "ROMEO-style voxel quality [@otsu1979; @dymerska2021]",
    ("mask", "magnitude"): "an Otsu-thresholded magnitude mask with holes filled [@otsu1979]",
    ("mask", "quality"): "a phase-quality mask built from ROMEO-style voxel quality [@dymerska2021]",
    ("unwrap", "quality"): "quality-guided region growing with ROMEO-style edge weights [@dymerska2021]",
    ("unwrap", "laplacian"): "Laplacian-based unwrapping [@schofield2003]",
    ("unwrap", "skimage"): "the reliability-sorting algorithm of scikit-image [@herraez2002; @vanderwalt2014]",
    ("combine", "snr"): "a least-squares fit over echoes weighted by the squared magnitude (inverse phase "
                        "variance) [@robinson2017]",
    ("combine", "magnitude"): "a least-squares fit over echoes weighted by the magnitude [@robinson2017]",
    ("combine", "uniform"): "an unweighted least-squares fit over echoes [@robinson2017]",
    ("bgremove", "vsharp"): "V-SHARP [@schweser2011; @wu2012]",
    ("bgremove", "sharp"): "SHARP [@schweser2011]",
    ("bgremove", "resharp"): "RESHARP [@sun2014]",
    ("bgremove", "pdf"): "the projection onto dipole fields (PDF) [@liu2011pdf]",
    ("bgremove", "lbv"): "Laplacian boundary value removal (LBV) [@zhou2014]",
    ("invert", "tkd"): "thresholded k-space division (TKD) [@shmueli2009]",
    ("invert", "tsvd"): "truncated singular value decomposition (TSVD) [@wharton2010]",
    ("invert", "tikhonov"): "closed-form Tikhonov regularisation [@bilgic2014]",
    ("invert", "ilsqr"): "iLSQR [@li2015]",
    ("invert", "tv"): "total-variation regularisation solved with ADMM [@bilgic2014]",
    ("invert", "rts"): "the rapid two-step method (RTS) [@kames2018]",
    ("invert", "medi"): "morphology-enabled dipole inversion (MEDI) with the nonlinear data term [@liu2011medi; "
                        "@liu2013]",
    ("invert", "tgv"): "total generalised variation (TGV) regularisation [@langkammer2015]",
    ("reference", "mean"): "the mean susceptibility within the brain mask",
    ("reference", "csf"): "the mean susceptibility of an automatically segmented ventricular CSF region "
                          "[@straub2017]",
    ("reference", "none"): "no referencing (the mean is undefined by the dipole model)",
    ("relax", "loglinear"): "a magnitude-weighted log-linear fit of the echo decay",
    ("relax", "arlo"): "auto-regression on linear operations (ARLO) [@pei2015]",
}


#: deep models: one phrase each, with citations
DEEP_TEXT = {
    "unet": "a 3-D U-Net [@ronneberger2016; @yoon2018; @bollmann2019]",
    "xqsm": "an octave-convolution U-Net (xQSM) [@gao2021]",
    "ir2qsm": "an iterated U-Net with reverse concatenations and recurrent modules (IR2QSM) [@li2025ir2qsm]",
    "modl": "an unrolled proximal-gradient network with dipole data consistency (LPCNN/MoDL-QSM style) "
            "[@lai2020; @feng2021]",
    "nsidl": "an unrolled network with a nonlinear (complex exponential) data-fidelity term (NSIDL style) "
             "[@nsidl2026]",
}


def _text(stage: str, method: str) -> str:
    return METHOD_TEXT.get((stage, method), f"the '{method}' method")


def _params_text(params: dict) -> str:
    if not params:
        return ""
    return " (parameters: " + ", ".join(f"{k} = {v}" for k, v in sorted(params.items())) + ")"


def stage_mem_gb(stage: str, n_voxels: int, n_echoes: int) -> float:
    """Rough peak memory of a stage (GB) for nipype's scheduler, from measured peaks of the numerical core
    (e.g. MEDI ≈ 2.4 GB and iLSQR ≈ 2.4 GB at 256×256×176; see benchmarks/bench_qsm.py)."""
    per_voxel = {"load": 40 * n_echoes, "mask": 60 + 8 * n_echoes, "unwrap": 80 + 24 * n_echoes,
                 "combine": 40 + 16 * n_echoes, "bgremove": 150, "invert": 220, "reference": 40,
                 "relax": 30 + 12 * n_echoes, "swi": 80}.get(stage, 100)
    return round(max(0.25, n_voxels * per_voxel / 1e9), 2)


def _stage_wf(name: str, node: pe.Node, in_fields: list[str], out_fields: list[str], desc: str) -> Workflow:
    wf = Workflow(name=name)
    wf.__desc__ = desc
    inputnode = pe.Node(niu.IdentityInterface(fields=in_fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=out_fields), name="outputnode")
    wf.connect([(inputnode, node, [(f, f) for f in in_fields]),
                (node, outputnode, [(f if f != "meta" else "out_meta", f) for f in out_fields])])
    return wf


#: stages whose work is mostly I/O, scipy or elementwise: one thread, so they overlap with the FFT-heavy chain
SINGLE_THREADED = ("mask", "reference", "relax", "swi")


def _node(interface, stage: str, *, method: str, params: dict, omp_nthreads: int, mem_gb: float, device: str = "cpu"):
    threads = 1 if stage in SINGLE_THREADED else omp_nthreads
    node = pe.Node(interface(method=method, params=dict(params), num_threads=threads, device=device),
                   name=stage, n_procs=threads, mem_gb=mem_gb)
    return node


def init_mask_wf(*, method: str, params: dict | None = None, has_magnitude: bool = True, omp_nthreads: int = 1,
                 mem_gb: float = 1.0, device: str = "cpu", user_mask: str | None = None,
                 name: str = "mask_wf") -> Workflow:
    """Brain mask: deepbet on the magnitude, magnitude and/or phase quality, or ``user_mask`` (a file from
    ``--derivatives`` on the run's grid), which then replaces the method."""
    params = params or {}
    mask = _node(iq.BrainMask, "mask", method=method, params=params, omp_nthreads=omp_nthreads, mem_gb=mem_gb,
                 device=device if method == "deepbet" else "cpu")
    if method == "deepbet" and not user_mask:  # network inference: use the threads like the FFT stages
        mask.inputs.num_threads = omp_nthreads
        mask.n_procs = omp_nthreads
    inputs = ["in_meta", "phase"] + (["magnitude"] if has_magnitude else [])
    if user_mask:
        mask.inputs.user_mask = user_mask
        desc = "The brain mask was provided with the input (a derivative dataset given to *qsmbids*). "
        return _stage_wf(name, mask, inputs, ["out_file", "meta"], desc)
    used = method if has_magnitude or method == "quality" else "quality"
    desc = (f"A brain mask was computed as {_text('mask', used)}{_params_text(params)}, keeping the largest "
            "connected component with holes filled. ")
    return _stage_wf(name, mask, inputs, ["out_file", "meta"], desc)


def init_unwrap_wf(*, method: str, params: dict | None = None, has_magnitude: bool = True, n_echoes: int = 2,
                   omp_nthreads: int = 1, mem_gb: float = 1.0, name: str = "unwrap_wf") -> Workflow:
    """Phase-offset removal (MCPC-3D-S) and spatial + temporal unwrapping."""
    params = params or {}
    unwrap = _node(iq.Unwrap, "unwrap", method=method, params=params, omp_nthreads=omp_nthreads, mem_gb=mem_gb)
    inputs = ["in_meta", "phase", "mask"] + (["magnitude"] if has_magnitude else [])
    offset = params.get("offset", "mcpc3ds") if n_echoes > 1 else "none"
    desc = ""
    if offset == "mcpc3ds":
        desc += "The coil-combined phase offset was removed with MCPC-3D-S [@eckstein2018]. "
    desc += (f"The phase was unwrapped spatially with {_text('unwrap', method)}{_params_text(params)}"
             + (" for the first echo and temporally for the later echoes. " if n_echoes > 1 else ". "))
    return _stage_wf(name, unwrap, inputs, ["out_file", "meta"], desc)


def init_combine_wf(*, method: str, params: dict | None = None, has_magnitude: bool = True, n_echoes: int = 2,
                    omp_nthreads: int = 1, mem_gb: float = 1.0, name: str = "combine_wf") -> Workflow:
    """Total field (Hz) by a weighted fit over echoes."""
    params = params or {}
    combine = _node(iq.CombineEchoes, "combine", method=method, params=params, omp_nthreads=omp_nthreads,
                    mem_gb=mem_gb)
    inputs = ["in_meta", "phase", "mask"] + (["magnitude"] if has_magnitude else [])
    if n_echoes > 1:
        desc = f"The total field (Hz) was estimated from the {n_echoes} echoes by {_text('combine', method)}. "
    else:
        desc = "The total field (Hz) was computed from the single echo as φ/(2π·TE). "
    wf = _stage_wf(name, combine, inputs, ["out_file", "meta", "noise"], desc)
    return wf


def init_bgremove_wf(*, method: str, params: dict | None = None, omp_nthreads: int = 1, mem_gb: float = 1.0,
                     device: str = "cpu", name: str = "bgremove_wf") -> Workflow:
    """Background field removal, total field (Hz) → local field (ppm)."""
    params = params or {}
    bgremove = _node(iq.BackgroundRemoval, "bgremove", method=method, params=params, omp_nthreads=omp_nthreads,
                     mem_gb=mem_gb, device=device)
    desc = (f"Background fields were removed with {_text('bgremove', method)}{_params_text(params)}, giving the "
            "local field in ppm. ")
    wf = Workflow(name=name)
    wf.__desc__ = desc
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_meta", "field", "mask"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_file", "out_mask", "meta"]), name="outputnode")
    wf.connect([(inputnode, bgremove, [("in_meta", "in_meta"), ("field", "field"), ("mask", "mask")]),
                (bgremove, outputnode, [("out_file", "out_file"), ("out_mask", "out_mask"), ("out_meta", "meta")])])
    return wf


def uses_noise_map(method: str, params: dict | None) -> bool:
    """Whether the inversion takes the echo fit's noise map: a discrepancy-principle parameter asks for it."""
    return method not in DEEP_TEXT and iq.wants_discrepancy(method, params)


def init_invert_wf(*, method: str, params: dict | None = None, has_magnitude: bool = True, omp_nthreads: int = 1,
                   mem_gb: float = 2.0, device: str = "cpu", name: str = "invert_wf") -> Workflow:
    """Dipole inversion, local field (ppm) → susceptibility (ppm); deep models run through
    :class:`qsmbids.interfaces.deep.DeepInversion` (weights shipped in the package, GPU when asked for)."""
    params = params or {}
    if method in DEEP_TEXT:
        from ..interfaces.deep import DeepInversion

        invert = _node(DeepInversion, "invert", method=method, params=params, omp_nthreads=omp_nthreads,
                       mem_gb=mem_gb, device=device)
        desc = (f"Susceptibility was computed from the local field by {DEEP_TEXT[method]}, trained by qsmbids on "
                "simulated data only (model card shipped with the weights), after resampling the field to 1 mm "
                "isotropic voxels" + (" in the B0-aligned frame" if method in ("unet", "xqsm", "ir2qsm") else
                                      " with the dipole kernel of the acquisition's B0 direction") + ". ")
        return _stage_wf(name, invert, ["in_meta", "field", "mask"], ["out_file", "meta"], desc)
    invert = _node(iq.DipoleInversion, "invert", method=method, params=params, omp_nthreads=omp_nthreads,
                   mem_gb=mem_gb, device=device)
    inputs = ["in_meta", "field", "mask"] + (["magnitude"] if has_magnitude and method == "medi" else [])
    inputs += ["noise"] if uses_noise_map(method, params) else []
    desc = (f"Susceptibility was computed from the local field by {_text('invert', method)}{_params_text(params)}"
            ", using the dipole kernel for the B0 direction found in the image orientation. ")
    if iq.wants_discrepancy(method, params):
        desc += ("The regularisation was chosen by the discrepancy principle [@morozov1966]: the data misfit of the "
                 "solution matches the noise of the field, taken from the echo fit (or estimated from the field "
                 "with a single echo). ")
    return _stage_wf(name, invert, inputs, ["out_file", "meta"], desc)


def init_reference_wf(*, method: str, params: dict | None = None, has_magnitude: bool = True, omp_nthreads: int = 1,
                      mem_gb: float = 0.5, name: str = "reference_wf") -> Workflow:
    """Susceptibility referencing."""
    params = params or {}
    reference = _node(iq.Reference, "reference", method=method, params=params, omp_nthreads=omp_nthreads,
                      mem_gb=mem_gb)
    inputs = ["in_meta", "chi", "mask"] + (["magnitude"] if has_magnitude and method == "csf" else [])
    desc = f"Susceptibility values were referenced to {_text('reference', method)}. "
    return _stage_wf(name, reference, inputs, ["out_file", "meta"], desc)


def init_relax_wf(*, method: str = "loglinear", params: dict | None = None, omp_nthreads: int = 1,
                  mem_gb: float = 1.0, name: str = "relax_wf") -> Workflow:
    """R2*/T2* maps from the magnitude decay."""
    params = params or {}
    relax = _node(iq.Relaxometry, "relax", method=method, params=params, omp_nthreads=omp_nthreads, mem_gb=mem_gb)
    wf = Workflow(name=name)
    wf.__desc__ = f"R2* and T2* maps were estimated by {_text('relax', method)}. "
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_meta", "magnitude", "mask"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["r2star", "t2star", "meta"]), name="outputnode")
    wf.connect([(inputnode, relax, [("in_meta", "in_meta"), ("magnitude", "magnitude"), ("mask", "mask")]),
                (relax, outputnode, [("r2star", "r2star"), ("t2star", "t2star"), ("out_meta", "meta")])])
    return wf


def init_swi_wf(*, params: dict | None = None, omp_nthreads: int = 1, mem_gb: float = 1.0,
                name: str = "swi_wf") -> Workflow:
    """SWI and minimum-intensity projection."""
    params = params or {}
    swi = _node(iq.Swi, "swi", method="haacke", params=params, omp_nthreads=omp_nthreads, mem_gb=mem_gb)
    wf = Workflow(name=name)
    wf.__desc__ = ("A susceptibility-weighted image was computed from the magnitude and the high-pass filtered "
                   "phase of the echo closest to 20 ms at 3 T, with a fourth-power negative phase mask, and its "
                   "minimum-intensity projection over 8 mm slabs [@haacke2004]. ")
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_meta", "magnitude", "phase", "mask"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["swi", "minip", "meta"]), name="outputnode")
    wf.connect([(inputnode, swi, [(f, f) for f in ("in_meta", "magnitude", "phase", "mask")]),
                (swi, outputnode, [("swi", "swi"), ("minip", "minip"), ("out_meta", "meta")])])
    return wf
