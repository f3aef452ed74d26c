"""Posteriors: Pyro guides over a Model's latent sites.

Two families are built in. :class:`AmortizedGaussianPosterior` runs an encoder (one network
for all datapoints). :class:`LocalGaussianPosterior` holds a mean and a log-scale *per
datapoint* for every latent site, initialised from another Gaussian posterior; it is what the
``svi`` refiner optimises. Both expose :meth:`GaussianPosterior.gaussian_params` so one can be
turned into the other.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from lvmtoolkit.core.elbo import DATA_PLATE
from lvmtoolkit.errors import LvmError

GaussianParams = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""Per latent site: ``(loc, scale)``, each of shape ``(N, *event_shape)``."""


class Posterior(nn.Module):
    """A Pyro guide ``guide(x, mask=None)`` over the latent sites of a Model.

    Subclasses implement :meth:`guide`; calling the module calls the guide, so a Posterior can
    be passed anywhere Pyro expects a guide.
    """

    def guide(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Sample every latent site inside ``pyro.plate("data", len(x))``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        return self.guide(x, mask)

    def rows(self, index: slice | torch.Tensor) -> Posterior:
        """The posterior of some datapoints of the batch, for chunked evaluation.

        Amortized posteriors do not depend on which datapoints they see, so the default is
        the posterior itself; posteriors with per-datapoint parameters return a view.
        """
        return self


class GaussianPosterior(Posterior):
    """A posterior that is a diagonal Gaussian for each latent site given x."""

    def gaussian_params(self, x: torch.Tensor) -> GaussianParams:
        """Return ``{site: (loc, scale)}`` for the datapoints ``x``."""
        raise NotImplementedError

    def guide(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        params = self.gaussian_params(x)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            for name, (loc, scale) in params.items():
                pyro.sample(
                    name,
                    dist.Normal(loc, scale, validate_args=False).to_event(loc.dim() - 1),
                )


class AmortizedGaussianPosterior(GaussianPosterior):
    """q(z | x) = N(loc(x), scale(x)) from an encoder shared by all datapoints.

    Args:
        encoder: Maps a batch ``x`` to ``{site: (loc, scale)}``. If it is an ``nn.Module`` its
            parameters become this posterior's.
    """

    def __init__(self, encoder: Callable[[torch.Tensor], GaussianParams]):
        super().__init__()
        self.encoder = encoder

    def gaussian_params(self, x: torch.Tensor) -> GaussianParams:
        return self.encoder(x)


class LocalGaussianPosterior(GaussianPosterior):
    """Per-datapoint diagonal Gaussians: free ``loc`` and ``log_scale`` for each datapoint.

    The guide is tied to one batch of N datapoints, in order: call it with those N rows.

    Args:
        params: Initial ``{site: (loc, scale)}``, each of shape ``(N, *event_shape)``.
    """

    supports_stl = True
    """Every site's loc and scale are this posterior's own parameters, so detaching them
    drops exactly the score that sticking the landing drops."""

    def __init__(self, params: GaussianParams):
        super().__init__()
        if not params:
            raise LvmError("a local posterior needs at least one latent site")
        sizes = {loc.shape[0] for loc, _ in params.values()}
        if len(sizes) != 1:
            raise LvmError(f"latent sites disagree on the number of datapoints: {sorted(sizes)}")
        self.num_datapoints = sizes.pop()
        self.loc = nn.ParameterDict(
            {k: nn.Parameter(loc.detach().clone()) for k, (loc, _) in params.items()}
        )
        self.log_scale = nn.ParameterDict(
            {k: nn.Parameter(scale.detach().log().clone()) for k, (_, scale) in params.items()}
        )

    @classmethod
    def from_posterior(cls, posterior: Posterior, x: torch.Tensor) -> LocalGaussianPosterior:
        """Initialise from any Gaussian posterior evaluated at ``x`` (e.g. the encoder's)."""
        if not isinstance(posterior, GaussianPosterior):
            raise LvmError(
                f"{type(posterior).__name__} is not a Gaussian posterior; a local Gaussian "
                "posterior can only start from one"
            )
        with torch.no_grad():
            return cls(posterior.gaussian_params(x))

    def gaussian_params(self, x: torch.Tensor | None = None) -> GaussianParams:
        if x is not None and x.shape[0] != self.num_datapoints:
            raise LvmError(
                f"this local posterior holds {self.num_datapoints} datapoints but was called "
                f"with a batch of {x.shape[0]}"
            )
        return {k: (self.loc[k], self.log_scale[k].exp()) for k in self.loc}

    def rows(self, index: slice | torch.Tensor) -> RowsOfLocalPosterior:
        """A differentiable view of some datapoints (gradients reach this posterior)."""
        return RowsOfLocalPosterior(self, index)

    def select(self, index: slice | torch.Tensor) -> LocalGaussianPosterior:
        """An independent copy holding only the datapoints ``index``."""
        with torch.no_grad():
            return LocalGaussianPosterior(
                {
                    k: (loc[index], scale[index])
                    for k, (loc, scale) in self.gaussian_params().items()
                }
            )

    def assign(self, source: LocalGaussianPosterior, where: torch.Tensor) -> None:
        """Copy ``source``'s parameters into this posterior for datapoints where ``where``."""
        with torch.no_grad():
            for k in self.loc:
                self.loc[k][where] = source.loc[k][where]
                self.log_scale[k][where] = source.log_scale[k][where]


class RowsOfLocalPosterior(GaussianPosterior):
    """Some rows of a :class:`LocalGaussianPosterior`, sharing its parameters."""

    def __init__(self, parent: LocalGaussianPosterior, index: slice | torch.Tensor):
        super().__init__()
        self._parent = [parent]  # a list keeps the parent out of this module's parameters
        self.index = index

    def gaussian_params(self, x: torch.Tensor) -> GaussianParams:
        parent = self._parent[0]
        params = {
            k: (parent.loc[k][self.index], parent.log_scale[k][self.index].exp())
            for k in parent.loc
        }
        n = next(iter(params.values()))[0].shape[0]
        if x.shape[0] != n:
            raise LvmError(f"these rows hold {n} datapoints but were called with {x.shape[0]}")
        return params
