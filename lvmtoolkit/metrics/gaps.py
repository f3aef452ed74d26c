"""The inference-gap decomposition of Cremer, Li & Duvenaud (ICML 2018).

For a model and datapoints x:

* L[q]: ELBO of the amortized posterior (the encoder),
* L[q*]: ELBO of the best posterior of the same family for each datapoint, found by
  running a refiner until a stated stopping rule holds,
* log p̂(x): the IWAE-k bound with q* as proposal, and optionally annealed importance
  sampling (AIS) from q* (`lvmtoolkit.metrics.ais`), which is tighter where q* is far
  from the posterior,

and the gaps: approximation = log p̂(x) - L[q*] (the family's fault), amortization =
L[q*] - L[q] (the encoder's fault); their sum is the inference gap. Both log p̂(x) are
stochastic lower bounds, so an approximation gap is understated by the estimate's slack;
BDMC on data simulated from the model measures how large that slack is for the AIS
schedule used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lvmtoolkit.core.model import Model
from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.core.refiner import Refiner, check_batch
from lvmtoolkit.errors import LvmError
from lvmtoolkit.metrics.ais import AISSchedule, ais_log_px, bdmc, schedule_protocol
from lvmtoolkit.metrics.iwae import iwae_bound
from lvmtoolkit.metrics.nelbo import nelbo
from lvmtoolkit.metrics.report import Report, binarization_of, options_of, per_split

LOG_PX_ESTIMATORS = ("iwae", "ais")
"""Estimators of log p(x) that `gap_report` can base the approximation gap on."""


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
    log_px: str = "iwae",
    ais: AISSchedule | None = None,
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
        log_px: Which estimate the gaps use: ``"iwae"``, or ``"ais"`` (AIS from q*, with
            IWAE reported beside it).
        ais: The AIS schedule (with ``log_px="ais"``); `AISSchedule`'s defaults if None.
        seed: Seed of the evaluation noise (the same for every ELBO; IWAE uses
            ``seed + 1``, AIS ``seed + 2``).
        log: Called with progress lines.

    Returns:
        Numbers and protocol as a JSON-ready dict: means over datapoints, ``stderr`` (the
        standard error of each mean over datapoints), and ``passes_per_datapoint`` of each
        log p estimator. ``log_px``, ``approximation_gap`` and ``inference_gap`` use the
        chosen estimator; ``log_px_iwae`` / ``approximation_gap_iwae`` are always
        present; ``log_px_ais``, ``approximation_gap_ais`` and ``ais_minus_iwae`` (the
        paired difference) with ``log_px="ais"``.

    References:
        Cremer, Li & Duvenaud, "Inference Suboptimality in Variational Autoencoders",
        ICML 2018.
    """
    check_batch(model, x)
    if not refiner.iterative:
        raise LvmError(f"refiner {refiner.name!r} takes no steps; q* needs an iterative refiner")
    if log_px not in LOG_PX_ESTIMATORS:
        raise LvmError(f"log_px must be one of {', '.join(LOG_PX_ESTIMATORS)}, got {log_px!r}")
    rule = rule or ConvergenceRule()
    schedule = ais or AISSchedule()
    started = time.perf_counter()
    say = log or (lambda line: None)

    elbo = _elbo_of(model, x, eval_samples, seed)
    amortized = elbo(model.amortized_posterior())
    at_step: dict[int, torch.Tensor] = {}

    def on_checkpoint(step: int, posterior: Posterior) -> None:
        at_step[step] = elbo(posterior)
        say(f"step {step}: ELBO {at_step[step].mean().item():.3f}")

    optimum = optimise(
        model, x, refiner, rule, elbo, steps=steps, on_checkpoint=on_checkpoint, log=say
    )
    optimal = optimum.elbo
    iwae = iwae_bound(model, optimum.posterior, x, num_samples=iwae_samples, seed=seed + 1)
    say(f"IWAE-{iwae_samples}: {iwae.mean().item():.3f}")
    amortization_gap = (optimal - amortized).mean().item()
    closed = {
        str(step): (
            (value - amortized).mean().item() / amortization_gap
            if amortization_gap > 0
            else float("nan")
        )
        for step, value in sorted(at_step.items())
    }
    per_datapoint = {
        "log_px_iwae": iwae,
        "elbo_amortized": amortized,
        "elbo_optimal": optimal,
        "approximation_gap_iwae": iwae - optimal,
        "amortization_gap": optimal - amortized,
    }
    passes = {"iwae": iwae_samples}
    extra: dict[str, Any] = {}
    if log_px == "ais":
        estimate = ais_log_px(model, x, optimum.posterior, schedule, seed=seed + 2, log=say)
        say(f"AIS: {estimate.log_px.mean().item():.3f} ({estimate.seconds:.1f} s)")
        per_datapoint["log_px_ais"] = estimate.log_px
        per_datapoint["approximation_gap_ais"] = estimate.log_px - optimal
        # How much tighter AIS is, paired per image (its error bar is the paired one).
        per_datapoint["ais_minus_iwae"] = estimate.log_px - iwae
        passes["ais"] = estimate.passes
        # The Monte-Carlo error of the mean over datapoints from the chains alone.
        extra["log_px_ais_chain_stderr"] = (estimate.stderr.pow(2).sum().sqrt() / x.shape[0]).item()
        extra["ais_acceptance"] = estimate.acceptance.mean().item()
        extra["ais_seconds"] = round(estimate.seconds, 1)
    chosen = per_datapoint[f"log_px_{log_px}"]
    per_datapoint["log_px"] = chosen
    per_datapoint["approximation_gap"] = chosen - optimal
    per_datapoint["inference_gap"] = chosen - amortized
    return {
        "num_images": int(x.shape[0]),
        **{key: value.mean().item() for key, value in per_datapoint.items()},
        "stderr": {key: _sem(value) for key, value in per_datapoint.items()},
        **extra,
        "log_px_estimator": log_px,
        "elbo_at_step": {str(k): v.mean().item() for k, v in sorted(at_step.items())},
        "fraction_closed_at_step": closed,
        "optimal_steps": optimum.steps,
        "stop_reason": optimum.reason,
        "rule": asdict(rule),
        "iwae_samples": iwae_samples,
        "eval_samples": eval_samples,
        "passes_per_datapoint": passes,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _elbo_of(
    model: Model, x: torch.Tensor, samples: int, seed: int
) -> Callable[[Posterior], torch.Tensor]:
    # log p(x, z) - log q(z) rather than the closed-form KL: both are unbiased, but this one
    # has zero variance at the true posterior, so L[q*] is measured best where it matters.
    def elbo(posterior: Posterior) -> torch.Tensor:
        return -nelbo(model, posterior, x, num_samples=samples, seed=seed, analytic_kl=False)

    return elbo


def _sem(values: torch.Tensor) -> float | None:
    """Standard error of the mean over datapoints (None for a single datapoint)."""
    n = values.numel()
    return (values.double().std() / math.sqrt(n)).item() if n > 1 else None


@dataclass
class Optimum:
    """q* for a batch: the posterior, its ELBO per datapoint, and how it was reached."""

    posterior: Posterior
    elbo: torch.Tensor
    steps: int
    reason: str


def optimise(
    model: Model,
    x: torch.Tensor,
    refiner: Refiner,
    rule: ConvergenceRule,
    elbo: Callable[[Posterior], torch.Tensor],
    *,
    steps: Sequence[int] = (),
    on_checkpoint: Callable[[int, Posterior], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Optimum:
    """Run ``refiner`` on ``x`` in rounds until ``rule`` holds.

    Args:
        model: The generative model.
        x: Batch ready for the model.
        refiner: An iterative refiner; its ``steps`` option is set per round.
        rule: The stopping rule.
        elbo: Per-datapoint ELBO of a posterior, the rule's yardstick.
        steps: Step counts of the first run at which ``on_checkpoint`` is called.
        on_checkpoint: Called with ``(step, posterior)`` at each of ``steps``.
        log: Called with a line per round.

    Returns:
        The `Optimum`.
    """
    say = log or (lambda line: None)
    first = max(steps) if steps else rule.round_steps
    result = refiner.with_options(steps=first).refine(
        model, x, checkpoints=list(steps), on_checkpoint=on_checkpoint
    )
    posterior, total = result.posterior, result.steps
    current = elbo(posterior)
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
    return Optimum(posterior, current, total, reason)


def gaps_report(
    model: Model,
    refiner: Refiner,
    splits: Mapping[str, torch.Tensor],
    *,
    steps: Sequence[int] = (1, 10, 100, 1000),
    rule: ConvergenceRule | None = None,
    iwae_samples: int = 1000,
    eval_samples: int = 100,
    log_px: str = "iwae",
    ais: AISSchedule | None = None,
    bdmc_datapoints: int = 0,
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
        log_px: See `gap_report`.
        ais: See `gap_report`.
        bdmc_datapoints: With ``log_px="ais"``, simulate this many datapoints from the
            model and run BDMC with the same schedule, started from q* found on them by
            the same refiner and rule: the sandwich width, recorded in the protocol as
            ``bdmc``, says how far the AIS estimates can be from log p(x) on data like
            the model's own. 0: no BDMC.
        seed: See `gap_report`.
        images: Which images these are, in words, for the protocol.
        log: Called as ``log(split, line)`` with progress lines.

    Returns:
        A `Report` whose results map each split to
        `gap_report`'s numbers.
    """
    rule = rule or ConvergenceRule()
    schedule = ais or AISSchedule()
    if bdmc_datapoints < 0:
        raise LvmError(f"bdmc_datapoints must be 0 (off) or positive, got {bdmc_datapoints}")
    if bdmc_datapoints and log_px != "ais":
        raise LvmError("BDMC measures an AIS schedule; it needs log_px='ais'")
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
            log_px=log_px,
            ais=schedule,
            seed=seed,
            log=say,
        ),
        log,
    )
    iwae = f"IWAE-{iwae_samples} with q* as proposal, seed {seed + 1}"
    protocol = {
        "metric": "nats per image, mean over images (higher ELBO and log p is better)",
        "log_px": iwae if log_px == "iwae" else f"AIS from q*, seed {seed + 2} (beside {iwae})",
        "elbo": f"{eval_samples}-sample Monte-Carlo ELBO (log p(x, z) - log q(z)), seed {seed}",
        "q_star": f"{refiner.name} until the rule holds",
        "rule": asdict(rule),
        "binarization": binarization_of(model),
        "images": images or {split: int(t.shape[0]) for split, t in splits.items()},
        "stderr": "standard error of the mean over images",
    }
    if log_px == "ais":
        protocol["ais"] = schedule_protocol(schedule)
    if bdmc_datapoints:
        protocol["bdmc"] = _bdmc_summary(
            model, refiner, rule, schedule, bdmc_datapoints, eval_samples, seed, log
        )
    return Report("gaps", [model.name], {refiner.name: options_of(refiner)}, protocol, results)


def _bdmc_summary(
    model: Model,
    refiner: Refiner,
    rule: ConvergenceRule,
    schedule: AISSchedule,
    num: int,
    eval_samples: int,
    seed: int,
    log: Callable[[str, str], None] | None,
) -> dict[str, Any]:
    say = (lambda line: log("simulated", line)) if log is not None else None

    def start(x: torch.Tensor) -> Posterior:
        elbo = _elbo_of(model, x, eval_samples, seed)
        return optimise(model, x, refiner, rule, elbo, log=say).posterior

    result = bdmc(model, schedule, num_datapoints=num, start=start, seed=seed + 3, log=say)
    return {
        **result.summary(),
        "data": f"{num} datapoints simulated from the model (z ~ p(z), x ~ p(x | z)), "
        f"seed {seed + 3}",
        "start": f"q* of the simulated data ({refiner.name} until the rule holds)",
    }
