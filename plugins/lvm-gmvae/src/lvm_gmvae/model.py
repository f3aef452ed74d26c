"""The paper's GMVAE: the VAE's networks with a mixture-of-Gaussians prior.

p(z) = (1/k) sum_i N(z | mu_i, diag(sigma_i^2)) with k = 500 learnable components. The KL
between the Gaussian posterior and this prior has no closed form, so the toolkit's ELBO
falls back to the Monte-Carlo estimate log p(z) - log q(z) at the posterior sample, in
training, evaluation and refinement alike.

References:
    Dilokthanakul et al., "Deep Unsupervised Clustering with Gaussian Mixture Variational
    Autoencoders", 2016; Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pyro.distributions as dist
import torch
from lvm_vae.model import VAE, VAEConfig
from torch import nn
from torch.nn import functional as F

from lvmtoolkit import installed_version
from lvmtoolkit.errors import CheckpointError


@dataclass
class GMVAEConfig(VAEConfig):
    """The VAE's architecture plus the number of mixture components.

    Attributes:
        components: Number k of Gaussians in the prior (uniform weights).
    """

    components: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.components < 1:
            raise CheckpointError(f"components must be positive, got {self.components}")


class GMVAE(VAE):
    """VAE whose prior is a uniform mixture of k learnable diagonal Gaussians."""

    name = "gmvae"
    version = installed_version("lvm-gmvae")
    config_class = GMVAEConfig

    def __init__(self, config: GMVAEConfig | None = None):
        config = config or GMVAEConfig()
        super().__init__(config)
        k, d = config.components, config.latent_dim
        self.prior_loc = nn.Parameter(torch.randn(k, d))
        # softplus(0.5413) = 1: components start as unit Gaussians
        self.prior_raw_scale = nn.Parameter(torch.full((k, d), 0.5413))

    def prior(self, num: int, like: torch.Tensor) -> dist.TorchDistribution:
        k = self.config.components
        components = dist.Normal(
            self.prior_loc, F.softplus(self.prior_raw_scale) + 1e-4, validate_args=False
        ).to_event(1)
        weights = dist.Categorical(logits=self.prior_loc.new_zeros(k), validate_args=False)
        mixture = DiagonalGaussianMixture(weights, components, validate_args=False)
        return mixture.expand([num])

    @classmethod
    def default_checkpoint(cls) -> Path | None:
        path = Path(__file__).parent / "checkpoints" / "gmvae-mnist-5k"
        return path if path.is_dir() else None


class DiagonalGaussianMixture(dist.MixtureSameFamily):
    """A mixture of diagonal Gaussians shared by the batch, scored by matrix products.

    ``MixtureSameFamily.log_prob`` broadcasts every value against every component: with
    500 components and 10 dimensions that is ten element-wise passes over N x 5,000
    numbers, forward and backward, five times the cost of the VAE's decoder in a
    refinement step. The squared Mahalanobis distances are instead
    ``z^2 @ P.T - 2 z @ (mu P).T + sum(mu^2 P)`` with ``P = 1 / sigma^2``: three products
    of (N, D) by (D, K), computed in float64 so that the expansion loses nothing to
    cancellation. Sampling, shapes and everything else are ``MixtureSameFamily``'s.
    """

    def expand(self, batch_shape: torch.Size, _instance: object = None) -> DiagonalGaussianMixture:
        new = self._get_checked_instance(DiagonalGaussianMixture, _instance)
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        normal = self.component_distribution.base_dist
        # The components are shared by the batch: one (K, D) set, however expanded.
        index = (0,) * (normal.loc.dim() - 2)
        loc, scale = normal.loc[index].double(), normal.scale[index].double()
        precision = scale.pow(-2)
        z = value.double()
        squared = (
            z.pow(2) @ precision.T
            - 2.0 * z @ (loc * precision).T
            + (loc.pow(2) * precision).sum(-1)
        )
        log_norm = scale.log().sum(-1) + 0.5 * loc.shape[-1] * math.log(2 * math.pi)
        weights = self.mixture_distribution.logits[index].double()  # normalised by Categorical
        log_p = torch.logsumexp(weights - log_norm - 0.5 * squared, dim=-1)
        return log_p.to(value.dtype)
