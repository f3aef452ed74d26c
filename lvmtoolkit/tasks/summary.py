"""Running summaries of p(x | y): mean, variance and kept samples, from weighted draws.

Every restoration method visits latents z (drawn from a posterior, weighted by importance
or visited by a chain) and, at each, the pixel posterior p(x | y, z). `PixelSummary`
folds them in one at a time, so memory does not grow with the number of draws:

- the mean E[x | y] = sum_j w_j E[x | y, z_j] / sum_j w_j;
- the variance by the law of total variance, from the running E[x^2 | y];
- ``keep`` samples of x: with weights, each slot holds a draw chosen with probability
  proportional to its weight (streaming importance resampling, exact for every slot);
  without weights, slot s holds the s-th draw.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Distribution


class PixelSummary:
    """Accumulates p(x | y, z_j) over draws j for N datapoints.

    Args:
        n: Number of datapoints.
        shape: Shape of one datapoint.
        keep: Samples of x to keep per datapoint.
        device: Where the accumulators live.
        weighted: Whether draws carry importance weights (see `add`).
    """

    def __init__(
        self,
        n: int,
        shape: tuple[int, ...],
        *,
        keep: int = 0,
        device: torch.device | str = "cpu",
        weighted: bool = False,
    ):
        self.weighted = weighted
        self.log_total = torch.full((n,), -math.inf, device=device, dtype=torch.float64)
        self.log_square_total = self.log_total.clone()
        self.count = torch.zeros(n, dtype=torch.long, device=device)
        self.mean = torch.zeros(n, *shape, device=device)
        self.second = torch.zeros(n, *shape, device=device)
        self.samples = torch.zeros(keep, n, *shape, device=device)

    def add(
        self,
        index: torch.Tensor,
        pixels: Distribution,
        log_w: torch.Tensor | None = None,
    ) -> None:
        """Fold in one draw per row: p(x | y, z) of the datapoints ``index``.

        Args:
            index: ``(R,)`` datapoint of each row; a datapoint may repeat (several draws of
                it in one block, as `weighted_latents` yields them), in whole repeats of a
                run of distinct datapoints.
            pixels: p(x | y, z) of the rows, batch shape ``(R, *shape)``.
            log_w: ``(R,)`` log importance weights (for ``weighted`` summaries).
        """
        mean = pixels.mean.float()
        variance = pixels.variance.float()
        draw = pixels.sample().float() if self.samples.shape[0] else None
        count = int(torch.unique(index).numel())
        for start in range(0, index.shape[0], count):
            part = slice(start, start + count)
            self._add_rows(
                index[part],
                mean[part],
                variance[part],
                None if draw is None else draw[part],
                None if log_w is None else log_w[part],
            )

    def _add_rows(
        self,
        rows: torch.Tensor,
        mean: torch.Tensor,
        variance: torch.Tensor,
        draw: torch.Tensor | None,
        log_w: torch.Tensor | None,
    ) -> None:
        second = variance + mean**2
        log_w = torch.zeros(rows.shape[0], device=rows.device) if log_w is None else log_w
        log_w = log_w.double()
        old = self.log_total[rows]
        new = torch.logaddexp(old, log_w)
        take_new = torch.exp(log_w - new).float().nan_to_num(0.0)  # 1 at the first draw
        view = (-1,) + (1,) * (mean.dim() - 1)
        # m + w (new - m): exact when every draw agrees (observed pixels stay bit for bit).
        step = take_new.view(view)
        self.mean[rows] = self.mean[rows] + step * (mean - self.mean[rows])
        self.second[rows] = self.second[rows] + step * (second - self.second[rows])
        self.log_total[rows] = new
        self.log_square_total[rows] = torch.logaddexp(self.log_square_total[rows], 2 * log_w)
        if draw is not None:
            if self.weighted:
                # Each slot takes the new draw with probability w / (sum of w so far).
                # Replacements get rarer as weight accumulates (about log K per slot over
                # K draws), so only the slots that change are written.
                keep = self.samples.shape[0]
                replace = torch.rand(keep, rows.shape[0], device=rows.device) < take_new
                slots, which = replace.nonzero(as_tuple=True)
                if slots.numel():
                    self.samples[slots, rows[which]] = draw[which]
            else:
                slot_of = self.count[rows]
                fresh = slot_of < self.samples.shape[0]
                if bool(fresh.any()):
                    self.samples[slot_of[fresh], rows[fresh]] = draw[fresh]
        self.count[rows] += 1

    @property
    def variance(self) -> torch.Tensor:
        """Var[x | y] per pixel: E[x^2 | y] - E[x | y]^2 (clamped at 0)."""
        return (self.second - self.mean**2).clamp(min=0.0)

    @property
    def effective_sample_size(self) -> torch.Tensor:
        """(sum w)^2 / sum w^2 per datapoint: the number of draws the weights are worth."""
        return torch.exp(2 * self.log_total - self.log_square_total).float()
