"""What the library's measurements return: numbers together with how they were measured.

Every report function (`refinement_report`,
`gaps_report`, `evaluate_task`) returns a
`Report`. Its ``protocol`` says everything a reader needs to reproduce or compare the
numbers (samples per estimate, seeds, binarisation, which images), so a Python caller gets
what ``lvm ... --json`` prints, and the CLI only renders it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lvmtoolkit.data import EVAL_BINARIZATION_SEED


@dataclass
class Report:
    """Results of one measurement and the protocol they were measured under.

    Attributes:
        kind: What was measured: ``"refinement"``, ``"gaps"``, ``"inpaint"``, ``"denoise"``.
        models: Model (backend) names measured.
        refiners: Refiner name -> its options (JSON-ready values).
        protocol: How the numbers were obtained (estimators, samples, seeds, binarisation,
            images).
        results: The numbers, JSON-ready (nested dicts of floats, ints and strings).
    """

    kind: str
    models: list[str]
    refiners: dict[str, dict[str, Any]]
    protocol: dict[str, Any]
    results: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)
    """Non-JSON by-products (e.g. images kept for a figure); not part of `to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data (what ``--json`` prints, before context)."""
        return {
            "kind": self.kind,
            "models": list(self.models),
            "refiners": self.refiners,
            "protocol": self.protocol,
            "results": self.results,
        }


def options_of(refiner: Any) -> dict[str, Any]:
    """A refiner's options as JSON-ready values (strings for anything not a scalar)."""
    values = {f.name: getattr(refiner.options, f.name) for f in dataclasses.fields(refiner.options)}
    return {
        k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
        for k, v in values.items()
    }


def binarization_of(model: Any) -> str:
    """How `Model.evaluation_data` prepares images for ``model``, in words."""
    if model.binary_data:
        return f"fixed Bernoulli draw, seed {EVAL_BINARIZATION_SEED}"
    return "none (grey levels)"


def per_split(
    model: Any,
    splits: Mapping[str, torch.Tensor],
    measure: Callable[[torch.Tensor, Callable[[str], None] | None], Any],
    log: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """``{split: measure(x, log_line)}`` with each split's images prepared for ``model``
    (`Model.evaluation_data`, on its device) and ``log_line`` prefixed by the split."""
    results = {}
    for split, images in splits.items():
        x = model.evaluation_data(images).to(model.device)
        say = None if log is None else lambda line, split=split: log(split, line)
        results[split] = measure(x, say)
    return results
