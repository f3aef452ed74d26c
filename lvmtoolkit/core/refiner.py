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

__all__ = [
    "CheckpointCallback",
    "NoOptions",
    "RefineCall",
    "RefineResult",
    "Refiner",
    "check_batch",
]

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
    """Base class of refiners: a template method, as Pyro's ELBO is.

    The public `refine` does what every refiner needs (validates the batch and the
    mask, resolves ``init`` to the model's amortized posterior and checks it serves the
    batch, keeps only the checkpoints the run reaches) and then calls `_refine`, the
    one method a subclass implements. Subclasses set ``name``, ``description``,
    ``options_class`` and, if they take optimisation steps (an option ``steps``),
    ``iterative = True``.

    Args:
        **options: Values for the fields of ``options_class`` (strings are converted and
            validated, as given on the command line).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options_class: ClassVar[type] = NoOptions
    iterative: ClassVar[bool] = False
    """Whether the refiner takes optimisation steps, set by its ``steps`` option (callers
    read this flag, never probe the options). A non-iterative refiner returns its result
    after "0 steps"."""

    def __init__(self, **options: Any):
        self.options = parse_options(self.options_class, options)
        if self.iterative and "steps" not in self.option_names():
            raise LvmError(f"refiner {self.name!r} is iterative but has no 'steps' option")

    @classmethod
    def option_names(cls) -> set[str]:
        """Names of the options this refiner takes."""
        return {f.name for f in dataclasses.fields(cls.options_class)}

    @property
    def steps(self) -> int:
        """Steps a run takes: the ``steps`` option of an iterative refiner, else 0."""
        return int(self.options.steps) if self.iterative else 0

    def with_options(self, **changes: Any) -> Refiner:
        """A new refiner of the same class with some options changed, validated again.

        Raises:
            OptionError: An unknown option or an invalid value.
        """
        values = {f.name: getattr(self.options, f.name) for f in dataclasses.fields(self.options)}
        return type(self)(**{**values, **changes})

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
            init: Posterior to start from (for these N datapoints, if it is per datapoint);
                the model's amortized posterior by default.
            mask: Optional observed-pixel mask, as for ``Model.model``.
            checkpoints: Step counts at which ``on_checkpoint`` is called; those outside
                ``0..steps`` are never reached and are dropped.
            on_checkpoint: See `CheckpointCallback`; called once per kept checkpoint,
                in increasing order.

        Returns:
            The refined posterior and the per-step, per-datapoint NELBO trace.

        Raises:
            LvmError: A batch, mask or starting posterior that does not fit the model.
        """
        check_batch(model, x, mask)
        if init is None:
            init = model.amortized_posterior()
        init.check_batch_size(x.shape[0])
        reached = sorted({int(s) for s in checkpoints if 0 <= int(s) <= self.steps})
        return self._refine(RefineCall(model, x, init, mask, reached, on_checkpoint))

    def _refine(self, call: RefineCall) -> RefineResult:
        """The refiner's own work on a validated call (see `refine` and `RefineCall`)."""
        raise NotImplementedError


@dataclass
class RefineCall:
    """One call of `Refiner.refine`, validated, as `Refiner._refine` receives it.

    Attributes:
        model: The generative model (``x`` fits its ``data_shape``).
        x: The batch, ``(N, *model.data_shape)``, finite.
        init: The starting posterior; it serves these N datapoints.
        mask: The observed-pixel mask, or None.
        checkpoints: Sorted, distinct step counts within ``0..steps`` at which the caller
            wants the posterior; pass each through `checkpoint`.
        on_checkpoint: The caller's callback (None: nobody listens).
    """

    model: Model
    x: torch.Tensor
    init: Posterior
    mask: torch.Tensor | None
    checkpoints: list[int]
    on_checkpoint: CheckpointCallback | None = None

    def checkpoint(self, step: int, posterior: Posterior) -> None:
        """Give the caller ``posterior`` as the result after ``step`` steps, if it asked."""
        if self.on_checkpoint is not None and step in self.checkpoints:
            self.on_checkpoint(step, posterior)
