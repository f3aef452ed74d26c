"""Checks of what users pass to the library: batches, masks, posteriors' batch sizes.

Every public entry point that takes data (refiners, nelbo, iwae_bound, the tasks) runs
these first, so bad input ends in an :class:`~lvmtoolkit.errors.LvmError` that names the
problem instead of a torch error or, worse, a wrong number.
"""

from __future__ import annotations

import torch

from lvmtoolkit.core.model import Model
from lvmtoolkit.errors import LvmError


def check_batch(model: Model, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    """Raise a clear error when ``x`` has the wrong datapoint shape or non-finite values."""
    if tuple(x.shape[1:]) != tuple(model.data_shape):
        raise LvmError(
            f"batch has datapoints of shape {tuple(x.shape[1:])}, the {model.name} model "
            f"expects {tuple(model.data_shape)}"
        )
    if not torch.isfinite(x).all():
        raise LvmError("batch contains non-finite values (NaN or inf)")
