"""Cost per image of each restoration method, as ratios to amortized conditional restoration.

Measures, in one process on the same corrupted digits (seconds per image of `restore`,
refinement and sampling; the conditional-NLL scoring is not timed):

* ``conditional, amortized``: the encoder on y, then ``--samples`` draws of z for E[x | y]
  (the baseline: 1.00x),
* ``conditional, svi``: q(z | y) refined with ``svi`` (``--steps``), then the same draws,
* ``importance, svi``: the refined q as proposal, ``--importance-samples`` weighted draws,
* ``mwg, svi``: the refined q as proposal, a chain of ``--iterations``,
* ``pseudo-gibbs, svi``: the paper's chain, ``--chain-iterations`` iterations of 10 svi steps,

for one observation model (``--noise``, or ``missing`` with ``--mask``). Methods are
interleaved and repeated; medians are shown. Ratios, not absolute rates, carry over between
machines.

Usage:
    python benchmarks/restoration_cost.py [--backend vae] [--num 200] [--threads 1]
    python benchmarks/restoration_cost.py --backend nvae --num 50 --repeats 1
    python benchmarks/restoration_cost.py --num 8 --steps 5 --repeats 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import torch

from lvmtoolkit.data import binarize_fixed
from lvmtoolkit.plugins import get_backend, get_dataset, load_checkpoint
from lvmtoolkit.tasks import parse_observation, restoration_refiner, restore
from lvmtoolkit.tasks.evaluation import observation_of
from lvmtoolkit.tasks.gibbs import gibbs_refiner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="vae")
    parser.add_argument("--num", type=int, default=200, help="images (mnist-5k test split)")
    parser.add_argument("--noise", default="gaussian:variance=0.5", help="noise model")
    parser.add_argument("--mask", default=None, help="inpaint instead: centre, half, random")
    parser.add_argument("--steps", type=int, default=300, help="svi steps (restoration)")
    parser.add_argument("--samples", type=int, default=32, help="conditional: draws of z")
    parser.add_argument("--importance-samples", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=300, help="mwg chain length")
    parser.add_argument("--chain-iterations", type=int, default=100, help="pseudo-gibbs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_checkpoint(get_backend(args.backend).default_checkpoint(), backend=args.backend)
    images = get_dataset("mnist-5k")().load("test").images[: args.num]
    clean = binarize_fixed(images) if model.binary_data else images
    if args.mask is not None:
        observation = observation_of("inpaint", args.mask)
    else:
        observation = parse_observation(args.noise)
    observed = observation.corrupt(clean, seed=2024)
    svi = restoration_refiner("svi", steps=args.steps)
    methods: dict[str, Callable[[], float]] = {}

    def add(label: str, **kwargs: object) -> None:
        def run() -> float:
            restored = restore(model, observed.y, observation, mask=observed.mask, **kwargs)
            return restored.seconds / args.num

        methods[label] = run

    add("conditional, amortized", refiner="amortized", num_samples=args.samples)
    add("conditional, svi", refiner=svi, num_samples=args.samples)
    add("importance, svi", method="importance", refiner=svi,
        num_samples=args.importance_samples)  # fmt: skip
    add("mwg, svi", method="mwg", refiner=svi, iterations=args.iterations)
    add("pseudo-gibbs, svi", method="pseudo-gibbs", refiner=gibbs_refiner("svi"),
        iterations=args.chain_iterations)  # fmt: skip

    times: dict[str, list[float]] = {label: [] for label in methods}
    for _ in range(args.repeats):
        for label, run in methods.items():
            times[label].append(run())
    base = statistics.median(times["conditional, amortized"])
    rows = {
        label: {
            "seconds_per_image": round(statistics.median(values), 5),
            "ratio": round(statistics.median(values) / base, 2),
        }
        for label, values in times.items()
    }
    setup = {
        "backend": args.backend,
        "images": args.num,
        "observation": observation.spec,
        "svi_steps": args.steps,
        "samples": args.samples,
        "importance_samples": args.importance_samples,
        "mwg_iterations": args.iterations,
        "chain_iterations": args.chain_iterations,
        "threads": args.threads,
        "repeats": args.repeats,
    }
    if args.json:
        print(json.dumps({"setup": setup, "results": rows}, indent=2))
        return
    print(", ".join(f"{k}={v}" for k, v in setup.items()))
    print(f"{'method':<26} {'s / image':>10} {'vs amortized':>13}")
    for label, row in rows.items():
        print(f"{label:<26} {row['seconds_per_image']:>10.4f} {row['ratio']:>12.2f}x")


if __name__ == "__main__":
    main()
