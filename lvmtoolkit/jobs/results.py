"""Reading a results folder back: `load_results` and `Results`.

The folder's layout, formats and checks live in `lvmtoolkit.jobs.folder`; every file
`load_results` reads is checked against the size and SHA-256 the manifest records (and the
shards against the job the manifest names), so a truncated, altered or foreign file is a
one-line `IntegrityError`, never a wrong number.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lvmtoolkit.core.model import Model
from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.errors import LvmError
from lvmtoolkit.jobs.folder import (
    FORMAT_VERSION,
    LEGACY_FORMATS,
    MANIFEST,
    IntegrityError,
    ResultsFolder,
)

__all__ = [
    "FORMAT_VERSION",
    "IntegrityError",
    "Results",
    "ResultsFolder",
    "load_results",
]


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
        from lvmtoolkit.jobs.sources import open_source_from_manifest

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
        IntegrityError: A file it reads (the manifest, the summary, a shard's table or
            tensors) is missing, truncated, altered since the job wrote it, or a shard of
            another job; the one-line message names the file and what to do.
        LvmError: The folder is not a results folder, was written by an older version
            without checksums, or the job has not finished (run the same command again to
            finish it).

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
    if manifest.get("format") in LEGACY_FORMATS:
        raise LvmError(
            f"{folder.root}: written by an older lvmtoolkit (results format "
            f"{manifest['format']}), which recorded no checksums, so its shards cannot be "
            "checked; run the same command again to recompute them"
        )
    if manifest.get("format") != FORMAT_VERSION:
        raise LvmError(f"{folder.root}: results format {manifest.get('format')} is not known")
    job, identity = manifest["job"], manifest["identity"]
    if not folder.summary_path.is_file():
        done = sum(folder.shard_done(k, identity) for k in range(job["num_shards"]))
        raise LvmError(
            f"{folder.root}: the job has finished {done} of {job['num_shards']} shards; run "
            "the same command again to finish it"
        )
    records = folder.shard_records(manifest)
    summary = folder.read_checked_summary(manifest)
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
    table = [
        row
        for k, record in enumerate(records)
        for row in folder.read_checked_table(k, record, identity)
    ]
    result_posterior = None
    if posterior:
        shards = [folder.read_checked_tensors(k, r, identity) for k, r in enumerate(records)]
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
