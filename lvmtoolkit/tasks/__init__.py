"""Tasks that use a model and its (refined) posterior: Gibbs inpainting and denoising.

Names are loaded on first use, so the command line can read the corruption kinds
(:mod:`lvmtoolkit.tasks.kinds`) without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "GIBBS_REFINER_DEFAULTS": "lvmtoolkit.tasks.gibbs",
    "GibbsResult": "lvmtoolkit.tasks.gibbs",
    "denoise": "lvmtoolkit.tasks.gibbs",
    "gibbs_refiner": "lvmtoolkit.tasks.gibbs",
    "inpaint": "lvmtoolkit.tasks.gibbs",
    "add_noise": "lvmtoolkit.tasks.corruption",
    "make_mask": "lvmtoolkit.tasks.corruption",
    "MASK_KINDS": "lvmtoolkit.tasks.kinds",
    "NOISE_KINDS": "lvmtoolkit.tasks.kinds",
    "evaluate_task": "lvmtoolkit.tasks.evaluation",
    "gibbs_refiners": "lvmtoolkit.tasks.evaluation",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lvmtoolkit.tasks' has no attribute {name!r}")
