"""How svi-style refiners start a per-datapoint posterior, and its flow family.

The per-datapoint contract itself (`LocalPosterior`: rows,
copies, row-wise assignment) lives in the core. This module adds the per-datapoint flow
family (`LocalFlowPosterior`) and `make_local_posterior`, which turns a starting
posterior into a local one:

- a posterior that declares a per-datapoint form of its own
  (`local_posterior` does not return None)
  builds it, e.g. the NVAE's hierarchical posterior, which keeps its top-down structure and
  starts *equal* to the amortized posterior; a local posterior's own form is a copy of it
  (a warm start);
- any `GaussianPosterior` gives its ``(loc, scale)`` per
  site: independent per-datapoint Gaussians (mean-field), followed by per-datapoint flow
  steps that start at the identity when flows are asked for (`LocalFlowPosterior`).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from lvmtoolkit.core.elbo import DATA_PLATE
from lvmtoolkit.core.posterior import (
    GaussianParams,
    GaussianPosterior,
    LocalGaussianPosterior,
    LocalPosterior,
    Posterior,
)
from lvmtoolkit.core.runtime import replaces, take_rows
from lvmtoolkit.errors import LvmError
from lvmtoolkit.flows import BatchedAutoregressiveCell, GaussianFlow

STRUCTURES = ("hierarchical", "mean-field")


DEFAULT_MAX_FLAT_WEIGHTS = 1200
"""Per-datapoint weights of one identity-initialised flow step on a flat latent, at most.

A flow step's weights differ per datapoint, so unlike a decoder's they are not reused across
the batch: each one is read, differentiated and updated by the optimiser on every step, and
a batch's steps outgrow the caches once they hold tens of thousands of numbers per
datapoint. The bundled VAE's 10-dimensional latent keeps its full width (3 * 40 * 10 =
1,200); a 50-dimensional one gets 8 hidden units instead of 200. Measured in
docs/benchmarks.md.
"""


def flat_flow_hidden(dimension: int, flow_hidden: int, max_weights: int) -> int:
    """Hidden width of an identity-initialised flow step on a flat latent.

    ``flow_hidden`` units per latent dimension, narrowed so that the step's two weight
    matrices (``hidden x D`` and ``2D x hidden``) hold at most ``max_weights`` numbers, and
    at least one unit.

    Args:
        dimension: The latent's dimension D.
        flow_hidden: Hidden units per latent dimension before narrowing.
        max_weights: Most weights per datapoint in the step.

    Returns:
        The hidden width.
    """
    dimension = max(dimension, 1)
    return max(1, min(flow_hidden * dimension, max_weights // (3 * dimension)))


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
        max_flat_weights: On a flat latent of D dimensions, a step's hidden layer is
            narrowed (to at least one unit) so that its two weight matrices, ``3 * hidden *
            D`` numbers, stay within this many per datapoint (see `flat_flow_hidden`).

    References:
        Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
        NeurIPS 2016.
    """

    def __init__(
        self,
        params: GaussianParams,
        num_flows: int,
        flow_hidden: int = 4,
        seed: int = 0,
        max_flat_weights: int = DEFAULT_MAX_FLAT_WEIGHTS,
    ):
        if num_flows < 1 or flow_hidden < 1:
            raise LvmError(f"need num_flows >= 1 and flow_hidden >= 1 ({num_flows}, {flow_hidden})")
        super().__init__(self.batch_size_of(params))
        self._register_gaussian(params)
        generator = torch.Generator().manual_seed(seed)
        flows = {}
        for site, (loc, _) in params.items():
            event_shape = tuple(loc.shape[1:])
            if len(event_shape) == 3:
                hidden = flow_hidden * event_shape[0]
            else:
                hidden = flat_flow_hidden(loc[0].numel(), flow_hidden, max_flat_weights)
            flows[site] = nn.ModuleList(
                BatchedAutoregressiveCell.identity(
                    self.num_datapoints,
                    event_shape,
                    hidden,
                    reverse=k % 2 == 1,
                    generator=generator,
                ).to(loc.device)
                for k in range(num_flows)
            )
        self.flows = nn.ModuleDict(flows)

    def local_mean_field(self, index: slice | torch.Tensor) -> dict[str, GaussianFlow] | None:
        """Each site's flow for the rows ``index``: the sites are independent given x."""
        if replaces(self, LocalFlowPosterior, "local_guide"):
            return None  # a subclass's own guide may draw something else
        sites = {}
        for site in self.loc:
            loc = take_rows(self.loc[site], index)
            log_scale = take_rows(self.log_scale[site], index)
            base = dist.Normal(loc, log_scale.exp(), validate_args=False)
            base = base.to_event(loc.dim() - 1)
            steps = [cell.transform(index) for cell in self.flows[site]]
            sites[site] = GaussianFlow(base, steps)
        return sites

    def local_guide(self, x: torch.Tensor, index: slice | torch.Tensor) -> None:
        sites = self.local_mean_field(index)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            for name, site in sites.items():
                pyro.sample(name, site)


def make_local_posterior(
    init: Posterior,
    x: torch.Tensor,
    *,
    structure: str = "hierarchical",
    num_flows: int = 0,
    flow_hidden: int = 4,
    seed: int = 0,
    max_flat_weights: int = DEFAULT_MAX_FLAT_WEIGHTS,
) -> LocalPosterior:
    """The per-datapoint posterior a refiner optimises, starting from ``init`` at ``x``.

    Call it with the model frozen (eval mode), as refiners do.

    Args:
        init: Starting posterior: amortized, or a refiner's result (a warm start).
        x: The batch.
        structure: ``"hierarchical"``: a posterior with a per-datapoint form of its own
            (``init.local_posterior``) builds it, keeping its dependence between latent
            sites; ``"mean-field"``: independent per-datapoint Gaussians from
            ``init.gaussian_params(x)``. Posteriors without such a form are mean-field
            either way.
        num_flows: Per-datapoint flow steps (see
            `local_posterior`); 0 gives plain
            per-datapoint Gaussians (`LocalGaussianPosterior`) for mean-field.
        flow_hidden: Hidden channels per latent channel of identity-initialised steps.
        seed: Seed of those steps' random first layers.
        max_flat_weights: Most per-datapoint weights of one such step on a flat latent
            (see `LocalFlowPosterior`).

    Returns:
        A `LocalPosterior` for the datapoints of ``x``.

    Raises:
        LvmError: ``init`` is neither Gaussian nor has a per-datapoint form of its own.
    """
    if structure not in STRUCTURES:
        raise LvmError(f"structure must be one of {', '.join(STRUCTURES)}, got {structure!r}")
    # A plain per-datapoint Gaussian asked for flows gets them on top of its Gaussians (below);
    # any other local posterior warm-starts as a copy of itself.
    adds_flows = num_flows > 0 and type(init) is LocalGaussianPosterior
    if not adds_flows and (structure == "hierarchical" or isinstance(init, LocalPosterior)):
        local = init.local_posterior(x, num_flows=num_flows, flow_hidden=flow_hidden, seed=seed)
        if local is not None:
            if not isinstance(local, LocalPosterior):
                raise LvmError(
                    f"{type(init).__name__}.local_posterior returned a {type(local).__name__}, "
                    "not a LocalPosterior"
                )
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
    return LocalFlowPosterior(params, num_flows, flow_hidden, seed, max_flat_weights)
