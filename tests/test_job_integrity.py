"""Results folders that guard themselves (issue 31): shard checksums and the output lock.

A damaged shard (a flipped byte, a truncated file) and a shard copied in from another
job's folder are refused by `load_results` and by a resume, each with one line naming the
file; a second job on a folder that a job holds is refused and writes nothing, while the
first finishes with the results of a lone run. Real jobs on the tiny VAE, real files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import lvmtoolkit as lvm
from lvmtoolkit.errors import LvmError
from lvmtoolkit.jobs import IntegrityError, OutputLock, ResultsFolder
from tests.test_jobs import FAST, TINY_MODULE, as_uint8, lvm_run, shard_files, tree_digest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# `lvm ...` in a subprocess that stops before shard 1 (holding the folder's lock, shard 0
# written) until the file argv[1] exists; it touches argv[1] + ".waiting" when it stops.
# The pause changes no result: a shard's numbers depend only on the job and its index.
PAUSED_JOB = """
import sys, time
from pathlib import Path
from lvmtoolkit.jobs.runner import RefineJob

go = Path(sys.argv[1])
real = RefineJob.run_shard

def paused(self, shard):
    if shard == 1:
        Path(f"{go}.waiting").touch()
        while not go.exists():
            time.sleep(0.01)
    return real(self, shard)

RefineJob.run_shard = paused
from lvmtoolkit.cli import main
sys.argv = ["lvm", *sys.argv[2:]]
main()
"""


def start_paused(go: Path, *args: object) -> subprocess.Popen:
    """Start ``lvm *args`` paused before shard 1; return once it is paused (lock held)."""
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSED_JOB, str(go), *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    deadline = time.monotonic() + 120
    while not Path(f"{go}.waiting").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the job did not reach shard 1: {process.communicate()[1]}")
        time.sleep(0.02)
    return process


def one_error_line(result) -> str:
    """The single ``Error: ...`` line of a failed ``lvm`` run (and nothing else)."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0][len("Error: ") :]


def same_results(a: Path, b: Path) -> None:
    """Two results folders hold equal tables, summaries and posterior tensors (exactly)."""
    assert shard_files(a) == shard_files(b)
    first, second = lvm.load_results(a), lvm.load_results(b)
    assert first.table == second.table and first.summary == second.summary
    mine, theirs = first.posterior.state_dict(), second.posterior.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """12 real digits as a .npy file."""
    images = lvm.get_dataset("mnist-5k")().load("test").images[:12]
    path = tmp_path_factory.mktemp("data") / "digits.npy"
    np.save(path, as_uint8((images * 255).round() / 255))
    return path


def job_args(data: Path, out: Path, *extra: object) -> list[object]:
    """A job of 3 shards (4, 4 and 4 digits) on the tiny VAE."""
    return [
        "refine", "--model", TINY_MODULE, "--data", data, "--shard-size", 4, *FAST,
        "--output", out, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data) -> dict[str, Path]:
    """A finished job, and a finished job of another command (another --eval-seed) whose
    shards have the same names."""
    root = tmp_path_factory.mktemp("finished")
    for name, extra in (("ours", ()), ("theirs", ("--eval-seed", 1))):
        result = lvm_run(*job_args(data, root / name, *extra))
        assert result.exit_code == 0, result.output
    return {"ours": root / "ours", "theirs": root / "theirs"}


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - 9] ^= 0x01  # in the tensor data / the last row's numbers
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def copy_shard(source: Path, out: Path, suffixes: tuple[str, ...]) -> None:
    for suffix in suffixes:
        shutil.copy(source / "shards" / f"00001{suffix}", out / "shards" / f"00001{suffix}")


