"""Small execution helpers shared by refiners, metrics and training."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch
from torch import nn

from lvmtoolkit.errors import LvmError


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients inside the block; both restored afterwards."""
    was_training = module.training
    flags = [(p, p.requires_grad) for p in module.parameters()]
    module.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        module.train(was_training)


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


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count (None keeps torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise LvmError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


def resolve_device(device: str) -> torch.device:
    """Parse ``--device``; a CUDA device without CUDA available is an error, not a crash."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise LvmError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise LvmError(f"device {device!r} requested but CUDA is not available here")
    return parsed
