"""Seconds per step of an iterative refiner, timed inside one run.

Shared by the benchmarks. A refiner's steps are timed in spans of K steps between two of its
checkpoint callbacks, so its fixed costs (building the per-datapoint posterior, scoring the
start) stay out without subtracting two separate runs, whose noise on this kind of machine
was as large as the difference. A span still holds the keep-best scoring at its end; the
callback scores the posterior it is handed the same way (same samples, chunks and family),
times that, and takes it off the next span.

A baseline can run between two spans (``between``), outside both: each span then has a
baseline measurement taken seconds from it. On a machine whose speed drifts by tens of
percent over minutes, the ratio of such a pair is steadier than a ratio of two medians
taken minutes apart.
"""

from __future__ import annotations

import time

import torch

from lvmtoolkit.core.nelbo import nelbo


def step_seconds(
    refiner, model, x: torch.Tensor, steps: int, windows: int, between=None
) -> list[float]:
    """Seconds per step in each of ``windows`` spans of ``steps`` steps of one run.

    Args:
        refiner: An iterative refiner (``svi``-like: ``select_samples``, ``pass_size``).
        model: The model, frozen by the caller.
        x: The batch.
        steps: K, the steps per span.
        windows: Spans timed.
        between: Called with no arguments just before each span, outside the timed
            spans: a baseline to time next to them.

    Returns:
        One value per span.
    """
    o = refiner.options
    marks = [steps * w for w in range(windows + 1)]
    spans: list[float] = []
    last: dict[str, float] = {}

    def on_checkpoint(step: int, posterior) -> None:
        now = time.perf_counter()
        if "end" in last:
            spans.append((now - last["end"] - last["scoring"]) / steps)
        start = time.perf_counter()
        nelbo(
            model,
            posterior,
            x,
            num_samples=o.select_samples,
            chunk_size=refiner.pass_size(model),
            analytic_kl=o.analytic_kl,
        )
        last["scoring"] = time.perf_counter() - start
        if between is not None and step < marks[-1]:
            between()
        last["end"] = time.perf_counter()

    run = refiner.with_options(steps=steps * windows)
    run.refine(model, x, checkpoints=marks, on_checkpoint=on_checkpoint)
    return spans
