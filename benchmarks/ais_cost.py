"""Cost of AIS against IWAE-5000: wall time, model passes and the estimate, one process.

On a bundled model (default: the VAE) and the first ``--num`` mnist-5k test digits
(binarised once, seed 1234), with one proposal for every estimator: q* from ``--svi-steps``
steps of the default ``svi`` (0: the encoder's posterior). Rows, in this order, each
timed once after a warm-up on 4 digits:

* ``IWAE-5000``: the baseline (5,000 forward passes per datapoint, no gradients),
* ``AIS T=...``: the default schedule (T = 100, 5 leapfrog steps, 8 chains, 2 pilot
  chains) and ``--steps`` others; each model pass here is forward and backward.

Printed per row: seconds, seconds relative to IWAE-5000, model passes per datapoint, and
the mean log p̂(x) with its standard error over datapoints (a tighter bound is higher).

Usage:
    python benchmarks/ais_cost.py [--backend vae] [--num 100] [--threads 2]
    python benchmarks/ais_cost.py --num 4 --steps 10 --svi-steps 0   # smoke test
"""

from __future__ import annotations

import argparse
import time

import torch

from lvmtoolkit.data import binarize_fixed
from lvmtoolkit.metrics import iwae_bound
from lvmtoolkit.metrics.ais import AISSchedule, ais_log_px
from lvmtoolkit.plugins import get_backend, get_dataset, load_checkpoint
from lvmtoolkit.refiners import SVIRefiner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="vae")
    parser.add_argument("--num", type=int, default=100, help="datapoints")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--svi-steps", type=int, default=1000, help="0: the encoder's q")
    parser.add_argument(
        "--steps", default="30,300", help="AIS temperatures to time besides the default 100"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(get_backend(args.backend).default_checkpoint(), backend=args.backend)
    x = binarize_fixed(get_dataset("mnist-5k")().load("test").images[: args.num])
    posterior = model.amortized_posterior()
    if args.svi_steps:
        posterior = SVIRefiner(steps=args.svi_steps).refine(model, x).posterior
    schedules = [AISSchedule()] + [
        AISSchedule(num_steps=int(t)) for t in args.steps.split(",") if t
    ]

    # Warm-up: first calls pay for allocation and dispatch caches.
    iwae_bound(model, model.amortized_posterior(), x[:4], num_samples=50)
    ais_log_px(model, x[:4], model.amortized_posterior(), AISSchedule(num_steps=2))

    rows = []
    started = time.perf_counter()
    iwae = iwae_bound(model, posterior, x, num_samples=5000, seed=1)
    base = time.perf_counter() - started
    rows.append(("IWAE-5000", base, 5000, iwae))
    for schedule in schedules:
        result = ais_log_px(model, x, posterior, schedule, seed=2)
        rows.append((f"AIS T={schedule.num_steps}", result.seconds, result.passes, result.log_px))
    start = f"svi {args.svi_steps} steps" if args.svi_steps else "the encoder's posterior"
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {args.backend}, "
        f"{x.shape[0]} mnist-5k test digits, proposal/start: {start}"
    )
    print(f"  {'':12s} {'seconds':>8s} {'x IWAE':>7s} {'passes':>7s}  log p̂(x)")
    for name, seconds, passes, log_px in rows:
        sem = log_px.std().item() / log_px.numel() ** 0.5
        print(
            f"  {name:12s} {seconds:8.1f} {seconds / base:7.2f} {passes:7d}  "
            f"{log_px.mean().item():.3f} ± {sem:.3f}"
        )


if __name__ == "__main__":
    main()
