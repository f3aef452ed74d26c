"""A fully convolutional VAE with a spatial latent, built on ``lvmtoolkit.TorchVAE``.

The encoder maps a 28x28 digit to a ``(latent_channels, 7, 7)`` Gaussian (location and
log-variance stacked on the channel axis); the decoder maps z back to Bernoulli logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

import lvmtoolkit as lvm


@dataclass
class ConvVAEConfig:
    """Architecture of the conv VAE (saved in checkpoints as JSON).

    Attributes:
        channels: Channels of the first convolution (the second has twice as many).
        latent_channels: Channels of the 7x7 latent.
    """

    channels: int = 16
    latent_channels: int = 2

    def __post_init__(self) -> None:
        if self.channels < 1 or self.latent_channels < 1:
            raise lvm.CheckpointError("channels and latent_channels must be positive")


class ConvVAE(lvm.TorchVAE):
    """Convolutional VAE, latent (latent_channels, 7, 7), Bernoulli likelihood."""

    name = "conv-vae"
    version = lvm.installed_version("lvm-example-backend")
    config_class = ConvVAEConfig

    def __init__(self, config: ConvVAEConfig | None = None):
        config = config or ConvVAEConfig()
        c, k = config.channels, config.latent_channels
        encoder = nn.Sequential(
            nn.Conv2d(1, c, 4, stride=2, padding=1),  # 28 -> 14
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1),  # 14 -> 7
            nn.ReLU(),
            nn.Conv2d(2 * c, 2 * k, 3, padding=1),  # loc and log-variance, stacked
        )
        decoder = nn.Sequential(
            nn.Conv2d(k, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1),  # 7 -> 14
            nn.ReLU(),
            nn.ConvTranspose2d(c, 1, 4, stride=2, padding=1),  # 14 -> 28, logits
        )
        super().__init__(
            encoder,
            decoder,
            data_shape=(1, 28, 28),
            latent_shape=(k, 7, 7),
            likelihood="bernoulli",
            encoder_scale="logvar",
            config=config,
        )

    @classmethod
    def default_checkpoint(cls) -> Path | None:
        path = Path(__file__).parent / "checkpoints" / "conv-vae-mnist-5k"
        return path if path.is_dir() else None
