"""Linear-Gaussian VAE (probabilistic PCA) with a linear encoder.

p(z) = N(0, I), p(x | z) = N(W z + b, sigma^2 I), q(z | x) = N(A (x - b), diag(s^2)).
Everything is analytic: log p(x) = log N(x; b, W W^T + sigma^2 I), the posterior is
N(Sigma W^T (x - b) / sigma^2, Sigma) with Sigma = (I + W^T W / sigma^2)^-1, and the ELBO of
any diagonal Gaussian q has a closed form. When the columns of W are orthogonal (as the
closed-form pPCA fit makes them) the posterior is diagonal, so the mean-field Gaussian
family contains it: the approximation gap is zero and only the amortization gap remains.
That makes this model the reference on which bounds and gap estimates are checked.

References:
    Tipping & Bishop, "Probabilistic Principal Component Analysis", JRSS B, 1999.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from lvmtoolkit import DATA_PLATE, AmortizedGaussianPosterior, Model, installed_version
from lvmtoolkit.errors import CheckpointError, LvmError


@dataclass
class LinearGaussianConfig:
    """Shapes of the linear-Gaussian VAE.

    Attributes:
        image_shape: ``(channels, height, width)`` of one datapoint.
        latent_dim: Dimension of z.
    """

    image_shape: tuple[int, ...] = (1, 28, 28)
    latent_dim: int = 10

    def __post_init__(self) -> None:
        self.image_shape = tuple(int(v) for v in self.image_shape)
        if len(self.image_shape) != 3 or min(self.image_shape) < 1 or self.latent_dim < 1:
            raise CheckpointError("image_shape must be (C, H, W) and latent_dim positive")


class LinearGaussian(Model):
    """Probabilistic PCA as a VAE: Gaussian likelihood, exact log p(x) and posterior."""

    name = "linear-gaussian"
    version = installed_version("lvm-linear-gaussian")
    config_class = LinearGaussianConfig
    binary_data = False

    def __init__(self, config: LinearGaussianConfig | None = None):
        config = config or LinearGaussianConfig()
        super().__init__(config)
        self.data_shape = config.image_shape
        d, k = math.prod(config.image_shape), config.latent_dim
        self.weight = nn.Parameter(torch.randn(d, k) / math.sqrt(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.log_noise = nn.Parameter(torch.tensor(0.0))
        self.enc_weight = nn.Parameter(torch.zeros(k, d))
        self.enc_log_scale = nn.Parameter(torch.zeros(k))

    @property
    def latent_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"z": (self.config.latent_dim,)}

    @property
    def noise(self) -> torch.Tensor:
        return self.log_noise.exp()

    def encode(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        loc = (x.flatten(1) - self.bias) @ self.enc_weight.T
        return {"z": (loc, self.enc_log_scale.exp().expand_as(loc))}

    def amortized_posterior(self) -> AmortizedGaussianPosterior:
        return AmortizedGaussianPosterior(self.encode)

    def decode(self, z: dict[str, torch.Tensor]) -> dist.TorchDistribution:
        mean = z["z"] @ self.weight.T + self.bias
        mean = mean.view(*mean.shape[:-1], *self.data_shape)
        return dist.Normal(mean, self.noise, validate_args=False).to_event(3)

    def latent_prior(
        self, num: int, like: torch.Tensor
    ) -> dict[str, dist.TorchDistribution] | None:
        if self.overrides(LinearGaussian, "model"):
            return None
        zeros = like.new_zeros(num, self.config.latent_dim)
        return {"z": dist.Normal(zeros, 1.0 + zeros, validate_args=False).to_event(1)}

    def model(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z = pyro.sample("z", self.latent_prior(x.shape[0], x)["z"])
            likelihood = self.decode({"z": z})
            if mask is not None:
                likelihood = likelihood.base_dist.mask(mask.bool()).to_event(3)
            pyro.sample("x", likelihood, obs=x)

    def sample_prior(self, num_samples: int) -> dict[str, torch.Tensor]:
        return {"z": torch.randn(num_samples, self.config.latent_dim, device=self.weight.device)}

    # --- closed forms -----------------------------------------------------------------

    @torch.no_grad()
    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) per datapoint (float64 internally)."""
        w, b = self.weight.double(), self.bias.double()
        centred = x.flatten(1).double() - b
        d, k = w.shape
        var = self.noise.double() ** 2
        # Woodbury: C = W W^T + var I; work in the k-dimensional latent space.
        inner = torch.eye(k, dtype=w.dtype, device=w.device) + w.T @ w / var
        chol = torch.linalg.cholesky(inner)
        projected = centred @ w / var
        solved = torch.cholesky_solve(projected.T, chol).T
        quad = (centred**2).sum(1) / var - (projected * solved).sum(1)
        logdet = 2 * torch.log(torch.diagonal(chol)).sum() + d * torch.log(var)
        return (-0.5 * (quad + logdet + d * math.log(2 * math.pi))).float()

    @torch.no_grad()
    def exact_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(N, k)`` and covariance ``(k, k)`` of p(z | x)."""
        w, var = self.weight, self.noise**2
        k = w.shape[1]
        cov = torch.linalg.inv(torch.eye(k, device=w.device) + w.T @ w / var)
        mean = (x.flatten(1) - self.bias) @ w @ cov / var
        return mean, cov

    @torch.no_grad()
    def exact_elbo(self, x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """ELBO of q = N(loc, diag(scale^2)) per datapoint, in closed form."""
        w, var = self.weight, self.noise**2
        d = w.shape[0]
        residual = x.flatten(1) - loc @ w.T - self.bias
        spread = (scale**2 * (w**2).sum(0)).sum(1)
        expected_ll = -0.5 * (
            d * torch.log(2 * math.pi * var) + ((residual**2).sum(1) + spread) / var
        )
        kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum(1)
        return expected_ll - kl

    @torch.no_grad()
    def mean_field_optimum(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale ``(N, k)`` of the best diagonal Gaussian q*: the exact mean and
        ``1 / sqrt(diag(precision))``, which maximise the ELBO within the family."""
        mean, cov = self.exact_posterior(x)
        scale = torch.diagonal(torch.linalg.inv(cov)).rsqrt()
        return mean, scale.expand_as(mean).contiguous()

    def correlate(self, strength: float = 0.9) -> LinearGaussian:
        """Mix the decoder's columns, ``W <- W (I + strength 11^T)``, so that the exact
        posterior's latents are correlated (in place; returns the model).

        With correlated latents no diagonal Gaussian is the posterior: the approximation
        gap is positive and known exactly, which is what estimators of log p(x) (IWAE, AIS)
        are validated against.
        """
        k = self.config.latent_dim
        mix = torch.eye(k, device=self.weight.device) + strength * torch.ones(
            k, k, device=self.weight.device
        )
        with torch.no_grad():
            self.weight.copy_(self.weight @ mix)
        return self

    @classmethod
    def random(
        cls,
        image_shape: tuple[int, ...] = (1, 4, 4),
        latent_dim: int = 10,
        noise: float = 0.5,
        seed: int = 0,
    ) -> LinearGaussian:
        """A model with N(0, 1 / latent_dim) decoder weights, zero bias and the given pixel
        noise: data simulated from it come with their exact log p(x) and posterior."""
        model = cls(LinearGaussianConfig(image_shape, latent_dim))
        generator = torch.Generator().manual_seed(seed)
        d = math.prod(model.config.image_shape)
        with torch.no_grad():
            model.weight.copy_(torch.randn(d, latent_dim, generator=generator))
            model.weight.div_(math.sqrt(latent_dim))
            model.bias.zero_()
            model.log_noise.fill_(math.log(noise))
        return model.eval()

    @classmethod
    def fit_ppca(cls, images: torch.Tensor, latent_dim: int = 10) -> LinearGaussian:
        """Maximum-likelihood pPCA in closed form; the encoder is set to the exact posterior.

        W = U_k (Lambda_k - sigma^2 I)^(1/2) has orthogonal columns, so the exact posterior is
        diagonal and a linear encoder with constant scale represents it exactly.
        """
        n = images.shape[0]
        if n < 2:
            raise LvmError("fit_ppca needs at least two images")
        model = cls(LinearGaussianConfig(tuple(images.shape[1:]), latent_dim))
        data = images.flatten(1).double()
        mean = data.mean(0)
        cov = (data - mean).T @ (data - mean) / n
        eigvals, eigvecs = torch.linalg.eigh(cov)
        eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)
        var = eigvals[latent_dim:].mean().clamp_min(1e-6)
        weight = eigvecs[:, :latent_dim] * (eigvals[:latent_dim] - var).clamp_min(0).sqrt()
        with torch.no_grad():
            model.weight.copy_(weight.float())
            model.bias.copy_(mean.float())
            model.log_noise.copy_(0.5 * var.log().float())
            _, post_cov = model.exact_posterior(images[:1])
            model.enc_weight.copy_((weight.float() @ post_cov / var.float()).T)
            model.enc_log_scale.copy_(0.5 * torch.diagonal(post_cov).log())
        return model.eval()
