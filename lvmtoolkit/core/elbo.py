"""Per-datapoint ELBO of a Pyro model and guide.

Pyro's ELBO classes return one scalar for the whole batch. Refinement needs one value per
datapoint (to keep the best posterior of each datapoint and to report per-datapoint traces),
so this module evaluates the same estimator on Pyro's own traces and keeps the ``data``
plate's dimension. With ``analytic_kl=True`` it matches ``pyro.infer.TraceMeanField_ELBO``
(closed-form KL wherever one is registered, Monte-Carlo ``log p - log q`` elsewhere); with
``analytic_kl=False`` it matches ``pyro.infer.Trace_ELBO``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import Distribution, Independent, Normal, kl_divergence, register_kl

from lvmtoolkit.errors import LvmError

DATA_PLATE = "data"


def _data_frame(site: dict[str, Any]) -> Any:
    for frame in site["cond_indep_stack"]:
        if frame.name == DATA_PLATE:
            return frame
    raise LvmError(
        f"sample site {site['name']!r} is outside pyro.plate({DATA_PLATE!r}); every latent and "
        "observed site of a Model must be inside the data plate"
    )


def _per_datapoint(value: torch.Tensor, site: dict[str, Any]) -> torch.Tensor:
    """Sum a log-density tensor over every batch dimension but the data plate's."""
    frame = _data_frame(site)
    while value.dim() < -frame.dim:  # broadcast away on the left: restore the plate dim
        value = value.unsqueeze(0)
    value = value.movedim(frame.dim, 0)
    value = value.expand((frame.size, *value.shape[1:]))
    return value.reshape(frame.size, -1).sum(1) * site.get("scale", 1.0)


def _site_log_prob(site: dict[str, Any]) -> torch.Tensor:
    log_prob = site["fn"].log_prob(site["value"])
    if site.get("mask") is not None:
        log_prob = log_prob * site["mask"]
    return log_prob


class DetachedScore(dist.TorchDistribution):
    """A guide site that samples from ``fn`` and, for sticking the landing, scores with ``score``.

    Detaching a Normal site's ``loc`` and ``scale`` is sticking the landing only when they
    are the guide's own parameters. In a hierarchical guide they also depend on the latents
    sampled above, and that path must keep its gradient; such a guide builds ``score``
    itself: the same density with only its own variational parameters detached (e.g.
    ``loc - (offset - offset.detach())``), and wraps the pair in this class.
    `per_datapoint_elbo` with ``stl=True`` scores the site with ``score``; everything
    else (sampling, ``log_prob``, closed-form KL) is ``fn``'s.

    Args:
        fn: The site's distribution.
        score: ``fn`` with the guide's own parameters detached (same value everywhere).
    """

    arg_constraints: ClassVar[dict] = {}

    def __init__(self, fn: dist.TorchDistribution, score: dist.TorchDistribution):
        self.fn = fn
        self.score = score
        super().__init__(fn.batch_shape, fn.event_shape, validate_args=False)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return self.fn.has_rsample

    @property
    def support(self) -> Any:  # type: ignore[override]
        return self.fn.support

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        return self.fn.rsample(sample_shape)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        return self.fn.sample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.fn.log_prob(value)

    def expand(self, batch_shape: torch.Size, _instance: object = None) -> DetachedScore:
        # Pyro's plates expand every site to the batch shape it already has.
        if tuple(batch_shape) == tuple(self.batch_shape):
            return self
        return DetachedScore(self.fn.expand(batch_shape), self.score.expand(batch_shape))


@register_kl(DetachedScore, Distribution)
def _kl_detached_score(q: DetachedScore, p: Distribution) -> torch.Tensor:
    return kl_divergence(q.fn, p)


def _stop_gradient(fn: Any) -> Any:
    """The site's density with the guide's own parameters detached, for sticking the landing.

    A `DetachedScore` site gives its ``score``; a Normal (or Independent Normal) is
    taken to be parameterised by the guide alone and gets its parameters detached; other
    sites are returned as they are (their score term stays).
    """
    if isinstance(fn, DetachedScore):
        return fn.score
    base, event_dims = fn, 0
    if isinstance(fn, Independent):
        base, event_dims = fn.base_dist, fn.reinterpreted_batch_ndims
    if type(base) not in (Normal, dist.Normal):
        return fn
    detached = dist.Normal(base.loc.detach(), base.scale.detach(), validate_args=False)
    return detached.to_event(event_dims) if event_dims else detached


def per_datapoint_elbo(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    analytic_kl: bool = True,
    stl: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    """One-sample ELBO estimate for each datapoint of a batch.

    Args:
        model: Pyro model whose sample sites lie inside ``pyro.plate("data", N)``.
        guide: Pyro guide over the model's latent sites, same arguments as the model.
        *args: Arguments passed to both model and guide (usually ``x``).
        analytic_kl: Use the closed-form KL between guide and prior sites where one is
            registered (lower variance); otherwise ``log p(z) - log q(z)`` at the sample.
        stl: "Sticking the landing": with ``analytic_kl=False``, score ``log q(z)`` with the
            guide's parameters detached: a `DetachedScore` site's ``score``, or a
            Normal site's ``loc`` and ``scale``. The value is unchanged; the gradient drops
            a zero-mean term, so its variance vanishes at the true posterior. Where a
            Normal's parameters also depend on latents sampled above (hierarchical guides),
            detaching them cuts that path too: still unbiased, but no longer zero-variance
            at the optimum; such guides should wrap their sites in `DetachedScore`.
        **kwargs: Keyword arguments passed to both model and guide (e.g. ``mask``).

    Returns:
        Tensor of shape ``(N,)``: the ELBO estimate of each datapoint (differentiable).

    References:
        Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014; Roeder, Wu &
        Duvenaud, "Sticking the Landing", NeurIPS 2017 (``stl``).
    """
    if stl and analytic_kl:
        raise LvmError("stl applies to the Monte-Carlo KL: pass analytic_kl=False with stl=True")
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    # Plates record their subsample indices as sample sites; they carry no density.
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    elbo: torch.Tensor | int = 0
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            elbo = elbo + _per_datapoint(_site_log_prob(site), site)
            continue
        if name not in guide_trace.nodes:
            raise LvmError(f"latent site {name!r} of the model has no site in the guide")
        guide_site = guide_trace.nodes[name]
        if analytic_kl:
            try:
                kl = kl_divergence(guide_site["fn"], site["fn"])
            except NotImplementedError:
                kl = None
            if kl is not None:
                elbo = elbo - _per_datapoint(kl, site)
                continue
        elbo = elbo + _per_datapoint(_site_log_prob(site), site)
        if stl:
            guide_site = {**guide_site, "fn": _stop_gradient(guide_site["fn"])}
        elbo = elbo - _per_datapoint(_site_log_prob(guide_site), guide_site)
    # Guide-only sites (auxiliary variables) enter as -log q.
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and name not in model_trace.nodes:
            elbo = elbo - _per_datapoint(_site_log_prob(site), site)
    if isinstance(elbo, int):
        raise LvmError("the model has no sample sites")
    return elbo
