"""Metropolis-within-Gibbs with q(z | y) as proposal: an asymptotically exact sampler.

The chain's state is (z, x) for each image; it targets p(z, x | y). Each iteration

1. proposes z' ~ q(z | y) (the refined posterior, independently of the state) and
   accepts it with probability min(1, w(z') / w(z)), w(z) = p(y | z) p(z) / q(z | y):
   a Metropolis-Hastings step that leaves p(z | y) invariant. The observation model gives
   p(y | z) exactly, so x is integrated out of this step;
2. draws x ~ p(x | y, z) exactly (the Gibbs step).

Step 2 after step 1 makes a partially collapsed Gibbs sampler (van Dyk & Park 2008), valid
for any proposal that covers p(z | y). Mattei & Frellsen (2018) propose z' from the
encoder applied to the current completed image and target p(z | x); with a refined
q(z | y), whose draws do not depend on the current x, the collapsed step accepts far more
often. After ``burn_in`` iterations the restored image is the Rao-Blackwellised mean
(1 / T) sum_t E[x | y, z_t]; samples of x are taken at evenly spaced iterations; the
conditional log-likelihood of clean data is log (1 / T) sum_t p(x | y, z_t).

References:
    Mattei & Frellsen, "Leveraging the Exact Likelihood of Deep Latent Variable Models",
    NeurIPS 2018; van Dyk & Park, "Partially Collapsed Gibbs Samplers", JASA 2008.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.core.runtime import chunks, eval_mode, mask_rows
from lvmtoolkit.metrics.conditional import weighted_latents
from lvmtoolkit.tasks.observed_model import ObservedModel
from lvmtoolkit.tasks.summary import PixelSummary


def _propose(
    model: ObservedModel, posterior: Posterior, y: torch.Tensor, mask: torch.Tensor | None,
    max_rows: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:  # fmt: skip
    """One draw of z ~ q per datapoint, in order, with its log weight."""
    zs, log_ws = [], []
    for _, z, log_w in weighted_latents(
        model, posterior, y, mask, num_samples=1, max_rows=max_rows
    ):
        zs.append(z)
        log_ws.append(log_w)
    return {k: torch.cat([z[k] for z in zs]) for k in zs[0]}, torch.cat(log_ws)


@torch.no_grad()
def metropolis_within_gibbs(
    model: ObservedModel,
    posterior: Posterior,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    iterations: int,
    burn_in: int,
    keep: int = 0,
    reference: torch.Tensor | None = None,
    max_rows: int | None = None,
) -> tuple[PixelSummary, torch.Tensor | None, dict[str, Any]]:
    """Run one chain per image; summarise p(x | y) from the iterations after ``burn_in``.

    Args:
        model: The backend seen through the observation model; run in eval mode (each
            module gets its own mode back afterwards).
        posterior: The proposal q(z | y) for the N datapoints of ``y``.
        y: ``(N, *data_shape)`` observations (unobserved pixels filled).
        mask: Observed-pixel mask, or None.
        iterations: Iterations of each chain (the first draw from q is iteration 1).
        burn_in: Iterations left out of the summary (fewer than ``iterations``).
        keep: Samples of x to keep per image, at evenly spaced iterations after burn-in.
        reference: Clean data; if given, also estimate log p(reference | y).
        max_rows: Bound on images per forward pass; None: the model's
            `Model.chunk_size`.

    Returns:
        The summary (samples in ``summary.samples``), the ``(N,)`` log-likelihood estimates
        (None without ``reference``), and ``{"acceptance": (N,) acceptance rates}``.
    """
    n = y.shape[0]
    max_rows = model.rows_per_pass(max_rows)
    summary = PixelSummary(n, tuple(y.shape[1:]), device=y.device)
    samples = torch.zeros(keep, n, *y.shape[1:], device=y.device)
    kept_at = {burn_in + 1 + (s * (iterations - burn_in)) // max(keep, 1): s for s in range(keep)}
    log_likelihood = torch.full((n,), -math.inf, dtype=torch.float64, device=y.device)
    accepted = torch.zeros(n, device=y.device)
    with eval_mode(model):
        z, log_w = _propose(model, posterior, y, mask, max_rows)
        for t in range(1, iterations + 1):
            if t > 1:
                proposal, proposal_log_w = _propose(model, posterior, y, mask, max_rows)
                log_u = torch.rand(n, device=y.device).log()
                accept = log_u < (proposal_log_w - log_w)
                accepted += accept.float()
                for name, value in z.items():
                    view = (-1,) + (1,) * (value.dim() - 1)
                    z[name] = torch.where(accept.view(view), proposal[name], value)
                log_w = torch.where(accept, proposal_log_w, log_w)
            if t <= burn_in:
                continue
            for part in chunks(n, max_rows):
                rows = torch.arange(part.start, part.stop, device=y.device)
                pixels = model.pixel_posterior(
                    {k: v[part] for k, v in z.items()}, y[part], mask_rows(mask, part, y)
                )
                summary.add(rows, pixels)
                if t in kept_at:
                    samples[kept_at[t], part] = pixels.sample().float()
                if reference is not None:
                    target = pixels.log_prob(reference[part]).flatten(1).sum(1).double()
                    log_likelihood[part] = torch.logaddexp(log_likelihood[part], target)
    summary.samples = samples
    estimate = None
    if reference is not None:
        estimate = (log_likelihood - math.log(iterations - burn_in)).float()
    rate = accepted / max(iterations - 1, 1)
    return summary, estimate, {"acceptance": rate}
