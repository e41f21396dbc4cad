"""xQSM: a U-Net whose convolutions are octave convolutions (high/low spatial-frequency feature groups).

Architecture: every feature map is split into a high-frequency group at the level's resolution and a
low-frequency group (fraction ``alpha`` of the channels) at half that resolution. An octave convolution computes

    Y_H = f_HH(X_H) + up(f_LH(X_L)),      Y_L = f_LL(X_L) + f_HL(pool(X_H)),

with 3³ convolutions f, 2³ average pooling and nearest-neighbour 2× up-sampling, so information is exchanged
between the two resolutions in every layer; the low group sees a doubled receptive field at an eighth of the cost.
Blocks are ``convs`` × (octave conv → BatchNorm per group → ReLU). The U-Net has ``depth`` 2³ max-poolings
(both groups pooled), 2³ transposed convolutions per group for up-sampling, skip connections per group, a last
octave convolution that merges everything into the high group and a 1³ convolution to χ.

Paper: Gao Y, Zhu X, Moffat BA, Glarin R, Wilman AH, Pike GB, Crozier S, Liu F, Sun H. "xQSM: quantitative
susceptibility mapping with octave convolutional and noise-regularized neural networks." NMR in Biomedicine
2021;34(3):e4461 (α = 0.5, ~5 M parameters, 48³ patches, L2 loss, noise augmentation in training). Octave
convolution: Chen Y et al., "Drop an Octave", ICCV 2019.

What we changed and why: ``depth`` 3 by default (the U-Net baseline uses 4) because the low-frequency group adds one
more halving: 48³ training patches need every resolution to stay an integer, and the coarsest grid (1/16) matches the
baseline's; a base width of 16 channels (8 high + 8 low at the first level): 1.37 M parameters (2.6 MiB in float16), a
training step of ~0.7 s for batch 2 at 48³ on one CPU core; BatchNorm rather than instance norm (tiled inference must
match whole-volume inference). The noise regularisation of the paper is a training-data augmentation and lives in the
training stream.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    FIELD_SCALE,
    QSMModel,
    Span,
    channels_last,
    init_weights,
    masked_mse,
    reach,
)
from .unet import _check_norm, level_widths

__all__ = ["XQSM", "OctaveBlock", "OctaveConv"]

Pair = tuple[Tensor, "Tensor | None"]


def _conv(cin: int, cout: int, k: int) -> nn.Conv3d | None:
    return nn.Conv3d(cin, cout, k, padding=k // 2, bias=False) if cin > 0 and cout > 0 else None


class OctaveConv(nn.Module):
    """Octave convolution between (high, low) feature groups; a group with 0 channels is absent."""

    def __init__(self, in_h: int, in_l: int, out_h: int, out_l: int, kernel_size: int = 3):
        super().__init__()
        self.hh = _conv(in_h, out_h, kernel_size)
        self.hl = _conv(in_h, out_l, kernel_size)
        self.lh = _conv(in_l, out_h, kernel_size)
        self.ll = _conv(in_l, out_l, kernel_size)

    def forward(self, h: Tensor, low: Tensor | None) -> Pair:
        yh = self.hh(h)
        if self.lh is not None and low is not None:
            yh = yh + F.interpolate(self.lh(low), scale_factor=2, mode="nearest")
        yl = None
        if self.hl is not None:
            yl = self.hl(F.avg_pool3d(h, 2))
            if self.ll is not None and low is not None:
                yl = yl + self.ll(low)
        return yh, yl


class OctaveBlock(nn.Module):
    """``convs`` × (octave conv → BatchNorm on each group → ReLU)."""

    def __init__(
        self,
        in_hl: tuple[int, int],
        out_hl: tuple[int, int],
        *,
        convs: int = 2,
        norm: str = "batch",
        kernel_size: int = 3,
    ):
        super().__init__()
        _check_norm(norm)
        ins = [in_hl] + [out_hl] * (convs - 1)
        self.convs = nn.ModuleList(OctaveConv(*i, *out_hl, kernel_size) for i in ins)
        if norm == "batch":
            self.norm_h = nn.ModuleList(nn.BatchNorm3d(out_hl[0]) for _ in range(convs))
            self.norm_l = nn.ModuleList(nn.BatchNorm3d(out_hl[1]) for _ in range(convs)) if out_hl[1] else None
        else:
            self.norm_h = self.norm_l = None

    def forward(self, h: Tensor, low: Tensor | None) -> Pair:
        for i, conv in enumerate(self.convs):
            h, low = conv(h, low)
            if self.norm_h is not None:
                h = self.norm_h[i](h)
                if low is not None and self.norm_l is not None:
                    low = self.norm_l[i](low)
            h = torch.relu(h)
            low = torch.relu(low) if low is not None else None
        return h, low


def _octave_walk(h: Span, low: Span, half: int, *, to_low: bool = True) -> tuple[Span, Span]:
    """:class:`Span` rules of one octave convolution (low group one level coarser than the high group)."""
    new_h = h.conv(half).hull(low.conv(half).up())
    new_l = low.conv(half).hull(h.down().conv(half)) if to_low else Span()
    return new_h, new_l


def _walk(span: Span, depth: int, convs: int, half: int) -> Span:
    """:class:`Span` walk through :class:`XQSM` (receptive field, see :class:`~qsmbids.deep.models.base.Span`)."""

    def block(h: Span, low: Span) -> tuple[Span, Span]:
        for _ in range(convs):
            h, low = _octave_walk(h, low, half)
        return h, low

    h, low, skips = span, Span(), []
    for _ in range(depth):
        h, low = block(h, low)
        skips.append((h, low))
        h, low = h.down(), low.down()
    h, low = block(h, low)
    for level in reversed(range(depth)):
        h, low = block(h.up().hull(skips[level][0]), low.up().hull(skips[level][1]))
    return _octave_walk(h, low, half, to_low=False)[0]


class XQSM(QSMModel):
    """Octave-convolution U-Net (xQSM, Gao et al. 2021): field (ppm) → χ (ppm). See the module docstring."""

    name = "xqsm"
    kind = "feedforward"

    def __init__(
        self,
        *,
        width: int = 16,
        depth: int = 3,
        max_width: int = 128,
        alpha: float = 0.5,
        convs: int = 2,
        kernel_size: int = 3,
        norm: str = "batch",
    ):
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha: expected a low-frequency fraction in (0, 1), got {alpha}")
        super().__init__(
            {
                "width": width,
                "depth": depth,
                "max_width": max_width,
                "alpha": float(alpha),
                "convs": convs,
                "kernel_size": kernel_size,
                "norm": norm,
            }
        )
        self.depth = depth
        self.multiple = 2 ** (depth + 1)
        self.receptive_field = 2 * reach(lambda s: _walk(s, depth, convs, kernel_size // 2), 2 ** (depth + 1)) + 1
        ch = level_widths(width, depth, max_width)
        split = [(c - max(1, round(alpha * c)), max(1, round(alpha * c))) for c in ch]
        kw = {"convs": convs, "norm": norm, "kernel_size": kernel_size}
        self.enc = nn.ModuleList(
            OctaveBlock((1, 0) if lv == 0 else split[lv - 1], split[lv], **kw) for lv in range(depth + 1)
        )
        self.up_h = nn.ModuleList(
            nn.ConvTranspose3d(split[lv + 1][0], split[lv][0], 2, stride=2) for lv in range(depth)
        )
        self.up_l = nn.ModuleList(
            nn.ConvTranspose3d(split[lv + 1][1], split[lv][1], 2, stride=2) for lv in range(depth)
        )
        self.dec = nn.ModuleList(
            OctaveBlock((2 * split[lv][0], 2 * split[lv][1]), split[lv], **kw) for lv in range(depth)
        )
        self.merge = OctaveBlock(split[0], (ch[0], 0), convs=1, norm=norm, kernel_size=kernel_size)
        self.head = nn.Conv3d(ch[0], 1, 1)
        init_weights(self)
        self._use_channels_last()

    def forward_all(self, field: Tensor, mask: Tensor, kernel: Tensor | None = None, **kwargs: Any) -> list[Tensor]:
        field, mask, _ = self._prepare(field, mask, None)
        h, low = channels_last(field * mask * FIELD_SCALE), None
        skips = []
        for lv in range(self.depth):
            h, low = self.enc[lv](h, low)
            skips.append((h, low))
            h, low = F.max_pool3d(h, 2), F.max_pool3d(low, 2)
        h, low = self.enc[self.depth](h, low)
        for lv in reversed(range(self.depth)):
            sh, sl = skips[lv]
            h = torch.cat([self.up_h[lv](h), sh], dim=1)
            low = torch.cat([self.up_l[lv](low), sl], dim=1)
            h, low = self.dec[lv](h, low)
        h, _ = self.merge(h, low)
        return [self.head(h).float() / FIELD_SCALE * mask]

    def loss(
        self, outputs: list[Tensor], target: Tensor, mask: Tensor, field: Tensor, kernel: Tensor | None = None
    ) -> Tensor:
        """Masked L2 (MSE) between χ̂ and χ, as in xQSM."""
        return masked_mse(outputs[-1], target, mask)
