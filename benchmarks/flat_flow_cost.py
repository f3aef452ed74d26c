"""svi-flow against svi per step on a flat 50-dimensional latent, by flow width.

The PyroVAE-adapted MLP VAE of ``roofline.py`` (784-300-300, z = 50), 1,000 mnist-5k test
digits, steps timed inside one run (``step_timing.py``), interleaved, median of the spans.
Rows: ``svi``, and ``svi-flow`` with per-datapoint flow steps narrowed to at most
``max_flat_weights`` weights per datapoint (1,200, the default, gives 8 hidden units at
D = 50; 2,400 gives 16; 10^9 leaves the full 4 x D = 200).

Usage:
    python benchmarks/flat_flow_cost.py [--threads 2] [--steps 10] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from roofline import pyro_vae
from step_timing import step_seconds

from lvmtoolkit.core.runtime import frozen
from lvmtoolkit.data import binarize_fixed
from lvmtoolkit.plugins import get_dataset
from lvmtoolkit.refiners import SVIFlowRefiner, SVIRefiner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num", type=int, default=1000, help="datapoints")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed span")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = pyro_vae()
    x = binarize_fixed(get_dataset("mnist-5k")().load("test").images[: args.num])
    refiners = {"svi": SVIRefiner(select_samples=1)}
    for limit in (1200, 2400, 10**9):
        refiners[f"svi-flow, max_flat_weights={limit}"] = SVIFlowRefiner(
            select_samples=1, max_flat_weights=limit
        )
    spans: dict[str, list[float]] = {name: [] for name in refiners}
    with frozen(model):
        for _ in range(args.repeats):
            for name, refiner in refiners.items():
                refiner.with_options(steps=1).refine(model, x)  # warm-up
                spans[name] += step_seconds(refiner, model, x, args.steps, 2)
    base = statistics.median(spans["svi"])
    print(f"torch {torch.__version__}, {args.threads} thread(s), {x.shape[0]} datapoints")
    for name, values in spans.items():
        seconds = statistics.median(values)
        print(f"  {name:34s} {seconds * 1e3:8.2f} ms per step  {seconds / base:6.2f}x svi")


if __name__ == "__main__":
    main()
