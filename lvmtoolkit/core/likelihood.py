"""Taking a pixel likelihood apart: the per-pixel distribution under its wrappers.

Backends build the distribution of the observed site in several ways: one distribution per
pixel, wrapped in ``Independent`` (the pixels as the event), sometimes in Pyro's
``MaskedDistribution`` (pixels left out of the likelihood), in either order. The direct
ELBO, observation models and the adapters all need the per-pixel distribution inside;
these functions are the one place that unwraps it.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch.distributions import Distribution, Independent

from lvmtoolkit.errors import LvmError


def peel_independent(fn: Distribution) -> tuple[Distribution, int]:
    """``fn`` without its ``Independent`` wrappers.

    Returns:
        ``(base, event_dims)``: the innermost distribution that is not an ``Independent``
        and how many batch dimensions the wrappers reinterpreted as the event.
    """
    event_dims = 0
    while isinstance(fn, Independent):
        event_dims += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, event_dims


def split_likelihood(fn: Distribution) -> tuple[Distribution, torch.Tensor | None, int]:
    """Take an observed site's distribution apart: per-pixel distribution, mask, event dims.

    Unwraps ``Independent`` (event dimensions) and Pyro's ``MaskedDistribution`` (pixels
    left out of the likelihood), in any order, as backends build them.

    Returns:
        ``(pixels, mask, event_dims)``: one distribution per pixel, the combined mask (None
        if none) and how many dimensions were reinterpreted as the event.

    Raises:
        LvmError: A wrapper this function does not know.
    """
    mask: torch.Tensor | None = None
    event_dims = 0
    while True:
        fn, peeled = peel_independent(fn)
        event_dims += peeled
        if isinstance(fn, dist.MaskedDistribution):
            inner = fn._mask
            if isinstance(inner, bool):
                inner = torch.tensor(inner)
            mask = inner if mask is None else mask & inner
            fn = fn.base_dist
        elif isinstance(fn, dist.ExpandedDistribution):
            raise LvmError(
                "the observed site's distribution is an expanded distribution; give the "
                "pixel likelihood its full batch shape (N, *data_shape)"
            )
        else:
            return fn, mask, event_dims
