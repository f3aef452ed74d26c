"""lvmtoolkit: measure and improve inference in pretrained latent variable models.

The public API is importable from here. Names are loaded on first use, so importing the
package (and running ``lvm --help``) does not pay for importing torch and Pyro.
"""

from __future__ import annotations

import importlib
from typing import Any

from lvmtoolkit.errors import (
    CheckpointError,
    DataError,
    ImageError,
    LvmError,
    MetricError,
    OptionError,
    RefinerMismatch,
    UnknownNameError,
)
from lvmtoolkit.hookspecs import hookimpl

__version__ = "0.1.0"

_LAZY = {
    # core
    "Model": "lvmtoolkit.core",
    "Posterior": "lvmtoolkit.core",
    "GaussianPosterior": "lvmtoolkit.core",
    "AmortizedGaussianPosterior": "lvmtoolkit.core",
    "LocalGaussianPosterior": "lvmtoolkit.core",
    "LocalPosterior": "lvmtoolkit.core",
    "CheckpointCallback": "lvmtoolkit.core",
    "RefineCall": "lvmtoolkit.core",
    "model_elbo": "lvmtoolkit.core",
    "nelbo": "lvmtoolkit.core",
    "eval_mode": "lvmtoolkit.core",
    "frozen": "lvmtoolkit.core",
    "seeded": "lvmtoolkit.core",
    "stream_seed": "lvmtoolkit.core",
    "take_rows": "lvmtoolkit.core",
    "GaussianParams": "lvmtoolkit.core",
    "Refiner": "lvmtoolkit.core",
    "RefineResult": "lvmtoolkit.core",
    "DATA_PLATE": "lvmtoolkit.core",
    "LocalRows": "lvmtoolkit.core",
    "config_from_dict": "lvmtoolkit.core",
    "describe_options": "lvmtoolkit.core",
    "resolve_device": "lvmtoolkit.core",
    "check_batch": "lvmtoolkit.core.validation",
    "DetachedScore": "lvmtoolkit.core",
    "per_datapoint_elbo": "lvmtoolkit.core",
    "save_checkpoint": "lvmtoolkit.core",
    "load_checkpoint": "lvmtoolkit.plugins",
    "read_checkpoint_info": "lvmtoolkit.core",
    "option": "lvmtoolkit.core",
    "parse_options": "lvmtoolkit.core",
    "train": "lvmtoolkit.core",
    # data, metrics, refiners
    "Dataset": "lvmtoolkit.data",
    "ImageData": "lvmtoolkit.data",
    "binarize_fixed": "lvmtoolkit.data",
    "binarize_dynamic": "lvmtoolkit.data",
    "nelbo_after_steps": "lvmtoolkit.metrics",
    "iwae_bound": "lvmtoolkit.metrics",
    "gap_report": "lvmtoolkit.metrics",
    "AISSchedule": "lvmtoolkit.metrics",
    "ais_log_px": "lvmtoolkit.metrics",
    "bdmc": "lvmtoolkit.metrics",
    "EVAL_BINARIZATION_SEED": "lvmtoolkit.data",
    "ConvergenceRule": "lvmtoolkit.metrics",
    "Report": "lvmtoolkit.metrics",
    "refinement_report": "lvmtoolkit.metrics",
    "gaps_report": "lvmtoolkit.metrics",
    "SVIRefiner": "lvmtoolkit.refiners",
    "AmortizedRefiner": "lvmtoolkit.refiners",
    "LocalFlowPosterior": "lvmtoolkit.refiners",
    "make_local_posterior": "lvmtoolkit.refiners",
    # flows: building blocks of posteriors with normalizing flows (backends use them)
    "GaussianFlow": "lvmtoolkit.flows",
    "AffineAutoregressive": "lvmtoolkit.flows",
    "AutoregressiveConvCell": "lvmtoolkit.flows",
    "BatchedAutoregressiveCell": "lvmtoolkit.flows",
    "PaperSVIRefiner": "lvmtoolkit.refiners",
    "SVIFlowRefiner": "lvmtoolkit.refiners",
    # adapters: bring your own VAE
    "TorchVAE": "lvmtoolkit.adapters",
    "PyroVAE": "lvmtoolkit.adapters",
    "AdapterError": "lvmtoolkit.adapters",
    # tasks: restoration (observation models, methods, evaluation); the paper's chain
    "restore": "lvmtoolkit.tasks",
    "Restoration": "lvmtoolkit.tasks",
    "restoration_refiner": "lvmtoolkit.tasks",
    "ObservationModel": "lvmtoolkit.tasks",
    "ObservationMismatch": "lvmtoolkit.tasks",
    "Observed": "lvmtoolkit.tasks",
    "ObservedModel": "lvmtoolkit.tasks",
    "ObserveThrough": "lvmtoolkit.tasks",
    "parse_observation": "lvmtoolkit.tasks",
    "evaluate_restoration": "lvmtoolkit.tasks",
    "conditional_log_likelihood": "lvmtoolkit.metrics.conditional",
    "weighted_latents": "lvmtoolkit.metrics.conditional",
    "pseudo_gibbs": "lvmtoolkit.tasks",
    "inpaint": "lvmtoolkit.tasks",
    "denoise": "lvmtoolkit.tasks",
    "GibbsResult": "lvmtoolkit.tasks",
    "gibbs_refiner": "lvmtoolkit.tasks",
    "evaluate_task": "lvmtoolkit.tasks",
    "add_noise": "lvmtoolkit.tasks",
    "make_mask": "lvmtoolkit.tasks",
    "ssim": "lvmtoolkit.metrics.ssim",
    "load_results": "lvmtoolkit.jobs",
    "IntegrityError": "lvmtoolkit.jobs",
    "fid": "lvmtoolkit.metrics.fid",
    # registries
    "get_backend": "lvmtoolkit.plugins",
    "get_refiner": "lvmtoolkit.plugins",
    "get_dataset": "lvmtoolkit.plugins",
    "get_observation": "lvmtoolkit.plugins",
    "load_plugins": "lvmtoolkit.plugins",
    "broken_plugins": "lvmtoolkit.plugins",
    "plugin_info": "lvmtoolkit.plugins",
    "installed_version": "lvmtoolkit.plugins",
}

__all__ = [
    "CheckpointError",
    "DataError",
    "ImageError",
    "LvmError",
    "MetricError",
    "OptionError",
    "RefinerMismatch",
    "UnknownNameError",
    "__version__",
    "hookimpl",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lvmtoolkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    # Lazy names are public too: list them for dir(), completion and documentation tools.
    return sorted(set(globals()) | set(__all__))
