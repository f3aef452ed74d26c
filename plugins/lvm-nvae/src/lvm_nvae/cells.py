"""Residual cells of the NVAE: Swish activations, batch norm, squeeze-and-excitation.

One cell type serves the encoder and the decoder: BN-Swish-Conv3x3-BN-Swish-Conv3x3-SE,
added to its input scaled by 0.1, so a deep stack starts close to the identity and trains
stably. A cell can halve the resolution (encoder) or double it (decoder) on the way.
NVAE's generative cell (1x1 expansion, depthwise 5x5, 1x1 projection) suits GPUs; on CPU
its depthwise backward pass dominated the profile and made a training step of the tiny model
about 35% slower than with this cell, so this cell is used in both paths.

References:
    Vahdat & Kautz, "NVAE: A Deep Hierarchical Variational Autoencoder", NeurIPS 2020;
    Hu, Shen & Sun, "Squeeze-and-Excitation Networks", CVPR 2018; Ramachandran, Zoph & Le,
    "Searching for Activation Functions", 2017 (Swish).
"""

from __future__ import annotations

import torch
from torch import nn

RESIDUAL_SCALE = 0.1
RESAMPLING = ("none", "down", "up")


class SqueezeExcitation(nn.Module):
    """Channel gating from globally pooled features: ``x * sigmoid(MLP(mean(x)))``."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        squeezed = max(channels // reduction, 4)
        self.gate = nn.Sequential(
            nn.Linear(channels, squeezed),
            nn.ReLU(),
            nn.Linear(squeezed, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x.mean((2, 3)))[:, :, None, None]


class ResidualCell(nn.Module):
    """``skip(x) + 0.1 * SE(Conv(Swish(BN(Conv(Swish(BN(x)))))))``.

    Args:
        channels_in: Input channels.
        channels_out: Output channels.
        resample: ``"down"`` halves the resolution (stride-2 first convolution), ``"up"``
            doubles it first (nearest neighbour), ``"none"`` keeps it.
    """

    def __init__(self, channels_in: int, channels_out: int, resample: str = "none"):
        super().__init__()
        if resample not in RESAMPLING:
            raise ValueError(f"resample must be one of {RESAMPLING}, got {resample!r}")
        stride = 2 if resample == "down" else 1
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest") if resample == "up" else None
        self.branch = nn.Sequential(
            nn.BatchNorm2d(channels_in),
            nn.SiLU(),
            nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1),
            nn.BatchNorm2d(channels_out),
            nn.SiLU(),
            nn.Conv2d(channels_out, channels_out, 3, padding=1),
            SqueezeExcitation(channels_out),
        )
        self.skip = (
            nn.Identity()
            if channels_in == channels_out and stride == 1
            else nn.Conv2d(channels_in, channels_out, 1, stride=stride)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        return self.skip(x) + RESIDUAL_SCALE * self.branch(x)
