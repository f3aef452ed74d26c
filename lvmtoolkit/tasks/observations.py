"""Built-in observation models; this module is a default plugin of the core.

- ``missing``: some pixels are not observed at all (a mask); observed ones are the clean
  pixels. Exact with any pixel likelihood: p(y | z) is p(x | z) on the observed pixels.
- ``gaussian``: y = clip(x + e, 0, 1), e ~ N(0, variance); clipping is treated exactly, as
  censoring (a value at 0 or 1 says only that x + e was at or beyond it). Exact for
  Bernoulli pixels and for Gaussian pixels (the variances add).
- ``salt-pepper``: each pixel, with probability ``rate``, replaced by 0 or 1 (equal odds).
  Exact for Bernoulli pixels; refused for Gaussian ones (a mixture of atoms and densities
  has no common density).
- ``bit-flip``: each binary pixel flipped with probability ``rate``. Bernoulli pixels only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributions import Bernoulli, Distribution, Normal

from lvmtoolkit.core.options import option
from lvmtoolkit.errors import LvmError, OptionError
from lvmtoolkit.hookspecs import hookimpl
from lvmtoolkit.tasks.corruption import make_mask
from lvmtoolkit.tasks.kinds import MASK_KINDS
from lvmtoolkit.tasks.observation_model import ObservationModel, Observed
from lvmtoolkit.tasks.pixels import CensoredGaussianPosterior, CensoredNormal, PointMass

__all__ = ["BitFlip", "GaussianNoise", "Missing", "SaltPepper"]


def _check_binary(name: str, y: torch.Tensor, mask: torch.Tensor | None) -> None:
    values = y if mask is None else y[mask.expand_as(y)]
    if bool(((values != 0) & (values != 1)).any()):
        raise LvmError(
            f"{name} observations of binary pixels are 0 or 1, but the input holds grey "
            "values; threshold it first (e.g. (y > 0.5).float())"
        )


@dataclass
class MissingOptions:
    """Options of the ``missing`` observation model (used when it corrupts clean images)."""

    region: str = option(
        "centre",
        "which pixels `corrupt` removes: " + "; ".join(f"{k}: {v}" for k, v in MASK_KINDS.items()),
        choices=tuple(MASK_KINDS),
    )
    fraction: float = option(
        0.5, "probability that a pixel is missing, for region=random", minimum=0.0, maximum=1.0
    )


class Missing(ObservationModel):
    """Unobserved pixels carry no likelihood; observed ones are the clean pixels (y = x).

    The mask of observed pixels is passed with the data (``mask``, True = observed), as for
    every observation model; this one adds nothing on the observed pixels, so it fits any
    pixel likelihood, and restored images keep the observed pixels bit for bit.
    """

    name = "missing"
    description = "unobserved pixels are missing (a mask); observed pixels are exact"
    options_class = MissingOptions
    keeps_observed = True

    def log_prob(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y, x = torch.broadcast_tensors(y, x)
        return torch.where(y == x, 0.0, -math.inf).to(y.dtype)

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x.clone()

    def corrupt(self, x: torch.Tensor, *, seed: int = 0) -> Observed:
        """Remove the pixels of ``region`` (random masks drawn with ``seed``); they hold 0."""
        o = self.options
        mask = make_mask(o.region, x.shape, seed=seed, missing_fraction=o.fraction).to(x.device)
        return Observed(torch.where(mask, x, torch.zeros_like(x)), mask)

    def marginal(self, pixels: Distribution) -> Distribution:
        return pixels

    def posterior(self, pixels: Distribution, y: torch.Tensor) -> Distribution:
        return PointMass(y.expand(pixels.batch_shape))

    def fits(self) -> list[str]:
        return ["any"]


@dataclass
class GaussianOptions:
    """Options of the ``gaussian`` observation model."""

    variance: float = option(0.5, "noise variance (the paper's 0.5: sd 0.71)", minimum=0.0,
                             exclusive_minimum=True)  # fmt: skip
    clip: bool = option(
        True,
        "y is clipped to [0, 1], the data range; values at 0 or 1 are treated as censored",
    )


class GaussianNoise(ObservationModel):
    """y = clip(x + e, 0, 1) with e ~ N(0, variance): Gaussian noise, clipping as censoring.

    A value strictly inside (0, 1) has the Gaussian density N(y; x, variance); a value at 0
    has the probability that x + e <= 0, Phi(-x / sd), and one at 1 that x + e >= 1. For
    Gaussian pixels x ~ N(loc, scale²) the same holds with variance scale² + variance.
    """

    name = "gaussian"
    description = "additive Gaussian noise, clipped to [0, 1]; the clipping is censoring"
    options_class = GaussianOptions

    @property
    def _bounds(self) -> tuple[float | None, float | None]:
        return (0.0, 1.0) if self.options.clip else (None, None)

    def _noise(self, loc: torch.Tensor, scale: torch.Tensor) -> Distribution:
        if self.options.clip:
            return CensoredNormal(loc, scale, 0.0, 1.0)
        return Normal(loc, scale, validate_args=False)

    def log_prob(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        sd = torch.full_like(x, math.sqrt(self.options.variance))
        return self._noise(x, sd).log_prob(y)

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        noisy = x + noise * math.sqrt(self.options.variance)
        return noisy.clamp(0.0, 1.0) if self.options.clip else noisy

    def check(self, y: torch.Tensor, pixels: Distribution, mask: torch.Tensor | None) -> None:
        if self.options.clip and (float(y.min()) < 0.0 or float(y.max()) > 1.0):
            raise LvmError(
                f"gaussian noise clipped to [0, 1] gives values in [0, 1], but the input "
                f"holds values in [{float(y.min()):.4g}, {float(y.max()):.4g}]; "
                "pass clip=false for unclipped noise"
            )

    def gaussian_marginal(self, loc: torch.Tensor, scale: torch.Tensor) -> Distribution:
        return self._noise(loc, (scale**2 + self.options.variance).sqrt())

    def gaussian_posterior(
        self, loc: torch.Tensor, scale: torch.Tensor, y: torch.Tensor
    ) -> Distribution:
        low, high = self._bounds
        return CensoredGaussianPosterior(loc, scale, self.options.variance, y, low, high)


@dataclass
class RateOptions:
    """Options of the ``salt-pepper`` observation model."""

    rate: float = option(0.2, "probability that a pixel is replaced by 0 or 1", minimum=0.0,
                         maximum=1.0)  # fmt: skip


class SaltPepper(ObservationModel):
    """With probability ``rate`` a pixel becomes 0 or 1 (equal odds); else y = x.

    p(y | x) = (1 - rate) [y = x] + rate / 2 for y in {0, 1}. Exact for Bernoulli pixels
    (observations then are 0 or 1); a Gaussian pixel would need one density for the atoms
    at 0 and 1 and the continuous part together, which does not exist, so that pair is
    refused.
    """

    name = "salt-pepper"
    description = "each pixel set to 0 or 1 with probability rate"
    options_class = RateOptions
    binary_observations = True

    def log_prob(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        rate = self.options.rate
        y, x = torch.broadcast_tensors(y, x)
        hit = ((y == 0) | (y == 1)).to(y.dtype) * rate / 2
        return torch.log((1 - rate) * (y == x).to(y.dtype) + hit)

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        hit = torch.rand(x.shape, generator=generator, device=x.device) < self.options.rate
        salt = torch.rand(x.shape, generator=generator, device=x.device) < 0.5
        return torch.where(hit, salt.to(x.dtype), x)

    def check(self, y: torch.Tensor, pixels: Distribution, mask: torch.Tensor | None) -> None:
        if isinstance(pixels, Bernoulli):
            _check_binary(self.name, y, mask)


@dataclass
class BitFlipOptions:
    """Options of the ``bit-flip`` observation model."""

    rate: float = option(0.1, "probability that a binary pixel is flipped", minimum=0.0,
                         maximum=1.0)  # fmt: skip


class BitFlip(ObservationModel):
    """Each binary pixel flipped with probability ``rate``: p(y | x) = 1 - rate if y = x."""

    name = "bit-flip"
    description = "each binary pixel flipped with probability rate"
    options_class = BitFlipOptions
    binary_observations = True

    def log_prob(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        rate = self.options.rate
        y, x = torch.broadcast_tensors(y, x)
        same = torch.tensor(math.log1p(-rate) if rate < 1 else -math.inf, dtype=y.dtype)
        other = torch.tensor(math.log(rate) if rate > 0 else -math.inf, dtype=y.dtype)
        return torch.where(y == x, same.to(y.device), other.to(y.device))

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if bool(((x != 0) & (x != 1)).any()):
            raise OptionError("bit-flip noise applies to binary images (values 0 and 1)")
        flip = torch.rand(x.shape, generator=generator, device=x.device) < self.options.rate
        return torch.where(flip, 1 - x, x)

    def check(self, y: torch.Tensor, pixels: Distribution, mask: torch.Tensor | None) -> None:
        _check_binary(self.name, y, mask)


@hookimpl
def register_observations(register: Callable[[Any], None]) -> None:
    register(Missing)
    register(GaussianNoise)
    register(SaltPepper)
    register(BitFlip)
