"""The observation-model contract: how observed data y arise from clean data x.

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
names it. Built-in models live in `lvmtoolkit.tasks.observations`; third-party ones are
registered with the ``register_observations`` hook.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.distributions import Bernoulli, Distribution, Normal

from lvmtoolkit.core.options import parse_options
from lvmtoolkit.errors import LvmError, OptionError


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
        from lvmtoolkit.tasks.pixels import BinaryPixelMarginal

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
