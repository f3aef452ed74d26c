"""Per-datapoint posteriors that svi-style refiners optimise, and how to start one.

A *local* posterior holds free parameters for each datapoint of one batch: every parameter
and buffer it registers has the datapoints on dimension 0. That one rule gives, for any
family, what a refiner needs to optimise all datapoints at once and keep the best of each:
a differentiable view of some rows (:meth:`LocalPosterior.rows`), an independent copy
(:meth:`LocalPosterior.select`) and a row-wise copy from another posterior of the same
family (:meth:`LocalPosterior.assign`). Whatever is shared by all datapoints (a model whose
frozen networks the guide runs) is kept out of the registered state.

:func:`make_local_posterior` turns a starting posterior into a local one:

- a posterior that knows how to do it (it has a ``local_posterior`` method, see
  :class:`SupportsLocalPosterior`) builds its own, e.g. the NVAE's hierarchical posterior,
  which keeps its top-down structure and starts *equal* to the amortized posterior;
- any :class:`~lvmtoolkit.core.posterior.GaussianPosterior` gives its ``(loc, scale)`` per
  site: independent per-datapoint Gaussians (mean-field), followed by per-datapoint flow
  steps that start at the identity when flows are asked for (:class:`LocalFlowPosterior`).
"""

from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from lvmtoolkit.core.elbo import DATA_PLATE
from lvmtoolkit.core.posterior import (
    GaussianParams,
    GaussianPosterior,
    LocalGaussianPosterior,
    Posterior,
)
from lvmtoolkit.errors import LvmError
from lvmtoolkit.flows import BatchedAutoregressiveCell, GaussianFlow

STRUCTURES = ("hierarchical", "mean-field")


class LocalPosterior(Posterior):
    """Base class of posteriors with free parameters per datapoint of one batch.

    Subclasses register only per-datapoint tensors (dimension 0 = datapoint) as parameters
    and buffers, keep shared objects in ``self.shared`` (a dict that copies share), and
    implement :meth:`local_guide`.

    Args:
        num_datapoints: N, the size of the batch this posterior belongs to.
    """

    supports_stl: bool = False
    """Whether every site is scored with only this posterior's own parameters detached
    (:class:`~lvmtoolkit.core.elbo.DetachedScore`), so that ``svi`` may stick the landing."""

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
        if x.shape[0] != self.num_datapoints:
            raise LvmError(
                f"this local posterior holds {self.num_datapoints} datapoints but was called "
                f"with a batch of {x.shape[0]}"
            )
        self.local_guide(x, slice(None))

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

    def local_posterior(self, x: torch.Tensor, **_: object) -> LocalPosterior:
        """Warm start: a copy of this posterior (it already is per datapoint)."""
        if x.shape[0] != self.num_datapoints:
            raise LvmError(
                f"cannot start from a local posterior of {self.num_datapoints} datapoints "
                f"for a batch of {x.shape[0]}"
            )
        return self.select(slice(None))


