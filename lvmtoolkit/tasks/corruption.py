"""Seeded corruptions for evaluations: masks of missing pixels, and noise by kind name.

`make_mask` draws the masks of the ``missing`` observation model; `add_noise` is the
kind-name shortcut to the ``gaussian`` and ``salt-pepper`` observation models' `corrupt`.
"""

from __future__ import annotations

import torch

from lvmtoolkit.errors import OptionError
from lvmtoolkit.tasks.kinds import MASK_KINDS, NOISE_KINDS


def make_mask(
    kind: str,
    shape: tuple[int, ...] | torch.Size,
    *,
    seed: int = 0,
    missing_fraction: float = 0.5,
) -> torch.Tensor:
    """A boolean observed-pixel mask (True = known) of one of `MASK_KINDS`.

    Args:
        kind: ``"centre"``, ``"half"`` or ``"random"``.
        shape: ``(N, C, H, W)``; every channel of a pixel shares its mask value.
        seed: Seed of the ``"random"`` masks (one mask per image).
        missing_fraction: Probability that a pixel is missing, for ``"random"``.

    Returns:
        Boolean tensor of ``shape``.
    """
    if len(shape) != 4:
        raise OptionError(f"masks need a shape (N, C, H, W), got {tuple(shape)}")
    n, c, h, w = shape
    observed = torch.ones(n, 1, h, w, dtype=torch.bool)
    if kind == "centre":
        top, left = (h - h // 2) // 2, (w - w // 2) // 2
        observed[:, :, top : top + h // 2, left : left + w // 2] = False
    elif kind == "half":
        observed[:, :, h - h // 2 :, :] = False
    elif kind == "random":
        if not 0.0 <= missing_fraction <= 1.0:
            raise OptionError(f"missing_fraction must be in [0, 1], got {missing_fraction}")
        generator = torch.Generator().manual_seed(seed)
        observed = torch.rand(n, 1, h, w, generator=generator) >= missing_fraction
    else:
        raise OptionError(f"unknown mask kind {kind!r}; kinds: {', '.join(MASK_KINDS)}")
    return observed.expand(n, c, h, w).clone()


def add_noise(
    kind: str,
    x: torch.Tensor,
    *,
    seed: int = 0,
    variance: float = 0.5,
    amount: float = 0.2,
) -> torch.Tensor:
    """Corrupt images in [0, 1] with one of `NOISE_KINDS`; the result stays in [0, 1].

    Args:
        kind: ``"gaussian"`` or ``"salt-pepper"``.
        x: ``(N, C, H, W)`` images in [0, 1].
        seed: Seed of the noise.
        variance: Variance of the Gaussian noise (the paper's 0.5: standard deviation 0.71).
        amount: Fraction of pixels replaced by salt or pepper.

    Returns:
        The noisy images, same shape and dtype as ``x``.
    """
    from lvmtoolkit.tasks.observations import GaussianNoise, SaltPepper

    if kind == "gaussian":
        if not variance >= 0:
            raise OptionError(f"variance must be >= 0, got {variance}")
        if variance == 0:
            return x.clone()
        return GaussianNoise(variance=variance).corrupt(x, seed=seed).y
    if kind == "salt-pepper":
        if not 0.0 <= amount <= 1.0:
            raise OptionError(f"amount must be in [0, 1], got {amount}")
        return SaltPepper(rate=amount).corrupt(x, seed=seed).y
    raise OptionError(f"unknown noise kind {kind!r}; kinds: {', '.join(NOISE_KINDS)}")
