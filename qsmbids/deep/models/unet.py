"""3-D U-Net dipole inversion (QSMnet / DeepQSM style) and the U-Net backbone shared by the unrolled models.

Architecture (``UNet``): an encoder of ``depth + 1`` levels, each ``convs`` × (3³ convolution → BatchNorm → ReLU),
2³ max-pooling between levels and channels doubling per level (``width``·2^l, capped at ``max_width``); a decoder
that up-samples with 2³ stride-2 transposed convolutions, concatenates the encoder features of the same level
(skip connections) and applies the same conv blocks; a 1³ convolution to one output channel. The input is the
masked local field, the output χ; with ``residual=True`` the network predicts a correction added to the input
field (a crude first estimate: χ and the field share their sign in most tissue).

Papers:
* Yoon J, Gong E, Chatnuntawech I, et al. "Quantitative susceptibility mapping using deep neural network:
  QSMnet." NeuroImage 2018;179:199–206 — 3-D U-Net, 5³ kernels, 32→512 channels, loss
  w₁·L1 + w₂·model loss ‖d∗χ̂ − d∗χ‖₁ + w₃·gradient loss (here 1, 0.5, 0.1).
* Jung W, Yoon J, Ji S, et al. "Exploring linearity of deep neural network trained QSM: QSMnet+."
  NeuroImage 2020;211:116619 — same network, wider susceptibility range in training.
* Bollmann S, Rasmussen KGB, Kristensen M, et al. "DeepQSM — using deep learning to solve the dipole inversion
  for quantitative susceptibility mapping." NeuroImage 2019;195:373–383 — U-Net trained on synthetic shapes only.

What we changed and why: 3³ instead of 5³ kernels and a base width of 16 (32 in QSMnet) with channels capped at 64
(16-32-64-64-64), so the network has 1.51 M parameters (2.9 MiB in float16) and a training step (forward + backward,
batch 2, 48³) takes ~0.75 s on one CPU core, inference ~0.25 s; BatchNorm (not instance norm) so that eval-mode
inference is voxel-local within the receptive field and tiled inference matches whole-volume inference. Loss weights
follow QSMnet; losses are masked.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..physics import apply_dipole
from .base import (
    FIELD_SCALE,
    QSMModel,
    channels_last,
    default_kernel,
    gradient_difference,
    init_weights,
    masked_l1,
    reach,
    unet_walk,
)

__all__ = ["ConvBlock", "UNet", "UNet3d", "level_widths"]


def level_widths(width: int, depth: int, max_width: int) -> list[int]:
    """Channels per level: ``width``·2^l capped at ``max_width``, for l = 0 … depth."""
    if width < 1 or depth < 0:
        raise ValueError(f"width/depth: expected width >= 1 and depth >= 0, got {width}, {depth}")
    return [min(width * 2**level, max(max_width, width)) for level in range(depth + 1)]


def _check_norm(norm: str) -> str:
    if norm not in ("batch", "none"):
        raise ValueError(f"norm: expected 'batch' or 'none', got {norm!r}")
    return norm


class ConvBlock(nn.Module):
    """``convs`` × (k³ convolution → [BatchNorm] → ReLU).

    ``states`` > 1 keeps one set of BatchNorm layers per state (e.g. per iteration of a weight-shared recurrent
    network, whose feature statistics differ between iterations) while the convolutions are shared.
    """

    def __init__(
        self, cin: int, cout: int, *, convs: int = 2, norm: str = "batch", kernel_size: int = 3, states: int = 1
    ):
        super().__init__()
        norm = _check_norm(norm)
        pad = kernel_size // 2
        self.convs = nn.ModuleList(
            nn.Conv3d(cin if i == 0 else cout, cout, kernel_size, padding=pad, bias=norm == "none")
            for i in range(convs)
        )
        self.norms = (
            nn.ModuleList(nn.ModuleList(nn.BatchNorm3d(cout) for _ in range(convs)) for _ in range(states))
            if norm == "batch"
            else None
        )

    def forward(self, x: Tensor, state: int = 0) -> Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms is not None:
                x = self.norms[state][i](x)
            x = torch.relu(x)
        return x


class UNet3d(nn.Module):
    """Plain 3-D U-Net backbone (no scaling, no masking): ``cin`` channels in, ``cout`` channels out."""

    def __init__(
        self,
        cin: int = 1,
        cout: int = 1,
        *,
        width: int = 16,
        depth: int = 4,
        max_width: int = 128,
        convs: int = 2,
        norm: str = "batch",
        kernel_size: int = 3,
    ):
        super().__init__()
        ch = level_widths(width, depth, max_width)
        kw = {"convs": convs, "norm": norm, "kernel_size": kernel_size}
        self.depth = depth
        self.enc = nn.ModuleList(ConvBlock(cin if lv == 0 else ch[lv - 1], ch[lv], **kw) for lv in range(depth + 1))
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList(nn.ConvTranspose3d(ch[lv + 1], ch[lv], 2, stride=2) for lv in range(depth))
        self.dec = nn.ModuleList(ConvBlock(2 * ch[lv], ch[lv], **kw) for lv in range(depth))
        self.head = nn.Conv3d(ch[0], cout, 1)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for lv in range(self.depth):
            x = self.enc[lv](x)
            skips.append(x)
            x = self.pool(x)
        x = self.enc[self.depth](x)
        for lv in reversed(range(self.depth)):
            x = self.dec[lv](torch.cat([self.up[lv](x), skips[lv]], dim=1))
        return self.head(x)


class UNet(QSMModel):
    """QSMnet/DeepQSM-style 3-D U-Net: field (ppm) → χ (ppm). See the module docstring."""

    name = "unet"
    kind = "feedforward"

    def __init__(
        self,
        *,
        width: int = 16,
        depth: int = 4,
        max_width: int = 64,
        convs: int = 2,
        kernel_size: int = 3,
        norm: str = "batch",
        residual: bool = False,
        loss_weights: tuple[float, float, float] | list[float] = (1.0, 0.5, 0.1),
    ):
        weights = [float(w) for w in loss_weights]
        if len(weights) != 3:
            raise ValueError(f"loss_weights: expected 3 weights (L1, model, gradient), got {loss_weights}")
        super().__init__(
            {
                "width": width,
                "depth": depth,
                "max_width": max_width,
                "convs": convs,
                "kernel_size": kernel_size,
                "norm": norm,
                "residual": bool(residual),
                "loss_weights": weights,
            }
        )
        self.multiple = 2**depth
        self.receptive_field = 2 * reach(lambda s: unet_walk(s, depth, convs, kernel_size), 2**depth) + 1
        self.net = UNet3d(
            1, 1, width=width, depth=depth, max_width=max_width, convs=convs, norm=norm, kernel_size=kernel_size
        )
        self.residual = bool(residual)
        self.loss_weights = weights
        self._use_channels_last()

    def forward_all(self, field: Tensor, mask: Tensor, kernel: Tensor | None = None, **kwargs: Any) -> list[Tensor]:
        field, mask, _ = self._prepare(field, mask, None)
        x = channels_last(field * mask * FIELD_SCALE)
        y = self.net(x)
        if self.residual:
            y = y + x
        return [y.float() / FIELD_SCALE * mask]

    def loss(
        self, outputs: list[Tensor], target: Tensor, mask: Tensor, field: Tensor, kernel: Tensor | None = None
    ) -> Tensor:
        """w₁·L1(χ̂, χ) + w₂·L1(D∗χ̂, D∗χ) + w₃·gradient difference, all inside the mask (QSMnet)."""
        chi = outputs[-1]
        w1, w2, w3 = self.loss_weights
        D = kernel if kernel is not None else default_kernel(chi)
        model_loss = masked_l1(apply_dipole(chi, D), apply_dipole(target.float(), D), mask)
        return w1 * masked_l1(chi, target, mask) + w2 * model_loss + w3 * gradient_difference(chi, target, mask)
