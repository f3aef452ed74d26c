"""Posteriors: Pyro guides over a Model's latent sites.

The whole posterior contract lives here. A `Posterior` is a Pyro guide that declares
what it supports (``supports_stl``) and for how many datapoints it holds parameters
(``num_datapoints``; None for amortized posteriors, which take any batch).

Two kinds are built in. `AmortizedGaussianPosterior` runs an encoder (one network for
all datapoints). A `LocalPosterior` holds free parameters *per datapoint* of one batch,
every registered tensor with the datapoints on dimension 0; that one rule gives every family
what a refiner needs (a differentiable view of some rows, an independent copy, a row-wise
copy from another posterior of the family). `LocalGaussianPosterior` (a mean and a
log-scale per datapoint and site, what ``svi`` optimises) is one family; the refiners'
per-datapoint flows and the NVAE's hierarchical offsets are others.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from lvmtoolkit.core.elbo import DATA_PLATE
from lvmtoolkit.core.runtime import replaces, take_rows
from lvmtoolkit.errors import LvmError

GaussianParams = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""Per latent site: ``(loc, scale)``, each of shape ``(N, *event_shape)``."""


class Posterior(nn.Module):
    """A Pyro guide ``guide(x, mask=None)`` over the latent sites of a Model.

    Subclasses implement `guide`; calling the module calls the guide, so a Posterior can
    be passed anywhere Pyro expects a guide.
    """

    supports_stl: ClassVar[bool] = False
    """Whether every site is scored with only this posterior's own parameters detached (a
    Normal whose loc and scale are the guide's own parameters, or a
    `DetachedScore` site), so that a refiner may stick the
    landing. A family declares it; refiners read it and never probe."""

    num_datapoints: int | None = None
    """N for a posterior tied to one batch of N datapoints, in order; None for one that takes
    any batch (amortized posteriors)."""

    def check_batch_size(self, n: int) -> None:
        """Raise `LvmError` unless this posterior serves ``n`` rows.

        A posterior refined for N datapoints scores exactly those N: called with fewer, it
        would silently use its first rows for other datapoints.
        """
        if self.num_datapoints is not None and n != self.num_datapoints:
            raise LvmError(
                f"this posterior holds {self.num_datapoints} datapoints but was given a batch "
                f"of {n}; pass the batch it was refined for (or select rows with "
                ".select(index) and pass those datapoints)"
            )

    def guide(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Sample every latent site inside ``pyro.plate("data", len(x))``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        return self.guide(x, mask)

    def local_posterior(
        self, x: torch.Tensor, *, num_flows: int = 0, flow_hidden: int = 4, seed: int = 0
    ) -> LocalPosterior | None:
        """This posterior's own per-datapoint form for ``x``, starting equal to it; or None.

        None (the default) means the posterior has no form of its own: refiners then build
        independent per-datapoint Gaussians from ``gaussian_params``. Hierarchical
        posteriors override it to keep their structure (the NVAE's offsets).

        Args:
            x: The batch.
            num_flows: 0: per-datapoint location and scale only (flows the posterior has
                stay amortized). More: per-datapoint flow parameters too: copies of the
                posterior's own flows where it has some, else this many identity steps.
            flow_hidden: Hidden channels per latent channel of identity-initialised steps.
            seed: Seed of the identity steps' random first layers.
        """
        return None

    def evaluation_form(self, x: torch.Tensor) -> Posterior:
        """The same distribution for the batch ``x``, with what does not depend on z done once.

        Estimators draw many samples per datapoint by repeating its row
        (``rows(index)`` with repeats); an amortized posterior would rerun its encoder for
        every repeat. Its evaluation form computes the encoder once for ``x`` and holds the
        result per datapoint. The default is the posterior's own per-datapoint form, which
        starts equal to it (`local_posterior`), or the posterior itself.
        """
        local = self.local_posterior(x)
        return local if local is not None else self

    def mean_field(self, x: torch.Tensor) -> dict[str, dist.TorchDistribution] | None:
        """q of each latent site for the batch ``x``, when the sites are independent given x.

        The distributions the guide samples from, in the guide's order, each with batch
        shape ``(N,)`` and drawn once with ``rsample`` (a Gaussian, or a Gaussian pushed
        through a per-site flow); None (the default) when the guide is not that
        (hierarchical posteriors whose groups depend on each other, guides written in
        Pyro). Where a model is flat too (`Model.latent_prior`), the ELBO is computed from
        these directly.
        """
        return None

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
        sites = _normal_sites(self.gaussian_params(x))
        with pyro.plate(DATA_PLATE, x.shape[0]):
            for name, site in sites.items():
                pyro.sample(name, site)

    def mean_field(self, x: torch.Tensor) -> dict[str, dist.TorchDistribution] | None:
        """The Gaussians of `gaussian_params`, which `guide` samples from."""
        # A subclass with a guide of its own (one written in Pyro, a hierarchical one) may
        # sample something else; only this guide is known to draw exactly these.
        if replaces(self, GaussianPosterior, "guide"):
            return None
        return _normal_sites(self.gaussian_params(x))


def _normal_sites(params: GaussianParams) -> dict[str, dist.TorchDistribution]:
    """``{site: Normal(loc, scale)}`` with the site's shape as its event."""
    return {
        name: dist.Normal(loc, scale, validate_args=False).to_event(loc.dim() - 1)
        for name, (loc, scale) in params.items()
    }


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

    def evaluation_form(self, x: torch.Tensor) -> LocalGaussianPosterior:
        """The encoder's Gaussians for ``x``, computed once (see `Posterior.evaluation_form`)."""
        return LocalGaussianPosterior(self.gaussian_params(x))


class LocalPosterior(Posterior):
    """Base class of posteriors with free parameters per datapoint of one batch.

    Subclasses register only per-datapoint tensors (dimension 0 = datapoint) as parameters
    and buffers, keep shared objects in ``self.shared`` (a dict that copies share, e.g. a
    frozen model whose networks the guide runs), and implement `local_guide`. The base
    gives the rest: the batch-size check of `guide`, `rows`, `select`,
    `assign` and warm starts (`local_posterior`).

    Args:
        num_datapoints: N, the size of the batch this posterior belongs to.
    """

    def __init__(self, num_datapoints: int):
        super().__init__()
        self.num_datapoints = int(num_datapoints)
        self.shared: dict[str, object] = {}

    def local_guide(self, x: torch.Tensor, index: slice | torch.Tensor) -> None:
        """Sample every latent site for the rows ``index`` of the parameters.

        ``x`` holds those rows' datapoints (``len(x)`` rows); sample inside
        ``pyro.plate("data", len(x))``.
        """
        raise NotImplementedError

    def guide(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        self.check_batch_size(x.shape[0])
        self.local_guide(x, slice(None))

    def local_mean_field(
        self, index: slice | torch.Tensor
    ) -> dict[str, dist.TorchDistribution] | None:
        """`mean_field` for the rows ``index`` of the parameters; None (the default) for a
        family whose sites are not independent given x."""
        return None

    def mean_field(self, x: torch.Tensor) -> dict[str, dist.TorchDistribution] | None:
        self.check_batch_size(x.shape[0])
        return self.local_mean_field(slice(None))

    def evaluation_form(self, x: torch.Tensor) -> LocalPosterior:
        """Itself: it already holds its parameters per datapoint."""
        self.check_batch_size(x.shape[0])
        return self

    def rows(self, index: slice | torch.Tensor) -> Posterior:
        """A differentiable view of the datapoints ``index`` (repeats allowed)."""
        return LocalRows(self, index)

    def per_datapoint_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """Every registered parameter and buffer, by name (all have N rows)."""
        return [*self.named_parameters(), *self.named_buffers()]

    def check(self) -> None:
        """Raise if a registered tensor does not have the datapoints on dimension 0."""
        for name, tensor in self.per_datapoint_tensors():
            if tensor.dim() == 0 or tensor.shape[0] != self.num_datapoints:
                raise LvmError(
                    f"{type(self).__name__}.{name} has shape {tuple(tensor.shape)}; every "
                    f"registered tensor of a local posterior needs {self.num_datapoints} rows"
                )

    def select(self, index: slice | torch.Tensor) -> LocalPosterior:
        """An independent copy holding only the datapoints ``index``."""
        # Shared objects (the model) are shared by the copy, not copied.
        memo = {id(value): value for value in self.shared.values()}
        memo[id(self.shared)] = self.shared
        with torch.no_grad():
            clone = copy.deepcopy(self, memo)
            for module in clone.modules():
                for name, param in module._parameters.items():
                    if param is not None:
                        module._parameters[name] = nn.Parameter(param[index].clone())
                for name, buffer in module._buffers.items():
                    if buffer is not None:
                        module._buffers[name] = buffer[index].clone()
        clone.num_datapoints = next(iter(clone.per_datapoint_tensors()))[1].shape[0]
        return clone

    def assign(self, source: LocalPosterior, where: torch.Tensor) -> None:
        """Copy ``source``'s parameters into this posterior for the datapoints ``where``."""
        mine, theirs = dict(self.per_datapoint_tensors()), dict(source.per_datapoint_tensors())
        if mine.keys() != theirs.keys():
            raise LvmError("assign needs two local posteriors of the same family")
        with torch.no_grad():
            for name, tensor in mine.items():
                tensor[where] = theirs[name][where]

    def local_posterior(
        self, x: torch.Tensor, *, num_flows: int = 0, flow_hidden: int = 4, seed: int = 0
    ) -> LocalPosterior:
        """Warm start: a copy of this posterior (it already is per datapoint; the flow
        arguments do not apply)."""
        if x.shape[0] != self.num_datapoints:
            raise LvmError(
                f"cannot start from a local posterior of {self.num_datapoints} datapoints "
                f"for a batch of {x.shape[0]}"
            )
        return self.select(slice(None))

    def _register_gaussian(self, params: GaussianParams) -> None:
        """Register ``loc`` and ``log_scale`` (ParameterDicts by site) from ``params``.

        For families that start from one diagonal Gaussian per site; ``params`` must hold
        ``num_datapoints`` rows (see `batch_size_of`).
        """
        self.loc = nn.ParameterDict(
            {k: nn.Parameter(loc.detach().clone()) for k, (loc, _) in params.items()}
        )
        self.log_scale = nn.ParameterDict(
            {k: nn.Parameter(scale.detach().log().clone()) for k, (_, scale) in params.items()}
        )

    @staticmethod
    def batch_size_of(params: GaussianParams) -> int:
        """N of ``{site: (loc, scale)}``; raise if there is no site or the sites disagree."""
        if not params:
            raise LvmError("a local posterior needs at least one latent site")
        sizes = {loc.shape[0] for loc, _ in params.values()}
        if len(sizes) != 1:
            raise LvmError(f"latent sites disagree on the number of datapoints: {sorted(sizes)}")
        return sizes.pop()


class LocalRows(Posterior):
    """Some rows of a `LocalPosterior`, sharing its parameters (gradients reach it)."""

    def __init__(self, parent: LocalPosterior, index: slice | torch.Tensor):
        super().__init__()
        self._parent = [parent]  # a list keeps the parent out of this module's parameters
        self.index = index
        if isinstance(index, slice):
            self.num_datapoints = len(range(parent.num_datapoints)[index])
        else:
            self.num_datapoints = int(index.shape[0])

    @property
    def supports_stl(self) -> bool:  # type: ignore[override]
        return self._parent[0].supports_stl

    def guide(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        self.check_batch_size(x.shape[0])
        self._parent[0].local_guide(x, self.index)

    def mean_field(self, x: torch.Tensor) -> dict[str, dist.TorchDistribution] | None:
        self.check_batch_size(x.shape[0])
        return self._parent[0].local_mean_field(self.index)


class LocalGaussianPosterior(LocalPosterior, GaussianPosterior):
    """Per-datapoint diagonal Gaussians: free ``loc`` and ``log_scale`` for each datapoint.

    The guide is tied to one batch of N datapoints, in order: call it with those N rows.

    Args:
        params: Initial ``{site: (loc, scale)}``, each of shape ``(N, *event_shape)``.
    """

    supports_stl = True
    """Every site's loc and scale are this posterior's own parameters, so detaching them
    drops exactly the score that sticking the landing drops."""

    def __init__(self, params: GaussianParams):
        super().__init__(self.batch_size_of(params))
        self._register_gaussian(params)

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
        if x is not None:
            self.check_batch_size(x.shape[0])
        return {k: (self.loc[k], self.log_scale[k].exp()) for k in self.loc}

    def local_mean_field(
        self, index: slice | torch.Tensor
    ) -> dict[str, dist.TorchDistribution] | None:
        # As GaussianPosterior.mean_field: a subclass's own guide may draw something else.
        if replaces(self, LocalGaussianPosterior, "local_guide"):
            return None
        return _normal_sites(
            {
                name: (
                    take_rows(self.loc[name], index),
                    take_rows(self.log_scale[name], index).exp(),
                )
                for name in self.loc
            }
        )

    def local_guide(self, x: torch.Tensor, index: slice | torch.Tensor) -> None:
        sites = self.local_mean_field(index)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            for name, site in sites.items():
                pyro.sample(name, site)
