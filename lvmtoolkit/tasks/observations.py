"""Observation models: how observed data y arise from clean data x, and the built-in ones.

An observation model gives, pixel by pixel, the likelihood p(y | x) of what was observed
given the clean value, and draws y from it (to corrupt clean images for an evaluation).
With a model's per-pixel likelihood p(x | z) it then gives what inference needs:

- p(y | z), the likelihood of the observation given the latents, and
- p(x | y, z), the clean pixel given the observation and the latents (whose mean, averaged
  over the posterior of z, is the restored image).

For Bernoulli pixels both are exact for *any* observation model, from `log_prob` alone:
p(y | z) = sum over x in {0, 1} of p(y | x) p(x | z). For Gaussian pixels an observation
model must say how (`gaussian_marginal`, `gaussian_posterior`; e.g. Gaussian noise adds
its variance); where it cannot, the pair is refused with an `ObservationMismatch` that
names it.

This module holds, in order:

1. the contract, `ObservationModel` (subclass it to add a noise model), `Observed` and
   `parse_observation` (``NAME:KEY=VALUE`` text to a model, through the plugin registry);
2. the per-pixel distributions the models return: `CensoredNormal` (Gaussian noise clipped
   to the data range; an atom at each bound), `BinaryPixelMarginal` (the exact sum over
   x in {0, 1}), `CensoredGaussianPosterior`, `PointMass` and `Where`; all are Pyro
   distributions with batch shape = the pixels' shape, ``mean``, ``variance``, ``sample``
   and ``log_prob``;
3. seeded corruptions for evaluations, `make_mask` and `add_noise`;
4. the built-in models, registered by this module as a default plugin of the core:

   - ``missing``: some pixels are not observed at all (a mask); observed ones are the
     clean pixels. Exact with any pixel likelihood: p(y | z) is p(x | z) on the observed
     pixels.
   - ``gaussian``: y = clip(x + e, 0, 1), e ~ N(0, variance); clipping is treated exactly,
     as censoring (a value at 0 or 1 says only that x + e was at or beyond it). Exact for
     Bernoulli pixels and for Gaussian pixels (the variances add).
   - ``salt-pepper``: each pixel, with probability ``rate``, replaced by 0 or 1 (equal
     odds). Exact for Bernoulli pixels; refused for Gaussian ones (a mixture of atoms and
     densities has no common density).
   - ``bit-flip``: each binary pixel flipped with probability ``rate``. Bernoulli pixels
     only.

Third-party observation models subclass `ObservationModel` and are registered with the
``register_observations`` hook (docs/plugins/tutorial.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
from torch.distributions import Bernoulli, Distribution, Normal, constraints
from torch.distributions.utils import broadcast_all
from torch.nn import functional as F

from lvmtoolkit.core.options import option, parse_options
from lvmtoolkit.errors import LvmError, OptionError
from lvmtoolkit.hookspecs import hookimpl
from lvmtoolkit.tasks import MASK_KINDS, NOISE_KINDS

__all__ = [
    "BinaryPixelMarginal",
    "BitFlip",
    "CensoredGaussianPosterior",
    "CensoredNormal",
    "GaussianNoise",
    "Missing",
    "ObservationMismatch",
    "ObservationModel",
    "Observed",
    "PointMass",
    "SaltPepper",
    "Where",
    "add_noise",
    "make_mask",
    "parse_observation",
]

# --- the contract ----------------------------------------------------------------------


class ObservationMismatch(LvmError):
    """An observation model that gives no exact p(y | z) for a model's pixel likelihood."""


@dataclass
class NoObservationOptions:
    """An observation model without options."""


@dataclass
class Observed:
    """Observed data: ``y`` and, where some pixels were not observed at all, a mask.

    Attributes:
        y: ``(N, *data_shape)`` observed values; unobserved pixels hold a fill value.
        mask: Boolean ``(N, *data_shape)``, True where a pixel was observed; None: all were.
    """

    y: torch.Tensor
    mask: torch.Tensor | None = None


