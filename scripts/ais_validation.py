"""AIS and BDMC against the exact log p(x) of a linear-Gaussian model with correlated latents.

The model of tests/test_ais.py (16 Gaussian pixels, noise 0.5, 10 latents whose posterior
is correlated) and 100 datapoints simulated from it. For each number of temperatures,
from q* (the best diagonal Gaussian) and from the prior: the mean of log p̂(x) - log p(x)
with its standard error over datapoints, then IWAE-5000 from q*, then BDMC from the prior
on 100 fresh simulated datapoints. Prints a Markdown table (docs/results/gaps.md).

Usage:
    python scripts/ais_validation.py [--steps 100,300,1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from lvm_linear_gaussian.model import LinearGaussian

from lvmtoolkit.core.posterior import LocalGaussianPosterior
from lvmtoolkit.metrics import iwae_bound
from lvmtoolkit.metrics.ais import PRIOR, AISSchedule, ais_log_px, bdmc, simulate


def tangled_model() -> LinearGaussian:
    return LinearGaussian.random((1, 4, 4), latent_dim=10, noise=0.5, seed=0).correlate(0.9)


def mean_and_sem(values: torch.Tensor) -> str:
    return f"{values.mean().item():+.3f} ± {values.std().item() / values.numel() ** 0.5:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="100,300,1000")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = tangled_model()
    x, _ = simulate(model, 100, seed=0)
    exact = model.log_marginal(x)
    q_star = LocalGaussianPosterior({"z": model.mean_field_optimum(x)})
    print(f"exact log p(x), mean over 100 simulated datapoints: {exact.mean().item():.3f}")
    iwae = iwae_bound(model, q_star, x, num_samples=5000, max_rows=100_000)
    print(f"IWAE-5000 from q* - log p(x): {mean_and_sem(iwae - exact)}\n")
    print(
        "| T | AIS from q* − log p(x) | AIS from the prior − log p(x) | BDMC lower | BDMC upper "
        "| exact | sandwich width | seconds (one AIS run) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for steps in [int(t) for t in args.steps.split(",")]:
        schedule = AISSchedule(num_steps=steps)
        started = time.perf_counter()
        from_q = ais_log_px(model, x, q_star, schedule, seed=0).log_px - exact
        seconds = time.perf_counter() - started
        from_prior = ais_log_px(model, x, PRIOR, schedule, seed=0).log_px - exact
        sandwich = bdmc(model, schedule, num_datapoints=100, start=PRIOR, seed=5)
        truth = model.log_marginal(sandwich.x).mean().item()
        width = sandwich.summary()
        print(
            f"| {steps} | {mean_and_sem(from_q)} | {mean_and_sem(from_prior)} "
            f"| {width['lower']:.3f} | {width['upper']:.3f} | {truth:.3f} "
            f"| {width['width']:.3f} ± {width['width_stderr']:.3f} | {seconds:.1f} |"
        )


if __name__ == "__main__":
    main()
