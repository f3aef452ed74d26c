"""``shapes``: 28x28 images of filled rectangles and ellipses, generated from a seed.

Offline and deterministic: the same split gives the same images on every machine.
"""

from __future__ import annotations

import torch

import lvmtoolkit as lvm

SIZES = {"train": 2000, "test": 500}
SEEDS = {"train": 0, "test": 1}


class Shapes(lvm.Dataset):
    """Filled rectangles (label 0) and ellipses (label 1) at random places and sizes."""

    name = "shapes"
    splits = ("train", "test")
    description = "28x28 filled rectangles and ellipses, generated (2,000 train / 500 test)"

    def load(self, split: str) -> lvm.ImageData:
        self.check_split(split)
        n = SIZES[split]
        generator = torch.Generator().manual_seed(SEEDS[split])
        centre = 7 + 14 * torch.rand(n, 2, generator=generator)  # (x, y) in [7, 21)
        half = 3 + 4 * torch.rand(n, 2, generator=generator)  # half width, half height
        labels = torch.randint(0, 2, (n,), generator=generator)
        grid = torch.arange(28, dtype=torch.float32) + 0.5
        dx = (grid.view(1, 1, 28) - centre[:, 0, None, None]) / half[:, 0, None, None]
        dy = (grid.view(1, 28, 1) - centre[:, 1, None, None]) / half[:, 1, None, None]
        rectangle = (dx.abs() <= 1) & (dy.abs() <= 1)
        ellipse = dx**2 + dy**2 <= 1
        inside = torch.where(labels.view(n, 1, 1) == 1, ellipse, rectangle)
        images = inside.float().unsqueeze(1)
        description = {"name": self.name, "split": split, "size": n, "seed": SEEDS[split]}
        return lvm.ImageData(images, labels, description)
