"""``lvm refine --output`` at scale: peak memory against data size, throughput, torchrun.

Runs the same job (one model, one refiner recipe, the same shard size) as separate
``lvm refine`` processes and reports, from each process's own resource usage
(``os.wait4``):

1. peak RSS with the first ``--small`` datapoints and with all of them: a job reads and
   refines shard by shard, so the two should be within a few percent;
2. wall time and datapoints per second of the full run;
3. the same ``--ratio-count`` datapoints with one process of one thread, with ``torchrun
   --nproc-per-node 2`` (one thread per process), and with one process of two threads: the
   wall-time ratios, and whether the torchrun and one-process folders hold the same
   per-datapoint results.

The ratios are within this script's runs, on the same machine, one after the other (run it
alone: ``flock`` keeps other heavy jobs off the cores). Defaults measure Fashion-MNIST's
70,000 images (Debian's ``dataset-fashion-mnist``)::

    python benchmarks/job_scaling.py --checkpoint runs/fashion-vae \\
        --data /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz \\
        --data /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz \\
        --out runs/job-scaling

It prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

FASHION = Path("/usr/share/datasets/fashion-mnist")
TORCHRUN = Path(sys.executable).with_name("torchrun")


def run(command: list[str], threads: int) -> dict[str, float]:
    """Run ``command``; its wall time (s) and peak RSS (MiB), from its own rusage."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # wait4 gives this child's own peak RSS (for torchrun: the launcher's, not its ranks';
    # only its wall time is used).
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    stdout, stderr = process.stdout.read(), process.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command)} failed:\n{stderr.decode()[-3000:]}")
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "stdout": stdout.decode(),
    }


def same_results(a: Path, b: Path) -> bool:
    """Whether two results folders hold the same tables and posterior tensors."""
    from safetensors.torch import load_file

    for table in sorted(a.glob("shards/*.jsonl")):
        if table.read_bytes() != (b / table.relative_to(a)).read_bytes():
            return False
    for tensors in sorted(a.glob("shards/*.safetensors")):
        mine, theirs = load_file(tensors), load_file(b / tensors.relative_to(a))
        if mine.keys() != theirs.keys() or any(not mine[k].equal(theirs[k]) for k in mine):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint of the model to refine")
    parser.add_argument("--backend", default="vae")
    default_data = [
        str(FASHION / "train-images-idx3-ubyte.gz"),
        str(FASHION / "t10k-images-idx3-ubyte.gz"),
    ]
    parser.add_argument("--data", action="append", help="data files (default: Fashion-MNIST)")
    parser.add_argument("--steps", default="10,100", help="--steps of the job (default 10,100)")
    parser.add_argument("--eval-samples", type=int, default=100, help="default 100")
    parser.add_argument("--shard-size", type=int, default=1000, help="default 1000")
    parser.add_argument("--threads", type=int, default=2, help="threads of the full run")
    parser.add_argument("--small", type=int, default=10000, help="datapoints of the small run")
    parser.add_argument("--ratio-count", type=int, default=20000, help="datapoints, torchrun")
    parser.add_argument("--out", type=Path, default=Path("runs/job-scaling"))
    args = parser.parse_args()
    data = args.data or default_data

    def job(out: Path, threads: int, count: int | None = None) -> list[str]:
        command = ["refine", "--backend", args.backend, "--checkpoint", args.checkpoint]
        for path in data:
            command += ["--data", path]
        command += ["--steps", args.steps, "--eval-samples", str(args.eval_samples)]
        command += ["--shard-size", str(args.shard_size), "--threads", str(threads)]
        command += ["--output", str(out), "--overwrite", "--json"]
        return command + (["--num-images", str(count)] if count else [])

    lvm = [sys.executable, "-m", "lvmtoolkit"]
    small = run([*lvm, *job(args.out / "small", args.threads, args.small)], args.threads)
    full = run([*lvm, *job(args.out / "full", args.threads)], args.threads)
    count = json.loads(full["stdout"])["results"]["num_images"]
    one = run([*lvm, *job(args.out / "one", 1, args.ratio_count)], 1)
    two = run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "lvmtoolkit",
         *job(args.out / "two", 1, args.ratio_count)],
        1,
    )  # fmt: skip
    one_two_threads = run([*lvm, *job(args.out / "one-2-threads", 2, args.ratio_count)], 2)
    report = {
        "job": {
            "checkpoint": args.checkpoint,
            "data": data,
            "steps": args.steps,
            "eval_samples": args.eval_samples,
            "shard_size": args.shard_size,
        },
        "peak_rss_mib": {str(args.small): small["peak_rss_mib"], str(count): full["peak_rss_mib"]},
        "peak_rss_ratio": round(full["peak_rss_mib"] / small["peak_rss_mib"], 3),
        "full": {
            "datapoints": count,
            "threads": args.threads,
            "seconds": full["seconds"],
            "datapoints_per_second": round(count / full["seconds"], 1),
            "results": json.loads(full["stdout"])["results"],
        },
        "torchrun": {
            "datapoints": args.ratio_count,
            "one_process_1_thread_seconds": one["seconds"],
            "torchrun_2x1_thread_seconds": two["seconds"],
            "one_process_2_threads_seconds": one_two_threads["seconds"],
            "time_ratio_torchrun_over_one": round(two["seconds"] / one["seconds"], 3),
            "time_ratio_torchrun_over_one_2_threads": round(
                two["seconds"] / one_two_threads["seconds"], 3
            ),
            "same_results": same_results(args.out / "one", args.out / "two")
            and json.loads(one["stdout"]) == json.loads(two["stdout"]),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
