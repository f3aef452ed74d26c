"""Jobs across processes: ``kill -9`` then resume, and ``torchrun`` against one process.

These run ``lvm`` in subprocesses (as users do), so each pays the import time of torch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import lvmtoolkit as lvm
from tests.test_jobs import shard_files

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture
def job(tmp_path) -> list[str]:
    """A job of 48 digits in 8 shards on the tiny VAE (a file model), one thread."""
    images = lvm.get_dataset("mnist-5k")().load("test").images[:48]
    np.save(tmp_path / "digits.npy", (images * 255).round().to(torch.uint8).numpy())
    (tmp_path / "tiny.py").write_text("from lvmtoolkit.testing import make_tiny_model as build\n")
    return [
        "refine",
        "--model", f"{tmp_path}/tiny.py:build",
        "--data", str(tmp_path / "digits.npy"),
        "--shard-size", "6",
        "--steps", "10,100",
        "--eval-samples", "4",
        "--threads", "1",
        "--json",
    ]  # fmt: skip


def lvm_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lvmtoolkit", *args], capture_output=True, text=True, env=ENV
    )


def test_kill_9_in_the_middle_then_the_same_command_completes_as_a_clean_run(tmp_path, job):
    clean = lvm_process(*job, "--output", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr

    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "lvmtoolkit", *job, "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    deadline = time.monotonic() + 120
    while len(list(out.glob("shards/*.jsonl"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list(out.glob("shards/*.jsonl")))
    assert 2 <= done < 8, f"{done} shards done when killed: the job was not interrupted"
    assert not (out / "summary.json").exists()
    # The killed job's lock file still names it, but the kernel dropped its lock.
    assert (out / ".lvm.lock").read_text().startswith(f"pid {process.pid} on ")

    resumed = lvm_process(*job, "--output", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming:" in resumed.stderr
    assert resumed.stdout == clean.stdout
    assert shard_files(out) == shard_files(tmp_path / "clean")


def test_torchrun_with_two_ranks_gives_one_process_results(tmp_path, job):
    single = lvm_process(*job, "--output", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    ranks = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "lvmtoolkit", *job,
         "--output", str(tmp_path / "ranks")],
        capture_output=True, text=True, env=ENV,
    )  # fmt: skip
    assert ranks.returncode == 0, ranks.stderr
    assert "2 processes" in ranks.stderr
    assert json.loads(ranks.stdout) == json.loads(single.stdout)  # rank 0 alone prints it
    assert ranks.stdout == single.stdout
    assert shard_files(tmp_path / "ranks") == shard_files(tmp_path / "single")
    # Rank 0 held the folder's lock for the job (rank 1 never took it) and gave it back.
    assert (tmp_path / "ranks" / ".lvm.lock").read_text() == ""
    manifest = json.loads((tmp_path / "ranks" / "manifest.json").read_text())
    assert [record["shard"] for record in manifest["shards"]] == list(range(8))
    assert lvm.load_results(tmp_path / "ranks", posterior=False).table == (
        lvm.load_results(tmp_path / "single", posterior=False).table
    )
