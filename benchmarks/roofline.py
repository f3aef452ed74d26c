"""How close refinement and evaluation run to what this machine can do, per backend.

For every backend (the bundled vae, gmvae, nvae, nvae-flow; a TorchVAE-adapted and a
PyroVAE-adapted MLP VAE) and every workload (one ``svi`` step, one ``svi-flow`` step, a
NELBO with S samples, an IWAE-k bound), all in one process, it measures:

* **FLOPs per datapoint**: matmul and convolution FLOPs of the workload, forward and
  backward, counted by ``torch.utils.flop_counter.FlopCounterMode`` (elementwise work is
  not counted: on these models it is memory-bound and small);
* **achieved FLOP/s**: those FLOPs over the workload's measured time (a refiner step's
  time is taken inside one run, over spans of K steps between checkpoint callbacks, with
  the keep-best scoring at a span's end timed and taken off (``step_timing.py``), so
  set-up and scoring stay out; everything else a step does, the optimiser included,
  counts);
* **attainable FLOP/s**: the same FLOPs over the time of the workload's own matmuls and
  convolutions *replayed alone*: every ``mm``/``addmm``/``bmm``/``convolution`` (and its
  backward) the workload ran is recorded with its shapes and re-run in a tight loop on
  random tensors of those shapes. That is the rate of this machine for exactly these
  shapes, with no Python, Pyro, elementwise or optimiser work around them;
* **ratio** achieved / attainable: the share of the machine's rate the workload reaches.

Ratios are computed within one process at each thread count (1 and 2), so they carry over
between machines better than absolute rates.

Usage:
    python benchmarks/roofline.py                       # all backends, 1 and 2 threads
    python benchmarks/roofline.py --backends vae --threads 1 --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from step_timing import step_seconds
from torch import nn
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import lvmtoolkit as lvm
from lvmtoolkit.data import binarize_fixed
from lvmtoolkit.plugins import get_backend, get_dataset, get_refiner, load_checkpoint

aten = torch.ops.aten
DENSE_OPS = {
    aten.mm.default,
    aten.addmm.default,
    aten.bmm.default,
    aten.baddbmm.default,
    aten.convolution.default,
    aten.convolution_backward.default,
}


def _spec(value: Any) -> Any:
    """A hashable description of an op argument: tensors by shape and dtype."""
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), str(value.dtype))
    if isinstance(value, (list, tuple)):
        return tuple(_spec(v) for v in value)
    if isinstance(value, torch.dtype):
        return ("dtype", str(value))
    return value


def _make(spec: Any) -> Any:
    if isinstance(spec, tuple) and len(spec) == 3 and spec[0] == "T":
        return torch.randn(spec[1], dtype=getattr(torch, spec[2].split(".")[-1]))
    if isinstance(spec, tuple) and len(spec) == 2 and spec[0] == "dtype":
        return getattr(torch, spec[1].split(".")[-1])
    if isinstance(spec, tuple):
        return [_make(s) for s in spec]
    return spec


def conv_backward_flops(
    grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
    _output_padding, _groups, output_mask, out_shape, **kwargs,
) -> int:  # fmt: skip
    """torch's count of a convolution's backward, with the weight gradient of a grouped
    convolution counted once (torch's formula counts it once per group; per-datapoint flow
    steps run as one group per datapoint). The weight gradient costs what the forward
    does."""
    flops = 0
    if output_mask[0]:
        grad_input = flop_counter.get_shape(out_shape[0])
        flops += flop_counter.conv_flop_count(grad_out_shape, w_shape, grad_input, not transposed)
    if output_mask[1]:
        flops += flop_counter.conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return flops


def flop_counter_mode() -> FlopCounterMode:
    """A silent FLOP counter that counts grouped convolutions' backward right."""
    return FlopCounterMode(
        display=False, custom_mapping={aten.convolution_backward: conv_backward_flops}
    )


class DenseOpRecorder(TorchDispatchMode):
    """Records every dense op (matmul, convolution) with the shapes it ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in DENSE_OPS:
            kwarg_spec = tuple(sorted((k, _spec(v)) for k, v in (kwargs or {}).items()))
            self.ops[(func, _spec(args), kwarg_spec)] += 1
        return func(*args, **(kwargs or {}))


def replay_seconds(ops: Counter, repeats: int) -> float:
    """Time of the recorded dense ops re-run alone on random tensors of their shapes."""
    total = 0.0
    for (func, arg_spec, kwarg_spec), count in ops.items():
        args = _make(arg_spec)
        kwargs = {k: _make(v) for k, v in kwarg_spec}
        func(*args, **kwargs)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            func(*args, **kwargs)
            times.append(time.perf_counter() - start)
        total += statistics.median(times) * count
    return total


# --- models ------------------------------------------------------------------------------


def vae_networks(latent: int) -> tuple[nn.Module, nn.Module]:
    """Encoder and decoder of the vae backend's architecture (784-300-300) with z of ``latent``
    dimensions, freshly initialised: the same layers behind every adapter."""
    vae = get_backend("vae")(get_backend("vae").config_class(latent_dim=latent))
    return vae.encoder, vae.decoder


def torch_vae() -> lvm.Model:
    """An MLP VAE of the paper's sizes (784-300-300, z=10) through the TorchVAE adapter."""
    torch.manual_seed(0)
    encoder, decoder = vae_networks(10)
    return lvm.TorchVAE(
        nn.Sequential(nn.Flatten(), encoder), decoder, data_shape=(1, 28, 28), latent_shape=(10,)
    ).eval()


