"""The ``amortized`` refiner: the encoder's posterior, unchanged (the baseline)."""

from __future__ import annotations

import torch

from lvmtoolkit.core.model import Model
from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.core.refiner import CheckpointCallback, Refiner, RefineResult


class AmortizedRefiner(Refiner):
    """Returns the starting posterior (the model's encoder by default); takes no steps."""

    name = "amortized"
    description = "the encoder's posterior q(z|x) as is: one network pass, no optimisation"

    def _refine(
        self,
        model: Model,
        x: torch.Tensor,
        init: Posterior,
        mask: torch.Tensor | None,
        checkpoints: list[int],
        on_checkpoint: CheckpointCallback | None,
    ) -> RefineResult:
        if on_checkpoint is not None and checkpoints == [0]:
            on_checkpoint(0, init)
        return RefineResult(init, torch.empty(0, x.shape[0]), steps=0)
