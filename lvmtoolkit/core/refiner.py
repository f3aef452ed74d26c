"""The Refiner interface: (Model, x, starting Posterior) -> better Posterior + NELBO trace."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from lvmtoolkit.core.model import Model
from lvmtoolkit.core.options import parse_options
from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.core.validation import check_batch
from lvmtoolkit.errors import LvmError

__all__ = ["CheckpointCallback", "NoOptions", "RefineResult", "Refiner", "check_batch"]

CheckpointCallback = Callable[[int, Posterior], None]
"""Called as ``callback(step, posterior)`` with the posterior the refiner would return if it
stopped after ``step`` steps. The posterior may change after the call returns: use it at once."""


@dataclass
class NoOptions:
    """A refiner without options."""


@dataclass
class RefineResult:
    """What a refiner returns.

    Attributes:
        posterior: The refined posterior (for the same N datapoints, in order).
        trace: ``(steps, N)`` tensor: the NELBO estimate of each datapoint at each step,
            before that step's update (the objective the optimiser saw). Empty for 0 steps.
        steps: Number of optimisation steps taken.
        info: Refiner-specific extras (e.g. how many datapoints each checkpoint improved).
    """

    posterior: Posterior
    trace: torch.Tensor
    steps: int
    info: dict[str, Any] = field(default_factory=dict)


class Refiner:
    """Base class of refiners; subclasses set ``name``, ``options_class`` and :meth:`refine`.

    Args:
        **options: Values for the fields of ``options_class`` (strings are converted and
            validated, as given on the command line).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options_class: ClassVar[type] = NoOptions

    def __init__(self, **options: Any):
        self.options = parse_options(self.options_class, options)

    @classmethod
    def option_names(cls) -> set[str]:
        """Names of the options this refiner takes (e.g. to check for ``steps``)."""
        return {f.name for f in dataclasses.fields(cls.options_class)}

    def refine(
        self,
        model: Model,
        x: torch.Tensor,
        init: Posterior | None = None,
        mask: torch.Tensor | None = None,
        checkpoints: Sequence[int] = (),
        on_checkpoint: CheckpointCallback | None = None,
    ) -> RefineResult:
        """Refine the posterior of the datapoints ``x``.

        Args:
            model: The generative model; its parameters are not changed.
            x: Batch of shape ``(N, *model.data_shape)``.
            init: Posterior to start from; the model's amortized posterior by default.
            mask: Optional observed-pixel mask, as for ``Model.model``.
            checkpoints: Step counts at which ``on_checkpoint`` is called.
            on_checkpoint: See :data:`CheckpointCallback`.

        Returns:
            The refined posterior and the per-step, per-datapoint NELBO trace.
        """
        raise NotImplementedError

