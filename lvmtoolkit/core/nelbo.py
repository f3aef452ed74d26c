"""NELBO of any posterior, averaged over samples, per datapoint: the estimator refiners
select with and every report scores with (``lvmtoolkit.metrics`` re-exports it)."""

from __future__ import annotations

import pyro
import torch

from lvmtoolkit.core.model import Model, model_elbo
from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.core.runtime import chunks, frozen, seeded
from lvmtoolkit.core.validation import check_batch
from lvmtoolkit.errors import LvmError


@torch.no_grad()
def nelbo(
    model: Model,
    posterior: Posterior,
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    num_samples: int = 16,
    seed: int | None = 0,
    chunk_size: int | None = None,
    analytic_kl: bool = True,
) -> torch.Tensor:
    """NELBO of each datapoint, in nats, averaged over ``num_samples`` posterior samples.

    With a fixed ``seed`` two posteriors of the same batch are scored with the same noise
    (common random numbers), so their per-datapoint difference has low variance. What does
    not depend on z (an encoder) runs once per datapoint (`Posterior.evaluation_form`), and
    a batch smaller than ``chunk_size`` draws several samples per pass.

    Args:
        model: The generative model.
        posterior: Posterior for the N datapoints of ``x``.
        x: Batch of shape ``(N, *model.data_shape)``.
        mask: Optional observed-pixel mask.
        num_samples: Samples of z per datapoint.
        seed: Seed of the sampling noise (None: use the global RNG).
        chunk_size: Datapoint-samples per forward pass (memory bound); None: the model's
            own (`Model.chunk_size`).
        analytic_kl: Closed-form KL where available (see `per_datapoint_elbo`).

    Returns:
        Tensor of shape ``(N,)``.
    """
    check_batch(model, x, mask)
    posterior.check_batch_size(x.shape[0])
    n = x.shape[0]
    chunk_size = model.rows_per_pass(chunk_size, "chunk_size")
    if num_samples < 1:
        raise LvmError(f"num_samples must be positive, got {num_samples}")
    total = torch.zeros(n, device=x.device)
    per_row_mask = mask is not None and mask.dim() == x.dim()
    with frozen(model):
        form = posterior.evaluation_form(x)
    with frozen(model), seeded(seed, x.device), pyro.validation_enabled(False):
        for part in chunks(n, chunk_size):
            rows = torch.arange(part.start, part.stop, device=x.device)
            # A small batch takes several samples per pass (its rows repeated, which gathers
            # per-datapoint parameters); a batch of chunk_size takes one, as a view.
            per_pass = max(1, chunk_size // rows.shape[0])
            done = 0
            while done < num_samples:
                block = min(per_pass, num_samples - done)
                index = part if block == 1 else rows.repeat(block)
                elbo = model_elbo(
                    model,
                    form.rows(index),
                    x[index],
                    mask=mask[index] if per_row_mask else mask,
                    analytic_kl=analytic_kl,
                )
                total[part] -= elbo.view(block, -1).sum(0)
                done += block
    return total / num_samples
