"""A results folder: manifest, per-shard files, summary; and `load_results`.

Layout of ``lvm refine --output DIR``::

    DIR/manifest.json          what was computed, and how (written before any shard)
    DIR/shards/00000.safetensors   refined posterior parameters of shard 0's datapoints
    DIR/shards/00000.jsonl         one JSON object per datapoint of shard 0 (the table)
    ...
    DIR/summary.json           means over all datapoints (written when every shard is done)

Every file is written to a temporary file in its folder and renamed over its name when
complete, so a file that exists is whole. A shard is done when both of its files exist
and the tensors' metadata names the manifest's job; its ``.jsonl`` is renamed last.

Formats. Tensors: safetensors, readable without this toolkit (``safetensors``, numpy,
PyTorch, JAX) and without running code. Table: JSON lines, which pandas
(``read_json(lines=True)``), polars, DuckDB and ``jq`` read, which needs no dependency,
and which round-trips float32 values exactly (each is written as the shortest decimal of
the double that holds it).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lvmtoolkit.core.model import Model
from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.errors import LvmError

__all__ = [
    "FORMAT_VERSION",
    "Results",
    "ResultsFolder",
    "load_results",
]

FORMAT_VERSION = 1
"""Version of the folder layout; written into the manifest."""

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
SHARDS = "shards"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
"""The mode of an ordinary new file (mkstemp's temporary files are private)."""


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temp_path)``, then rename the temporary file over ``path``."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temp)
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(temp, _FILE_MODE)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented JSON, atomically."""

    def write(temp: str) -> None:
        Path(temp).write_text(json.dumps(value, indent=2) + "\n")

    atomic_write(path, write)


class ResultsFolder:
    """The files of one results folder (see the module docstring for the layout).

    Args:
        root: The folder (``--output``).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.shards = self.root / SHARDS
        self.manifest_path = self.root / MANIFEST
        self.summary_path = self.root / SUMMARY

    def tensors_path(self, shard: int) -> Path:
        return self.shards / f"{shard:05d}.safetensors"

    def table_path(self, shard: int) -> Path:
        return self.shards / f"{shard:05d}.jsonl"

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or None when the folder has none."""
        if not self.manifest_path.is_file():
            return None
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as err:
            raise LvmError(f"{self.manifest_path} cannot be read: {err}") from None

    def is_empty(self) -> bool:
        return not self.root.exists() or not any(self.root.iterdir())

    def ours(self) -> list[Path]:
        """Files this layout owns (what ``--overwrite`` removes)."""
        found = [p for p in (self.manifest_path, self.summary_path) if p.exists()]
        if self.shards.is_dir():
            found += sorted(self.shards.iterdir())
        return found

    def clear(self) -> None:
        """Remove the files of a previous job (nothing else in the folder)."""
        for path in self.ours():
            path.unlink()
        if self.shards.is_dir():
            self.shards.rmdir()

    def remove_temporary(self) -> None:
        """Delete half-written files left by an interrupted run."""
        for folder in (self.root, self.shards):
            if folder.is_dir():
                for path in folder.glob(".*.tmp"):
                    path.unlink(missing_ok=True)

    def shard_done(self, shard: int, job: str) -> bool:
        """Whether shard ``shard`` of the job ``job`` has both of its files."""
        tensors, table = self.tensors_path(shard), self.table_path(shard)
        if not (tensors.is_file() and table.is_file()):
            return False
        from safetensors import safe_open

        try:
            with safe_open(str(tensors), framework="pt") as handle:
                return (handle.metadata() or {}).get("job") == job
        except Exception:
            return False

    def write_shard(
        self,
        shard: int,
        job: str,
        tensors: dict[str, torch.Tensor],
        rows: list[dict[str, Any]],
    ) -> None:
        """Write one shard's tensors, then its table (the table marks it done)."""
        from safetensors.torch import save_file

        self.shards.mkdir(parents=True, exist_ok=True)
        cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        metadata = {"job": job, "shard": str(shard), "rows": str(len(rows))}
        atomic_write(self.tensors_path(shard), lambda temp: save_file(cpu, temp, metadata))
        lines = "".join(json.dumps(row) + "\n" for row in rows)
        atomic_write(self.table_path(shard), lambda temp: Path(temp).write_text(lines))

    def read_table(self, shard: int) -> list[dict[str, Any]]:
        with open(self.table_path(shard)) as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def read_tensors(self, shard: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.tensors_path(shard)))


def iter_rows(folder: ResultsFolder, num_shards: int) -> Iterator[dict[str, Any]]:
    """Every datapoint's row, in order (shard by shard)."""
    for shard in range(num_shards):
        yield from folder.read_table(shard)


