"""Cost of inference in the tiny NVAE: amortized, svi and svi-flow, in images per second.

Measures, all in one process on the same batch of digits:

* ``amortized``: one posterior sample and its ELBO per image (encoder, top-down path and
  likelihood; no gradient), the cost of amortized inference,
* ``svi (mean-field)``: ``svi -o structure=mean-field`` (independent per-datapoint
  Gaussians per group, started from the posterior's mean-field summary),
* ``svi (hierarchical)``: the default ``svi``: per-datapoint offsets to the encoder's
  residual parameters, top-down structure kept,
* ``svi-flow``: per-datapoint offsets plus per-datapoint flow weights (two identity-started
  IAF steps per group, or copies of the model's own flow for ``--backend nvae-flow``),

and prints image-steps per second and each method's ratio to ``amortized`` (ratios, not
absolute rates, are what carry over between machines). A refiner's per-step cost is its
marginal cost, ``(time(2K steps) - time(K steps)) / K``, which cancels its fixed costs
(building the local posterior, scoring start and end to keep the best per datapoint);
those are printed apart. Methods are interleaved and repeated; medians are shown.

The cost of a step does not depend on the weights, so without a checkpoint (none bundled,
none given) the default config is timed with its initial weights.

Usage:
    python benchmarks/nvae_refine_cost.py [--num 500] [--steps 5] [--repeats 3] [--threads 1]
    python benchmarks/nvae_refine_cost.py --num 8 --steps 1 --repeats 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import pyro
import torch

from lvmtoolkit.core.elbo import per_datapoint_elbo
from lvmtoolkit.core.refiner import Refiner
from lvmtoolkit.core.runtime import frozen
from lvmtoolkit.data import binarize_fixed
from lvmtoolkit.plugins import get_backend, get_dataset, load_checkpoint
from lvmtoolkit.refiners import SVIFlowRefiner, SVIRefiner


def load_model(backend: str, checkpoint: str | None) -> tuple[torch.nn.Module, str]:
    model_class = get_backend(backend)
    path = checkpoint or model_class.default_checkpoint()
    if path is None:
        torch.manual_seed(0)
        return model_class().eval(), "default config, initial weights (no checkpoint)"
    return load_checkpoint(path, backend=backend), str(path)


def amortized_time(model, x: torch.Tensor) -> float:
    posterior = model.amortized_posterior()
    start = time.perf_counter()
    with torch.no_grad(), pyro.validation_enabled(False):
        per_datapoint_elbo(model.model, posterior, x)
    return time.perf_counter() - start


def refine_time(make: Callable[[int], Refiner], model, x: torch.Tensor, steps: int) -> float:
    refiner = make(steps)
    start = time.perf_counter()
    refiner.refine(model, x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="nvae", choices=("nvae", "nvae-flow"))
    parser.add_argument("--checkpoint", default=None, help="default: the bundled one, if any")
    parser.add_argument("--num", type=int, default=500, help="images in the batch")
    parser.add_argument("--steps", type=int, default=5, help="K: steps per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, source = load_model(args.backend, args.checkpoint)
    x = binarize_fixed(get_dataset("mnist-5k")().load("test").images[: args.num])
    n, k = x.shape[0], args.steps
    # The same selection cost for every refiner: 2 samples to keep the best per datapoint.
    refiners: dict[str, Callable[[int], Refiner]] = {
        "svi (mean-field)": lambda s: SVIRefiner(steps=s, structure="mean-field", select_samples=2),
        "svi (hierarchical)": lambda s: SVIRefiner(steps=s, select_samples=2),
        "svi-flow": lambda s: SVIFlowRefiner(steps=s, select_samples=2),
    }
    per_image: dict[str, list[float]] = {"amortized": [], **{name: [] for name in refiners}}
    fixed: dict[str, list[float]] = {name: [] for name in refiners}
    with frozen(model):
        amortized_time(model, x[:16])  # warm-up: first calls pay one-off setup costs
        for make in refiners.values():
            refine_time(make, model, x[:16], 1)
        for _ in range(args.repeats):
            per_image["amortized"].append(amortized_time(model, x) / n)
            for name, make in refiners.items():
                short = refine_time(make, model, x, k)
                long = refine_time(make, model, x, 2 * k)
                per_image[name].append((long - short) / (k * n))
                fixed[name].append(short - (long - short))

    rate = {name: 1.0 / statistics.median(values) for name, values in per_image.items()}
    report = {
        "backend": args.backend,
        "model": source,
        "images": n,
        "steps_per_run": k,
        "repeats": args.repeats,
        "threads": args.threads,
        "torch": torch.__version__,
        "images_per_second": {name: round(value, 1) for name, value in rate.items()},
        "ratio_to_amortized": {
            name: round(value / rate["amortized"], 4) for name, value in rate.items()
        },
        "fixed_seconds_per_call": {
            name: round(statistics.median(values), 3) for name, values in fixed.items()
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{args.backend} ({source}); {n} mnist-5k test images; torch {torch.__version__}, "
        f"{args.threads} thread(s); K={k}, median of {args.repeats}"
    )
    print("  method                images/s (per step)   vs amortized   fixed s/call")
    for name, value in rate.items():
        ratio = value / rate["amortized"]
        cost = f"{statistics.median(fixed[name]):12.2f}" if name in fixed else ""
        print(f"  {name:20s} {value:14.1f} {ratio:16.4f}x {cost}")


if __name__ == "__main__":
    main()
