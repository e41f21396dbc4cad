"""The common model interface, input scaling, padding and losses (the registry is :mod:`qsmbids.deep.models`).

Every network is a :class:`QSMModel`: it takes the local field (ppm) and the brain mask as (B, 1, X, Y, Z) float32
tensors in the training frame (1 mm isotropic, B0 along +z, see :mod:`qsmbids.deep.physics`) and returns χ (ppm)
inside the mask. Feed-forward models (``kind == "feedforward"``) learn the inversion for that frame only; unrolled
models (``kind == "unrolled"``) need the dipole kernel (``kernel``, on the rfft half grid) because they apply the
physics in every iteration — which is also what lets them run on any B0 direction without rotating the data.

Scaling: local fields are ~0.01–0.1 ppm; networks train best with O(1) activations. Every model multiplies its
input by the fixed constant :data:`FIELD_SCALE` and divides its output by it (a fixed constant rather than a
per-volume normalisation: statistics over the volume would make tiled and whole-volume inference disagree).
Losses are computed on ``FIELD_SCALE``·χ for the same reason (O(1) values, comparable across models).

The configuration of a model (its constructor keyword arguments, all JSON-able, defaults filled in) is
``model.config``; ``build_model(model.name, **model.config)`` rebuilds the same architecture, which is how weight
files are loaded. Shared keys: ``width`` (channels of the first level; for unrolled models the width of the
proximal network) and ``depth`` (number of 2× down-samplings); iterative models also take ``iterations``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor, nn

from ..physics import _check_kernel, dipole_half

__all__ = [
    "FIELD_SCALE",
    "QSMModel",
    "Span",
    "channels_last",
    "count_parameters",
    "gradient_difference",
    "init_weights",
    "masked_l1",
    "masked_mean",
    "masked_mse",
    "model_summary",
    "pad_to_multiple",
    "reach",
    "unet_walk",
]

FIELD_SCALE: float = 10.0
"""Fixed input/output scale: networks see ``FIELD_SCALE``·field (ppm) and predict ``FIELD_SCALE``·χ (ppm)."""

def pad_to_multiple(x: Tensor, m: int) -> tuple[Tensor, tuple]:
    """Zero-pad the last three dims of ``x`` up to multiples of ``m``, data centred; undo with ``y[crop_slices]``.

    ``crop_slices`` is ``(Ellipsis, slice, slice, slice)`` so it crops any tensor with the same spatial shape
    whatever its leading dims.

    >>> x = torch.ones(1, 1, 5, 8, 9)
    >>> xp, crop = pad_to_multiple(x, 4)
    >>> tuple(xp.shape), tuple(xp[crop].shape), float(xp.sum())
    ((1, 1, 8, 8, 12), (1, 1, 5, 8, 9), 360.0)
    """
    m = int(m)
    if m < 1:
        raise ValueError(f"m: expected a positive multiple, got {m}")
    if x.dim() < 3:
        raise ValueError(f"x: expected at least 3 dims, got shape {tuple(x.shape)}")
    widths: list[int] = []
    slices = []
    for n in x.shape[-3:]:
        total = -n % m
        before = total // 2
        slices.append(slice(before, before + n))
        widths.append((before, total - before))
    flat = [w for pair in reversed(widths) for w in pair]  # F.pad wants the last dim first
    xp = torch.nn.functional.pad(x, flat) if any(flat) else x
    return xp, (Ellipsis, *slices)


# ------------------------------------------------------------------------------------------------- losses
def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the voxels where ``mask`` is 1 (whole batch); 0 for an empty mask."""
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean |FIELD_SCALE·(pred − target)| inside the mask."""
    return masked_mean((FIELD_SCALE * (pred.float() - target.float())).abs(), mask)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean (FIELD_SCALE·(pred − target))² inside the mask."""
    return masked_mean((FIELD_SCALE * (pred.float() - target.float())) ** 2, mask)


