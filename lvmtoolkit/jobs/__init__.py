"""Jobs: your data and your model in, per-datapoint results out, in resumable shards.

- `sources`: ``--data`` (image folders, arrays, tensor files,
  IDX files, registered datasets), read by row range.
- `user_model`: ``--model file.py:function`` and model identities.
- `runner`: the refine job (shards, resume, torchrun ranks, progress).
- `folder`: the results folder on disk (layout, atomic writes, shard checksums, the lock).
- `results`: `load_results`, which reads a results folder back, checked.
"""

from __future__ import annotations

from lvmtoolkit.jobs.distributed import World, join_world
from lvmtoolkit.jobs.folder import IntegrityError, OutputLock, ResultsFolder
from lvmtoolkit.jobs.results import Results, load_results
from lvmtoolkit.jobs.runner import RefineJob, Summary, run_refine_job
from lvmtoolkit.jobs.sources import (
    ArraySource,
    ConcatSource,
    DatasetSource,
    DataSource,
    ImageFolderSource,
    open_data,
    open_source,
)
from lvmtoolkit.jobs.user_model import load_user_model, parameters_sha256, resolve_model

__all__ = [
    "ArraySource",
    "ConcatSource",
    "DataSource",
    "DatasetSource",
    "ImageFolderSource",
    "IntegrityError",
    "OutputLock",
    "RefineJob",
    "Results",
    "ResultsFolder",
    "Summary",
    "World",
    "join_world",
    "load_results",
    "load_user_model",
    "open_data",
    "open_source",
    "parameters_sha256",
    "resolve_model",
    "run_refine_job",
]
