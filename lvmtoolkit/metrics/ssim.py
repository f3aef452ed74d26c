"""Structural similarity (SSIM) of restored images against the originals.

Single-scale SSIM through ``pytorch_msssim.ssim`` with its standard settings (11x11
Gaussian window, sigma 1.5, K = (0.01, 0.03)). MS-SSIM is not used: it halves the image
four times and needs the shorter side to exceed (11 - 1) * 2**4 = 160 pixels, far above
MNIST's 28x28 (``pytorch_msssim.ms_ssim`` refuses smaller images).

``data_range`` must be the range of the pixel values: 1.0 for images in [0, 1].
``pytorch_msssim``'s default of 255 makes the stabilising constants C1 = (0.01 * 255)^2 and
C2 = (0.03 * 255)^2 dwarf every variance of [0, 1] images, so almost any pair scores above
0.99 (the noisy inputs of our denoising table do).
"""

from __future__ import annotations

import torch

from lvmtoolkit.errors import MetricError


def ssim(
    images: torch.Tensor,
    reference: torch.Tensor,
    *,
    data_range: float = 1.0,
) -> torch.Tensor:
    """SSIM of each image against its reference, averaged over pixels and channels.

    Args:
        images: ``(N, C, H, W)`` restored images.
        reference: ``(N, C, H, W)`` originals, same shape.
        data_range: Range of the pixel values (1.0 for [0, 1]).

    Returns:
        Tensor of shape ``(N,)``; 1 means identical.

    Raises:
        MetricError: Shapes differ, are not 4-d, or are smaller than the 11x11 window.

    References:
        Wang, Bovik, Sheikh & Simoncelli, "Image Quality Assessment: From Error Visibility
        to Structural Similarity", IEEE TIP 2004.
    """
    from pytorch_msssim import ssim as pytorch_ssim

    if images.shape != reference.shape or images.dim() != 4:
        raise MetricError(
            f"SSIM needs two (N, C, H, W) batches of one shape, got {tuple(images.shape)} "
            f"and {tuple(reference.shape)}"
        )
    if min(images.shape[-2:]) < 11:
        raise MetricError(f"SSIM needs images of at least 11x11, got {tuple(images.shape[-2:])}")
    return pytorch_ssim(
        images.detach().float(),
        reference.detach().float().to(images.device),
        data_range=data_range,
        size_average=False,
    )
