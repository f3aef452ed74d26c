"""Core interfaces on Pyro: Model, Posterior, Refiner; ELBO, checkpoints, training."""

from lvmtoolkit.core.checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint
from lvmtoolkit.core.elbo import DATA_PLATE, DetachedScore, per_datapoint_elbo
from lvmtoolkit.core.model import Model, config_from_dict, model_elbo
from lvmtoolkit.core.nelbo import nelbo
from lvmtoolkit.core.options import describe_options, option, parse_options
from lvmtoolkit.core.posterior import (
    AmortizedGaussianPosterior,
    GaussianParams,
    GaussianPosterior,
    LocalGaussianPosterior,
    LocalPosterior,
    LocalRows,
    Posterior,
)
from lvmtoolkit.core.refiner import CheckpointCallback, RefineCall, Refiner, RefineResult
from lvmtoolkit.core.runtime import (
    eval_mode,
    frozen,
    resolve_device,
    seeded,
    set_threads,
    stream_seed,
    take_rows,
)
from lvmtoolkit.core.training import train

__all__ = [
    "DATA_PLATE",
    "AmortizedGaussianPosterior",
    "CheckpointCallback",
    "DetachedScore",
    "GaussianParams",
    "GaussianPosterior",
    "LocalGaussianPosterior",
    "LocalPosterior",
    "LocalRows",
    "Model",
    "Posterior",
    "RefineCall",
    "RefineResult",
    "Refiner",
    "config_from_dict",
    "describe_options",
    "eval_mode",
    "frozen",
    "load_checkpoint",
    "model_elbo",
    "nelbo",
    "option",
    "parse_options",
    "per_datapoint_elbo",
    "read_checkpoint_info",
    "resolve_device",
    "save_checkpoint",
    "seeded",
    "set_threads",
    "stream_seed",
    "take_rows",
    "train",
]
