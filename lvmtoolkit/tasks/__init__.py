"""Restoration: observation models, methods that infer p(x | y), and their evaluation.

Five modules, each one idea, importing one way (each only from those above it):

- `observations`: observation models p(y | x): the contract (`ObservationModel`), the
  per-pixel distributions they give, seeded corruptions (`make_mask`, `add_noise`) and the
  built-in models (a default plugin of the core). A new noise model goes here, or in a
  plugin of its own.
- `observed_model`: `ObservedModel`, any backend seen through an observation model:
  the model p(y | z) that every refiner refines q(z | y) under.
- `gibbs`: the paper's pseudo-Gibbs chain (the baseline).
- `restoration`: `restore`, the entry point, and its methods ``conditional``,
  ``importance`` and ``mwg``.
- `evaluation`: Table 3, restoration scored by SSIM, FID and conditional NLL.

This module names the kinds and methods (`MASK_KINDS`, `NOISE_KINDS`, `METHODS`) without
importing torch, so command-line help can list them; every other name is loaded on first
use.
"""

from __future__ import annotations

import importlib
from typing import Any

MASK_KINDS: dict[str, str] = {
    "centre": "the centre square of half the height and width is missing",
    "half": "the bottom half is missing",
    "random": "each pixel is missing with probability 0.5, independently",
}
"""Masks of `make_mask` and the ``missing`` model's ``region``."""
NOISE_KINDS: dict[str, str] = {
    "gaussian": "x + N(0, 0.5) (variance 0.5, as in the paper), clipped to [0, 1]",
    "salt-pepper": "20% of the pixels, chosen at random, set to 0 or 1 with equal odds",
}
"""Noise kinds of `add_noise`."""
METHODS: dict[str, str] = {
    "conditional": "refine q(z | y) under p(y | z); the result is E[x | y] averaged over q",
    "importance": "self-normalised importance sampling with the refined q as proposal "
    "(mean: single imputation; samples: importance resampling)",
    "mwg": "Metropolis-within-Gibbs with the refined q as proposal (asymptotically exact)",
    "pseudo-gibbs": "the paper's chain: refine q(z | x') on the whole current image, "
    "redraw the unknown pixels, repeat (no noise model; the baseline)",
}
"""Restoration methods of `lvmtoolkit.restore` and ``lvm inpaint|denoise --method``."""

_OBSERVATIONS = "lvmtoolkit.tasks.observations"
_RESTORATION = "lvmtoolkit.tasks.restoration"
_GIBBS = "lvmtoolkit.tasks.gibbs"
_EVALUATION = "lvmtoolkit.tasks.evaluation"
_LAZY = {
    # observation models
    "ObservationModel": _OBSERVATIONS,
    "ObservationMismatch": _OBSERVATIONS,
    "Observed": _OBSERVATIONS,
    "parse_observation": _OBSERVATIONS,
    "Missing": _OBSERVATIONS,
    "GaussianNoise": _OBSERVATIONS,
    "SaltPepper": _OBSERVATIONS,
    "BitFlip": _OBSERVATIONS,
    "add_noise": _OBSERVATIONS,
    "make_mask": _OBSERVATIONS,
    "ObservedModel": "lvmtoolkit.tasks.observed_model",
    "ObserveThrough": "lvmtoolkit.tasks.observed_model",
    # restoration
    "Restoration": _RESTORATION,
    "restore": _RESTORATION,
    "restoration_refiner": _RESTORATION,
    "RESTORATION_REFINER_DEFAULTS": _RESTORATION,
    "METHOD_DEFAULTS": _RESTORATION,
    "conditional_nll_estimate": _RESTORATION,
    "PixelSummary": _RESTORATION,
    # the paper's pseudo-Gibbs chain
    "GIBBS_REFINER_DEFAULTS": _GIBBS,
    "GibbsResult": _GIBBS,
    "pseudo_gibbs": _GIBBS,
    "gibbs_refiner": _GIBBS,
    "denoise": _GIBBS,
    "inpaint": _GIBBS,
    # evaluation
    "evaluate_task": _EVALUATION,
    "evaluate_restoration": _EVALUATION,
    "gibbs_refiners": _EVALUATION,
    "restoration_refiners": _EVALUATION,
}

__all__ = sorted([*_LAZY, "MASK_KINDS", "METHODS", "NOISE_KINDS"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lvmtoolkit.tasks' has no attribute {name!r}")
