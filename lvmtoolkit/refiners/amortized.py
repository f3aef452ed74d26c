"""The ``amortized`` refiner: the encoder's posterior, unchanged (the baseline)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lvmtoolkit.core.model import Model
from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.core.refiner import CheckpointCallback, Refiner, RefineResult, check_batch


class AmortizedRefiner(Refiner):
    """Returns the starting posterior (the model's encoder by default); takes no steps."""

    name = "amortized"
    description = "the encoder's posterior q(z|x) as is: one network pass, no optimisation"

    def refine(
        self,
        model: Model,
        x: torch.Tensor,
        init: Posterior | None = None,
        mask: torch.Tensor | None = None,
        checkpoints: Sequence[int] = (),
        on_checkpoint: CheckpointCallback | None = None,
    ) -> RefineResult:
        check_batch(model, x)
        posterior = init if init is not None else model.amortized_posterior()
        return RefineResult(posterior, torch.empty(0, x.shape[0]), steps=0)
