"""The refine job: shards, resume, ranks, progress, summary.

The data is cut into shards of ``shard_size`` datapoints. Each shard is read, binarised
(``model.evaluation_data``), scored with the amortized posterior, refined, scored after
every requested step count (and with IWAE-k if asked), and written as two files and a
receipt of their checksums (`ResultsFolder`). A shard's result depends only on the
job and the shard's index: its refiner and evaluation seeds are derived from the job's
seeds and the index (`stream_seed`), so it is the same
whichever process computes it, in whichever run: a resumed job, or one split across
``torchrun`` ranks, gives bit for bit the results of one uninterrupted process (on the same
device and thread count).

Ranks take the shards ``rank, rank + size, ...`` that are not done yet. Rank 0 locks the
output folder for the job's lifetime (`OutputLock`: ranks of one job share it, a second job
is refused), checks it (the shards already done against their receipts) and writes the
manifest before any shard is computed, shows one progress bar over the whole job (counting
the shards every rank has written), and, after a barrier, checks every shard again, writes
the summary from the shard tables read in order, so the summary does not depend on how many
processes there were, and records every shard file's checksum in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lvmtoolkit.core.model import Model
from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.core.runtime import frozen, stream_seed
from lvmtoolkit.errors import LvmError
from lvmtoolkit.jobs.distributed import World
from lvmtoolkit.jobs.folder import (
    FORMAT_VERSION,
    LEGACY_FORMATS,
    OutputLock,
    ResultsFolder,
    file_record,
    json_bytes,
    with_checksum,
    write_bytes,
    write_json,
)
from lvmtoolkit.jobs.results import build_posterior_skeleton
from lvmtoolkit.jobs.sources import DataSource

__all__ = ["RefineJob", "Summary", "run_refine_job"]

_PATH_KEYS = ("path", "checkpoint")


def _local_posterior_types() -> tuple[type, ...]:
    """Classes whose registered tensors are all per datapoint (wherever they live now)."""
    from lvmtoolkit import refiners
    from lvmtoolkit.core import posterior as core_posterior

    found = (
        getattr(core_posterior, "LocalPosterior", None),
        getattr(refiners, "LocalPosterior", None),
        core_posterior.LocalGaussianPosterior,
    )
    return tuple(t for t in found if t is not None)


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


@dataclass
class RefineJob:
    """Everything that defines the results of ``lvm refine --output``.

    Attributes:
        model: The model (in eval mode, on the device).
        model_identity: Where it came from and its parameter hash
            (`resolve_model`).
        refiner: Registered refiner name.
        options: Refiner options as given (``-o KEY=VALUE``), without ``steps``.
        steps: Step counts at which each datapoint's NELBO is recorded.
        source: The data.
        source_args: How to open the data again (`open_source`).
        eval_samples: Posterior samples per NELBO.
        eval_seed: Seed from which each shard's evaluation noise is derived.
        iwae_samples: k of IWAE-k with the amortized and the refined proposal (0: none).
        shard_size: Datapoints per shard (memory bound; part of the job's identity).
    """

    model: Model
    model_identity: dict[str, Any]
    refiner: str
    options: dict[str, str]
    steps: list[int]
    source: DataSource
    source_args: dict[str, Any]
    eval_samples: int = 100
    eval_seed: int = 0
    iwae_samples: int = 0
    shard_size: int = 1000
    _definition: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from lvmtoolkit.plugins import get_refiner

        if self.shard_size < 1:
            raise LvmError(f"--shard-size must be at least 1, got {self.shard_size}")
        self.refiner_class = get_refiner(self.refiner)
        if "steps" in self.options:
            raise LvmError("set the number of steps with --steps, not -o steps=...")
        self.takes_steps = "steps" in self.refiner_class.option_names()
        self._values = dict(self.options)
        if self.takes_steps:
            self._values["steps"] = str(max(self.steps))
        self.base_refiner = self.refiner_class(**self._values)  # validates the options
        if len(self.source) == 0:
            raise LvmError("the data holds no datapoints")

    # --- identity --------------------------------------------------------------------------

    @property
    def num_shards(self) -> int:
        return math.ceil(len(self.source) / self.shard_size)

    def shard_rows(self, shard: int) -> slice:
        start = shard * self.shard_size
        return slice(start, min(start + self.shard_size, len(self.source)))

    @property
    def posterior_builder(self) -> dict[str, Any]:
        """How `load_results` rebuilds the posterior family from the saved tensors."""
        o = self.base_refiner.options
        return {
            "function": "lvmtoolkit.refiners.make_local_posterior",
            "start": "model.amortized_posterior()",
            "structure": getattr(o, "structure", "hierarchical"),
            "num_flows": int(getattr(o, "num_flows", 0)),
            "flow_hidden": int(getattr(o, "flow_hidden", 4)),
            # None: the refiner has no such option and used make_local_posterior's default.
            "max_flat_weights": getattr(o, "max_flat_weights", None),
        }

    def definition(self) -> dict[str, Any]:
        """The settings that define the results (their hash is the job's identity)."""
        if self._definition is None:
            model = self.model
            self._definition = {
                "model": self.model_identity,
                "refiner": {"name": self.refiner, "options": self._resolved_options()},
                "steps": list(self.steps) if self.takes_steps else [],
                "eval_samples": self.eval_samples,
                "eval_seed": self.eval_seed,
                "iwae_samples": self.iwae_samples,
                "shard_size": self.shard_size,
                "data": {
                    "count": len(self.source),
                    "shape": list(self.source.data_shape),
                    "sha256": self.source.fingerprint(),
                },
                "protocol": {
                    "metric": "NELBO in nats per datapoint (lower is better)",
                    "binarization": _binarization(model),
                    "eval_noise": "seed stream_seed(eval_seed, 'jobs/eval/<shard>') per shard",
                    "iwae_noise": "seed stream_seed(eval_seed, 'jobs/iwae/<shard>') per shard",
                    "refiner_seed": "stream_seed(seed, 'jobs/shard/<shard>') per shard",
                },
            }
        return self._definition

    def _resolved_options(self) -> dict[str, Any]:
        """The refiner's options, a ``chunk_size`` of 0 written as the backend's size.

        0 means "the backend's own" (`Model.chunk_size`); the size itself is what decides the
        noise draws, so it is what the identity records: a job made when the default was a
        fixed 1,024 resumes where the backend still uses 1,024.
        """
        options = {k: _jsonable(v) for k, v in vars(self.base_refiner.options).items()}
        if options.get("chunk_size") == 0:
            options["chunk_size"] = self.model.chunk_size
        return options

    def identity(self) -> str:
        """SHA-256 of the definition, leaving out file paths (a moved file is the same)."""
        definition = json.loads(json.dumps(self.definition()))
        for key in _PATH_KEYS:
            definition["model"].pop(key, None)
        return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()

    # --- one shard -------------------------------------------------------------------------

    def refiner_for(self, shard: int) -> Any:
        """The refiner of one shard: the job's, with its seed derived from the shard index."""
        values = dict(self._values)
        if "seed" in self.refiner_class.option_names():
            values["seed"] = str(stream_seed(self.base_refiner.options.seed, f"jobs/shard/{shard}"))
        return self.refiner_class(**values)

    def run_shard(self, shard: int) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
        """Refine and score one shard: its table rows and its posterior tensors."""
        from lvmtoolkit.core.validation import check_batch
        from lvmtoolkit.metrics import iwae_bound, nelbo

        rows = self.shard_rows(shard)
        model = self.model
        x = model.evaluation_data(self.source.read(rows.start, rows.stop)).to(model.device)
        check_batch(model, x)
        eval_seed = stream_seed(self.eval_seed, f"jobs/eval/{shard}")

        def score(posterior: Posterior) -> torch.Tensor:
            return nelbo(model, posterior, x, num_samples=self.eval_samples, seed=eval_seed)

        amortized = model.amortized_posterior()
        columns: dict[str, torch.Tensor] = {"nelbo_amortized": score(amortized)}
        by_step: dict[int, torch.Tensor] = {}

        def on_checkpoint(step: int, posterior: Posterior) -> None:
            by_step[step] = score(posterior)

        checkpoints = self.steps if self.takes_steps else []
        result = self.refiner_for(shard).refine(
            model, x, checkpoints=checkpoints, on_checkpoint=on_checkpoint
        )
        if result.steps and result.steps not in by_step:
            by_step[result.steps] = score(result.posterior)
        for step in sorted(by_step):
            columns[f"nelbo_{step}"] = by_step[step]
        if self.iwae_samples:
            iwae_seed = stream_seed(self.eval_seed, f"jobs/iwae/{shard}")
            for name, posterior in (("amortized", amortized), ("refined", result.posterior)):
                columns[f"iwae_{name}"] = iwae_bound(
                    model, posterior, x, num_samples=self.iwae_samples, seed=iwae_seed
                )
        values = {k: v.detach().cpu().tolist() for k, v in columns.items()}
        ids = self.source.ids(rows.start, rows.stop)
        table = [
            {
                "index": rows.start + i,
                "id": ids[i],
                "shard": shard,
                **{k: v[i] for k, v in values.items()},
            }
            for i in range(x.shape[0])
        ]
        return table, self._posterior_tensors(result.posterior, x)

    def _posterior_tensors(self, posterior: Posterior, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The refined posterior's per-datapoint state, checked against the family
        `load_results` rebuilds (an amortized posterior is stored as its local form
        at ``x``, which starts equal to it)."""
        from lvmtoolkit.refiners import make_local_posterior

        model = self.model
        builder = self.posterior_builder
        if not isinstance(posterior, _local_posterior_types()):
            with frozen(model):
                posterior = make_local_posterior(
                    posterior, x, structure=builder["structure"], num_flows=0
                )
        state = dict(posterior.state_dict())
        expected = build_posterior_skeleton(model, builder, x.shape[0]).state_dict()
        shapes = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
        if shapes != {k: (tuple(v.shape), v.dtype) for k, v in expected.items()}:
            raise LvmError(
                f"refiner {self.refiner!r} returns a {type(posterior).__name__} that "
                f"make_local_posterior(structure={builder['structure']!r}, "
                f"num_flows={builder['num_flows']}) does not rebuild, so its results cannot "
                "be saved; run it without --output"
            )
        return state


def _binarization(model: Model) -> str:
    from lvmtoolkit.data import EVAL_BINARIZATION_SEED

    if not model.binary_data:
        return "none (grey levels)"
    return f"model.evaluation_data per shard: a fixed Bernoulli draw, seed {EVAL_BINARIZATION_SEED}"


# --- the summary ----------------------------------------------------------------------------


class Summary:
    """Means over datapoints, accumulated row by row in data order (float64)."""

    def __init__(self) -> None:
        self.count = 0
        self.sums: dict[str, float] = {}
        self.improved: dict[str, int] = {}
        self.max_change: dict[str, float] = {}

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.count += 1
            for key, value in row.items():
                if key.startswith(("nelbo_", "iwae_")):
                    self.sums[key] = self.sums.get(key, 0.0) + float(value)
                if key.startswith("nelbo_") and key != "nelbo_amortized":
                    change = float(value) - float(row["nelbo_amortized"])
                    self.improved[key] = self.improved.get(key, 0) + (change < 0)
                    self.max_change[key] = max(self.max_change.get(key, -math.inf), change)

    def mean(self, key: str) -> float:
        return round(self.sums[key] / self.count, 4)

    def as_dict(self) -> dict[str, Any]:
        steps = sorted(int(k[len("nelbo_") :]) for k in self.improved)
        result: dict[str, Any] = {
            "num_images": self.count,
            "amortized": self.mean("nelbo_amortized"),
            "steps": {
                str(s): {
                    "nelbo": self.mean(f"nelbo_{s}"),
                    "images_improved": self.improved[f"nelbo_{s}"],
                    "max_change": round(self.max_change[f"nelbo_{s}"], 4),
                }
                for s in steps
            },
        }
        if "iwae_amortized" in self.sums:
            result["iwae"] = {
                "amortized": self.mean("iwae_amortized"),
                "refined": self.mean("iwae_refined"),
            }
        return result


def make_report(job: RefineJob, summary: Summary) -> dict[str, Any]:
    """The ``--json`` report: what ran, on what, and the means over all datapoints."""
    definition = job.definition()
    return {
        "job": job.identity(),
        "model": definition["model"],
        "refiner": job.refiner,
        "options": definition["refiner"]["options"],
        "data": job.source.describe(),
        "protocol": {
            **definition["protocol"],
            "samples_per_nelbo": job.eval_samples,
            "eval_seed": job.eval_seed,
            "iwae_samples": job.iwae_samples,
            "shard_size": job.shard_size,
        },
        "results": summary.as_dict(),
    }


# --- progress -------------------------------------------------------------------------------


class _Progress:
    """One rich progress bar over the job's datapoints (rank 0 only), on stderr."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.text import Text

        stderr = Console(stderr=True)

        class Rate(ProgressColumn):
            """Datapoints per second of this run (a resumed run's earlier shards excluded),
            and the time left at that rate."""

            def render(self, task: Any) -> Text:
                elapsed, new = task.elapsed or 0.0, task.completed - done
                if elapsed <= 0 or new <= 0:
                    return Text("- datapoints/s, ETA -")
                rate = new / elapsed
                left = int((task.total - task.completed) / rate)
                eta = f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
                return Text(f"{rate:,.1f} datapoints/s, ETA {eta}")

        self.bar = Progress(
            TextColumn("[bold]refine[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            Rate(),
            TimeElapsedColumn(),
            console=stderr,
        )
        self.task = self.bar.add_task("refine", total=total, completed=done)
        self.bar.start()

    def set(self, done: int) -> None:
        if self.enabled:
            self.bar.update(self.task, completed=done)

    def stop(self) -> None:
        if self.enabled:
            self.bar.stop()


class _Poller(threading.Thread):
    """Counts the datapoints of shards written by every rank, for rank 0's bar."""

    def __init__(self, count: Callable[[], int], progress: _Progress):
        super().__init__(daemon=True)
        self.count, self.progress = count, progress
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            self.progress.set(self.count())


# --- the job --------------------------------------------------------------------------------


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(keys) or "the identity"


def _open_folder(
    job: RefineJob,
    folder: ResultsFolder,
    lock: OutputLock,
    overwrite: bool,
    say: Callable[[str], None],
) -> list[int]:
    """Rank 0: lock the folder, then refuse, resume or start it (writing the manifest).

    Returns:
        The shards already done, their files checked against their receipts.

    Raises:
        LvmError: The folder is in use by another job, holds another command's results or
            other files (without ``overwrite``), cannot be written, or a done shard is
            damaged or of another job (`IntegrityError`).
    """
    root = folder.root
    if root.exists() and not root.is_dir():
        raise LvmError(f"--output {root} is a file, not a folder")
    if not overwrite and not folder.manifest_path.exists() and not folder.is_empty():
        # Checked before locking, so that no lock file is left in a folder that is not ours.
        raise LvmError(
            f"--output {root} is not empty and holds no lvm results; choose a new "
            "or empty folder, or pass --overwrite to write into it"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LvmError(f"--output {root} cannot be written: {err}") from None
    lock.acquire()  # held until the job ends: every decision below sees a folder at rest
    if not lock.supported:
        say(f"{root} cannot be locked (no flock there): do not run two jobs on it at once")
    identity = job.identity()
    try:
        manifest = folder.read_manifest()
    except LvmError:
        if not overwrite:
            raise
        manifest = None  # a damaged manifest: --overwrite replaces it with the rest
    if manifest is not None and manifest.get("identity") == identity:
        version = manifest.get("format")
        if version == FORMAT_VERSION:
            folder.remove_temporary()
            return [k for k in range(job.num_shards) if folder.verify_shard(k, identity)]
        if version not in LEGACY_FORMATS:
            raise LvmError(
                f"--output {root} holds results format {version}, which this lvmtoolkit "
                f"(format {FORMAT_VERSION}) does not know; resume it with the version that "
                "wrote it"
            )
        # Its shards have no receipts, so none counts as done: all are computed again.
        say(f"{root} was written by an older lvmtoolkit without checksums: recomputing it")
    elif manifest is not None and not overwrite:
        now = json.loads(json.dumps({**job.definition(), "num_shards": job.num_shards}))
        changed = _differences(manifest.get("job", {}), now)
        raise LvmError(
            f"--output {root} holds results of another command (it differs in: "
            f"{changed}); pass --overwrite to replace them, or choose another folder"
        )
    else:
        try:
            folder.clear()
        except OSError as err:
            raise LvmError(f"--output {root} cannot be written: {err}") from None
    try:
        folder.remove_temporary()
        folder.shards.mkdir(exist_ok=True)
        write_json(folder.manifest_path, _manifest(job))
    except OSError as err:
        raise LvmError(f"--output {root} cannot be written: {err}") from None
    return []


def _finish(job: RefineJob, folder: ResultsFolder, summary: Summary) -> dict[str, Any]:
    """Rank 0, after every rank is done: check every shard, summarise the tables in order,
    record every shard file's checksum in the manifest, then write the summary.

    Each shard's table is read once, from the bytes its checksum was checked on.
    """
    identity = job.identity()
    records, missing = [], []
    for shard in range(job.num_shards):
        verified = folder.verify_shard(shard, identity)
        if verified is None:
            missing.append(shard)
            continue
        summary.add(folder.parse_table(shard, verified.table))
        receipt = verified.receipt
        records.append({"shard": shard, "rows": receipt["rows"], "files": receipt["files"]})
    if missing:
        raise LvmError(f"shards {missing[:5]} are missing after the run; run the command again")
    report = make_report(job, summary)
    data = json_bytes(report)
    manifest = folder.read_manifest() or _manifest(job)
    write_json(
        folder.manifest_path,
        with_checksum({**manifest, "shards": records, "summary": file_record(data)}),
    )
    write_bytes(folder.summary_path, data)  # last: its presence says the job has finished
    return report


def _manifest(job: RefineJob) -> dict[str, Any]:
    import platform
    import sys

    import pyro

    from lvmtoolkit import __version__
    from lvmtoolkit.plugins import plugin_info

    plugins = {p["distribution"]: p["version"] for p in plugin_info() if p["kind"] != "broken"}
    return with_checksum(
        {
            "format": FORMAT_VERSION,
            "identity": job.identity(),
            "job": {**job.definition(), "num_shards": job.num_shards},
            "posterior": job.posterior_builder,
            "data_source": {"open": job.source_args, "description": job.source.describe()},
            "versions": {
                "lvmtoolkit": __version__,
                "torch": torch.__version__,
                "pyro": pyro.__version__,
                "python": platform.python_version(),
                "plugins": plugins,
            },
            "command": " ".join(["lvm", *sys.argv[1:]]) if sys.argv else "",
        }
    )


def run_refine_job(
    job: RefineJob,
    output: str | Path | None,
    *,
    world: World | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any] | None:
    """Run (or resume) a refine job and return its report on rank 0 (None on other ranks).

    Args:
        job: What to compute.
        output: Results folder; None computes the report only (one process).
        world: This process's rank (default: a world of one).
        overwrite: Replace the results of another command in ``output``.
        progress: Show the progress bar (rank 0).
        log: Called with status lines (rank 0).

    Raises:
        LvmError: ``output`` is in use by another job (it holds the folder's lock), holds
            another command's results (without ``overwrite``), or is not writable; a shard
            already there is truncated, altered or of another job (`IntegrityError`); a
            shard's data is bad.
    """
    world = world or World(device=job.model.device)
    say = log if (log is not None and world.is_main) else (lambda line: None)
    summary = Summary()
    if output is None:
        if world.distributed:
            raise LvmError("under torchrun, give --output: ranks share results through it")
        bar = _Progress(len(job.source), 0, progress)
        try:
            done = 0
            for shard in range(job.num_shards):
                rows, _ = job.run_shard(shard)
                summary.add(rows)
                done += len(rows)
                bar.set(done)
        finally:
            bar.stop()
        return make_report(job, summary)

    folder = ResultsFolder(output)
    lock = OutputLock(folder)  # rank 0 holds it for the job; the other ranks are its helpers
    try:
        return _run_in_folder(job, folder, lock, world, overwrite, progress, say)
    finally:
        lock.release()


def _run_in_folder(
    job: RefineJob,
    folder: ResultsFolder,
    lock: OutputLock,
    world: World,
    overwrite: bool,
    progress: bool,
    say: Callable[[str], None],
) -> dict[str, Any] | None:
    """`run_refine_job` with ``output``: open the folder (rank 0), run the shards, finish."""
    failure: LvmError | None = None
    done_shards: list[int] = []
    if world.is_main:
        try:
            done_shards = _open_folder(job, folder, lock, overwrite, say)
        except LvmError as err:
            failure = err
    # Rank 0 alone reads and checks the folder; the others learn the outcome from it.
    message, done_shards = world.broadcast((None if failure is None else str(failure), done_shards))
    if message is not None:
        raise failure if failure is not None else LvmError(message)
    world.barrier()
    identity = job.identity()
    done = set(done_shards)
    sizes = [job.shard_rows(k).stop - job.shard_rows(k).start for k in range(job.num_shards)]
    if done:
        say(f"resuming: {len(done)} of {job.num_shards} shards already done in {folder.root}")

    def written() -> int:
        return sum(sizes[k] for k in range(job.num_shards) if folder.receipt_path(k).is_file())

    bar = _Progress(len(job.source), sum(sizes[k] for k in done), progress and world.is_main)
    poller = None
    if world.distributed and bar.enabled:
        poller = _Poller(written, bar)
        poller.start()
    started = time.perf_counter()
    try:
        finished = sum(sizes[k] for k in done)
        for shard in range(world.rank, job.num_shards, world.size):
            if shard in done:
                continue
            rows, tensors = job.run_shard(shard)
            folder.write_shard(shard, identity, tensors, rows)
            finished += len(rows)
            if poller is None:
                bar.set(finished)
        world.barrier()
    finally:
        if poller is not None:
            poller.stopped.set()
            poller.join()
        bar.set(written())
        bar.stop()
    if not world.is_main:
        return None
    report = _finish(job, folder, Summary())
    seconds = time.perf_counter() - started
    computed = len(job.source) - sum(sizes[k] for k in done)
    say(
        f"{computed} datapoints refined in {seconds:.1f} s "
        f"({computed / max(seconds, 1e-9):.1f} datapoints/s, {world.size} process"
        f"{'es' if world.size > 1 else ''}); results in {folder.root}"
    )
    return report