class PyroPair(nn.Module):
    """A 50-dimensional MLP VAE written as a Pyro model and guide."""

    def __init__(self, latent: int = 50) -> None:
        super().__init__()
        self.latent = latent
        self.enc, self.dec = vae_networks(latent)

    def model(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.latent]).to_event(1))
            pixels = dist.Bernoulli(logits=self.dec(z).view(-1, 1, 28, 28))
            if mask is not None:
                pixels = pixels.mask(mask)
            pyro.sample("x", pixels.to_event(3), obs=x)

    def guide(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        pyro.module("enc", self.enc)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.enc(x.flatten(1)).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw)).to_event(1))


def pyro_vae() -> lvm.Model:
    torch.manual_seed(0)
    pair = PyroPair()
    return lvm.PyroVAE(pair.model, pair.guide, data_shape=(1, 28, 28), modules=pair).eval()


def bundled(name: str) -> lvm.Model:
    return load_checkpoint(get_backend(name).default_checkpoint(), backend=name)


MODELS: dict[str, Callable[[], lvm.Model]] = {
    "vae": lambda: bundled("vae"),
    "gmvae": lambda: bundled("gmvae"),
    "nvae": lambda: bundled("nvae"),
    "nvae-flow": lambda: bundled("nvae-flow"),
    "torchvae": torch_vae,
    "pyrovae": pyro_vae,
}
HIERARCHICAL = {"nvae", "nvae-flow"}


# --- workloads -----------------------------------------------------------------------------


def refiner_step(name: str, model: lvm.Model, x: torch.Tensor, steps: int, repeats: int):
    """(seconds per step, FLOPs per step, dense ops of one step) of refiner ``name``."""
    # One selection sample: the step is unchanged and the keep-best scoring at each span's
    # end, which step_seconds times and takes off, is one pass instead of 16.
    refiner = get_refiner(name)(steps=steps, select_samples=1)
    refiner.with_options(steps=1).refine(model, x)  # warm-up
    spans = [s for _ in range(repeats) for s in step_seconds(refiner, model, x, steps, 2)]
    seconds = max(statistics.median(spans), 1e-9)
    # FLOPs and dense ops of `steps` extra steps, counted the same way (2K minus K).
    counts = []
    recorders = []
    for k in (steps, 2 * steps):
        counter, recorder = flop_counter_mode(), DenseOpRecorder()
        with counter, recorder:
            refiner.with_options(steps=k).refine(model, x)
        counts.append(counter.get_total_flops())
        recorders.append(recorder.ops)
    flops = (counts[1] - counts[0]) / steps
    extra = recorders[1].copy()
    extra.subtract(recorders[0])
    ops = Counter({key: c / steps for key, c in extra.items() if c > 0})
    return seconds, flops, ops


def evaluation(kind: str, model: lvm.Model, x: torch.Tensor, samples: int, repeats: int):
    """(seconds, FLOPs, dense ops) of a NELBO or IWAE estimate over the batch."""
    posterior = model.amortized_posterior()

    def run() -> None:
        if kind == "nelbo":
            lvm.nelbo(model, posterior, x, num_samples=samples)
        else:
            lvm.iwae_bound(model, posterior, x, num_samples=samples)

    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    counter, recorder = flop_counter_mode(), DenseOpRecorder()
    with counter, recorder:
        run()
    return statistics.median(times), counter.get_total_flops(), recorder.ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(MODELS))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--num", type=int, default=1000, help="datapoints (MLP backends)")
    parser.add_argument("--num-nvae", type=int, default=100, help="datapoints (NVAE backends)")
    parser.add_argument("--steps", type=int, default=5, help="K: steps per timed span")
    parser.add_argument("--samples", type=int, default=100, help="S of the NELBO")
    parser.add_argument("--iwae", type=int, default=100, help="k of the IWAE bound")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    if args.quick:
        args.num, args.num_nvae, args.steps, args.samples, args.iwae, args.repeats = (
            64,
            8,
            1,
            4,
            4,
            1,
        )

    images = get_dataset("mnist-5k")().load("test").images
    rows = []
    print(
        f"torch {torch.__version__}; {args.num} datapoints (NVAE: {args.num_nvae}); "
        f"K={args.steps}; S={args.samples}; k={args.iwae}"
    )
    print(
        "| backend | workload | threads | MFLOP per datapoint | achieved GFLOP/s "
        "| attainable GFLOP/s | ratio |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.backends.split(","):
        model = MODELS[name]()
        n = args.num_nvae if name in HIERARCHICAL else args.num
        x = binarize_fixed(images[:n])
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            workloads: dict[str, Callable[[], tuple[float, float, Counter]]] = {
                "svi step": partial(refiner_step, "svi", model, x, args.steps, args.repeats),
                "svi-flow step": partial(
                    refiner_step, "svi-flow", model, x, args.steps, args.repeats
                ),
                f"NELBO S={args.samples}": partial(
                    evaluation, "nelbo", model, x, args.samples, args.repeats
                ),
                f"IWAE k={args.iwae}": partial(
                    evaluation, "iwae", model, x, args.iwae, args.repeats
                ),
            }
            for workload, measure in workloads.items():
                seconds, flops, ops = measure()
                attainable_seconds = replay_seconds(ops, args.repeats)
                row = {
                    "backend": name,
                    "workload": workload,
                    "threads": threads,
                    "datapoints": n,
                    "mflop_per_datapoint": flops / n / 1e6,
                    "achieved_gflops": flops / seconds / 1e9,
                    "attainable_gflops": flops / max(attainable_seconds, 1e-12) / 1e9,
                    "ratio": attainable_seconds / seconds,
                    "seconds": seconds,
                }
                rows.append(row)
                print(
                    f"| {name} | {workload} | {threads} | {row['mflop_per_datapoint']:.2f} "
                    f"| {row['achieved_gflops']:.1f} | {row['attainable_gflops']:.1f} "
                    f"| {row['ratio']:.2f} |",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
