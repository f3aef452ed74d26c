"""Inverse autoregressive flows on latent tensors, shared or with parameters per datapoint.

One flow step maps ``z`` (shape ``(N, *event_shape)``) to ``z * exp(s) + m`` where the
shift ``m`` and log-scale ``s`` of each coordinate come from a small network that sees only
the coordinates before it. The order is pixels in raster order and, within a pixel, channels
in order; a vector latent ``(D,)`` is a ``(D, 1, 1)`` image, so the same code is a MADE over
its D coordinates. The Jacobian is triangular with diagonal ``exp(s)``, so
``log |det J| = sum(s)``: sampling and scoring the sample cost one network pass (the cached
pair of Pyro/torch transforms), while scoring an arbitrary point means inverting the flow
coordinate by coordinate.

The conditioner is two masked convolutions (``autoregressive_masks``) with an ELU between
them; ``reverse=True`` runs the same step in the reversed order, so stacks alternate
directions. Two holders of the weights exist:

- `AutoregressiveConvCell`: one set of weights for all datapoints, conditioned on a
  per-datapoint context (a model's amortized flow, as in NVAE's posterior). A Pyro
  ``ConditionalTransformModule``: ``cell.condition(context)`` is the transform.
- `BatchedAutoregressiveCell`: one set of weights *per datapoint* (leading dimension
  N), for per-datapoint refinement. It starts at the identity or as a copy of a shared cell
  (`AutoregressiveConvCell.per_datapoint`), so refinement starts from the amortized
  flow. All datapoints are transformed in one batched matrix product.

The transforms act on batches of shape ``(N, *event_shape)`` only: row ``i`` uses the
parameters of datapoint ``i``.

`GaussianFlow` is a diagonal Normal pushed through such steps. Its KL to a Normal
prior has no closed form, and the Monte-Carlo ``log q(z) - log p(z)`` has a gradient whose
noise does not cancel even where q equals p: with thousands of latent dimensions (NVAE),
that noise alone moves every coordinate. The registered ``kl_divergence(GaussianFlow,
Normal)`` is instead ``KL(N(mu, sigma) || p) + log p(z0) - log p(z) - log|det J|`` at the
flow's last sample ``z = f(z0)``: unbiased, closed form wherever the flow is the identity,
and low-variance while it stays close to it.

References:
    Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
    NeurIPS 2016; Germain et al., "MADE: Masked Autoencoder for Distribution Estimation",
    ICML 2015; van den Oord et al., "Pixel Recurrent Neural Networks", ICML 2016 (masked
    convolutions); Vahdat & Kautz, "NVAE: A Deep Hierarchical Variational Autoencoder",
    NeurIPS 2020 (autoregressive cells in the posterior).
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable

import pyro.distributions as dist
import torch
from pyro.distributions.conditional import ConditionalTransformModule
from torch import nn
from torch.distributions import Independent, Normal, Transform, constraints, register_kl
from torch.distributions import kl_divergence as _kl_divergence
from torch.distributions.transforms import _InverseTransform
from torch.nn import functional as F

from lvmtoolkit.core.runtime import take_rows
from lvmtoolkit.errors import LvmError

Conditioner = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""Maps ``z`` as a ``(N, C, H, W)`` image to ``(shift, log_scale)`` of the same shape."""

DEFAULT_LOG_SCALE_BOUND = 3.0
"""Log-scales are soft-clamped to (-3, 3): a step scales a coordinate by at most e^3."""


