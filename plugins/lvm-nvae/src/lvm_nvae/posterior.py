"""The NVAE's posteriors: amortized (the bidirectional encoder) and per-datapoint.

`NVAEPosterior` samples the groups top-down, each from its residual normal (and flow
steps) given the groups above. It is a ``GaussianPosterior`` through a mean-field summary
(`NVAEPosterior.gaussian_params`), which is where mean-field refinement starts.

`NVAELocalPosterior` is hierarchical per-datapoint refinement: it keeps the whole
top-down structure and adds per-datapoint offsets to the encoder's residual mean and
log-scale of every group, starting at zero, so it starts *exactly* at the amortized
posterior. The encoder's bottom-up features of the batch are computed once and kept; each
step runs the frozen top-down path (prior and residual heads) with the offsets. Flow steps
are the model's own, conditioned on those features (amortized), or per-datapoint copies of
them, or, for a model without flows, per-datapoint steps that start at the identity.

References:
    Vahdat & Kautz, "NVAE: A Deep Hierarchical Variational Autoencoder", NeurIPS 2020;
    Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
    NeurIPS 2016.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from lvmtoolkit import (
    DATA_PLATE,
    AffineAutoregressive,
    BatchedAutoregressiveCell,
    DetachedScore,
    GaussianFlow,
    GaussianParams,
    GaussianPosterior,
    LocalPosterior,
    LvmError,
    eval_mode,
    take_rows,
)


def posterior_dist(
    model: nn.Module,
    index: int,
    feature: torch.Tensor,
    state: torch.Tensor,
    offsets: tuple[torch.Tensor, torch.Tensor] | None = None,
    flows: list[AffineAutoregressive] | None = None,
) -> dist.TorchDistribution:
    """q(z_l | z_<l, x) of an NVAE: the residual normal, then flow steps if there are any.

    The NVAE's posterior is parameterised relative to its prior (Vahdat & Kautz, Eq. 2):
    ``N(mu_p + dmu, sigma_p * exp(dlog_sigma))`` with the prior's parameters and the
    encoder's residual ones both given by the model.

    Args:
        model: The NVAE (``prior_params``, ``residual_params`` and ``flows``).
        index: Group index.
        feature: The encoder's feature for this group.
        state: Top-down state before the group.
        offsets: Per-datapoint ``(dmu, dlog_sigma)`` added to the encoder's residual
            (per-datapoint refinement); None for the amortized posterior.
        flows: Flow steps to use; None: the model's own, conditioned on ``feature``.
    """
    mu_p, log_sigma_p = model.prior_params(index, state)
    dmu, dlog_sigma = model.residual_params(index, feature, state)
    if offsets is not None:
        dmu, dlog_sigma = dmu + offsets[0], dlog_sigma + offsets[1]
    base = dist.Normal(mu_p + dmu, (log_sigma_p + dlog_sigma).exp(), validate_args=False)
    base = base.to_event(3)
    if flows is None:
        flows = [cell.condition(feature) for cell in model.flows[index]]
    return GaussianFlow(base, flows) if flows else base


class NVAEPosterior(GaussianPosterior):
    """q(z | x) of the NVAE: bottom-up features, then the shared top-down path.

    Args:
        model: The NVAE whose encoder and decoder this posterior runs (not copied).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self._model = [model]  # a list keeps the model out of this module's parameters

    @property
    def model(self) -> nn.Module:
        """The NVAE."""
        return self._model[0]

    def guide(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        model = self.model
        features = model.encode(x)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            model.top_down(
                x.shape[0],
                lambda i, s: pyro.sample(
                    model.groups[i].name, posterior_dist(model, i, features[i], s)
                ),
            )

    def gaussian_params(self, x: torch.Tensor) -> GaussianParams:
        """A mean-field summary: each group's Gaussian along the posterior's mean path.

        Group by group (top-down), ``z_l`` is set to the mean of its residual normal pushed
        through the flow steps; the scale is the residual normal's times each step's
        diagonal scale factor at that point. Without flows the location and scale are
        exactly q's given the groups above at their means.
        """
        model = self.model
        features = model.encode(x)
        params: GaussianParams = {}

        def sampler(index: int, state: torch.Tensor) -> torch.Tensor:
            q = posterior_dist(model, index, features[index], state)
            steps = q.transforms if isinstance(q, dist.TransformedDistribution) else []
            normal = (q.base_dist if steps else q).base_dist
            loc, scale = normal.loc, normal.scale
            for step in steps:
                scale = scale * step.log_scale(loc).exp()
                loc = step(loc)
            params[model.groups[index].name] = (loc, scale)
            return loc

        model.top_down(x.shape[0], sampler)
        return params

    def local_posterior(
        self, x: torch.Tensor, *, num_flows: int = 0, flow_hidden: int = 4, seed: int = 0
    ) -> NVAELocalPosterior:
        """Hierarchical per-datapoint posterior for ``x``, starting equal to this one.

        Args:
            x: The batch.
            num_flows: 0: offsets only (the model's own flows, if any, stay amortized);
                more: per-datapoint flow weights too, copies of the model's own flow steps
                where it has them, else this many steps that start at the identity.
            flow_hidden: Hidden channels per latent channel of identity-initialised steps.
            seed: Seed of those steps' random first layers.
        """
        return NVAELocalPosterior(
            self.model, x, num_flows=num_flows, flow_hidden=flow_hidden, seed=seed
        )


class NVAELocalPosterior(LocalPosterior):
    """Per-datapoint offsets to the NVAE's residual posterior of every group (+ flows).

    Args:
        model: The NVAE (shared, frozen during refinement).
        x: The batch whose encoder features are kept.
        num_flows: See `NVAEPosterior.local_posterior`.
        flow_hidden: See `NVAEPosterior.local_posterior`.
        seed: See `NVAEPosterior.local_posterior`.

    References:
        Vahdat & Kautz, NeurIPS 2020; Cremer, Li & Duvenaud, "Inference Suboptimality in
        Variational Autoencoders", ICML 2018.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        num_flows: int = 0,
        flow_hidden: int = 4,
        seed: int = 0,
    ):
        if num_flows < 0 or flow_hidden < 1:
            raise LvmError(f"need num_flows >= 0 and flow_hidden >= 1 ({num_flows}, {flow_hidden})")
        n = x.shape[0]
        super().__init__(n)
        self.shared["model"] = model
        with torch.no_grad(), eval_mode(model):
            features = model.encode(x)
        self.features = nn.Module()
        self.offset_loc = nn.ParameterDict()
        self.offset_log_scale = nn.ParameterDict()
        self.flows = nn.ModuleDict()
        generator = torch.Generator().manual_seed(seed)
        for index, group in enumerate(model.groups):
            feature = features[index].detach()
            self.features.register_buffer(group.name, feature)
            zeros = feature.new_zeros(n, *group.shape)
            self.offset_loc[group.name] = nn.Parameter(zeros.clone())
            self.offset_log_scale[group.name] = nn.Parameter(zeros.clone())
            if num_flows == 0:
                continue
            if model.has_flows:
                with torch.no_grad():
                    cells = [cell.per_datapoint(n, feature) for cell in model.flows[index]]
            else:
                cells = [
                    BatchedAutoregressiveCell.identity(
                        n,
                        group.shape,
                        flow_hidden * group.shape[0],
                        reverse=k % 2 == 1,
                        generator=generator,
                    ).to(feature.device)
                    for k in range(num_flows)
                ]
            self.flows[group.name] = nn.ModuleList(cells)

    @property
    def model(self) -> nn.Module:
        """The NVAE (shared by copies, never copied)."""
        return self.shared["model"]  # type: ignore[return-value]

    @property
    def supports_stl(self) -> bool:  # type: ignore[override]
        """Offsets only (no per-datapoint flows): every group scores with them detached."""
        return len(self.flows) == 0

    def local_guide(self, x: torch.Tensor, index: slice | torch.Tensor) -> None:
        model = self.model
        with pyro.plate(DATA_PLATE, x.shape[0]):

            def sampler(i: int, state: torch.Tensor) -> torch.Tensor:
                name = model.groups[i].name
                feature = getattr(self.features, name)[index]
                offsets = (
                    take_rows(self.offset_loc[name], index),
                    take_rows(self.offset_log_scale[name], index),
                )
                flows = (
                    [cell.transform(index) for cell in self.flows[name]]
                    if name in self.flows
                    else None  # the model's own flows (if any), amortized
                )
                q = posterior_dist(model, i, feature, state, offsets=offsets, flows=flows)
                if flows is None:  # offsets only: sticking the landing may drop their score
                    q = DetachedScore(q, _detach_offsets(q, offsets))
                return pyro.sample(name, q)

            model.top_down(x.shape[0], sampler)


def _detach_offsets(
    q: dist.TorchDistribution, offsets: tuple[torch.Tensor, torch.Tensor]
) -> dist.TorchDistribution:
    """``q`` with the offsets' gradient removed but its dependence on the groups above kept.

    The score that sticking the landing drops is the derivative of ``log q`` with respect to
    the refined parameters (the offsets) at fixed ``z``; the prior and residual heads also
    depend on the groups sampled above, a pathwise term that must stay. The model's own
    flow steps (if any) are frozen, so they are shared as they are (scoring the drawn ``z``
    reuses the draw's cached inverse).
    """
    steps = q.transforms if isinstance(q, GaussianFlow) else []
    normal = (q.base_dist if steps else q).base_dist
    dmu, dlog_sigma = offsets
    loc = normal.loc - (dmu - dmu.detach())
    scale = normal.scale * (dlog_sigma.detach() - dlog_sigma).exp()
    base = dist.Normal(loc, scale, validate_args=False).to_event(3)
    return GaussianFlow(base, steps) if steps else base
