"""The inference-gap decomposition of Cremer, Li & Duvenaud (ICML 2018).

For a model and datapoints x:

* L[q]: ELBO of the amortized posterior (the encoder),
* L[q*]: ELBO of the best posterior of the same family for each datapoint, found by
  running a refiner until a stated stopping rule holds,
* log p̂(x): IWAE-k bound with q* as proposal (the best available estimate of log p(x)),

and the gaps: approximation = log p̂(x) - L[q*] (the family's fault), amortization =
L[q*] - L[q] (the encoder's fault); their sum is the inference gap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lvmtoolkit.core.model import Model
from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.core.refiner import Refiner, check_batch
from lvmtoolkit.errors import LvmError
from lvmtoolkit.metrics.iwae import iwae_bound
from lvmtoolkit.metrics.nelbo import nelbo
from lvmtoolkit.metrics.report import Report, binarization_of, options_of, per_split


@dataclass
class ConvergenceRule:
    """When to call per-datapoint optimisation converged.

    The refiner runs in rounds of ``round_steps``, each starting from the previous round's
    posterior; it stops when a round lowers the mean NELBO (``eval_samples`` samples, fixed
    noise) by less than ``tolerance`` nats, or after ``max_steps`` steps in all.
    """

    round_steps: int = 500
    tolerance: float = 0.02
    max_steps: int = 10000

    def __post_init__(self) -> None:
        if self.round_steps < 1 or self.max_steps < 1 or self.tolerance < 0:
            raise LvmError("round_steps and max_steps must be positive, tolerance >= 0")


def gap_report(
    model: Model,
    x: torch.Tensor,
    refiner: Refiner,
    *,
    steps: Sequence[int] = (1, 10, 100, 1000),
    rule: ConvergenceRule | None = None,
    iwae_samples: int = 1000,
    eval_samples: int = 100,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Decompose the inference gap of ``model`` on ``x`` (means over datapoints, in nats).

    Args:
        model: The generative model.
        x: Batch ready for the model (binarised if the model's data are binary).
        refiner: An iterative refiner (e.g. svi); its ``steps`` option is set per run.
        steps: Step counts at which to report how much of the amortization gap is closed.
        rule: Stopping rule for q*; see `ConvergenceRule`.
        iwae_samples: k of the IWAE bound for log p̂(x).
        eval_samples: Samples per ELBO estimate.
        seed: Seed of the evaluation noise (the same for every ELBO).
        log: Called with progress lines.

    Returns:
        Numbers and protocol as a JSON-ready dict.

    References:
        Cremer, Li & Duvenaud, "Inference Suboptimality in Variational Autoencoders",
        ICML 2018.
    """
    check_batch(model, x)
    if not refiner.iterative:
        raise LvmError(f"refiner {refiner.name!r} takes no steps; q* needs an iterative refiner")
    rule = rule or ConvergenceRule()
    started = time.perf_counter()
    say = log or (lambda line: None)

    # log p(x, z) - log q(z) rather than the closed-form KL: both are unbiased, but this one
    # has zero variance at the true posterior, so L[q*] is measured best where it matters.
    def elbo(posterior: Posterior) -> torch.Tensor:
        return -nelbo(model, posterior, x, num_samples=eval_samples, seed=seed, analytic_kl=False)

    amortized = elbo(model.amortized_posterior())
    at_step: dict[int, torch.Tensor] = {}

    def on_checkpoint(step: int, posterior: Posterior) -> None:
        at_step[step] = elbo(posterior)
        say(f"step {step}: ELBO {at_step[step].mean().item():.3f}")

    first = max(steps) if steps else rule.round_steps
    result = refiner.with_options(steps=first).refine(
        model, x, checkpoints=list(steps), on_checkpoint=on_checkpoint
    )
    posterior, total = result.posterior, result.steps
    current = at_step.get(total, elbo(posterior))
    reason = "max_steps"
    while total < rule.max_steps:
        budget = min(rule.round_steps, rule.max_steps - total)
        posterior = refiner.with_options(steps=budget).refine(model, x, init=posterior).posterior
        total += budget
        new = elbo(posterior)
        gain = (new.mean() - current.mean()).item()
        current = new
        say(f"step {total}: ELBO {current.mean().item():.3f} (round gain {gain:.4f})")
        if gain < rule.tolerance:
            reason = f"round of {budget} steps gained {gain:.4f} < {rule.tolerance} nats"
            break
    optimal = current
    log_px = iwae_bound(model, posterior, x, num_samples=iwae_samples, seed=seed + 1)
    say(f"IWAE-{iwae_samples}: {log_px.mean().item():.3f}")
    amortization_gap = (optimal - amortized).mean().item()
    closed = {
        str(step): (
            (value - amortized).mean().item() / amortization_gap
            if amortization_gap > 0
            else float("nan")
        )
        for step, value in sorted(at_step.items())
    }
    return {
        "num_images": int(x.shape[0]),
        "log_px": log_px.mean().item(),
        "elbo_amortized": amortized.mean().item(),
        "elbo_optimal": optimal.mean().item(),
        "approximation_gap": (log_px - optimal).mean().item(),
        "amortization_gap": amortization_gap,
        "inference_gap": (log_px - amortized).mean().item(),
        "elbo_at_step": {str(k): v.mean().item() for k, v in sorted(at_step.items())},
        "fraction_closed_at_step": closed,
        "optimal_steps": total,
        "stop_reason": reason,
        "rule": asdict(rule),
        "iwae_samples": iwae_samples,
        "eval_samples": eval_samples,
        "seconds": round(time.perf_counter() - started, 1),
    }


def gaps_report(
    model: Model,
    refiner: Refiner,
    splits: Mapping[str, torch.Tensor],
    *,
    steps: Sequence[int] = (1, 10, 100, 1000),
    rule: ConvergenceRule | None = None,
    iwae_samples: int = 1000,
    eval_samples: int = 100,
    seed: int = 0,
    images: str = "",
    log: Callable[[str, str], None] | None = None,
) -> Report:
    """`gap_report` for each split, with the protocol that produced the numbers.

    Args:
        model: The generative model.
        refiner: An iterative refiner that finds q*.
        splits: Split name -> images in [0, 1]; prepared with `Model.evaluation_data`.
        steps: See `gap_report`.
        rule: See `gap_report`.
        iwae_samples: See `gap_report`.
        eval_samples: See `gap_report`.
        seed: See `gap_report`.
        images: Which images these are, in words, for the protocol.
        log: Called as ``log(split, line)`` with progress lines.

    Returns:
        A `Report` whose results map each split to
        `gap_report`'s numbers.
    """
    rule = rule or ConvergenceRule()
    results = per_split(
        model,
        splits,
        lambda x, say: gap_report(
            model,
            x,
            refiner,
            steps=steps,
            rule=rule,
            iwae_samples=iwae_samples,
            eval_samples=eval_samples,
            seed=seed,
            log=say,
        ),
        log,
    )
    protocol = {
        "metric": "nats per image, mean over images (higher ELBO and log p is better)",
        "log_px": f"IWAE-{iwae_samples} with q* as proposal, seed {seed + 1}",
        "elbo": f"{eval_samples}-sample Monte-Carlo ELBO (log p(x, z) - log q(z)), seed {seed}",
        "q_star": f"{refiner.name} until the rule holds",
        "rule": asdict(rule),
        "binarization": binarization_of(model),
        "images": images or {split: int(t.shape[0]) for split, t in splits.items()},
    }
    return Report("gaps", [model.name], {refiner.name: options_of(refiner)}, protocol, results)
