"""qsmbids.deep — deep-learning dipole inversion: torch models, training data, training and inference.

Layer rules: this package may import :mod:`qsmbids.qsm` (dipole physics, metrics) and :mod:`qsmbids.sim`
(training data), never nipype or the CLI; :mod:`qsmbids.interfaces.deep` wraps inference for nipype.

==============  ==========================================================================================
module          contents
==============  ==========================================================================================
``physics``     dipole kernel on the rfft half grid, batched dipole operator, linear and nonlinear data terms
``models``      ``unet``, ``xqsm``, ``ir2qsm``, ``modl``, ``nsidl`` behind one interface, ``build_model``
``data``        synthetic training pairs and the held-out validation set
``train``       training loop with checkpoints, resume and metrics logs (``qsmbids-train``)
``weights``     shipped weight files, model cards and checksums
``infer``       whole-volume or tiled inference at any resolution and B0 direction
==============  ==========================================================================================

Conventions: tensors (B, 1, X, Y, Z) float32, field and χ in ppm, training frame 1 mm isotropic with B0 along +z.
Only ``physics`` and ``models`` are imported here, so that importing the package stays light.
"""

from __future__ import annotations

from .models import (
    FIELD_SCALE,
    MODELS,
    QSMModel,
    build_model,
    model_summary,
    pad_to_multiple,
)
from .physics import apply_dipole, dipole_half, phase_scale

__all__ = [
    "FIELD_SCALE",
    "MODELS",
    "QSMModel",
    "apply_dipole",
    "build_model",
    "dipole_half",
    "model_summary",
    "pad_to_multiple",
    "phase_scale",
]
