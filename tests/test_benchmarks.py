"""The benchmark scripts run end to end at tiny sizes (their numbers are not checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


@pytest.mark.parametrize(
    "args",
    [
        [
            "refine_throughput.py",
            "--num",
            "64",
            "--steps",
            "2",
            "--single",
            "2",
            "--repeats",
            "1",
            "--windows",
            "2",
        ],
        ["roofline.py", "--backends", "vae,pyrovae", "--threads", "1", "--quick"],
        ["flat_flow_cost.py", "--threads", "1", "--num", "32", "--steps", "1", "--repeats", "1"],
        ["ais_cost.py", "--threads", "1", "--num", "4", "--steps", "3", "--svi-steps", "2"],
        [
            "natural_gradient.py",
            "--threads",
            "1",
            "--num",
            "8",
            "--steps",
            "1,2",
            "--reference-steps",
            "3",
        ],
    ],
    ids=["refine_throughput", "roofline", "flat_flow_cost", "ais_cost", "natural_gradient"],
)
def test_benchmark_runs(args):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "svi" in done.stdout


def test_roofline_counts_a_grouped_convolution_once_per_group(monkeypatch):
    # torch's formula counts a grouped convolution's weight gradient once per group too
    # often; svi-flow's per-datapoint flow steps are one group per datapoint.
    import torch
    import torch.nn.functional as F

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from roofline import flop_counter_mode

    def flops(groups: int) -> int:
        z = torch.randn(1, groups * 4, 6, 6, requires_grad=True)
        w = torch.randn(groups * 5, 4, 3, 3, requires_grad=True)
        counter = flop_counter_mode()
        with counter:
            F.conv2d(z, w, padding=1, groups=groups).sum().backward()
        return counter.get_total_flops()

    # forward, input gradient and weight gradient: 3 x 2 x (6 x 6) x 5 x 4 x 9 each group
    assert flops(1) == 3 * 2 * 36 * 5 * 4 * 9
    assert flops(7) == 7 * flops(1)
