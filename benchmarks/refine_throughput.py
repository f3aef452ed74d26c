"""Throughput of the ``svi`` refiner against hand-written PyTorch loops of the same math.

Measures datapoint-steps per second (one datapoint's posterior updated once) for

* ``svi``: the toolkit's refiner (Pyro model and guide, per-datapoint ELBO on Pyro traces),
* ``raw-batched``: a hand-written batched loop, whole batch in one pass,
* ``raw-chunked``: the same loop in chunks of the refiner's ``chunk_size``,
* ``raw-chunked-stl``: the chunked loop with the estimator svi uses by default (sticking the
  landing: Monte-Carlo KL with the posterior's parameters detached in log q) instead of the
  closed-form KL,
* ``one-at-a-time``: a loop over datapoints, each with its own Adam, as the seed code did,

all in one process on the bundled VAE, and prints ratios. The refiner's steps are timed
inside one run, in spans of K steps between two of its checkpoint callbacks, so that its
fixed costs (building the local posterior, scoring the start) stay out; the keep-best
scoring at a span's end (one selection sample, ``select_samples=1``: one forward pass) is
timed on its own and taken off (``step_timing.py``). The hand-written loops are timed in
runs of K steps; the chunked ones run just before each svi span and once after the last,
so that each span sits between two baseline runs taken seconds from it, and ``svi /
raw-chunked`` is the median of the paired ratios of each span to the mean of the two runs
around it (this machine's speed drifts by tens of percent over minutes: a ratio of medians
taken minutes apart carries that drift, and a baseline on one side only carries the drift
of one span). Medians over all spans are shown for the rates.

Usage:
    python benchmarks/refine_throughput.py [--num 10000] [--steps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import torch
from step_timing import step_seconds
from torch.nn import functional as F

from lvmtoolkit.core.runtime import frozen
from lvmtoolkit.data import binarize_fixed
from lvmtoolkit.plugins import get_backend, get_dataset, load_checkpoint
from lvmtoolkit.refiners import SVIRefiner

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def load_images(num: int, data_dir: str | None) -> tuple[torch.Tensor, str]:
    folder = Path(data_dir) if data_dir else SHARED_MNIST
    if folder.is_dir():
        images, source = get_dataset("mnist")(folder).load("test").images, f"MNIST test ({folder})"
    else:
        source = "mnist-5k train+test (repeated)"
        parts = [get_dataset("mnist-5k")().load(s).images for s in ("train", "test")]
        images = torch.cat(parts)
    reps = -(-num // images.shape[0])
    return binarize_fixed(images.repeat(reps, 1, 1, 1)[:num]), source


def raw_loop(model, x: torch.Tensor, steps: int, chunk: int | None, stl: bool = False) -> float:
    """Hand-written: Gaussian q per datapoint, Bernoulli likelihood, Adam; closed-form KL,
    or (``stl``) log q(z) - log p(z) with q's parameters detached in log q."""
    with torch.no_grad():
        loc0, scale0 = model.encode(x)["z"]
    loc = loc0.clone().requires_grad_(True)
    log_scale = scale0.log().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([loc, log_scale], lr=1e-3, fused=True)
    flat = x.flatten(1)
    parts = (
        [slice(0, x.shape[0])]
        if chunk is None
        else [slice(i, min(i + chunk, x.shape[0])) for i in range(0, x.shape[0], chunk)]
    )
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        for part in parts:
            mu, ls = loc[part], log_scale[part]
            sigma = ls.exp()
            z = mu + sigma * torch.randn_like(sigma)
            logits = model.decoder(z)
            rec = F.binary_cross_entropy_with_logits(logits, flat[part], reduction="none").sum(1)
            if stl:
                eps = (z - mu.detach()) / sigma.detach()
                kl = (0.5 * z.pow(2) - 0.5 * eps.pow(2) - ls.detach()).sum(1)
            else:
                kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 1.0 - 2.0 * ls).sum(1)
            (rec + kl).sum().backward()
        optimizer.step()
    return time.perf_counter() - start


