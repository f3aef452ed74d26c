"""Restoration: observation models, methods that infer p(x | y), and their evaluation.

One idea per module:

- `observation_model`: the contract (`ObservationModel`: p(y | x) per pixel; p(y | z)
  and p(x | y, z) from a model's pixel likelihood) and ``NAME:KEY=VALUE`` parsing;
- `observations`: the built-in observation models (a default plugin of the core);
- `pixels`: per-pixel distributions (censored Gaussians, exact binary marginals, ...);
- `observed_model`: `ObservedModel`, any backend seen through an observation model;
- `restoration`: `restore`, the entry point, over the methods `conditional`,
  `importance`, `mwg` and `gibbs` (the paper's pseudo-Gibbs chain);
- `summary`: running posterior means, variances and samples;
- `corruption`: seeded masks and noise for evaluations; `evaluation`: the Table 3 report.

Names are loaded on first use, so the command line can read `lvmtoolkit.tasks.kinds`
without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    # restoration
    "Restoration": "lvmtoolkit.tasks.restoration",
    "restore": "lvmtoolkit.tasks.restoration",
    "restoration_refiner": "lvmtoolkit.tasks.restoration",
    "RESTORATION_REFINER_DEFAULTS": "lvmtoolkit.tasks.restoration",
    "METHOD_DEFAULTS": "lvmtoolkit.tasks.restoration",
    "conditional_nll_estimate": "lvmtoolkit.tasks.restoration",
    "METHODS": "lvmtoolkit.tasks.kinds",
    # observation models
    "ObservationModel": "lvmtoolkit.tasks.observation_model",
    "ObservationMismatch": "lvmtoolkit.tasks.observation_model",
    "Observed": "lvmtoolkit.tasks.observation_model",
    "parse_observation": "lvmtoolkit.tasks.observation_model",
    "ObservedModel": "lvmtoolkit.tasks.observed_model",
    "ObserveThrough": "lvmtoolkit.tasks.observed_model",
    "Missing": "lvmtoolkit.tasks.observations",
    "GaussianNoise": "lvmtoolkit.tasks.observations",
    "SaltPepper": "lvmtoolkit.tasks.observations",
    "BitFlip": "lvmtoolkit.tasks.observations",
    # the paper's pseudo-Gibbs chain
    "GIBBS_REFINER_DEFAULTS": "lvmtoolkit.tasks.gibbs",
    "GibbsResult": "lvmtoolkit.tasks.gibbs",
    "pseudo_gibbs": "lvmtoolkit.tasks.gibbs",
    "gibbs_refiner": "lvmtoolkit.tasks.gibbs",
    "denoise": "lvmtoolkit.tasks.gibbs",
    "inpaint": "lvmtoolkit.tasks.gibbs",
    # corruption and evaluation
    "add_noise": "lvmtoolkit.tasks.corruption",
    "make_mask": "lvmtoolkit.tasks.corruption",
    "MASK_KINDS": "lvmtoolkit.tasks.kinds",
    "NOISE_KINDS": "lvmtoolkit.tasks.kinds",
    "evaluate_task": "lvmtoolkit.tasks.evaluation",
    "evaluate_restoration": "lvmtoolkit.tasks.evaluation",
    "gibbs_refiners": "lvmtoolkit.tasks.evaluation",
    "restoration_refiners": "lvmtoolkit.tasks.evaluation",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lvmtoolkit.tasks' has no attribute {name!r}")