class ObservationModel:
    """Base class of observation models p(y | x), applied independently to every pixel.

    Subclasses set ``name``, ``description`` and ``options_class`` (a dataclass whose fields
    are made with `lvmtoolkit.option`, as a refiner's are), and implement `log_prob`
    and `sample`. That is all a model of binary pixels needs; for Gaussian pixels also
    implement `gaussian_marginal` and `gaussian_posterior`.

    Args:
        **options: Values for the fields of ``options_class`` (strings are converted and
            validated, as given in ``--noise NAME:KEY=VALUE``).

    Raises:
        OptionError: An unknown option or an invalid value (the message names the model).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options_class: ClassVar[type] = NoObservationOptions
    keeps_observed: ClassVar[bool] = False
    """True when an observed pixel *is* the clean pixel (y = x where observed), so a restored
    image copies it bit for bit (the ``missing`` model)."""
    binary_observations: ClassVar[bool] = False
    """True when, for binary pixels, every observation is 0 or 1 (``salt-pepper``,
    ``bit-flip``): grey inputs must be thresholded first (the command line does it)."""

    def __init__(self, **options: Any):
        try:
            self.options = parse_options(self.options_class, options)
        except OptionError as err:
            raise OptionError(f"observation model {self.name}: {err}") from None
        self.check_options()

    def check_options(self) -> None:
        """Raise `OptionError` for option values that are invalid together (default: none)."""

    @classmethod
    def option_names(cls) -> set[str]:
        """Names of the options this observation model takes."""
        return {f.name for f in dataclasses.fields(cls.options_class)}

    def with_options(self, **changes: Any) -> ObservationModel:
        """A new observation model of the same class with some options changed, validated."""
        return type(self)(**{**self.option_values(), **changes})

    def option_values(self) -> dict[str, Any]:
        """The options, by name."""
        return {f.name: getattr(self.options, f.name) for f in dataclasses.fields(self.options)}

    @property
    def spec(self) -> str:
        """``NAME:KEY=VALUE,...``, as ``--noise`` takes it (`parse_observation` reads it)."""
        values = ",".join(f"{k}={_text(v)}" for k, v in self.option_values().items())
        return f"{self.name}:{values}" if values else self.name

    def describe(self) -> str:
        """One line for humans: the model and its options, e.g. for ``lvm denoise``."""
        return f"{self.spec} ({self.description})" if self.description else self.spec

    # --- what every observation model implements -----------------------------------

    def log_prob(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(y | x) for every pixel (broadcast shape of ``y`` and ``x``).

        For observations with atoms (values taken with positive probability, such as a
        clipping bound) and a density elsewhere, return the log-probability of an atom
        and the log-density elsewhere: sums over x then stay exact.
        """
        raise NotImplementedError

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw y ~ p(y | x) for every pixel of clean images ``x`` in [0, 1]."""
        raise NotImplementedError

    # --- optional ------------------------------------------------------------------------

    def corrupt(self, x: torch.Tensor, *, seed: int = 0) -> Observed:
        """Corrupt clean images ``x`` (``(N, C, H, W)`` in [0, 1]) reproducibly.

        The default draws `sample` with a generator seeded with ``seed`` and observes every
        pixel; ``missing`` overrides it to make a mask.
        """
        generator = torch.Generator().manual_seed(int(seed))
        clean = x.detach().cpu().float()
        y = self.sample(clean, generator)
        return Observed(y.to(device=x.device, dtype=x.dtype), None)

    def check(self, y: torch.Tensor, pixels: Distribution, mask: torch.Tensor | None) -> None:
        """Raise `LvmError` when ``y`` cannot come from this model (e.g. grey values for a
        binary observation). ``pixels`` is the model's pixel likelihood, for its family."""

    def gaussian_marginal(self, loc: torch.Tensor, scale: torch.Tensor) -> Distribution:
        """p(y | z) per pixel for Gaussian pixels x ~ N(loc, scale²), if it has a closed form.

        Raises:
            NotImplementedError: It has none (the default): the pair is refused.
        """
        raise NotImplementedError

    def gaussian_posterior(
        self, loc: torch.Tensor, scale: torch.Tensor, y: torch.Tensor
    ) -> Distribution:
        """p(x | y, z) per pixel for Gaussian pixels x ~ N(loc, scale²): a distribution with
        ``mean``, ``variance``, ``sample()`` and ``log_prob(x)``."""
        raise NotImplementedError

    # --- provided ------------------------------------------------------------------------

    def marginal(self, pixels: Distribution) -> Distribution:
        """p(y | z) per pixel from the model's per-pixel likelihood p(x | z).

        Args:
            pixels: One distribution per pixel (no event dimensions), e.g. the base of the
                ``Independent`` that ``Model.decode`` returns.

        Raises:
            ObservationMismatch: No exact p(y | z) for this pixel family.
        """
        if isinstance(pixels, Bernoulli):
            return BinaryPixelMarginal(pixels.logits, self)
        if isinstance(pixels, Normal):
            try:
                return self.gaussian_marginal(pixels.loc, pixels.scale)
            except NotImplementedError:
                pass
        raise self.mismatch(pixels)

    def posterior(self, pixels: Distribution, y: torch.Tensor) -> Distribution:
        """p(x | y, z) per pixel: the clean pixel given what was observed and p(x | z).

        Raises:
            ObservationMismatch: No exact posterior for this pixel family.
        """
        if isinstance(pixels, Bernoulli):
            logits = pixels.logits
            one, zero = torch.ones_like(logits), torch.zeros_like(logits)
            shift = self.log_prob(y, one) - self.log_prob(y, zero)
            # An observation that rules out one value gives an infinite shift; +-100 is
            # certainty in float32 and keeps log_prob finite.
            posterior = (logits + shift).nan_to_num(0.0).clamp(-100.0, 100.0)
            return Bernoulli(logits=posterior, validate_args=False)
        if isinstance(pixels, Normal):
            try:
                return self.gaussian_posterior(pixels.loc, pixels.scale, y)
            except NotImplementedError:
                pass
        raise self.mismatch(pixels)

    def mismatch(self, pixels: Distribution, model_name: str = "") -> ObservationMismatch:
        """The error for a pixel family this model has no exact p(y | z) for."""
        if isinstance(pixels, Bernoulli):
            family = "Bernoulli"
        elif isinstance(pixels, Normal):
            family = "Gaussian"
        else:
            family = type(pixels).__name__
        whose = f" (the {model_name} model's likelihood)" if model_name else ""
        return ObservationMismatch(
            f"observation model {self.name!r} with {family} pixels{whose} has no exact "
            f"p(y | z); {self.name} fits {', '.join(self.fits()) or 'no pixel family'} pixels"
        )

    def fits(self) -> list[str]:
        """Pixel families this model gives an exact p(y | z) for, in words."""
        families = ["Bernoulli"]
        if type(self).gaussian_marginal is not ObservationModel.gaussian_marginal:
            families.append("Gaussian")
        return families


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def parse_observation(spec: str | ObservationModel) -> ObservationModel:
    """An observation model from ``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE``.

    Examples: ``"gaussian:variance=0.5"``, ``"salt-pepper:rate=0.2"``, ``"missing"``.
    An `ObservationModel` is returned as it is.

    Raises:
        UnknownNameError: No installed observation model has that name.
        OptionError: Malformed text, an unknown option or an invalid value.
    """
    from lvmtoolkit.plugins import get_observation

    if isinstance(spec, ObservationModel):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise OptionError(f"an observation model is NAME[:KEY=VALUE,...], got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    values: dict[str, str] = {}
    for pair in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError(
                f"observation model {name.strip()}: {pair!r} is not KEY=VALUE "
                "(write NAME:KEY=VALUE,KEY=VALUE)"
            )
        if key.strip() in values:
            raise OptionError(f"observation model {name.strip()}: {key.strip()} given twice")
        values[key.strip()] = value.strip()
    observation_class = get_observation(name.strip())
    return observation_class(**values)


# --- per-pixel distributions ----------------------------------------------------------

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


# --- seeded corruptions for evaluations ------------------------------------------------


def make_mask(
    kind: str,
    shape: tuple[int, ...] | torch.Size,
    *,
    seed: int = 0,
    missing_fraction: float = 0.5,
) -> torch.Tensor:
    """A boolean observed-pixel mask (True = known) of one of `MASK_KINDS`.

    Args:
        kind: ``"centre"``, ``"half"`` or ``"random"``.
        shape: ``(N, C, H, W)``; every channel of a pixel shares its mask value.
        seed: Seed of the ``"random"`` masks (one mask per image).
        missing_fraction: Probability that a pixel is missing, for ``"random"``.

    Returns:
        Boolean tensor of ``shape``.
    """
    if len(shape) != 4:
        raise OptionError(f"masks need a shape (N, C, H, W), got {tuple(shape)}")
    n, c, h, w = shape
    observed = torch.ones(n, 1, h, w, dtype=torch.bool)
    if kind == "centre":
        top, left = (h - h // 2) // 2, (w - w // 2) // 2
        observed[:, :, top : top + h // 2, left : left + w // 2] = False
    elif kind == "half":
        observed[:, :, h - h // 2 :, :] = False
    elif kind == "random":
        if not 0.0 <= missing_fraction <= 1.0:
            raise OptionError(f"missing_fraction must be in [0, 1], got {missing_fraction}")
        generator = torch.Generator().manual_seed(seed)
        observed = torch.rand(n, 1, h, w, generator=generator) >= missing_fraction
    else:
        raise OptionError(f"unknown mask kind {kind!r}; kinds: {', '.join(MASK_KINDS)}")
    return observed.expand(n, c, h, w).clone()


def add_noise(
    kind: str,
    x: torch.Tensor,
    *,
    seed: int = 0,
    variance: float = 0.5,
    amount: float = 0.2,
) -> torch.Tensor:
    """Corrupt images in [0, 1] with one of `NOISE_KINDS`; the result stays in [0, 1].

    Args:
        kind: ``"gaussian"`` or ``"salt-pepper"``.
        x: ``(N, C, H, W)`` images in [0, 1].
        seed: Seed of the noise.
        variance: Variance of the Gaussian noise (the paper's 0.5: standard deviation 0.71).
        amount: Fraction of pixels replaced by salt or pepper.

    Returns:
        The noisy images, same shape and dtype as ``x``.
    """
    if kind == "gaussian":
        if not variance >= 0:
            raise OptionError(f"variance must be >= 0, got {variance}")
        if variance == 0:
            return x.clone()
        return GaussianNoise(variance=variance).corrupt(x, seed=seed).y
    if kind == "salt-pepper":
        if not 0.0 <= amount <= 1.0:
            raise OptionError(f"amount must be in [0, 1], got {amount}")
        return SaltPepper(rate=amount).corrupt(x, seed=seed).y
    raise OptionError(f"unknown noise kind {kind!r}; kinds: {', '.join(NOISE_KINDS)}")


# --- the built-in observation models (a default plugin of the core) --------------------


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
