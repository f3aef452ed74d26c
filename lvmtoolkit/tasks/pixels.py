"""Per-pixel distributions of restoration: what observation models give for one pixel.

- `CensoredNormal`: y = clip(w, low, high) with w ~ N(loc, scale²); a density inside the
  bounds and an atom at each bound (Gaussian noise clipped to the data range, and its
  marginal for Gaussian pixels, whose variance adds).
- `BinaryPixelMarginal`: p(y | z) = sum over x in {0, 1} of p(y | x) p(x | z) for any
  observation model and Bernoulli pixels.
- `CensoredGaussianPosterior`: p(x | y, z) for Gaussian pixels under clipped Gaussian
  noise (Gaussian inside the bounds; a Gaussian given a truncated sum at a bound).
- `PointMass` and `Where`: observed pixels kept as they are, and the per-pixel choice
  between the posterior of observed pixels and the prior p(x | z) of unobserved ones.

All are `pyro.distributions.TorchDistribution` with batch shape = the pixels' shape and no
event dimensions; each has ``mean``, ``variance``, ``sample`` and ``log_prob``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import pyro.distributions as dist
import torch
from torch.distributions import Distribution, constraints
from torch.distributions.utils import broadcast_all
from torch.nn import functional as F

if TYPE_CHECKING:
    from lvmtoolkit.tasks.observation_model import ObservationModel

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _log_phi(a: torch.Tensor) -> torch.Tensor:
    """log of the standard normal density."""
    return -0.5 * a * a - _LOG_SQRT_2PI


def _mills(a: torch.Tensor) -> torch.Tensor:
    """phi(a) / Phi(a), computed in log space (stable for very negative a)."""
    return torch.exp(_log_phi(a) - torch.special.log_ndtr(a))


class _PixelDistribution(dist.TorchDistribution):
    arg_constraints: ClassVar[dict] = {}
    support = constraints.real

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> Any:
        # Pyro's plates expand every site to the batch shape it already has.
        if tuple(batch_shape) == tuple(self.batch_shape):
            return self
        return dist.ExpandedDistribution(self, batch_shape)


class CensoredNormal(_PixelDistribution):
    """y = clip(w, low, high), w ~ N(loc, scale²): Gaussian noise clipped to a range.

    ``log_prob`` is the log-density inside (low, high) and the log-probability of the atom
    at a bound (log Phi((low - loc) / scale) at ``low``); both enter sums over x exactly
    (the reference measure is the same for every x).

    Args:
        loc: Mean of w.
        scale: Standard deviation of w (positive).
        low: Lower clipping bound.
        high: Upper clipping bound (above ``low``).
    """

    def __init__(self, loc: Any, scale: Any, low: float = 0.0, high: float = 1.0):
        self.loc, self.scale = broadcast_all(loc, scale)
        self.low, self.high = float(low), float(high)
        super().__init__(self.loc.shape, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        inside = -0.5 * ((value - self.loc) / self.scale) ** 2 - self.scale.log() - _LOG_SQRT_2PI
        at_low = torch.special.log_ndtr((self.low - self.loc) / self.scale)
        at_high = torch.special.log_ndtr((self.loc - self.high) / self.scale)
        return torch.where(
            value <= self.low, at_low, torch.where(value >= self.high, at_high, inside)
        )

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            w = self.loc.expand(shape) + self.scale.expand(shape) * torch.randn(
                shape, dtype=self.loc.dtype, device=self.loc.device
            )
            return w.clamp(self.low, self.high)

    @property
    def mean(self) -> torch.Tensor:
        a, b = (self.low - self.loc) / self.scale, (self.high - self.loc) / self.scale
        cdf_a, cdf_b = torch.special.ndtr(a), torch.special.ndtr(b)
        pdf_a, pdf_b = _log_phi(a).exp(), _log_phi(b).exp()
        inside = self.loc * (cdf_b - cdf_a) + self.scale * (pdf_a - pdf_b)
        return self.low * cdf_a + inside + self.high * (1 - cdf_b)


class BinaryPixelMarginal(_PixelDistribution):
    """p(y | z) = p(y | x=0) p(x=0 | z) + p(y | x=1) p(x=1 | z), for Bernoulli pixels.

    Exact for any observation model: its ``log_prob(y, x)`` at x = 0 and x = 1 is all this
    needs, so third-party observation models fit binary backends with no extra code.

    Args:
        logits: Logits of p(x = 1 | z), one per pixel.
        observation: The observation model p(y | x).
    """

    def __init__(self, logits: torch.Tensor, observation: ObservationModel):
        self.logits = logits
        self.observation = observation
        super().__init__(logits.shape, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        one, zero = torch.ones_like(self.logits), torch.zeros_like(self.logits)
        return torch.logaddexp(
            self.observation.log_prob(value, zero) + F.logsigmoid(-self.logits),
            self.observation.log_prob(value, one) + F.logsigmoid(self.logits),
        )

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        with torch.no_grad():
            clean = torch.distributions.Bernoulli(logits=self.logits).sample(sample_shape)
            return self.observation.sample(clean)


class CensoredGaussianPosterior(_PixelDistribution):
    """p(x | y, z) for x ~ N(loc, scale²) observed as y = clip(x + e, low, high), e ~ N(0, v).

    Inside the bounds it is the Gaussian of precision 1/scale² + 1/v. At a bound only
    w = x + e <= low (or >= high) is known: w | z ~ N(loc, scale² + v) truncated there, and
    x | w is Gaussian with mean loc + k (w - loc) and variance k v, where
    k = scale² / (scale² + v); mean and variance follow in closed form (the moments of a
    truncated normal) and samples draw w by the inverse CDF, then x | w. Moments are
    computed in float64.

    Args:
        loc: Mean of p(x | z).
        scale: Standard deviation of p(x | z).
        variance: v, the noise variance.
        y: The observed values.
        low: Lower clipping bound, or None for no clipping.
        high: Upper clipping bound, or None.
    """

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        variance: float,
        y: torch.Tensor,
        low: float | None = 0.0,
        high: float | None = 1.0,
    ):
        self.loc, self.scale, self.y = broadcast_all(loc, scale, y)
        self.noise_variance = float(variance)
        self.low = -math.inf if low is None else float(low)
        self.high = math.inf if high is None else float(high)
        super().__init__(self.loc.shape, validate_args=False)

    def _parts(self) -> dict[str, torch.Tensor]:
        m, s2 = self.loc.double(), self.scale.double() ** 2
        v = self.noise_variance
        total = s2 + v
        k = s2 / total
        t = total.sqrt()
        at_low, at_high = self.y <= self.low, self.y >= self.high
        a = (self.low - m) / t  # w <= low: upper truncation at a (standardised)
        b = (self.high - m) / t  # w >= high: lower truncation at b
        lam_low = _mills(a.clamp(max=30.0)) if math.isfinite(self.low) else torch.zeros_like(m)
        lam_high = _mills(-b.clamp(min=-30.0)) if math.isfinite(self.high) else torch.zeros_like(m)
        w_mean = torch.where(
            at_low, m - t * lam_low, torch.where(at_high, m + t * lam_high, self.y.double())
        )
        w_var = torch.where(
            at_low,
            total * (1 - a.nan_to_num() * lam_low - lam_low**2),
            torch.where(at_high, total * (1 + b.nan_to_num() * lam_high - lam_high**2), 0.0),
        ).clamp(min=0.0)
        return {"m": m, "k": k, "kv": k * v, "t": t, "a": a, "b": b, "w_mean": w_mean,
                "w_var": w_var, "at_low": at_low, "at_high": at_high}  # fmt: skip

    @property
    def mean(self) -> torch.Tensor:
        p = self._parts()
        return (p["m"] + p["k"] * (p["w_mean"] - p["m"])).to(self.loc.dtype)

    @property
    def variance(self) -> torch.Tensor:
        p = self._parts()
        return (p["kv"] + p["k"] ** 2 * p["w_var"]).to(self.loc.dtype)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        with torch.no_grad():
            p = self._parts()
            shape = self._extended_shape(sample_shape)
            u = torch.rand(shape, dtype=torch.float64, device=self.loc.device).clamp(1e-300, 1.0)
            # w <= low: Phi^-1(u Phi(a)); w >= high: -Phi^-1(u Phi(-b)) (by symmetry).
            below = p["m"] + p["t"] * torch.special.ndtri(
                (u.log() + torch.special.log_ndtr(p["a"].clamp(min=-37.0))).exp()
            )
            above = p["m"] - p["t"] * torch.special.ndtri(
                (u.log() + torch.special.log_ndtr((-p["b"]).clamp(min=-37.0))).exp()
            )
            w = torch.where(p["at_low"], below, torch.where(p["at_high"], above, self.y.double()))
            noise = torch.randn(shape, dtype=torch.float64, device=self.loc.device)
            x = p["m"] + p["k"] * (w - p["m"]) + p["kv"].sqrt() * noise
            return x.to(self.loc.dtype)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        # Bayes per pixel: log p(y | x) + log p(x | z) - log p(y | z).
        sd = math.sqrt(self.noise_variance)
        noise = CensoredNormal(value, torch.full_like(value, sd), self.low, self.high)
        prior = torch.distributions.Normal(self.loc, self.scale, validate_args=False)
        total = (self.scale**2 + self.noise_variance).sqrt()
        evidence = CensoredNormal(self.loc, total, self.low, self.high)
        return noise.log_prob(self.y) + prior.log_prob(value) - evidence.log_prob(self.y)


class PointMass(_PixelDistribution):
    """All mass at ``value``: an observed pixel that is the clean pixel (``missing``)."""

    def __init__(self, value: torch.Tensor):
        self.value = value
        super().__init__(value.shape, validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return self.value

    @property
    def variance(self) -> torch.Tensor:
        return torch.zeros_like(self.value)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        return self.value.expand(self._extended_shape(sample_shape)).clone()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return torch.where(value == self.value, 0.0, -math.inf).to(self.value.dtype)


class Where(_PixelDistribution):
    """Per pixel, ``observed`` where ``mask`` is True and ``unobserved`` elsewhere.

    Args:
        mask: Boolean, broadcastable to both distributions' batch shape.
        observed: The distribution of observed pixels.
        unobserved: The distribution of the others.
    """

    def __init__(self, mask: torch.Tensor, observed: Distribution, unobserved: Distribution):
        self.mask = mask
        self.observed = observed
        self.unobserved = unobserved
        shape = torch.broadcast_shapes(mask.shape, observed.batch_shape, unobserved.batch_shape)
        super().__init__(shape, validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return torch.where(self.mask, self.observed.mean, self.unobserved.mean)

    @property
    def variance(self) -> torch.Tensor:
        return torch.where(self.mask, self.observed.variance, self.unobserved.variance)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        return torch.where(
            self.mask, self.observed.sample(sample_shape), self.unobserved.sample(sample_shape)
        )

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return torch.where(
            self.mask, self.observed.log_prob(value), self.unobserved.log_prob(value)
        )