def one_at_a_time(model, x: torch.Tensor, steps: int) -> float:
    """The seed code's way: each datapoint optimised on its own."""
    start = time.perf_counter()
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        with torch.no_grad():
            loc0, scale0 = model.encode(xi)["z"]
        loc = loc0.clone().requires_grad_(True)
        log_scale = scale0.log().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([loc, log_scale], lr=1e-3, fused=True)
        for _ in range(steps):
            optimizer.zero_grad()
            sigma = log_scale.exp()
            z = loc + sigma * torch.randn_like(sigma)
            logits = model.decoder(z)
            rec = F.binary_cross_entropy_with_logits(logits, xi.flatten(1), reduction="sum")
            kl = 0.5 * (loc.pow(2) + sigma.pow(2) - 1.0 - 2.0 * log_scale).sum()
            (rec + kl).backward()
            optimizer.step()
    return time.perf_counter() - start


def svi_windows(model, x: torch.Tensor, steps: int, windows: int, between=None) -> list[float]:
    """Seconds per step of the refiner in ``windows`` spans of ``steps`` steps, one run."""
    # One selection sample: a step costs the same and a span's scoring is one pass.
    return step_seconds(SVIRefiner(select_samples=1), model, x, steps, windows, between)


def bracketing(runs: list[float]) -> list[float]:
    """Mean of each two neighbouring baseline runs: the baseline of the span between them."""
    return [(before + after) / 2 for before, after in itertools.pairwise(runs)]


def quartiles(values: list[float]) -> str:
    low, _, high = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return f"{low:.2f}-{high:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=10000, help="datapoints in the batch")
    parser.add_argument("--steps", type=int, default=10, help="K: steps per timed run")
    parser.add_argument(
        "--single", type=int, default=200, help="datapoints for the one-at-a-time loop (it is slow)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--windows", type=int, default=3, help="timed spans of K steps per run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = load_checkpoint(get_backend("vae").default_checkpoint())
    x, source = load_images(args.num, args.data_dir)
    n, k = x.shape[0], args.steps
    methods = ("svi", "raw-batched", "raw-chunked", "raw-chunked-stl", "one")
    times: dict[str, list[float]] = {m: [] for m in methods}
    # Per svi span, the mean of the chunked loop's runs just before and just after it.
    around: dict[str, list[float]] = {"raw-chunked": [], "raw-chunked-stl": []}
    chunk = SVIRefiner().pass_size(model)
    with frozen(model):
        raw_loop(model, x[:256], 2, None)  # warm-up
        for _ in range(args.repeats):
            runs: dict[str, list[float]] = {"raw-chunked": [], "raw-chunked-stl": []}

            def chunked(runs: dict[str, list[float]] = runs) -> None:
                runs["raw-chunked"].append(raw_loop(model, x, k, chunk) / k)
                runs["raw-chunked-stl"].append(raw_loop(model, x, k, chunk, stl=True) / k)

            times["svi"].extend(svi_windows(model, x, k, args.windows, chunked))
            chunked()  # after the last span: every span now has a baseline on each side
            for loop, values in runs.items():
                times[loop].extend(values)
                around[loop].extend(bracketing(values))
            for _ in range(args.windows):
                times["raw-batched"].append(raw_loop(model, x, k, None) / k)
            times["one"].append(one_at_a_time(model, x[: args.single], k) / (k * args.single))

    per_step = {m: statistics.median(v) for m, v in times.items()}
    rate = {
        "svi": n / per_step["svi"],
        "raw-batched": n / per_step["raw-batched"],
        "raw-chunked": n / per_step["raw-chunked"],
        "raw-chunked-stl": n / per_step["raw-chunked-stl"],
        "one-at-a-time": 1.0 / per_step["one"],
    }
    print(
        f"data: {n} images from {source}; VAE 784-300-300, z=10; Adam lr 1e-3; "
        f"torch {torch.__version__}, {args.threads} thread(s); K={k}, "
        f"median of {args.repeats} x {args.windows} spans"
    )
    for name, value in rate.items():
        print(f"  {name:15s} {value:10.0f} datapoint-steps/s")
    print(f"svi / raw-batched     = {rate['svi'] / rate['raw-batched']:.2f}x")
    for loop in ("raw-chunked", "raw-chunked-stl"):
        paired = [raw / svi for raw, svi in zip(around[loop], times["svi"], strict=True)]
        print(
            f"svi / {loop:15s} = {statistics.median(paired):.2f}x (median of "
            f"{len(paired)} spans, each against the loop runs around it; "
            f"quartiles {quartiles(paired)})"
        )
    print(f"svi / one-at-a-time   = {rate['svi'] / rate['one-at-a-time']:.1f}x")
    print(f"raw-batched / one     = {rate['raw-batched'] / rate['one-at-a-time']:.1f}x")


if __name__ == "__main__":
    main()