class LocalRows(Posterior):
    """Some rows of a :class:`LocalPosterior`, sharing its parameters (gradients reach it)."""

    def __init__(self, parent: LocalPosterior, index: slice | torch.Tensor):
        super().__init__()
        self._parent = [parent]  # a list keeps the parent out of this module's parameters
        self.index = index

    def guide(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        parent = self._parent[0]
        if isinstance(self.index, slice):
            n = len(range(parent.num_datapoints)[self.index])
        else:
            n = self.index.shape[0]
        if x.shape[0] != n:
            raise LvmError(f"these rows hold {n} datapoints but were called with {x.shape[0]}")
        parent.local_guide(x, self.index)


@runtime_checkable
class SupportsLocalPosterior(Protocol):
    """A posterior that builds its own per-datapoint version (e.g. hierarchical ones)."""

    def local_posterior(
        self, x: torch.Tensor, *, num_flows: int = 0, flow_hidden: int = 4, seed: int = 0
    ) -> LocalPosterior:
        """Per-datapoint parameters for ``x``, starting equal to this posterior.

        Args:
            x: The batch.
            num_flows: 0: per-datapoint location and scale only (flows the posterior has
                stay amortized). More: per-datapoint flow parameters too: copies of the
                posterior's own flows where it has some, else this many identity steps.
            flow_hidden: Hidden channels per latent channel of identity-initialised steps.
            seed: Seed of the identity steps' random first layers.
        """
        ...


class LocalFlowPosterior(LocalPosterior):
    """Per-datapoint Gaussians per site, each followed by per-datapoint IAF steps.

    ``q(z | x_n) = (f_K ∘ ... ∘ f_1)_# N(loc_n, scale_n)``, where every step ``f_k`` has its
    own weights for each datapoint ``n`` and alternates its autoregressive order. Steps
    start at the identity, so the posterior starts equal to the Gaussian it was made from.

    Args:
        params: Initial ``{site: (loc, scale)}``, each ``(N, *event_shape)``.
        num_flows: Flow steps per site (at least 1).
        flow_hidden: Hidden channels of each step per latent channel.
        seed: Seed of the steps' random first layers.

    References:
        Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
        NeurIPS 2016.
    """

    def __init__(self, params: GaussianParams, num_flows: int, flow_hidden: int = 4, seed: int = 0):
        if not params:
            raise LvmError("a local posterior needs at least one latent site")
        if num_flows < 1 or flow_hidden < 1:
            raise LvmError(f"need num_flows >= 1 and flow_hidden >= 1 ({num_flows}, {flow_hidden})")
        sizes = {loc.shape[0] for loc, _ in params.values()}
        if len(sizes) != 1:
            raise LvmError(f"latent sites disagree on the number of datapoints: {sorted(sizes)}")
        super().__init__(sizes.pop())
        self.loc = nn.ParameterDict(
            {k: nn.Parameter(loc.detach().clone()) for k, (loc, _) in params.items()}
        )
        self.log_scale = nn.ParameterDict(
            {k: nn.Parameter(scale.detach().log().clone()) for k, (_, scale) in params.items()}
        )
        generator = torch.Generator().manual_seed(seed)
        flows = {}
        for site, (loc, _) in params.items():
            event_shape = tuple(loc.shape[1:])
            channels = event_shape[0] if len(event_shape) == 3 else max(loc[0].numel(), 1)
            flows[site] = nn.ModuleList(
                BatchedAutoregressiveCell.identity(
                    self.num_datapoints,
                    event_shape,
                    flow_hidden * channels,
                    reverse=k % 2 == 1,
                    generator=generator,
                ).to(loc.device)
                for k in range(num_flows)
            )
        self.flows = nn.ModuleDict(flows)

    def local_guide(self, x: torch.Tensor, index: slice | torch.Tensor) -> None:
        with pyro.plate(DATA_PLATE, x.shape[0]):
            for site in self.loc:
                loc, log_scale = self.loc[site][index], self.log_scale[site][index]
                base = dist.Normal(loc, log_scale.exp(), validate_args=False)
                base = base.to_event(loc.dim() - 1)
                steps = [cell.transform(index) for cell in self.flows[site]]
                pyro.sample(site, GaussianFlow(base, steps))


def make_local_posterior(
    init: Posterior,
    x: torch.Tensor,
    *,
    structure: str = "hierarchical",
    num_flows: int = 0,
    flow_hidden: int = 4,
    seed: int = 0,
) -> Posterior:
    """The per-datapoint posterior a refiner optimises, starting from ``init`` at ``x``.

    Call it with the model frozen (eval mode), as refiners do.

    Args:
        init: Starting posterior: amortized, or a refiner's result (a warm start).
        x: The batch.
        structure: ``"hierarchical"``: a posterior with a ``local_posterior`` method builds
            its own, keeping its dependence between latent sites; ``"mean-field"``:
            independent per-datapoint Gaussians from ``init.gaussian_params(x)``. Posteriors
            without such a method are mean-field either way.
        num_flows: Per-datapoint flow steps (see :class:`SupportsLocalPosterior`); 0 gives
            plain per-datapoint Gaussians (:class:`LocalGaussianPosterior`) for mean-field.
        flow_hidden: Hidden channels per latent channel of identity-initialised steps.
        seed: Seed of those steps' random first layers.

    Returns:
        A posterior with ``rows``, ``select`` and ``assign`` whose parameters all have the
        datapoints on dimension 0.

    Raises:
        LvmError: ``init`` is neither Gaussian nor able to build a local posterior.
    """
    if structure not in STRUCTURES:
        raise LvmError(f"structure must be one of {', '.join(STRUCTURES)}, got {structure!r}")
    if isinstance(init, LocalPosterior) or (
        structure == "hierarchical" and isinstance(init, SupportsLocalPosterior)
    ):
        local = init.local_posterior(x, num_flows=num_flows, flow_hidden=flow_hidden, seed=seed)
        if isinstance(local, LocalPosterior):
            local.check()
        return local
    if not isinstance(init, GaussianPosterior):
        raise LvmError(
            f"{type(init).__name__} is neither a Gaussian posterior nor one with a "
            "local_posterior method; per-datapoint refinement cannot start from it"
        )
    if num_flows == 0:
        return LocalGaussianPosterior.from_posterior(init, x)
    with torch.no_grad():
        params = {
            k: (loc.detach(), scale.detach()) for k, (loc, scale) in init.gaussian_params(x).items()
        }
    return LocalFlowPosterior(params, num_flows, flow_hidden, seed)
