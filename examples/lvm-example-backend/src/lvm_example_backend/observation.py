"""An observation model: grey blocks occlude the image where they fall.

Pixels under an occluder show the occluder's grey ``level`` instead of the image; the
others are exact. Per pixel, with ``rate`` the probability that a pixel is covered:

    p(y | x) = (1 - rate) [y = x] + rate [y = level]

(``y = level`` within one 8-bit grey step, as images read from files are).

That one method (`log_prob`) and a way to corrupt clean images (`sample`, `corrupt`) are
all lvmtoolkit needs: for binary pixels it derives p(y | z) = sum over x of
p(y | x) p(x | z) and the pixel posterior p(x | y, z) itself, so every refiner and every
restoration method works with this model, and ``lvm denoise --noise occlusion`` restores
occluded digits without being told where the blocks are. For Gaussian pixels it has no
exact p(y | z) (an atom at ``level`` beside a density), and lvmtoolkit refuses that pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import lvmtoolkit as lvm


@dataclass
class OcclusionOptions:
    level: float = lvm.option(0.5, "grey value shown by an occluder", minimum=0.0, maximum=1.0)
    rate: float = lvm.option(
        0.2, "probability that a pixel is occluded", minimum=0.0, exclusive_minimum=True,
        maximum=0.99,
    )  # fmt: skip
    size: int = lvm.option(8, "side of the square blocks drawn by corrupt", minimum=1)


class Occlusion(lvm.ObservationModel):
    """Square grey blocks over the image; covered pixels show ``level``."""

    name = "occlusion"
    description = "square grey blocks hide parts of the image"
    options_class = OcclusionOptions

    def covered(self, y: torch.Tensor) -> torch.Tensor:
        """Pixels that show the occluder (within one 8-bit grey step: images are files)."""
        return (y - self.options.level).abs() <= 1 / 255

    def log_prob(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        rate = self.options.rate
        y, x = torch.broadcast_tensors(y, x)
        kept = (1 - rate) * (y == x).to(y.dtype)
        return torch.log(kept + rate * self.covered(y).to(y.dtype))

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Cover each pixel independently with probability ``rate`` (the per-pixel model)."""
        covered = torch.rand(x.shape, generator=generator, device=x.device) < self.options.rate
        return torch.where(covered, torch.full_like(x, self.options.level), x)

    def corrupt(self, x: torch.Tensor, *, seed: int = 0) -> lvm.Observed:
        """Draw blocks of ``size`` pixels, enough to cover about ``rate`` of each image."""
        o = self.options
        generator = torch.Generator().manual_seed(seed)
        n, _, height, width = x.shape
        side = min(o.size, height, width)
        blocks = max(1, math.ceil(o.rate * height * width / side**2))
        y = x.detach().cpu().clone()
        for i in range(n):
            for _ in range(blocks):
                top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
                y[i, :, top : top + side, left : left + side] = o.level
        return lvm.Observed(y.to(x.device), None)

    def check(self, y: torch.Tensor, pixels: object, mask: torch.Tensor | None) -> None:
        allowed = (y == 0) | (y == 1) | self.covered(y)
        if not bool(allowed.all()):
            raise lvm.LvmError(
                f"occlusion observations of binary pixels are 0, 1 or the level "
                f"{self.options.level}; the input holds other grey values"
            )
