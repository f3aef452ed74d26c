"""Importance-weighted bound on log p(x) (IWAE-k) for any posterior used as proposal."""

from __future__ import annotations

import math

import pyro
import torch

from lvmtoolkit.core.model import Model, model_elbo
from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.core.runtime import chunks, frozen, seeded
from lvmtoolkit.core.validation import check_batch
from lvmtoolkit.errors import LvmError


@torch.no_grad()
def iwae_bound(
    model: Model,
    posterior: Posterior,
    x: torch.Tensor,
    *,
    num_samples: int = 1000,
    seed: int | None = 0,
    max_rows: int | None = None,
) -> torch.Tensor:
    """IWAE-k lower bound on log p(x) for each datapoint, in nats.

    ``log (1/k) sum_i p(x, z_i) / q(z_i | x)`` with ``z_i ~ q``. It is at least the ELBO,
    grows with k and reaches log p(x) as k grows (exactly, for any k, when q is the true
    posterior). Samples are drawn in blocks of at most ``max_rows`` (datapoint, sample)
    pairs per forward pass and folded in with a running log-sum-exp, so memory stays bounded
    for k in the thousands.

    Args:
        model: The generative model.
        posterior: Proposal q(z | x) for the N datapoints of ``x`` (amortized or refined).
        x: Batch of shape ``(N, *model.data_shape)``; binary for a model with a Bernoulli
            likelihood (see `check_batch`).
        num_samples: k, importance samples per datapoint.
        seed: Seed of the sampling noise (None: the global RNG).
        max_rows: Bound on datapoint-samples per forward pass (memory); None: the model's
            `Model.chunk_size` (8,192 before it existed: 1.2x slower on the VAE, 1.35x on
            the NVAE, which also took far more memory).

    Returns:
        Tensor of shape ``(N,)``.

    Raises:
        LvmError: ``x`` does not fit the model, or ``posterior`` was made for another
            number of datapoints.

    References:
        Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    """
    max_rows = model.rows_per_pass(max_rows)
    if num_samples < 1:
        raise LvmError(f"num_samples must be positive, got {num_samples}")
    check_batch(model, x)
    posterior.check_batch_size(x.shape[0])
    n = x.shape[0]
    per_block = max(1, max_rows // n) if n <= max_rows else 1
    row_parts = chunks(n, max_rows) if n > max_rows else [slice(0, n)]
    result = torch.empty(n, device=x.device)
    with frozen(model):
        posterior = posterior.evaluation_form(x)
    with frozen(model), seeded(seed, x.device), pyro.validation_enabled(False):
        for part in row_parts:
            rows = torch.arange(part.start, part.stop, device=x.device)
            running = torch.full((rows.shape[0],), -math.inf, device=x.device)
            done = 0
            while done < num_samples:
                block = min(per_block, num_samples - done)
                index = rows.repeat(block)
                log_w = model_elbo(model, posterior.rows(index), x[index], analytic_kl=False).view(
                    block, -1
                )
                running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
                done += block
            result[part] = running - math.log(num_samples)
    return result
