"""Small execution helpers shared by refiners, metrics and training."""

from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
from collections.abc import Iterator

import torch
from torch import nn

from lvmtoolkit.errors import LvmError


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; afterwards every submodule is back in its own mode.

    Each module's mode is restored on its own, not by ``module.train(was_training)``, which
    would hand the root's mode to every submodule. That matters for wrappers: a new
    ``nn.Module`` starts in training mode, so a wrapper built around a model in eval mode
    would otherwise leave the model training (batch norm on batch statistics, its running
    statistics updated, dropout on) after the first block.
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients inside the block; both restored afterwards,
    module by module and parameter by parameter (see `eval_mode`)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    with eval_mode(module):
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            yield module
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block with torch's RNG seeded, leaving the caller's RNG state untouched."""
    if seed is None:
        yield
        return
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def stream_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose's noise, derived from a user's ``seed``.

    Optimising a posterior on one stream of noise and scoring it on the same stream
    measures how well it fits those draws, not the posterior: a per-datapoint flow with
    thousands of weights fits them well enough to look several nats better than it is. A
    refiner therefore draws its optimisation and its selection noise from streams derived
    here (a hash of the seed and the purpose), which differ from each other and, in
    practice, from any seed a user passes to an evaluation.

    Args:
        seed: The user's seed (e.g. a refiner's ``seed`` option).
        purpose: What the noise is for, e.g. ``"svi/optimise"``.

    Returns:
        A non-negative 63-bit integer, the same for the same arguments on every machine.
    """
    digest = hashlib.blake2b(f"{int(seed)}:{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def chunks(n: int, size: int) -> list[slice]:
    """Slices covering ``range(n)`` in pieces of at most ``size``."""
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def mask_rows(mask: torch.Tensor | None, part: slice, x: torch.Tensor) -> torch.Tensor | None:
    """The rows ``part`` of a per-datapoint mask; a mask shared by all rows as is."""
    return mask[part] if mask is not None and mask.dim() == x.dim() else mask


def take_rows(tensor: torch.Tensor, index: slice | torch.Tensor) -> torch.Tensor:
    """``tensor[index]``, or ``tensor`` itself when ``index`` is a slice over all its rows.

    Indexing a parameter with a full slice is a view whose backward pass still allocates a
    zero gradient of the parameter's size and copies into it; per-datapoint parameters
    (flows above all) are the largest tensors of a refinement step, so the common
    one-chunk case skips that.
    """
    if isinstance(index, slice) and index.indices(tensor.shape[0]) == (0, tensor.shape[0], 1):
        return tensor
    return tensor[index]


def replaces(obj: object, base: type, *names: str) -> bool:
    """Whether ``obj``'s class replaces any of ``base``'s methods ``names``.

    A family or backend that promises something of its own methods (a posterior that its
    guide draws its `mean_field`, a model that it is flat) withdraws the promise for a
    subclass that replaces them.
    """
    return any(getattr(type(obj), name) is not getattr(base, name) for name in names)


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count (None keeps torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise LvmError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


def resolve_device(device: str | torch.device) -> torch.device:
    """Parse ``--device``: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and check it is here.

    Anything else (``meta``, which holds no data, a malformed name, a CUDA index this
    machine lacks, MPS off a Mac) is an `LvmError` naming
    the problem, never a torch error later.

    Raises:
        LvmError: An unknown or unavailable device.
    """
    if not isinstance(device, (str, torch.device)):
        raise LvmError(f"device must be a name such as 'cpu', got {type(device).__name__}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise LvmError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cpu":
        return torch.device("cpu")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise LvmError(f"device {str(device)!r} requested but CUDA is not available here")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise LvmError(f"device {str(device)!r}: this machine has {count} CUDA device(s)")
        return parsed
    if parsed.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise LvmError(f"device {str(device)!r} requested but MPS is not available here")
        return parsed
    raise LvmError(f"device {str(device)!r} is not supported; use cpu, cuda, cuda:N or mps")


MAX_SEED = 2**63 - 1
"""Largest seed torch accepts (``torch.manual_seed`` takes 0..2**64-1; a derived stream
seed must fit in a signed 64-bit integer)."""


def check_seed(seed: int, what: str = "seed") -> int:
    """``seed`` if it is an integer in 0..``MAX_SEED``.

    Raises:
        LvmError: Not an integer, or out of range.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise LvmError(f"{what} must be an integer, got {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise LvmError(f"{what} must be between 0 and 2**63-1, got {seed}")
    return seed


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends (a pending one is delivered right after).

    For renames that must happen together (a checkpoint's weights and config, a folder of
    outputs): an interrupt then lands before all of them or after all of them. Only the
    main thread can block signals; elsewhere, and where the platform has no
    ``pthread_sigmask``, this does nothing.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "pthread_sigmask"
    ):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
