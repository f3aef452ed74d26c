"""What the library's measurements return: numbers together with how they were measured.

Every report function (:func:`~lvmtoolkit.metrics.refinement_report`,
:func:`~lvmtoolkit.metrics.gaps_report`, :func:`~lvmtoolkit.tasks.evaluate_task`) returns a
:class:`Report`. Its ``protocol`` says everything a reader needs to reproduce or compare the
numbers (samples per estimate, seeds, binarisation, which images), so a Python caller gets
what ``lvm ... --json`` prints, and the CLI only renders it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

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
    """Non-JSON by-products (e.g. images kept for a figure); not part of :meth:`to_dict`."""

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
    """How :meth:`Model.evaluation_data` prepares images for ``model``, in words."""
    if model.binary_data:
        return f"fixed Bernoulli draw, seed {EVAL_BINARIZATION_SEED}"
    return "none (grey levels)"
