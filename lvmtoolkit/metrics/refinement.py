"""NELBO of a refiner's posterior after each of several step counts (the paper's Table 1)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from lvmtoolkit.core.model import Model
from lvmtoolkit.core.nelbo import nelbo
from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.core.refiner import Refiner, check_batch
from lvmtoolkit.metrics.report import Report, binarization_of, options_of, per_split

ANALYTIC_KL = "closed form where the posterior/prior pair has one, else Monte Carlo"


def refinement_report(
    model: Model,
    refiner: Refiner,
    splits: Mapping[str, torch.Tensor],
    steps: Sequence[int],
    *,
    eval_samples: int = 100,
    eval_seed: int = 0,
    images: str = "",
    log: Callable[[str, str], None] | None = None,
) -> Report:
    """The paper's Table 1 for one model and refiner: NELBO after each step count, per split.

    Images are prepared with `Model.evaluation_data` (a fixed binarisation for models
    of binary data). An iterative refiner runs to ``max(steps)`` (its ``steps`` option is
    set to that); a refiner without steps gives only the amortized row.

    Args:
        model: The generative model.
        refiner: A configured refiner.
        splits: Split name -> images in [0, 1], ``(N, *model.data_shape)``.
        steps: Step counts to report (positive).
        eval_samples: Posterior samples per image in each NELBO.
        eval_seed: Seed of the evaluation noise (the same for every row).
        images: Which images these are, in words, for the protocol (e.g. "first 1000 of
            each split of mnist-5k").
        log: Called as ``log(split, line)`` after each checkpoint.

    Returns:
        A `Report` whose results map each split to
        `nelbo_after_steps`'s numbers.
    """
    steps = sorted({int(s) for s in steps})
    if refiner.iterative and steps:
        refiner = refiner.with_options(steps=max(steps))
    results = per_split(
        model,
        splits,
        lambda x, say: nelbo_after_steps(
            model,
            refiner,
            x,
            steps if refiner.iterative else [],
            eval_samples=eval_samples,
            eval_seed=eval_seed,
            log=say,
        ),
        log,
    )
    protocol = {
        "metric": "NELBO in nats per image, mean over images (lower is better)",
        "samples_per_nelbo": eval_samples,
        "kl": ANALYTIC_KL,
        "binarization": binarization_of(model),
        "images": images or {split: int(t.shape[0]) for split, t in splits.items()},
        "eval_seed": eval_seed,
        "improved": "images whose NELBO is below the amortized one, same evaluation noise",
    }
    return Report(
        "refinement", [model.name], {refiner.name: options_of(refiner)}, protocol, results
    )


def nelbo_after_steps(
    model: Model,
    refiner: Refiner,
    x: torch.Tensor,
    steps: Sequence[int],
    *,
    eval_samples: int = 100,
    eval_seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Refine ``x`` once, scoring the posterior at every step count in ``steps``.

    Every row is scored with the same evaluation noise (``eval_seed``), which differs from
    the noise the refiner uses to pick its best posterior, so the reported numbers carry no
    selection bias.

    Args:
        model: The generative model.
        refiner: A configured refiner; if it has a ``steps`` option it should be at least
            ``max(steps)``. Refiners without steps (``amortized``) give only the first row.
        x: Binarised batch.
        steps: Step counts to report.
        eval_samples: Posterior samples per image in each NELBO.
        eval_seed: Seed of the evaluation noise.
        log: Called with a progress line after each checkpoint.

    Returns:
        ``{"num_images", "amortized", "steps": {"k": {"nelbo", "images_improved",
        "max_change"}}, "seconds"}``; NELBOs are means over images, in nats.
    """
    check_batch(model, x)
    started = time.perf_counter()

    def score(posterior: Posterior) -> torch.Tensor:
        return nelbo(model, posterior, x, num_samples=eval_samples, seed=eval_seed)

    amortized = score(model.amortized_posterior())
    by_step: dict[int, torch.Tensor] = {}

    def on_checkpoint(step: int, posterior: Posterior) -> None:
        by_step[step] = score(posterior)
        if log is not None:
            log(f"step {step}: NELBO {by_step[step].mean().item():.2f}")

    result = refiner.refine(model, x, checkpoints=list(steps), on_checkpoint=on_checkpoint)
    if result.steps and result.steps not in by_step:
        by_step[result.steps] = score(result.posterior)
    return {
        "num_images": int(x.shape[0]),
        "amortized": round(amortized.mean().item(), 4),
        "steps": {
            str(step): {
                "nelbo": round(values.mean().item(), 4),
                "images_improved": int((values < amortized).sum()),
                "max_change": round((values - amortized).max().item(), 4),
            }
            for step, values in sorted(by_step.items())
        },
        "seconds": round(time.perf_counter() - started, 2),
    }