ALL = (".safetensors", ".jsonl", ".receipt.json")
DAMAGE = {
    # name: (what is done to the copy of our folder, the file named, the problem named)
    "flipped byte in the tensors": (
        lambda out, theirs: flip_a_byte(out / "shards/00001.safetensors"),
        "00001.safetensors",
        "altered since the job wrote it",
    ),
    "flipped byte in the table": (
        lambda out, theirs: flip_a_byte(out / "shards/00001.jsonl"),
        "00001.jsonl",
        "altered since the job wrote it",
    ),
    "truncated tensors": (
        lambda out, theirs: truncate(out / "shards/00001.safetensors"),
        "00001.safetensors",
        "truncated (",
    ),
    "truncated table": (
        lambda out, theirs: truncate(out / "shards/00001.jsonl"),
        "00001.jsonl",
        "truncated (",
    ),
    "a shard of another job": (
        lambda out, theirs: copy_shard(theirs, out, ALL),
        "00001.safetensors",
        "a shard of another job",
    ),
    "another job's shard without its receipt": (
        lambda out, theirs: copy_shard(theirs, out, (".safetensors", ".jsonl")),
        "00001.safetensors",
        "a shard of another job",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_or_foreign_shard_is_refused_by_load_results_and_by_resume(
    tmp_path, data, finished, damage
):
    change, name, problem = DAMAGE[damage]
    out = tmp_path / "out"
    shutil.copytree(finished["ours"], out)
    change(out, finished["theirs"])
    path = out / "shards" / name
    with pytest.raises(IntegrityError) as refused:
        lvm.load_results(out)
    fix = f"; delete {out / 'shards' / '00001'}.* and run the same command again to recompute"
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{path}: {problem}"), message
    assert fix in message

    # Rerunning the job's command (a resume) refuses it too, in one line, touching nothing.
    before = tree_digest(out)
    message = one_error_line(lvm_run(*job_args(data, out)))
    assert message.startswith(f"{path}: {problem}") and fix in message, message
    assert tree_digest(out) == before

    # Doing what the message says recomputes that shard: the results are the job's again.
    for stale in (out / "shards").glob("00001.*"):
        stale.unlink()
    resumed = lvm_run(*job_args(data, out))
    assert resumed.exit_code == 0, resumed.output
    assert "resuming: 2 of 3 shards" in resumed.stderr
    same_results(out, finished["ours"])


def test_another_jobs_table_alone_is_refused(tmp_path, data, finished):
    out = tmp_path / "out"
    shutil.copytree(finished["ours"], out)
    copy_shard(finished["theirs"], out, (".jsonl",))
    path = out / "shards" / "00001.jsonl"
    with pytest.raises(IntegrityError, match=f"^{re.escape(str(path))}: altered since the job"):
        lvm.load_results(out, posterior=False)
    assert one_error_line(lvm_run(*job_args(data, out))).startswith(f"{path}: altered")


def test_a_damaged_receipt_manifest_or_summary_is_named_as_such(tmp_path, data, finished):
    out = tmp_path / "out"
    shutil.copytree(finished["ours"], out)
    receipt = out / "shards" / "00002.receipt.json"
    receipt.write_text(receipt.read_text().replace('"rows": 4', '"rows": 5'))
    assert one_error_line(lvm_run(*job_args(data, out))).startswith(
        f"{receipt}: altered since the job wrote it (its checksum does not match)"
    )
    # A changed manifest: refused by both; --overwrite (as the message says) recomputes.
    shutil.rmtree(out)
    shutil.copytree(finished["ours"], out)
    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"eval_samples": 3', '"eval_samples": 30'))
    expected = f"{manifest}: altered since the job wrote it (its checksum does not match)"
    with pytest.raises(IntegrityError, match=f"^{re.escape(expected)}; rerun the command with"):
        lvm.load_results(out)
    assert one_error_line(lvm_run(*job_args(data, out))).startswith(expected)
    assert lvm_run(*job_args(data, out, "--overwrite")).exit_code == 0
    same_results(out, finished["ours"])
    # A changed summary (a silent wrong mean otherwise).
    summary = out / "summary.json"
    summary.write_text(summary.read_text().replace('"num_images": 12', '"num_images": 13'))
    with pytest.raises(IntegrityError, match=f"^{re.escape(str(summary))}: altered since the"):
        lvm.load_results(out, posterior=False)


def test_the_manifest_records_every_shard_files_checksum(finished):
    import hashlib

    folder = ResultsFolder(finished["ours"])
    manifest = folder.read_manifest()
    assert manifest["format"] == 2 and len(manifest["shards"]) == 3
    for shard, record in enumerate(manifest["shards"]):
        receipt = json.loads(folder.receipt_path(shard).read_text())
        assert receipt["job"] == manifest["identity"] and receipt["files"] == record["files"]
        for path in (folder.tensors_path(shard), folder.table_path(shard)):
            data = path.read_bytes()
            assert record["files"][path.name] == {
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
    summary = folder.summary_path.read_bytes()
    assert manifest["summary"]["sha256"] == hashlib.sha256(summary).hexdigest()


def test_a_folder_of_the_format_without_checksums_is_refused_then_recomputed(
    tmp_path, data, finished
):
    out = tmp_path / "out"
    shutil.copytree(finished["ours"], out)
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("checksum", "shards", "summary"):
        del manifest[key]
    (out / "manifest.json").write_text(json.dumps({**manifest, "format": 1}, indent=2))
    for receipt in out.glob("shards/*.receipt.json"):
        receipt.unlink()
    with pytest.raises(LvmError, match="older lvmtoolkit .results format 1.* recompute them$"):
        lvm.load_results(out)
    rerun = lvm_run(*job_args(data, out))
    assert rerun.exit_code == 0, rerun.output
    assert "without checksums: recomputing it" in rerun.stderr
    same_results(out, finished["ours"])


# --- the lock -------------------------------------------------------------------------------


def test_a_second_job_on_a_held_output_is_refused_and_writes_nothing(tmp_path, data):
    out, go = tmp_path / "out", tmp_path / "go"
    first = start_paused(go, *job_args(data, out))
    try:
        before = tree_digest(out)
        assert (out / ".lvm.lock").read_text().startswith(f"pid {first.pid} on ")
        for args in (job_args(data, out), job_args(data, out, "--eval-seed", 1, "--overwrite")):
            message = one_error_line(lvm_run(*args))
            assert message.startswith(f"--output {out} is in use by another job (pid {first.pid} ")
            assert tree_digest(out) == before  # the first job is paused: nothing moved
        assert first.poll() is None
    finally:
        go.touch()
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert (out / ".lvm.lock").read_text() == ""  # released, and emptied
    lone = lvm_run(*job_args(data, tmp_path / "lone"))
    assert lone.exit_code == 0, lone.output
    same_results(out, tmp_path / "lone")


def test_the_lock_is_the_one_the_runner_takes(tmp_path, data):
    """A lock taken as the runner takes it, from another process, refuses a job; the job
    then runs once the holder is gone (killed: the kernel drops its lock)."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from lvmtoolkit.jobs import OutputLock, ResultsFolder; "
         "OutputLock(ResultsFolder(sys.argv[1])).acquire(); print('held', flush=True); "
         "sys.stdin.read()", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        assert "in use by another job" in one_error_line(lvm_run(*job_args(data, out)))
        assert sorted(p.name for p in out.iterdir()) == [".lvm.lock"]
    finally:
        holder.kill()
        holder.wait()
    result = lvm_run(*job_args(data, out))
    assert result.exit_code == 0, result.output
    # In one process, the lock is taken and given back around each job.
    lock = OutputLock(ResultsFolder(out))
    with lock:
        assert "in use" in one_error_line(lvm_run(*job_args(data, out)))
    assert lvm_run(*job_args(data, out)).exit_code == 0
