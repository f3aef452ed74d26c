"""The model of what is observed: any backend, its likelihood seen through an observation model.

A backend's Pyro program ends in the observed site ``"x"`` with its pixel likelihood
p(x | z). `ObserveThrough`, a Pyro messenger, swaps that site's distribution for
p(y | z) = integral of p(y | x) p(x | z) dx, pixel by pixel, as given by an
`ObservationModel`. `ObservedModel` wraps a backend in it. The wrapped model is a
`Model` like any other, so every refiner, ``per_datapoint_elbo``, ``nelbo`` and
importance sampling work on it unchanged and refine q(z | y) under p(y | z); nothing is
asked of the backend beyond the model contract (third-party backends, `TorchVAE` and
`PyroVAE` included).
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from torch.distributions import Distribution

from lvmtoolkit.core.likelihood import split_likelihood
from lvmtoolkit.core.model import Model
from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.core.validation import check_batch
from lvmtoolkit.errors import LvmError
from lvmtoolkit.tasks.observations import ObservationMismatch, ObservationModel, Where

OBSERVED_SITE = "x"
"""The model contract's name of the observed site."""


def observe_through(observation: ObservationModel, fn: Distribution) -> Distribution:
    """The distribution of y given z, from an observed site's distribution of x given z.

    Keeps the site's shape: the same mask and the same event dimensions.

    Raises:
        ObservationMismatch: The observation model has no exact p(y | z) for these pixels.
    """
    pixels, mask, event_dims = split_likelihood(fn)
    observed = observation.marginal(pixels)
    if mask is not None:
        observed = dist.MaskedDistribution(observed, mask)
    return dist.Independent(observed, event_dims) if event_dims else observed


class ObserveThrough(Messenger):
    """Pyro messenger: score the observed site under p(y | z) instead of p(x | z).

    Inside ``with ObserveThrough(observation):`` the observed sample site named ``site``
    (``"x"`` by the model contract) gets ``observe_through(observation, fn)`` as its
    distribution; every other site is untouched.

    Args:
        observation: The observation model p(y | x).
        site: Name of the observed site.

    References:
        Mattei & Frellsen, "MIWAE: Deep Generative Modelling and Imputation of Incomplete
        Data Sets", ICML 2019 (the likelihood of what is observed).
    """

    def __init__(self, observation: ObservationModel, site: str = OBSERVED_SITE):
        super().__init__()
        self.observation = observation
        self.site = site

    def _process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "sample" and msg["name"] == self.site and msg["is_observed"]:
            msg["fn"] = observe_through(self.observation, msg["fn"])


class ObservedModel(Model):
    """A backend seen through an observation model: a `Model` of the observed data y.

    Its latents, prior and encoder are the backend's (``amortized_posterior`` is the
    encoder applied to y); its likelihood is p(y | z). The pair is checked when the wrapper
    is built, from one decoded prior sample.

    Args:
        model: Any backend (its parameters are shared, not copied).
        observation: The observation model.

    Raises:
        ObservationMismatch: The observation model has no exact p(y | z) for the backend's
            pixel likelihood (e.g. ``salt-pepper`` with Gaussian pixels).
    """

    binary_data = False  # y need not be binary; `check` asks the observation model

    def __init__(self, model: Model, observation: ObservationModel):
        super().__init__(getattr(model, "config", None))
        self.base = model
        self.observation = observation
        self.chunk_size = model.chunk_size
        self.data_shape = tuple(model.data_shape)
        self.name = f"{model.name or type(model).__name__} observed through {observation.name}"
        with torch.no_grad():
            self._pixels = self.pixel_likelihood(model.sample_prior(1))
        try:
            observation.marginal(self._pixels)
        except ObservationMismatch:
            raise observation.mismatch(self._pixels, model.name or type(model).__name__) from None

    @property
    def latent_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.base.latent_shapes

    def amortized_posterior(self) -> Posterior:
        return self.base.amortized_posterior()

    def sample_prior(self, num_samples: int) -> dict[str, torch.Tensor]:
        return self.base.sample_prior(num_samples)

    def model(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        with ObserveThrough(self.observation):
            self.base.model(x, mask)

    def decode(self, z: dict[str, torch.Tensor]) -> Distribution:
        """p(y | z): batch shape ``(N,)``, event shape ``data_shape``."""
        return observe_through(self.observation, self.base.decode(z))

    def pixel_likelihood(self, z: dict[str, torch.Tensor]) -> Distribution:
        """The backend's p(x | z), one distribution per pixel (batch ``(N, *data_shape)``)."""
        pixels, _, _ = split_likelihood(self.base.decode(z))
        return pixels

    def pixel_posterior(
        self, z: dict[str, torch.Tensor], y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> Distribution:
        """p(x | y, z) for every pixel: the observation's posterior where a pixel was
        observed, the backend's p(x | z) where it was not (``mask`` False)."""
        pixels = self.pixel_likelihood(z)
        observed = self.observation.posterior(pixels, y)
        if mask is None:
            return observed
        return Where(mask, observed, pixels)

    def check(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """`check_batch` for y, then the observation model's own check of its values.

        Raises:
            LvmError: ``y`` or ``mask`` does not fit the model or the observation model.
        """
        check_batch(self, y, mask)
        self.observation.check(y, self._pixels, mask)

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        raise LvmError("an ObservedModel is for inference; train the backend itself")