@dataclass
class Results:
    """What `load_results` returns.

    Attributes:
        manifest: The job's manifest (model, refiner and options, data, protocol, versions).
        summary: Means over all datapoints (as ``lvm refine --json`` printed them).
        table: One dict per datapoint, in data order: ``index``, ``id``, ``shard``,
            ``nelbo_amortized``, ``nelbo_<steps>`` for each step count and, with
            ``--iwae``, ``iwae_amortized`` and ``iwae_refined``. ``pandas.DataFrame(table)``
            makes it a data frame.
        posterior: The refined posterior of all datapoints (None with ``posterior=False``).
        model: The model the results belong to.
    """

    manifest: dict[str, Any]
    summary: dict[str, Any]
    table: list[dict[str, Any]]
    posterior: Posterior | None
    model: Model
    root: Path = field(default=Path("."))

    def __len__(self) -> int:
        return len(self.table)

    def column(self, name: str) -> torch.Tensor:
        """One numeric column of the table as a float64 tensor, e.g. ``"nelbo_100"``."""
        if self.table and name not in self.table[0]:
            raise LvmError(f"no column {name!r}; columns: {', '.join(self.table[0])}")
        return torch.tensor([row[name] for row in self.table], dtype=torch.float64)

    def data(self) -> torch.Tensor:
        """The datapoints as the job saw them (read again from the recorded data source).

        Rows are binarised per shard as the job did (``model.evaluation_data``), so this
        is the ``x`` to pass to ``nelbo`` / ``iwae_bound`` with `posterior`.

        Raises:
            LvmError: The data is no longer where the manifest says, or has changed.
        """
        from lvmtoolkit.core.runtime import chunks
        from lvmtoolkit.jobs.runner import open_source_from_manifest

        source = open_source_from_manifest(self.manifest, self.model.data_shape)
        job = self.manifest["job"]
        if source.fingerprint() != job["data"]["sha256"]:
            raise LvmError("the data at the recorded path has changed since the job ran")
        parts = chunks(len(source), job["shard_size"])
        return torch.cat(
            [self.model.evaluation_data(source.read(p.start, p.stop)) for p in parts]
        ).to(self.model.device)


def build_posterior_skeleton(model: Model, builder: dict[str, Any], n: int) -> Posterior:
    """A local posterior of ``n`` datapoints of the family the manifest names."""
    from lvmtoolkit.core.runtime import frozen
    from lvmtoolkit.refiners import make_local_posterior
    from lvmtoolkit.refiners.local import DEFAULT_MAX_FLAT_WEIGHTS

    # Results saved before flat flows were narrowed have no entry: they had no limit.
    max_flat_weights = builder.get("max_flat_weights", sys.maxsize)

    x = torch.zeros(n, *model.data_shape, device=model.device)
    with frozen(model):
        return make_local_posterior(
            model.amortized_posterior(),
            x,
            structure=builder["structure"],
            num_flows=builder["num_flows"],
            flow_hidden=builder["flow_hidden"],
            max_flat_weights=(
                DEFAULT_MAX_FLAT_WEIGHTS if max_flat_weights is None else int(max_flat_weights)
            ),
        )


def load_results(
    path: str | Path,
    *,
    model: Model | None = None,
    device: str | torch.device = "cpu",
    posterior: bool = True,
) -> Results:
    """Load the results of ``lvm refine --output DIR``.

    Args:
        path: The results folder.
        model: The model the results were computed with (checked against the recorded
            parameter hash). Default: rebuilt from the manifest (the backend's checkpoint,
            or the ``--model`` file or module).
        device: Where to put the model (when rebuilt) and the posterior.
        posterior: Whether to build the refined posterior (all datapoints' parameters in
            memory); False reads only the table.

    Returns:
        The table, the summary, the manifest, the model and a posterior over all
        datapoints that can be sampled (it is a Pyro guide), decoded with
        ``model.decode``, and given to ``nelbo``, ``iwae_bound`` and the restoration tasks
        together with `Results.data`.

    Raises:
        LvmError: The folder is not a results folder, or the job has not finished (run the
            same command again to finish it).

    Example:
        ```python
        import lvmtoolkit as lvm

        results = lvm.load_results("out")
        x = results.data()
        print(lvm.nelbo(results.model, results.posterior, x).mean())
        ```
    """
    folder = ResultsFolder(path)
    manifest = folder.read_manifest()
    if manifest is None:
        raise LvmError(f"{folder.root} is not a results folder (no {MANIFEST})")
    if manifest.get("format") != FORMAT_VERSION:
        raise LvmError(f"{folder.root}: results format {manifest.get('format')} is not known")
    job = manifest["job"]
    if not folder.summary_path.is_file():
        done = sum(folder.shard_done(k, manifest["identity"]) for k in range(job["num_shards"]))
        raise LvmError(
            f"{folder.root}: the job has finished {done} of {job['num_shards']} shards; run "
            "the same command again to finish it"
        )
    summary = json.loads(folder.summary_path.read_text())
    if model is None:
        from lvmtoolkit.jobs.user_model import rebuild_model

        model = rebuild_model(job["model"], device)
    else:
        from lvmtoolkit.jobs.user_model import parameters_sha256

        if parameters_sha256(model) != job["model"]["parameters_sha256"]:
            raise LvmError(
                f"{folder.root}: the model passed has other parameters than the one the "
                "results were computed with"
            )
    table = list(iter_rows(folder, job["num_shards"]))
    result_posterior = None
    if posterior:
        shards = [folder.read_tensors(k) for k in range(job["num_shards"])]
        state = {name: torch.cat([s[name] for s in shards]) for name in shards[0]}
        result_posterior = build_posterior_skeleton(model, manifest["posterior"], len(table))
        try:
            result_posterior.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise LvmError(
                f"{folder.root}: saved posterior does not fit its family: {err}"
            ) from None
        result_posterior = result_posterior.to(device)
    return Results(manifest, summary, table, result_posterior, model, folder.root)
