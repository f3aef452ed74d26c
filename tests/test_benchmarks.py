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
    ],
    ids=["refine_throughput", "roofline", "flat_flow_cost"],
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
