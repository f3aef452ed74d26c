"""Conditional restoration: the posterior mean of x under a refined q(z | y).

With q(z | y) refined under p(y | z) (any refiner, on an `ObservedModel`), the restored
image is

    E[x | y] = E_{z ~ q(z | y)} [ E[x | y, z] ],

the average over draws of z of the pixel posterior given y and z (`ObservedModel.pixel_posterior`),
estimated with ``num_samples`` draws per image; its variance follows from the law of total
variance. Samples of x draw z ~ q, then x ~ p(x | y, z).

References:
    Mattei & Frellsen, "MIWAE: Deep Generative Modelling and Imputation of Incomplete Data
    Sets", ICML 2019 (imputation by the conditional mean under the model).
"""

from __future__ import annotations

import torch

from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.core.runtime import eval_mode, mask_rows
from lvmtoolkit.metrics.conditional import posterior_latents
from lvmtoolkit.tasks.observed_model import ObservedModel
from lvmtoolkit.tasks.summary import PixelSummary


@torch.no_grad()
def conditional_summary(
    model: ObservedModel,
    posterior: Posterior,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    num_samples: int,
    keep: int = 0,
    max_rows: int | None = None,
) -> PixelSummary:
    """Mean, variance and ``keep`` samples of p(x | y) under ``posterior`` as q(z | y).

    Args:
        model: The backend seen through the observation model; run in eval mode (each
            module gets its own mode back afterwards).
        posterior: q(z | y) for the N datapoints of ``y`` (refined, or the encoder's).
        y: ``(N, *data_shape)`` observations (unobserved pixels filled).
        mask: Observed-pixel mask, or None.
        num_samples: Draws of z per datapoint.
        keep: Samples of x to keep per datapoint (the first ``keep`` draws).
        max_rows: Bound on datapoint-draws per forward pass; None: the model's
            `Model.chunk_size`.

    Returns:
        The summary; draws use torch's global RNG.
    """
    summary = PixelSummary(y.shape[0], tuple(y.shape[1:]), keep=keep, device=y.device)
    with eval_mode(model):
        for index, z in posterior_latents(
            model, posterior, y, mask, num_samples=num_samples, max_rows=max_rows
        ):
            summary.add(index, model.pixel_posterior(z, y[index], mask_rows(mask, index, y)))
    return summary
