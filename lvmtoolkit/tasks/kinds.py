"""Names and descriptions of the corruption kinds (no torch import: the CLI help uses them)."""

from __future__ import annotations

MASK_KINDS: dict[str, str] = {
    "centre": "the centre square of half the height and width is missing",
    "half": "the bottom half is missing",
    "random": "each pixel is missing with probability 0.5, independently",
}
NOISE_KINDS: dict[str, str] = {
    "gaussian": "x + N(0, 0.5) (variance 0.5, as in the paper), clipped to [0, 1]",
    "salt-pepper": "20% of the pixels, chosen at random, set to 0 or 1 with equal odds",
}
