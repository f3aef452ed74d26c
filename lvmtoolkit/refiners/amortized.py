"""The ``amortized`` refiner: the encoder's posterior, unchanged (the baseline)."""

from __future__ import annotations

import torch

from lvmtoolkit.core.refiner import RefineCall, Refiner, RefineResult


class AmortizedRefiner(Refiner):
    """Returns the starting posterior (the model's encoder by default); takes no steps."""

    name = "amortized"
    description = "the encoder's posterior q(z|x) as is: one network pass, no optimisation"

    def _refine(self, call: RefineCall) -> RefineResult:
        call.checkpoint(0, call.init)
        return RefineResult(call.init, torch.empty(0, call.x.shape[0]), steps=0)
