"""The paper's VAE: MLP encoder and decoder 784-300-300, z=10, Bernoulli likelihood.

References:
    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from lvmtoolkit import DATA_PLATE, AmortizedGaussianPosterior, Model, installed_version
from lvmtoolkit.errors import CheckpointError


@dataclass
class VAEConfig:
    """Architecture of the VAE.

    Attributes:
        image_shape: ``(channels, height, width)`` of one datapoint.
        hidden: Widths of the hidden layers (encoder; the decoder mirrors them).
        latent_dim: Dimension of z.
    """

    image_shape: tuple[int, ...] = (1, 28, 28)
    hidden: tuple[int, ...] = (300, 300)
    latent_dim: int = 10

    def __post_init__(self) -> None:
        self.image_shape = tuple(int(v) for v in self.image_shape)
        self.hidden = tuple(int(v) for v in self.hidden)
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise CheckpointError(f"image_shape must be (C, H, W), got {self.image_shape}")
        if not self.hidden or min(self.hidden) < 1 or self.latent_dim < 1:
            raise CheckpointError("hidden widths and latent_dim must be positive")


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


class VAE(Model):
    """Gaussian-latent VAE with N(0, I) prior and a Bernoulli likelihood over pixels."""

    name = "vae"
    version = installed_version("lvm-vae")
    config_class = VAEConfig
    chunk_size = 2048  # measured faster than 1024 per svi step and evaluation pass (CPU)

    def __init__(self, config: VAEConfig | None = None):
        config = config or VAEConfig()
        super().__init__(config)
        self.data_shape = config.image_shape
        pixels = int(torch.tensor(config.image_shape).prod())
        self.encoder = _mlp([pixels, *config.hidden, 2 * config.latent_dim])
        self.decoder = _mlp([config.latent_dim, *reversed(config.hidden), pixels])

    @property
    def latent_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"z": (self.config.latent_dim,)}

    def encode(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Encoder output: ``{"z": (loc, scale)}``."""
        loc, raw_scale = self.encoder(x.flatten(1)).chunk(2, dim=-1)
        return {"z": (loc, F.softplus(raw_scale) + 1e-6)}

    def amortized_posterior(self) -> AmortizedGaussianPosterior:
        return AmortizedGaussianPosterior(self.encode)

    def decode(self, z: dict[str, torch.Tensor]) -> dist.TorchDistribution:
        logits = self.decoder(z["z"])
        logits = logits.view(*logits.shape[:-1], *self.data_shape)
        return dist.Bernoulli(logits=logits, validate_args=False).to_event(3)

    def prior(self, num: int, like: torch.Tensor) -> dist.TorchDistribution:
        zeros = like.new_zeros(num, self.config.latent_dim)
        return dist.Normal(zeros, 1.0 + zeros, validate_args=False).to_event(1)

    def latent_prior(
        self, num: int, like: torch.Tensor
    ) -> dict[str, dist.TorchDistribution] | None:
        if self.overrides(VAE, "model"):
            return None
        return {"z": self.prior(num, like)}  # flat: `model` draws z from it, then x

    def model(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        n = x.shape[0]
        with pyro.plate(DATA_PLATE, n):
            z = pyro.sample("z", self.prior(n, x))
            likelihood = self.decode({"z": z})
            if mask is not None:
                likelihood = likelihood.base_dist.mask(mask.bool()).to_event(3)
            pyro.sample("x", likelihood, obs=x)

    def sample_prior(self, num_samples: int) -> dict[str, torch.Tensor]:
        like = next(self.parameters())
        return {"z": self.prior(num_samples, like).sample()}

    @classmethod
    def default_checkpoint(cls) -> Path | None:
        path = Path(__file__).parent / "checkpoints" / "vae-mnist-5k"
        return path if path.is_dir() else None