def image_shape(event_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(C, H, W)`` on which a flow sees a latent of ``event_shape``.

    ``(C, H, W)`` is kept; any other shape is flattened into ``(D, 1, 1)`` channels.
    """
    if len(event_shape) == 3:
        return (int(event_shape[0]), int(event_shape[1]), int(event_shape[2]))
    return (math.prod(event_shape), 1, 1)


@functools.lru_cache(maxsize=64)
def _cpu_masks(channels: int, hidden: int, kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    k, c = kernel_size, kernel_size // 2
    in_degree = torch.arange(channels)
    # MADE: hidden units take degrees 0..C-2, so every unit feeds some output channel; a
    # layer narrower than that spreads its degrees from 0 to C-2, so that every input still
    # reaches an output and every output but the first still sees an input.
    top = max(channels - 1, 1)
    if hidden >= top:
        hidden_degree = torch.arange(hidden) % top
    elif hidden == 1:
        hidden_degree = torch.zeros(1, dtype=torch.long)
    else:
        hidden_degree = torch.arange(hidden) * (top - 1) // (hidden - 1)
    out_degree = torch.arange(channels).repeat(2)  # shift and log-scale of each channel
    before_centre = torch.zeros(k * k)
    before_centre[: c * k + c] = 1.0  # kernel taps strictly before the centre, raster order
    before_centre = before_centre.view(k, k)
    first = before_centre.expand(hidden, channels, k, k).clone()
    first[:, :, c, c] = (hidden_degree[:, None] >= in_degree[None, :]).float()
    second = before_centre.expand(2 * channels, hidden, k, k).clone()
    second[:, :, c, c] = (out_degree[:, None] > hidden_degree[None, :]).float()
    return first, second


def autoregressive_masks(
    channels: int, hidden: int, kernel_size: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of the two convolutions of an autoregressive conditioner.

    Output channel ``c`` at pixel ``p`` (shift for ``c < channels``, log-scale for the
    rest) depends on input channel ``c'`` at pixel ``p'`` only if ``p'`` comes before ``p``
    in raster order, or ``p' == p`` and ``c' < c``.

    Args:
        channels: Latent channels C.
        hidden: Hidden channels of the conditioner.
        kernel_size: Odd kernel size (1 for vector latents).
        device: Where to put the masks.

    Returns:
        ``(first, second)``: masks of shape ``(hidden, C, k, k)`` and ``(2C, hidden, k, k)``.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise LvmError(f"kernel_size must be odd and positive, got {kernel_size}")
    if channels < 1 or hidden < 1:
        raise LvmError(f"channels and hidden must be positive, got {channels}, {hidden}")
    first, second = _cpu_masks(channels, hidden, kernel_size)
    return first.to(device), second.to(device)


class _ZeroOutsideMask(torch.autograd.Function):
    """``weight`` as it is, with a gradient that is zero outside ``mask``.

    For per-datapoint weights that already hold zeros wherever the mask does
    (`BatchedAutoregressiveCell` keeps them so): the forward pass is then ``weight * mask``
    without its pass over every weight, which for per-datapoint flows is a pass over the
    largest tensors of a refinement step. The gradient is the product's, so an optimiser
    never moves a masked weight off zero.
    """

    @staticmethod
    def forward(ctx: object, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(mask)  # type: ignore[attr-defined]
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mask,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * mask, None


def _masked_conv(
    z: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, *, zero_outside: bool = False
) -> torch.Tensor:
    """Same-padded convolution with masked weights, shared (4-D) or per datapoint (5-D).

    ``zero_outside=True`` promises that ``weight`` is already zero wherever ``mask`` is
    (see `_ZeroOutsideMask`).
    """
    k = weight.shape[-1]
    if weight.dim() == 4:
        return F.conv2d(z, weight * mask, padding=k // 2)
    n, _, height, width = z.shape
    masked = _ZeroOutsideMask.apply(weight, mask) if zero_outside else weight * mask
    if k == 1:
        return torch.bmm(masked.flatten(2), z.flatten(2)).view(n, -1, height, width)
    # One grouped convolution with a group per datapoint. unfold + bmm computed the same,
    # but CPU im2col copies element by element: on NVAE latents (100 datapoints, 32 to 16
    # channels, 14x14) a pass forward and back took 36 ms that way and 8.5 ms this way.
    out = F.conv2d(
        z.reshape(1, -1, height, width),
        masked.reshape(-1, *masked.shape[2:]),
        padding=k // 2,
        groups=n,
    )
    return out.view(n, -1, height, width)


def _conditioner(
    weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    masks: tuple[torch.Tensor, torch.Tensor],
    log_scale_bound: float,
    *,
    zero_outside: bool = False,
) -> Conditioner:
    w1, b1, w2, b2 = weights

    def conditioner(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = F.elu(_masked_conv(z, w1, masks[0], zero_outside=zero_outside) + b1)
        shift, raw = (_masked_conv(hidden, w2, masks[1], zero_outside=zero_outside) + b2).chunk(
            2, dim=1
        )
        # A soft clamp keeps exp(s) finite and is the identity's slope at 0.
        return shift, log_scale_bound * torch.tanh(raw / log_scale_bound)

    return conditioner


class AffineAutoregressive(Transform):
    """``y = z * exp(s(z)) + m(z)`` with (m, s) autoregressive in z (one IAF step).

    Args:
        conditioner: See `Conditioner`.
        event_shape: Event shape of the latent (``(C, H, W)`` or any other, flattened).
        reverse: Run the step in the reversed order (channels and pixels reversed).
        cache_size: 1 caches the last ``(z, y)`` pair, so scoring a sample just drawn
            needs no inversion (Pyro's ``TransformedDistribution`` relies on this).
    """

    bijective = True
    sign = +1

    def __init__(
        self,
        conditioner: Conditioner,
        event_shape: tuple[int, ...],
        *,
        reverse: bool = False,
        cache_size: int = 1,
    ):
        super().__init__(cache_size=cache_size)
        self.conditioner = conditioner
        self.event_shape = tuple(event_shape)
        self.reverse = reverse
        self.domain = constraints.independent(constraints.real, len(self.event_shape))
        self.codomain = constraints.independent(constraints.real, len(self.event_shape))
        self._image = image_shape(self.event_shape)
        self._cached_log_scale: tuple[torch.Tensor, torch.Tensor] | None = None
        self._inverse_ref: weakref.ref[_InverseTransform] | None = None

    @property
    def inv(self) -> Transform:
        """The inverse transform, held weakly.

        torch's `Transform.inv` keeps its inverse strongly, and the inverse keeps the
        transform: a reference cycle that only the cyclic garbage collector frees, together
        with the cached draws and log-scales (and, under autograd, their graphs). Scoring
        NVAE svi-flow restorations built up 6 GB of them before a collection ran.
        """
        inverse = self._inverse_ref() if self._inverse_ref is not None else None
        if inverse is None:
            inverse = _InverseTransform(self)
            self._inverse_ref = weakref.ref(inverse)
        return inverse

    def _as_image(self, value: torch.Tensor) -> torch.Tensor:
        image = value.reshape(-1, *self._image)
        return image.flip(1, 2, 3) if self.reverse else image

    def _as_event(self, image: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.reverse:
            image = image.flip(1, 2, 3)
        return image.reshape(like.shape)

    def log_scale(self, z: torch.Tensor) -> torch.Tensor:
        """Log of the Jacobian's diagonal at ``z``, in the shape of ``z``."""
        return self._as_event(self.conditioner(self._as_image(z))[1], z)

    def _call(self, z: torch.Tensor) -> torch.Tensor:
        image = self._as_image(z)
        shift, log_scale = self.conditioner(image)
        y = self._as_event(image * log_scale.exp() + shift, z)
        self._cached_log_scale = (z, log_scale)
        return y

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        # Each pass fixes one more coordinate in the autoregressive order, so at most
        # D + 1 passes reach the exact fixed point; most stop much earlier.
        target = self._as_image(y)
        z = target
        for _ in range(math.prod(self._image) + 1):
            shift, log_scale = self.conditioner(z)
            new = (target - shift) * (-log_scale).exp()
            if torch.equal(new, z):
                break
            z = new
        return self._as_event(z, y)

    def log_abs_det_jacobian(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cached = self._cached_log_scale
        if cached is not None and cached[0] is z:
            log_scale = cached[1]
        else:
            log_scale = self.conditioner(self._as_image(z))[1]
        return log_scale.flatten(1).sum(1).reshape(z.shape[: z.dim() - len(self.event_shape)])


def _check_shape(event_shape: tuple[int, ...], kernel_size: int | None) -> int:
    _, height, width = image_shape(event_shape)
    if kernel_size is None:
        kernel_size = 1 if height * width == 1 else 3
    return kernel_size


class AutoregressiveConvCell(ConditionalTransformModule):
    """One IAF step with weights shared by all datapoints, conditioned on a context.

    The context (e.g. the encoder's features at the latent's resolution) enters the
    conditioner's hidden layer through a 1x1 convolution, so the step differs per datapoint
    while its weights are amortized. The last layer starts at zero: the step starts as the
    identity.

    Args:
        event_shape: ``(C, H, W)`` of the latent (or a vector shape, flattened).
        hidden: Hidden channels of the conditioner.
        context_channels: Channels of the context (0: no context).
        kernel_size: Odd kernel size; default 3, or 1 for vector latents.
        reverse: Run in the reversed order.
        log_scale_bound: Soft bound of the log-scales.

    References:
        Kingma et al., NeurIPS 2016; Vahdat & Kautz, NeurIPS 2020.
    """

    def __init__(
        self,
        event_shape: tuple[int, ...],
        hidden: int,
        *,
        context_channels: int = 0,
        kernel_size: int | None = None,
        reverse: bool = False,
        log_scale_bound: float = DEFAULT_LOG_SCALE_BOUND,
    ):
        super().__init__()
        self.event_shape = tuple(event_shape)
        channels = image_shape(self.event_shape)[0]
        k = _check_shape(self.event_shape, kernel_size)
        first, second = autoregressive_masks(channels, hidden, k)
        self.register_buffer("mask1", first, persistent=False)
        self.register_buffer("mask2", second, persistent=False)
        self.w1 = nn.Parameter(torch.randn(hidden, channels, k, k) / math.sqrt(channels * k * k))
        self.b1 = nn.Parameter(torch.zeros(hidden, 1, 1))
        self.w2 = nn.Parameter(torch.zeros(2 * channels, hidden, k, k))
        self.b2 = nn.Parameter(torch.zeros(2 * channels, 1, 1))
        self.context = nn.Conv2d(context_channels, hidden, 1) if context_channels else None
        self.reverse = reverse
        self.log_scale_bound = log_scale_bound

    def hidden_bias(self, context: torch.Tensor | None) -> torch.Tensor:
        """The conditioner's first-layer bias: ``b1`` plus the context's contribution."""
        if self.context is None:
            return self.b1
        if context is None:
            raise LvmError("this flow cell is conditioned on a context; pass one")
        return self.b1 + self.context(context)

    def condition(self, context: torch.Tensor | None = None) -> AffineAutoregressive:
        """The step for datapoints with this context (``(N, context_channels, H, W)``)."""
        weights = (self.w1, self.hidden_bias(context), self.w2, self.b2)
        conditioner = _conditioner(weights, (self.mask1, self.mask2), self.log_scale_bound)
        return AffineAutoregressive(conditioner, self.event_shape, reverse=self.reverse)

    def per_datapoint(
        self, num: int, context: torch.Tensor | None = None
    ) -> BatchedAutoregressiveCell:
        """An independent copy of this step for each of ``num`` datapoints.

        The context's contribution is folded into each datapoint's first-layer bias, so the
        copy computes exactly what ``condition(context)`` computes, row by row.
        """
        with torch.no_grad():
            bias = self.hidden_bias(context)
            if bias.dim() == 4 and bias.shape[0] != num:
                raise LvmError(f"context holds {bias.shape[0]} datapoints, expected {num}")
            return BatchedAutoregressiveCell(
                self.w1.expand(num, *self.w1.shape),
                bias.expand(num, *bias.shape[-3:]),
                self.w2.expand(num, *self.w2.shape),
                self.b2.expand(num, *self.b2.shape),
                event_shape=self.event_shape,
                reverse=self.reverse,
                log_scale_bound=self.log_scale_bound,
            )


class BatchedAutoregressiveCell(nn.Module):
    """One IAF step with its own weights for every datapoint (dimension 0 indexes them).

    Args:
        w1: ``(N, hidden, C, k, k)`` first-layer weights.
        b1: ``(N, hidden, h, w)`` first-layer bias, ``h, w`` either 1 or the latent's.
        w2: ``(N, 2C, hidden, k, k)`` second-layer weights.
        b2: ``(N, 2C, 1, 1)`` second-layer bias.
        event_shape: Event shape of the latent.
        reverse: Run in the reversed order.
        log_scale_bound: Soft bound of the log-scales.

    References:
        Kingma et al., NeurIPS 2016.
    """

    def __init__(
        self,
        w1: torch.Tensor,
        b1: torch.Tensor,
        w2: torch.Tensor,
        b2: torch.Tensor,
        *,
        event_shape: tuple[int, ...],
        reverse: bool = False,
        log_scale_bound: float = DEFAULT_LOG_SCALE_BOUND,
    ):
        super().__init__()
        sizes = {t.shape[0] for t in (w1, b1, w2, b2)}
        if len(sizes) != 1 or w1.dim() != 5 or w2.dim() != 5:
            raise LvmError("per-datapoint flow weights need the same leading dimension N")
        self.event_shape = tuple(event_shape)
        self.w1 = nn.Parameter(w1.detach().clone())
        self.b1 = nn.Parameter(b1.detach().clone())
        self.w2 = nn.Parameter(w2.detach().clone())
        self.b2 = nn.Parameter(b2.detach().clone())
        self.reverse = reverse
        self.log_scale_bound = log_scale_bound
        # The weights are kept zero outside their masks (here, after loading, and by the
        # masked gradient in between), so a forward pass need not multiply by the masks.
        self.zero_outside_masks()
        self.register_load_state_dict_post_hook(lambda module, _: module.zero_outside_masks())

    def _masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        channels, hidden, k = self.w1.shape[2], self.w1.shape[1], self.w1.shape[-1]
        return autoregressive_masks(channels, hidden, k, device=self.w1.device)

    def zero_outside_masks(self) -> None:
        """Zero the weights outside the autoregressive masks.

        The forward pass relies on these zeros instead of multiplying by the masks (a pass
        over the largest tensors of a refinement step). The constructor, loading a state
        dict and any optimiser (the masked weights get zero gradients) keep them; call
        this after writing weights into the parameters by hand.
        """
        first, second = self._masks()
        with torch.no_grad():
            self.w1.mul_(first)
            self.w2.mul_(second)

    @classmethod
    def identity(
        cls,
        num: int,
        event_shape: tuple[int, ...],
        hidden: int,
        *,
        kernel_size: int | None = None,
        reverse: bool = False,
        generator: torch.Generator | None = None,
    ) -> BatchedAutoregressiveCell:
        """``num`` copies of one step that starts as the identity (zero last layer).

        The first layer is random (from ``generator``) so that the last one gets gradients;
        every datapoint gets the same draw, so a datapoint's start does not depend on the
        batch it is in.
        """
        channels = image_shape(tuple(event_shape))[0]
        k = _check_shape(tuple(event_shape), kernel_size)
        fan_in = channels * k * k
        w1 = torch.randn(hidden, channels, k, k, generator=generator) / math.sqrt(fan_in)
        return cls(
            w1.expand(num, *w1.shape),
            torch.zeros(num, hidden, 1, 1),
            torch.zeros(num, 2 * channels, hidden, k, k),
            torch.zeros(num, 2 * channels, 1, 1),
            event_shape=tuple(event_shape),
            reverse=reverse,
        )

    @property
    def num_datapoints(self) -> int:
        return self.w1.shape[0]

    def fan_in(self) -> list[tuple[nn.Parameter, int]]:
        """Each parameter with the number of inputs one of its output units sums over.

        A step of size ``lr`` on every weight of a unit moves the unit by about
        ``lr * fan_in``; dividing a rate by this keeps the flow's steps in scale with a
        location's.
        """
        return [
            (self.w1, self.w1[0, 0].numel()),
            (self.b1, 1),
            (self.w2, self.w2[0, 0].numel()),
            (self.b2, 1),
        ]

    def transform(self, index: slice | torch.Tensor = slice(None)) -> AffineAutoregressive:
        """The step of the datapoints ``index`` (rows of the batch it will transform)."""
        weights = (
            take_rows(self.w1, index),
            take_rows(self.b1, index),
            take_rows(self.w2, index),
            take_rows(self.b2, index),
        )
        conditioner = _conditioner(weights, self._masks(), self.log_scale_bound, zero_outside=True)
        return AffineAutoregressive(conditioner, self.event_shape, reverse=self.reverse)


class GaussianFlow(dist.TransformedDistribution):
    """A diagonal Normal pushed through flow steps, remembering its last sample.

    Args:
        base: ``Normal(loc, scale).to_event(k)`` with batch shape ``(N,)``.
        transforms: Flow steps (e.g. `AffineAutoregressive`), applied in order.

    ``rsample()`` records ``(z0, z, log|det J|)`` of the draw, so that
    ``kl_divergence(q, p)`` for a Normal ``p`` with the same event shape is the
    single-sample estimate ``KL(base || p) + log p(z0) - log p(z) - log|det J|`` at that
    draw. It is unbiased for ``KL(q || p)`` and exact while the flow is the identity; used
    as a Pyro guide site (sampled once), the draw is the site's value. Only
    ``sample_shape=()`` is supported: the steps hold one set of weights per row.

    References:
        Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
        NeurIPS 2016.
    """

    def __init__(self, base: dist.TorchDistribution, transforms: list[Transform]):
        super().__init__(base, transforms, validate_args=False)
        self.last_draw: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        if tuple(sample_shape):
            raise LvmError("a GaussianFlow draws one sample per row (sample_shape=())")
        z0 = self.base_dist.rsample()
        z, log_det = z0, torch.zeros(z0.shape[: z0.dim() - len(self.event_shape)])
        log_det = log_det.to(z0)
        for step in self.transforms:
            y = step(z)
            log_det = log_det + step.log_abs_det_jacobian(z, y)
            z = y
        self.last_draw = (z0, z, log_det)
        return z

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        with torch.no_grad():
            return self.rsample(sample_shape)

    def expand(self, batch_shape: torch.Size, _instance: object = None) -> GaussianFlow:
        # Pyro's plates call expand with the batch shape the distribution already has.
        if tuple(batch_shape) != tuple(self.batch_shape):
            raise LvmError(
                f"a GaussianFlow of batch shape {tuple(self.batch_shape)} cannot be expanded "
                f"to {tuple(batch_shape)}: its steps hold one set of weights per row"
            )
        return self


@register_kl(GaussianFlow, Independent)
def _kl_gaussian_flow_normal(q: GaussianFlow, p: Independent) -> torch.Tensor:
    if q.last_draw is None or not isinstance(p.base_dist, Normal) or p.event_shape != q.event_shape:
        raise NotImplementedError  # per_datapoint_elbo then uses log p - log q
    z0, z, log_det = q.last_draw
    return _kl_divergence(q.base_dist, p) + p.log_prob(z0) - p.log_prob(z) - log_det