def gradient_difference(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean L1 difference of forward finite differences (3 axes), counted where both voxels are in the mask.

    QSMnet's gradient loss: penalises blurred edges, which a voxel-wise L1 alone tolerates.
    """
    d = FIELD_SCALE * (pred.float() - target.float())
    total = d.new_zeros(())
    for dim in (-3, -2, -1):
        n = d.shape[dim]
        diff = d.narrow(dim, 1, n - 1) - d.narrow(dim, 0, n - 1)
        both = mask.narrow(dim, 1, n - 1) * mask.narrow(dim, 0, n - 1)
        total = total + masked_mean(diff.abs(), both)
    return total / 3.0


def channels_last(x: Tensor) -> Tensor:
    """``x`` in the channels-last 3-D memory layout.

    Measured on one CPU core (oneDNN), convolutions with few channels run 10–50 % faster per training step in this
    layout (mostly the backward pass); cuDNN supports it too. Results are deterministic for a given layout.
    """
    return x.contiguous(memory_format=torch.channels_last_3d)


def init_weights(module: nn.Module) -> None:
    """He (Kaiming) normal initialisation for ReLU networks, zero biases; BatchNorm to identity."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Span:
    """Positions (along one axis, at one resolution level) that depend on a single input voxel: [lo, hi] or empty.

    Used to compute receptive fields exactly by walking a network's layer graph forward from one input voxel: a
    k³ convolution widens the span by (k − 1)/2 per side, a 2× down-sampling maps i → ⌊i/2⌋, a 2× up-sampling
    (nearest or 2³ stride-2 transposed convolution) maps i → {2i, 2i + 1}, concatenation/addition takes the hull.
    Taking the hull (not the union) can only over-estimate, so the result is a safe bound.
    """

    __slots__ = ("hi", "lo")

    def __init__(self, lo: int | None = None, hi: int | None = None):
        self.lo, self.hi = lo, hi if lo is not None else None

    @property
    def empty(self) -> bool:
        return self.lo is None

    def conv(self, half: int) -> Span:
        return self if self.empty else Span(self.lo - half, self.hi + half)

    def down(self) -> Span:
        return self if self.empty else Span(self.lo // 2, self.hi // 2)

    def up(self) -> Span:
        return self if self.empty else Span(2 * self.lo, 2 * self.hi + 1)

    def hull(self, *others: Span) -> Span:
        spans = [x for x in (self, *others) if not x.empty]
        if not spans:
            return Span()
        return Span(min(x.lo for x in spans), max(x.hi for x in spans))


def reach(walk, period: int) -> int:
    """Largest distance between an input voxel and an output voxel it influences, over the ``period`` alignments.

    ``walk(span)`` maps the span of one input voxel through the network and returns the output span (level 0).
    """
    best = 0
    for q in range(period):
        out = walk(Span(q, q))
        best = max(best, q - out.lo, out.hi - q)
    return best


def unet_walk(span: Span, depth: int, convs: int = 2, kernel_size: int = 3) -> Span:
    """:class:`Span` walk through a :class:`~qsmbids.deep.models.unet.UNet3d` (skips, pools, transposed convs)."""
    half = convs * (kernel_size // 2)
    skips = []
    for _ in range(depth):
        span = span.conv(half)
        skips.append(span)
        span = span.down()
    span = span.conv(half)
    for level in reversed(range(depth)):
        span = span.up().hull(skips[level]).conv(half)
    return span


@functools.lru_cache(maxsize=8)
def _default_kernel(shape: tuple[int, int, int], device: str) -> Tensor:
    return dipole_half(shape, device=device)


def default_kernel(like: Tensor) -> Tensor:
    """The training-frame kernel (1 mm, B0 ∥ z) for a tensor's spatial shape (cached)."""
    return _default_kernel(tuple(int(n) for n in like.shape[-3:]), str(like.device))


# -------------------------------------------------------------------------------------------------- model
class QSMModel(nn.Module):
    """Base class of the dipole-inversion networks (see the module docstring for conventions).

    Subclasses set the class attributes ``name``, ``kind`` and ``multiple`` (spatial dims must be multiples of it;
    use :func:`pad_to_multiple`), pass their full keyword configuration to ``super().__init__`` and implement
    :meth:`forward_all`. ``receptive_field`` is the width 2R + 1 (voxels) of a window centred on an output voxel
    that contains every input voxel it depends on, whatever the weights and the voxel's alignment to the pooling
    grid (R from :func:`reach`): tiles need an overlap of R voxels of context per side to reproduce whole-volume
    inference exactly. ``None`` = global, as for unrolled models whose FFT-based data steps couple the whole volume.
    """

    name: str = ""
    kind: str = "feedforward"
    multiple: int = 1
    receptive_field: int | None = None

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = dict(config)

    # the public API -----------------------------------------------------------------------------------
    def forward(self, field: Tensor, mask: Tensor, kernel: Tensor | None = None, **kwargs: Any) -> Tensor:
        """χ (B, 1, X, Y, Z) in ppm, zero outside the mask; ``kernel`` is required by unrolled models."""
        return self.forward_all(field, mask, kernel, **kwargs)[-1]

    def forward_all(self, field: Tensor, mask: Tensor, kernel: Tensor | None = None, **kwargs: Any) -> list[Tensor]:
        """Every intermediate output (ppm), the last one being :meth:`forward`'s result."""
        raise NotImplementedError

    def loss(
        self, outputs: list[Tensor], target: Tensor, mask: Tensor, field: Tensor, kernel: Tensor | None = None
    ) -> Tensor:
        """The model's own training loss (default: masked L1 of the final output)."""
        return masked_l1(outputs[-1], target, mask)

    # helpers ---------------------------------------------------------------------------------------------
    def _prepare(self, field: Tensor, mask: Tensor, kernel: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Validate shapes; return float32 field and mask (and the kernel for unrolled models)."""
        if field.dim() != 5 or field.shape[1] != 1:
            raise ValueError(f"field: expected a (B, 1, X, Y, Z) tensor, got shape {tuple(field.shape)}")
        if mask.dim() != 5 or mask.shape[-3:] != field.shape[-3:] or mask.shape[1] != 1:
            raise ValueError(f"mask: expected shape {tuple(field.shape)}, got {tuple(mask.shape)}")
        spatial = tuple(field.shape[-3:])
        if any(n % self.multiple for n in spatial):
            raise ValueError(
                f"field: spatial shape {spatial} must be a multiple of {self.multiple} for model {self.name!r}; "
                "pad it with pad_to_multiple(x, model.multiple)"
            )
        if self.kind == "unrolled":
            if kernel is None:
                raise ValueError(f"kernel: model {self.name!r} is unrolled and needs the dipole kernel (dipole_half)")
            _check_kernel(field, kernel)
            kernel = kernel.to(device=field.device, dtype=torch.float32)
        return field.float(), mask.to(dtype=torch.float32), kernel

    def _use_channels_last(self) -> None:
        """Store 5-D weights channels-last (see :func:`channels_last`); call at the end of ``__init__``.

        ``load_state_dict``, ``.to(device)`` and optimiser states keep the layout, so saved weights load unchanged.
        """
        self.to(memory_format=torch.channels_last_3d)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, kind={self.kind!r}, multiple={self.multiple}"


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def model_summary(model: QSMModel) -> dict[str, Any]:
    """``{"name", "kind", "parameters", "multiple", "config"}`` — what a model card records about the network."""
    return {
        "name": model.name,
        "kind": model.kind,
        "parameters": count_parameters(model),
        "multiple": int(model.multiple),
        "config": dict(model.config),
    }
