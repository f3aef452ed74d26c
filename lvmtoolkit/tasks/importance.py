"""Self-normalised importance sampling and importance resampling, with q(z | y) as proposal.

Draw z_1..z_K ~ q(z | y) and weigh each by w_k = p(y, z_k) / q(z_k | y). Then

- single imputation: E[x | y] ~ sum_k w_k E[x | y, z_k] / sum_k w_k (self-normalised
  importance sampling; consistent as K grows, whatever the proposal's quality, if it
  covers the posterior);
- multiple imputation: samples of x drawn by importance resampling, z_k chosen with
  probability proportional to w_k, then x ~ p(x | y, z_k);
- the conditional log-likelihood log p(x | y) of given clean data, by the same weights.

The better the proposal (a refined q rather than the encoder's), the more even the
weights and the larger their effective sample size (``(sum w)^2 / sum w^2``).

References:
    Mattei & Frellsen, "MIWAE: Deep Generative Modelling and Imputation of Incomplete Data
    Sets", ICML 2019; Rubin, "Using the SIR Algorithm to Simulate Posterior Distributions",
    Bayesian Statistics 3, 1988.
"""

from __future__ import annotations

import math

import torch

from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.core.runtime import eval_mode, mask_rows
from lvmtoolkit.metrics.conditional import distinct_rows, weighted_latents
from lvmtoolkit.tasks.observed_model import ObservedModel
from lvmtoolkit.tasks.summary import PixelSummary


@torch.no_grad()
def importance_summary(
    model: ObservedModel,
    posterior: Posterior,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    num_samples: int,
    keep: int = 0,
    reference: torch.Tensor | None = None,
    max_rows: int | None = None,
) -> tuple[PixelSummary, torch.Tensor | None]:
    """Importance-weighted mean, variance and resampled draws of p(x | y).

    Args:
        model: The backend seen through the observation model; run in eval mode (each
            module gets its own mode back afterwards).
        posterior: The proposal q(z | y) for the N datapoints of ``y``.
        y: ``(N, *data_shape)`` observations (unobserved pixels filled).
        mask: Observed-pixel mask, or None.
        num_samples: K, importance samples per datapoint.
        keep: Samples of x to draw by importance resampling, per datapoint.
        reference: Clean data; if given, also estimate log p(reference | y).
        max_rows: Bound on datapoint-draws per forward pass; None: the model's
            `Model.chunk_size`.

    Returns:
        The weighted summary (its ``effective_sample_size`` says what the weights are
        worth) and the ``(N,)`` log-likelihood estimates (None without ``reference``).
    """
    n = y.shape[0]
    summary = PixelSummary(n, tuple(y.shape[1:]), keep=keep, device=y.device, weighted=True)
    numerator = torch.full((n,), -math.inf, dtype=torch.float64, device=y.device)
    with eval_mode(model):
        for index, z, log_w in weighted_latents(
            model, posterior, y, mask, num_samples=num_samples, max_rows=max_rows
        ):
            pixels = model.pixel_posterior(z, y[index], mask_rows(mask, index, y))
            summary.add(index, pixels, log_w)
            if reference is not None:
                count = distinct_rows(index)
                target = pixels.log_prob(reference[index]).flatten(1).sum(1).double()
                numerator[index[:count]] = torch.logaddexp(
                    numerator[index[:count]],
                    torch.logsumexp((log_w.double() + target).view(-1, count), dim=0),
                )
    log_likelihood = None
    if reference is not None:
        log_likelihood = (numerator - summary.log_total).float()
    return summary, log_likelihood
