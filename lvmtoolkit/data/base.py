"""The dataset interface and the two binarisations used everywhere."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from lvmtoolkit.errors import DataError

EVAL_BINARIZATION_SEED = 1234
"""Seed of the fixed binarisation used for every evaluation (stated in results tables)."""


@dataclass
class ImageData:
    """Images in [0, 1] of shape ``(N, C, H, W)`` with integer labels of shape ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor
    description: dict

    def __len__(self) -> int:
        return self.images.shape[0]


class Dataset:
    """Base class of registered datasets.

    Attributes:
        name: Registry key (``--dataset``).
        splits: Split names the dataset offers.
        description: One line for ``lvm datasets``.
    """

    name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    description: ClassVar[str] = ""

    def __init__(self, data_dir: str | Path | None = None):
        self.data_dir = Path(data_dir) if data_dir is not None else None

    def load(self, split: str) -> ImageData:
        """Return the split ``split`` as grey-level images in [0, 1]."""
        raise NotImplementedError

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise DataError(
                f"dataset {self.name!r} has no split {split!r}; splits: {', '.join(self.splits)}"
            )


def binarize_dynamic(images: torch.Tensor) -> torch.Tensor:
    """A fresh Bernoulli draw per pixel (used in training: a new draw every pass)."""
    return torch.bernoulli(images)


def binarize_fixed(images: torch.Tensor, seed: int = EVAL_BINARIZATION_SEED) -> torch.Tensor:
    """A Bernoulli draw per pixel from a fixed seed: the same binary images every run."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(images.detach().cpu().float(), generator=generator).to(images.device)
