"""Dipole-inversion networks, one architecture per module, behind one interface (:class:`QSMModel`).

==========  ============  ====================================================================================
name        kind          architecture (paper)
==========  ============  ====================================================================================
``unet``    feedforward   3-D U-Net (QSMnet, Yoon 2018; QSMnet+, Jung 2020; DeepQSM, Bollmann 2019)
``xqsm``    feedforward   octave-convolution U-Net (xQSM, Gao 2021)
``ir2qsm``  feedforward   U-Net iterated 4× with reverse concatenations and a ConvGRU (IR2QSM, Li 2025)
``modl``    unrolled      proximal gradient descent on ½‖W(Dχ − f)‖², learned prox (LP-CNN, Lai 2020; MoDL-QSM)
``nsidl``   unrolled      proximal gradient descent on ½‖W(e^{icDχ} − e^{icf})‖², learned prox (NSIDL, 2026)
==========  ============  ====================================================================================

``build_model(name, **config)`` builds one; ``model.config`` holds the JSON-able configuration saved with
weights; ``model_summary(model)`` is what a model card records. Inputs and outputs are (B, 1, X, Y, Z) float32
tensors in ppm in the training frame (1 mm isotropic, B0 ∥ z); spatial sizes must be multiples of
``model.multiple`` (:func:`pad_to_multiple`); unrolled models also take the dipole kernel
(:func:`qsmbids.deep.physics.dipole_half`).
"""

from __future__ import annotations

from .base import (
    FIELD_SCALE,
    MODELS,
    QSMModel,
    build_model,
    count_parameters,
    model_summary,
    pad_to_multiple,
)
from .ir2qsm import IR2QSM
from .modl import MoDL
from .nsidl import NSIDL
from .unet import UNet
from .xqsm import XQSM

__all__ = [
    "FIELD_SCALE",
    "IR2QSM",
    "MODELS",
    "NSIDL",
    "XQSM",
    "MoDL",
    "QSMModel",
    "UNet",
    "build_model",
    "count_parameters",
    "model_summary",
    "pad_to_multiple",
]
