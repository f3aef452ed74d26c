"""The per-datapoint ELBO of a flat model under a mean-field posterior, without Pyro's traces.

`per_datapoint_elbo` evaluates the estimator on Pyro's traces: it runs the guide under a
tracer, replays the model against it and walks both traces. That is general (any model,
any guide) and stays the reference semantics. For the commonest pair it is also the slowest
part of a refinement step that is not arithmetic: a *flat* model, whose latent sites are
drawn independently from a fixed prior and whose pixels are then drawn from
``decode(z)`` (the paper's VAE and GMVAE, a `TorchVAE`), with a *mean-field* posterior,
whose sites are independent given x (the encoder's Gaussians, svi's per-datapoint
Gaussians, svi-flow's per-datapoint flows on them).

For that pair `mean_field_elbo` computes the same estimator in a few torch operations: the
same distribution objects, the same draws in the same order, the same choice between the
closed-form KL and ``log p(z) - log q(z)``, the same sticking-the-landing score, and the
terms added in the order the traces add them. With the same seed it returns the same
values and gradients as the Pyro path (tests check both, and `lvmtoolkit.testing.check_model`
checks every backend that declares `Model.latent_prior`).

It works on the distributions alone (the prior and q of every site, and the decoder), so it
knows nothing of `Model`; `lvmtoolkit.core.model.model_elbo`, what refiners and estimators
call, takes this path where the model and the posterior both allow it and Pyro's traces
everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch.distributions import Bernoulli, Distribution, kl_divergence

from lvmtoolkit.core.elbo import _stop_gradient
from lvmtoolkit.core.likelihood import peel_independent


def _sum_per_datapoint(value: torch.Tensor, event_dims: int) -> torch.Tensor:
    # As Independent.log_prob sums its event dimensions.
    return value.reshape(*value.shape[: value.dim() - event_dims], -1).sum(-1)


def observed_log_prob(
    likelihood: Distribution, x: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``log p(x | z)`` of each datapoint, pixels where ``mask`` is False left out.

    Args:
        likelihood: ``decode(z)``: batch shape ``(N,)``, the pixels as its event.
        x: The batch.
        mask: Optional boolean mask broadcastable to the pixels.

    Returns:
        Tensor of shape ``(N,)``.
    """
    base, event_dims = peel_independent(likelihood)
    # torch's own Bernoulli density (Pyro's Bernoulli inherits it), not a subclass's.
    bernoulli = isinstance(base, Bernoulli) and type(base).log_prob is Bernoulli.log_prob
    if mask is None and not bernoulli:
        return likelihood.log_prob(x)
    if bernoulli:
        # -BCE summed, then negated: the same value as Bernoulli.log_prob's sum (negation
        # is exact) with one pass less over every pixel, forward and backward.
        cross_entropy = torch.nn.functional.binary_cross_entropy_with_logits(
            base.logits, x.expand_as(base.logits), reduction="none"
        )
        if mask is not None:
            cross_entropy = torch.where(mask.bool(), cross_entropy, 0.0)
        return -_sum_per_datapoint(cross_entropy, event_dims)
    log_prob = torch.where(mask.bool(), base.log_prob(x), 0.0)  # as Pyro's masking does
    return _sum_per_datapoint(log_prob, event_dims)


def mean_field_elbo(
    prior: Mapping[str, Distribution],
    q: Mapping[str, Distribution],
    decode: Callable[[dict[str, torch.Tensor]], Distribution],
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    analytic_kl: bool = True,
    stl: bool = False,
) -> torch.Tensor:
    """The one-sample ELBO of each datapoint, from each site's prior and posterior.

    Draws every site from ``q`` in ``q``'s order (the guide's: its draws consume the
    generator as the traced guide's would), then adds the terms in the prior's order (the
    model's, as the traces are walked): the closed-form KL where ``analytic_kl`` and the
    pair has one, else ``log p(z) - log q(z)``, then ``log p(x | z)``.

    Args:
        prior: The prior of every latent site, by name, batch shape ``(N,)``.
        q: The posterior of the same sites.
        decode: ``z -> p(x | z)``, as `Model.decode`.
        x: The batch.
        mask: Optional observed-pixel mask.
        analytic_kl: Closed-form KL where the pair has one.
        stl: Sticking the landing: the score of q without its parameters' gradient.

    Returns:
        Tensor of shape ``(N,)`` (differentiable).
    """
    z = {name: site.rsample() for name, site in q.items()}
    elbo: torch.Tensor | int = 0
    for name in prior:
        q_site, p_site = q[name], prior[name]
        if analytic_kl:
            try:
                elbo = elbo - kl_divergence(q_site, p_site)
                continue
            except NotImplementedError:
                pass
        elbo = elbo + p_site.log_prob(z[name])
        elbo = elbo - (_stop_gradient(q_site) if stl else q_site).log_prob(z[name])
    return elbo + observed_log_prob(decode(z), x, mask)
