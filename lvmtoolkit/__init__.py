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
    LvmError,
    OptionError,
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
    "GaussianParams": "lvmtoolkit.core",
    "Refiner": "lvmtoolkit.core",
    "RefineResult": "lvmtoolkit.core",
    "DATA_PLATE": "lvmtoolkit.core",
    "DetachedScore": "lvmtoolkit.core",
    "per_datapoint_elbo": "lvmtoolkit.core",
    "save_checkpoint": "lvmtoolkit.core",
    "load_checkpoint": "lvmtoolkit.core",
    "read_checkpoint_info": "lvmtoolkit.core",
    "option": "lvmtoolkit.core",
    "parse_options": "lvmtoolkit.core",
    "train": "lvmtoolkit.core",
    # data, metrics, refiners
    "Dataset": "lvmtoolkit.data",
    "ImageData": "lvmtoolkit.data",
    "binarize_fixed": "lvmtoolkit.data",
    "binarize_dynamic": "lvmtoolkit.data",
    "nelbo": "lvmtoolkit.metrics",
    "SVIRefiner": "lvmtoolkit.refiners",
    "AmortizedRefiner": "lvmtoolkit.refiners",
    "PaperSVIRefiner": "lvmtoolkit.refiners",
    "SVIFlowRefiner": "lvmtoolkit.refiners",
    # adapters: bring your own VAE
    "TorchVAE": "lvmtoolkit.adapters",
    "PyroVAE": "lvmtoolkit.adapters",
    "AdapterError": "lvmtoolkit.adapters",
    # tasks: Gibbs inpainting and denoising; their metrics
    "inpaint": "lvmtoolkit.tasks",
    "denoise": "lvmtoolkit.tasks",
    "GibbsResult": "lvmtoolkit.tasks",
    "gibbs_refiner": "lvmtoolkit.tasks",
    "ssim": "lvmtoolkit.metrics.ssim",
    "fid": "lvmtoolkit.metrics.fid",
    # registries
    "get_backend": "lvmtoolkit.plugins",
    "get_refiner": "lvmtoolkit.plugins",
    "get_dataset": "lvmtoolkit.plugins",
    "load_plugins": "lvmtoolkit.plugins",
}

__all__ = [
    "CheckpointError",
    "DataError",
    "LvmError",
    "OptionError",
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
