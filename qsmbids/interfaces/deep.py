"""Nipype interface for deep-learning dipole inversion (:func:`qsmbids.deep.infer.infer`).

It is a stage like those of :mod:`qsmbids.interfaces.qsm` (same inputs, same meta record: stage ``invert``, so the
Chimap sidecar and the report treat it like any other inversion) and follows MRIQC's SynthStrip node: torch and the
model code are imported inside the run only, and ``device`` / ``num_threads`` are ``nohash`` inputs, so moving a
run from CPU to GPU or changing ``--omp-nthreads`` never invalidates the work directory. The model name, the SHA-256
of its weight file, the device and the number of tiles go into the record's ``info``.
"""

from __future__ import annotations

import numpy as np
from nipype.interfaces.base import File, traits

from .io import load_nifti, save_nifti
from .qsm import _OutputSpec, _Stage, _StageInputSpec

__all__ = ["DeepInversion"]


class _DeepInputSpec(_StageInputSpec):
    field = File(exists=True, mandatory=True, desc="local field (ppm)")
    mask = File(exists=True, mandatory=True, desc="mask of the valid local field")
    weights_dir = traits.Str("", usedefault=True, desc="folder with <method>.pt and its card (default: shipped)")


class DeepInversion(_Stage):
    """Susceptibility (ppm, not yet referenced) from the local field by a trained network.

    ``method`` is the model name (``unet``, ``xqsm``, ``ir2qsm``, ``modl``, ``nsidl``) or the path of a .pt weight
    file; ``params`` may hold ``tile`` and ``overlap`` (:func:`qsmbids.deep.infer.infer`).
    """

    input_spec = _DeepInputSpec
    output_spec = _OutputSpec
    stage, label = "invert", "Dipole inversion"

    def _compute(self):
        from ..deep.infer import infer

        field, img = load_nifti(self.inputs.field)
        mask, _ = self._mask(self.inputs.mask)
        params = dict(self.inputs.params)
        unknown = sorted(set(params) - {"tile", "overlap"})
        if unknown:
            raise ValueError(f"params: deep inversion takes 'tile' and 'overlap', got {', '.join(unknown)}")
        chi, info = infer(field, mask, self.voxel_size, self.b0_dir, model=self.inputs.method,
                          device=self.inputs.device, tile=params.get("tile"), overlap=params.get("overlap"),
                          threads=max(1, int(self.inputs.num_threads)), return_info=True,
                          weights_dir=self.inputs.weights_dir or None)
        self._results["out_file"] = save_nifti(np.asarray(chi) * mask, img, "chi_ppm.nii")
        return {"model": info["model"], "weights_sha256": info["sha256"], "device": info["device"],
                "tiles": info["tiles"], "resampled": info["resampled"], "rotation_deg": info["rotation_deg"]}
