"""Names and descriptions of restoration kinds and methods (no torch import: CLI help uses them)."""

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
METHODS: dict[str, str] = {
    "conditional": "refine q(z | y) under p(y | z); the result is E[x | y] averaged over q",
    "importance": "self-normalised importance sampling with the refined q as proposal "
    "(mean: single imputation; samples: importance resampling)",
    "mwg": "Metropolis-within-Gibbs with the refined q as proposal (asymptotically exact)",
    "pseudo-gibbs": "the paper's chain: refine q(z | x') on the whole current image, "
    "redraw the unknown pixels, repeat (no noise model; the baseline)",
}
"""Restoration methods of `lvmtoolkit.restore` and ``lvm inpaint|denoise --method``."""
