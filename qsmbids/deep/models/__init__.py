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

from typing import Any

from .base import (
    FIELD_SCALE,
    QSMModel,
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

#: name → class of every network: the registry (here, above the modules it lists, so that none imports it)
_REGISTRY: dict[str, type[QSMModel]] = {"unet": UNet, "xqsm": XQSM, "ir2qsm": IR2QSM, "modl": MoDL, "nsidl": NSIDL}
MODELS: tuple[str, ...] = tuple(_REGISTRY)


def build_model(name: str, **config: Any) -> QSMModel:
    """Instantiate model ``name`` (one of :data:`MODELS`) with the given configuration (defaults otherwise).

    >>> build_model("unet", width=4, depth=2).multiple
    4
    """
    if name not in _REGISTRY:
        raise ValueError(f"model: unknown model {name!r}; expected one of {', '.join(MODELS)}")
    try:
        return _REGISTRY[name](**config)
    except TypeError as exc:  # unknown keyword: make it a clear value error naming the model
        raise ValueError(f"config: invalid configuration for model {name!r}: {exc}") from None
