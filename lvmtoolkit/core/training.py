"""Maximum-likelihood training of a Model with its amortized posterior (the ELBO)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pyro
import torch

from lvmtoolkit.core.model import Model
from lvmtoolkit.core.nelbo import nelbo
from lvmtoolkit.core.runtime import seeded
from lvmtoolkit.data.base import EVAL_BINARIZATION_SEED, binarize_dynamic
from lvmtoolkit.errors import LvmError

ProgressCallback = Callable[[int, int, float], None]
"""Called as ``progress(epoch, epochs, mean_train_nelbo)`` after each epoch."""


def train(
    model: Model,
    images: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 100,
    lr: float = 1e-3,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Train encoder and decoder jointly by minimising the NELBO (Adam).

    For a model with a Bernoulli likelihood (``model.binary_data``) images are binarised
    afresh for every batch (dynamic binarisation); any other model (e.g. a Gaussian
    likelihood, ``binary_data = False``) trains on the grey levels as given. The model's
    ``on_train_step`` and ``on_before_optimizer_step`` hooks run around each step (KL
    warm-up, gradient clipping).

    Args:
        model: The model; trained in place.
        images: Grey-level training images in [0, 1], shape ``(N, *model.data_shape)``.
        epochs: Passes over the data.
        batch_size: Datapoints per gradient step.
        lr: Adam learning rate.
        seed: Seed of shuffling and binarisation.
        progress: See `ProgressCallback`.

    Returns:
        A training summary for the checkpoint: epochs, steps, final mean NELBO, seconds,
        and ``binarization`` (``"dynamic"`` or ``"none"``).
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise LvmError(
            f"need epochs >= 1, batch size >= 1, lr > 0 (got {epochs}, {batch_size}, {lr})"
        )
    device = model.device
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    total_steps = epochs * math.ceil(images.shape[0] / batch_size)
    start = time.perf_counter()
    steps = 0
    mean_loss = math.nan
    binary = bool(getattr(model, "binary_data", True))
    model.train()
    with seeded(seed, device), pyro.validation_enabled(False):
        for epoch in range(1, epochs + 1):
            order = torch.randperm(images.shape[0])
            total, count = 0.0, 0
            for begin in range(0, images.shape[0], batch_size):
                batch = images[order[begin : begin + batch_size]].to(device)
                if binary:
                    batch = binarize_dynamic(batch)
                model.on_train_step(steps, total_steps)
                loss = model.training_loss(batch).mean()
                if not torch.isfinite(loss):
                    raise LvmError(
                        f"training diverged at epoch {epoch} (loss {loss.item()}); try a lower --lr"
                    )
                optimizer.zero_grad()
                loss.backward()
                model.on_before_optimizer_step()
                optimizer.step()
                total += loss.item() * batch.shape[0]
                count += batch.shape[0]
                steps += 1
            mean_loss = total / count
            if progress is not None:
                progress(epoch, epochs, mean_loss)
    model.eval()
    return {
        "epochs": epochs,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "final_train_nelbo": round(mean_loss, 4),
        "seconds": round(time.perf_counter() - start, 1),
        "binarization": "dynamic" if binary else "none",
    }


def held_out_nelbo(model: Model, images: torch.Tensor, num_samples: int = 16) -> dict[str, Any]:
    """The held-out NELBO a checkpoint's training summary records, and how it was taken.

    Binary-data models are scored on the fixed evaluation binarisation, others on the grey
    levels, with the amortized posterior.

    Args:
        model: The trained model (on the device it will be scored on).
        images: Held-out grey-level images in [0, 1], shape ``(N, *model.data_shape)``.
        num_samples: Posterior samples per image.

    Returns:
        ``{"nelbo": mean NELBO in nats (rounded to 4 places), "eval_protocol": text}``.
    """
    held_out = model.evaluation_data(images).to(model.device)
    value = nelbo(model, model.amortized_posterior(), held_out, num_samples=num_samples)
    seen_as = (
        f"fixed binarisation seed {EVAL_BINARIZATION_SEED}"
        if model.binary_data
        else "grey levels (not binarised)"
    )
    return {
        "nelbo": round(value.mean().item(), 4),
        "eval_protocol": (
            f"{num_samples} samples per image, {seen_as}, all {held_out.shape[0]} images"
        ),
    }
