"""The per-datapoint ELBO of a toolkit Model, computed without Pyro's traces where it can be.

`per_datapoint_elbo` evaluates the estimator on Pyro's traces: it runs the guide under a
tracer, replays the model against it and walks both traces. That is general (any model,
any guide) and stays the reference semantics. For the commonest pair it is also the slowest
part of a refinement step that is not arithmetic: a *flat* model, whose latent sites are
drawn independently from a fixed prior and whose pixels are then drawn from
``decode(z)`` (the paper's VAE and GMVAE, a `TorchVAE`), with a *mean-field* posterior,
whose sites are independent given x (the encoder's Gaussians, svi's per-datapoint
Gaussians, svi-flow's per-datapoint flows on them).

For that pair `direct_elbo` computes the same estimator in a few torch operations: the
same distribution objects, the same draws in the same order, the same choice between the
closed-form KL and ``log p(z) - log q(z)``, the same sticking-the-landing score, and the
terms added in the order the traces add them. With the same seed it returns the same
values and gradients as the Pyro path (tests check both, and `lvmtoolkit.testing.check_model`
checks every backend that declares `Model.latent_prior`).

`model_elbo` is what refiners and estimators call: the direct path where the model and the
posterior both allow it, Pyro's traces everywhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.distributions import Bernoulli, Distribution, kl_divergence

from lvmtoolkit.core.elbo import _stop_gradient, per_datapoint_elbo
from lvmtoolkit.core.likelihood import peel_independent
from lvmtoolkit.errors import LvmError

if TYPE_CHECKING:
    from lvmtoolkit.core.model import Model
    from lvmtoolkit.core.posterior import Posterior


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


def direct_elbo(
    model: Model,
    posterior: Posterior,
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    analytic_kl: bool = True,
    stl: bool = False,
) -> torch.Tensor | None:
    """The one-sample ELBO of each datapoint without Pyro's traces, or None where it cannot.

    It can when ``model.latent_prior`` gives a prior for every latent site and
    ``posterior.mean_field(x)`` gives q for the same sites. Arguments and result are those of
    `per_datapoint_elbo`, whose estimator this is (same value for the same draws).

    Returns:
        Tensor of shape ``(N,)``, or None (nothing was drawn: the caller's noise is intact).
    """
    prior = model.latent_prior(x.shape[0], x)
    if prior is None:
        return None
    q = posterior.mean_field(x)
    if q is None or set(q) != set(prior):
        return None
    # The guide's order: its draws consume the generator as the traced guide's would.
    z = {name: site.rsample() for name, site in q.items()}
    elbo: torch.Tensor | int = 0
    for name in prior:  # the model's order, as the traces are walked
        q_site, p_site = q[name], prior[name]
        if analytic_kl:
            try:
                elbo = elbo - kl_divergence(q_site, p_site)
                continue
            except NotImplementedError:
                pass
        elbo = elbo + p_site.log_prob(z[name])
        elbo = elbo - (_stop_gradient(q_site) if stl else q_site).log_prob(z[name])
    return elbo + observed_log_prob(model.decode(z), x, mask)


def model_elbo(
    model: Model,
    posterior: Posterior,
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    analytic_kl: bool = True,
    stl: bool = False,
) -> torch.Tensor:
    """One-sample ELBO of each datapoint of a Model under a Posterior.

    `direct_elbo` where the model and the posterior allow it, else `per_datapoint_elbo` on
    ``model.model`` and the posterior's guide. The two agree: the choice changes the time a
    step takes, not its result.

    Args:
        model: The model.
        posterior: A posterior of ``len(x)`` datapoints (or an amortized one).
        x: The batch.
        mask: Optional observed-pixel mask.
        analytic_kl: Closed-form KL where the pair has one.
        stl: Sticking the landing (needs ``analytic_kl=False``).

    Returns:
        Tensor of shape ``(N,)`` (differentiable).
    """
    if stl and analytic_kl:
        raise LvmError("stl applies to the Monte-Carlo KL: pass analytic_kl=False with stl=True")
    direct = direct_elbo(model, posterior, x, mask, analytic_kl=analytic_kl, stl=stl)
    if direct is not None:
        return direct
    return per_datapoint_elbo(
        model.model, posterior, x, mask=mask, analytic_kl=analytic_kl, stl=stl
    )
