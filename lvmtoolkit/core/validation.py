"""Checks of what users pass to the library: batches, masks and memory requests.

Every public entry point that takes data (refiners, ``nelbo``, ``iwae_bound``, the tasks)
runs `check_batch` first, so bad input ends in an
`LvmError` that names the problem instead of a torch error
or, worse, a wrong number.

Grey values and Bernoulli models: a model whose likelihood is over binary pixels
(``binary_data = True``) scores a grey value ``x`` in (0, 1) as a cross-entropy, which is
not a log-likelihood; a NELBO computed so is not comparable with any published one. The
library therefore **refuses** grey values for such models and says how to binarise
(``lvmtoolkit.binarize_fixed(x)``). It never binarises behind the caller's back. The one
exception is the restoration tasks (Gibbs inpainting and denoising), which refine the
posterior towards soft targets on purpose (the chain's mean fill); they run under
`soft_targets`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

from lvmtoolkit.core.model import Model
from lvmtoolkit.errors import LvmError

__all__ = ["check_allocation", "check_batch", "soft_targets"]

_SOFT_TARGETS = contextvars.ContextVar("lvmtoolkit_soft_targets", default=False)
_F = TypeVar("_F", bound=Callable[..., Any])


@contextlib.contextmanager
def _soft_targets_block() -> Iterator[None]:
    token = _SOFT_TARGETS.set(True)
    try:
        yield
    finally:
        _SOFT_TARGETS.reset(token)


def soft_targets(fn: _F) -> _F:
    """Decorate a task that feeds grey values in [0, 1] to Bernoulli models on purpose.

    Inside the call, `check_batch` accepts grey
    values for models with ``binary_data = True`` (values outside [0, 1] stay refused).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _soft_targets_block():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _model_dtype(model: Model) -> torch.dtype:
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def check_batch(model: Model, x: Any, mask: Any = None) -> None:
    """Raise a clear `LvmError` when ``x`` or ``mask`` does not fit.

    Checks, in order: ``x`` is a torch tensor (not a NumPy array or list), of a floating
    dtype equal to the model's (float32 for every built-in model: integer images and
    float64 arrays are refused with what to pass instead), on the model's device, of shape
    ``(N, *model.data_shape)`` with N >= 1, finite, and, for a model with a Bernoulli
    likelihood (``binary_data``), in [0, 1] and binary (see the module docs for the one
    exception). A ``mask`` must be a boolean tensor of ``x``'s shape, or of
    ``data_shape`` (one mask shared by all rows), on the same device.

    Args:
        model: The model the batch is for.
        x: The batch.
        mask: Optional observed-pixel mask (True: observed).

    Raises:
        LvmError: The first problem found, naming it and what to pass instead.
    """
    if not isinstance(x, torch.Tensor):
        hint = (
            "torch.from_numpy(x).float()"
            if type(x).__module__.split(".")[0] == "numpy"
            else "torch.as_tensor(x, dtype=torch.float32)"
        )
        raise LvmError(f"x must be a torch.Tensor, got {type(x).__name__}; pass {hint}")
    dtype = _model_dtype(model)
    if x.dtype != dtype:
        if x.is_floating_point():
            hint = "x.float()" if dtype == torch.float32 else f"x.to({dtype})"
        else:
            hint = "x.float() / 255 for 8-bit images" if x.dtype == torch.uint8 else "x.float()"
        raise LvmError(f"x has dtype {x.dtype}, the model computes in {dtype}; pass {hint}")
    data_shape = tuple(model.data_shape)
    if x.dim() != len(data_shape) + 1 or tuple(x.shape[1:]) != data_shape:
        raise LvmError(
            f"x has shape {tuple(x.shape)}; the {model.name or type(model).__name__} model "
            f"expects (N, {', '.join(map(str, data_shape))})"
        )
    if x.shape[0] == 0:
        raise LvmError("x is an empty batch (0 datapoints)")
    device = model.device
    if x.device != device and any(True for _ in model.parameters()):
        raise LvmError(f"x is on {x.device}, the model on {device}; pass x.to({str(device)!r})")
    if not bool(torch.isfinite(x).all()):
        raise LvmError("x contains non-finite values (NaN or inf)")
    if getattr(model, "binary_data", False):
        low, high = float(x.min()), float(x.max())
        if low < 0.0 or high > 1.0:
            raise LvmError(
                f"x has values in [{low:.4g}, {high:.4g}]; the model's likelihood is over "
                "binary pixels and needs values in [0, 1]"
            )
        if not _SOFT_TARGETS.get() and bool(((x > 0) & (x < 1)).any()):
            raise LvmError(
                "x holds grey values, but the model's likelihood is Bernoulli "
                "(binary_data): its NELBO would be a cross-entropy, not a log-likelihood. "
                "Binarise first: lvmtoolkit.binarize_fixed(x)"
            )
    if mask is not None:
        _check_mask(mask, x)


def _check_mask(mask: Any, x: torch.Tensor) -> None:
    if not isinstance(mask, torch.Tensor):
        raise LvmError(f"mask must be a boolean torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise LvmError(f"mask has dtype {mask.dtype}; pass a boolean mask (mask.bool())")
    if mask.device != x.device:
        raise LvmError(f"mask is on {mask.device}, x on {x.device}")
    shared = tuple(mask.shape) == tuple(x.shape[1:])
    if tuple(mask.shape) != tuple(x.shape) and not shared:
        raise LvmError(
            f"mask has shape {tuple(mask.shape)}; expected x's shape {tuple(x.shape)} or one "
            f"datapoint's {tuple(x.shape[1:])} (shared by all rows)"
        )


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_allocation(shape: tuple[int, ...], dtype: torch.dtype, what: str) -> None:
    """Refuse, before allocating, a tensor larger than this machine's memory.

    An absurd request (``--steps 1000000000000`` makes a 16 TB trace) then ends in an
    error that says what was asked for, instead of an allocator failure or swapping.

    Args:
        shape: Shape of the tensor about to be allocated.
        dtype: Its dtype.
        what: What it is, for the message (e.g. ``"the NELBO trace of 1e12 steps x 100
            datapoints"``).

    Raises:
        LvmError: The tensor would take more bytes than the machine's physical memory.
    """
    count = 1
    for size in shape:
        count *= int(size)
    needed = count * torch.empty((), dtype=dtype).element_size()
    limit = _memory_bytes()
    if limit is not None and needed > limit:
        raise LvmError(
            f"{what} would take {needed / 2**30:,.1f} GiB, more than this machine's "
            f"{limit / 2**30:,.1f} GiB of memory"
        )
