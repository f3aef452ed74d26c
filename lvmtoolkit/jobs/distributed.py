"""torch.distributed for jobs: which rank this process is, and the few collectives a job needs.

Under ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
variables) a job joins the process group: gloo on CPU, nccl on CUDA, each rank on the GPU
of its ``LOCAL_RANK``. Without those variables it is a world of one and nothing here talks
to other processes.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["World", "join_world"]

TIMEOUT = datetime.timedelta(hours=24)
"""How long a rank waits for the others at a barrier (a rank that finished its shards
waits for the slowest one, which may be many shards behind after a resume)."""


@dataclass
class World:
    """This process's place among the job's processes.

    Attributes:
        rank: Index of this process (0 writes the manifest and summary, shows progress).
        size: Number of processes.
        device: The device this process computes on.
    """

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank."""
        if not self.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0, device=self._collective_device)
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.distributed:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    @property
    def _collective_device(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None


def join_world(device: torch.device) -> World:
    """Join torchrun's process group if this process runs under it.

    Args:
        device: The ``--device`` asked for; under torchrun ``cuda`` becomes
            ``cuda:LOCAL_RANK``.

    Returns:
        The world (of one process without torchrun).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(0, 1, device)
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT
        )
    return World(rank, size, device)
