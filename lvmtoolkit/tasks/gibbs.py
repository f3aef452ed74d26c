"""The paper's pseudo-Gibbs chain for inpainting and denoising, with any Model and Refiner.

One iteration of the chain, for a batch of images x'_t and a mask m (1 = observed):

1. refine the posterior q(z | x'_t), warm-started from the previous iteration's posterior;
2. draw z_t ~ q(z | x'_t);
3. draw x_t ~ p(x | z_t);
4. x'_{t+1} = m * x'_t + (1 - m) * x_t.

Observed pixels are copied, never recomputed, so they keep their exact values. Denoising is
the same chain with no observed pixels: every pixel is redrawn at every iteration.

This is the baseline of "Improving Inference in Latent Variable Models" (after Rezende et
al. 2014): the refiner sees the whole current image, imputed pixels included, and the
chain has no model of the noise, so it is not a sampler of p(x | y) (hence
"pseudo"-Gibbs). `lvmtoolkit.tasks.restoration.restore` conditions on what was observed
instead; it runs this chain as ``method="pseudo-gibbs"``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyro
import torch
from pyro import poutine

from lvmtoolkit.core.model import Model
from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.core.refiner import Refiner, check_batch
from lvmtoolkit.core.runtime import frozen, seeded
from lvmtoolkit.core.validation import soft_targets
from lvmtoolkit.errors import LvmError, OptionError

Output = Literal["mean", "sample"]

GIBBS_REFINER_DEFAULTS: dict[str, Any] = {"steps": 10, "select_samples": 2}
"""Per-iteration defaults for refiners that declare these options (see `gibbs_refiner`).

A refiner runs once per Gibbs iteration, so its cost is multiplied by the number of
iterations. 10 steps per iteration give 1,000 steps over the default 100 iterations (the
paper's longest run). The ``svi`` refiners score their start and end with
``select_samples`` samples each to keep the better posterior of each image: at their
default of 16 that scoring would cost 3x the 10 steps themselves, so the chain uses 2 (the
chain's own sampling is far noisier than a 2-sample selection). The optimiser settings
(learning rate, schedule, gradient estimator) stay each refiner's own; see
docs/results/inpainting.md for how the learning rate matters inside the chain."""


@dataclass
class GibbsResult:
    """What `inpaint` and `denoise` return.

    Attributes:
        images: ``(N, *data_shape)``: the final images; observed pixels are the input's.
        trajectory: Images recorded every ``record_every`` iterations (same kind as
            ``images``: likelihood means or samples in the unobserved pixels).
        recorded_at: The iteration (1-based) of each entry of ``trajectory``.
        observed: ``(N, *data_shape)`` boolean mask of the pixels that were kept.
        iterations: Number of iterations run.
        refiner: Name of the refiner used in each iteration.
        seconds: Wall-clock time of the chain.
        info: Extras: ``"refiner_nelbo"``, the mean over images of the refiner's last
            trace entry per iteration (empty for refiners that take no steps).
        posterior: The last iteration's posterior q(z | x'_T) (for the final images
            ``chain_images``).
        chain_images: x'_T, the chain's state at the end (samples in the unobserved
            pixels), the input of ``posterior``.
        std: Per-pixel standard deviation of the chain's states over its second half (0 on
            observed pixels): the chain's spread, not a posterior standard deviation.
    """

    images: torch.Tensor
    trajectory: list[torch.Tensor]
    recorded_at: list[int]
    observed: torch.Tensor
    iterations: int
    refiner: str
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    posterior: Posterior | None = None
    chain_images: torch.Tensor | None = None
    std: torch.Tensor | None = None


def gibbs_refiner(name: str = "amortized", **options: Any) -> Refiner:
    """A registered refiner configured for use inside the Gibbs loop.

    Options the refiner declares and the caller does not give take the values of
    `GIBBS_REFINER_DEFAULTS` (e.g. ``svi`` gets 10 steps per iteration).

    Args:
        name: Registered refiner name (``lvm refiners list``).
        **options: Refiner options, typed or as strings.

    Returns:
        The configured refiner.
    """
    from lvmtoolkit.plugins import get_refiner

    refiner_class = get_refiner(name)
    declared = refiner_class.option_names()
    defaults = {k: v for k, v in GIBBS_REFINER_DEFAULTS.items() if k in declared}
    return refiner_class(**{**defaults, **options})


@soft_targets
def pseudo_gibbs(
    model: Model,
    x: torch.Tensor,
    observed: torch.Tensor | None = None,
    refiner: Refiner | None = None,
    *,
    iterations: int = 100,
    seed: int = 0,
    output: Output = "mean",
    record_every: int = 0,
    fill: float = 0.0,
    warm_start: bool = True,
) -> GibbsResult:
    """Run the paper's pseudo-Gibbs chain: inpainting with a mask, denoising without one.

    As in the paper, the refiner fits q(z | x'_t) to the whole current image x'_t (its
    unobserved pixels hold the previous iteration's draw), with no mask and no noise model.
    With ``observed`` None no pixel is kept: every pixel is redrawn at every iteration, so
    the images move towards what the model finds likely (denoising).

    Args:
        model: The generative model (its parameters are not changed).
        x: ``(N, *model.data_shape)`` images with values in the model's data range.
        observed: Boolean tensor broadcastable to ``x``; True marks a known pixel, which is
            never changed. Values of ``x`` at unobserved pixels are ignored (they may be
            NaN). None: no known pixel (denoising), the chain starts from ``x``.
        refiner: A configured refiner, run once per iteration (``amortized`` by default;
            see `gibbs_refiner` for per-iteration defaults).
        iterations: Number of Gibbs iterations (the paper uses 100).
        seed: Seed of the chain's sampling noise; with the refiner's own ``seed`` option (if
            any) it also fixes the refiner's noise, which differs from one iteration to the
            next.
        output: ``"mean"``: unobserved pixels of the result are the likelihood mean
            E[x | z_T] at the last iteration; ``"sample"``: the last sample x_T (the chain's
            state).
        record_every: Record the images every this many iterations (0: only the result).
        fill: Value that unobserved pixels take in x'_0, the chain's start.
        warm_start: Start each iteration's refinement from the previous iteration's
            posterior; False starts every iteration from the model's encoder.

    Returns:
        The final images, the recorded trajectory and timing.

    Raises:
        LvmError: ``x`` does not match the model, or the mask does not match ``x``.
        OptionError: A setting out of range.

    References:
        Rezende, Mohamed & Wierstra, "Stochastic Backpropagation and Approximate Inference
        in Deep Generative Models", ICML 2014 (appendix F); Ham et al., "Variational Image
        Inpainting", NeurIPS Bayesian Deep Learning Workshop 2016.
    """
    if observed is None:
        check_batch(model, x)
        return _gibbs(
            model, x, torch.zeros_like(x, dtype=torch.bool), refiner, iterations, seed, output,
            record_every, warm_start,
        )  # fmt: skip
    try:
        mask = torch.as_tensor(observed, device=x.device).bool().expand_as(x)
    except RuntimeError:
        raise LvmError(
            f"mask of shape {tuple(observed.shape)} does not match images of shape {tuple(x.shape)}"
        ) from None
    start = torch.where(mask, x, torch.full_like(x, fill))
    check_batch(model, start)  # after filling: NaN may mark the unobserved pixels
    return _gibbs(model, start, mask, refiner, iterations, seed, output, record_every, warm_start)


_DEPRECATED = (
    "lvmtoolkit.{name} runs the paper's pseudo-Gibbs chain and is deprecated: call "
    "lvmtoolkit.pseudo_gibbs for that chain, or lvmtoolkit.restore (conditional inference "
    "on what was observed, the better restoration)"
)


def inpaint(
    model: Model,
    x: torch.Tensor,
    observed: torch.Tensor,
    refiner: Refiner | None = None,
    **kwargs: Any,
) -> GibbsResult:
    """Deprecated: `pseudo_gibbs` with a mask (same arguments and result).

    Use `pseudo_gibbs` for the paper's chain, or `lvmtoolkit.restore` to restore by
    conditional inference.
    """
    warnings.warn(_DEPRECATED.format(name="inpaint"), DeprecationWarning, stacklevel=2)
    return pseudo_gibbs(model, x, observed, refiner, **kwargs)


def denoise(
    model: Model,
    x: torch.Tensor,
    refiner: Refiner | None = None,
    **kwargs: Any,
) -> GibbsResult:
    """Deprecated: `pseudo_gibbs` without a mask (same arguments and result).

    Use `pseudo_gibbs` for the paper's chain, or `lvmtoolkit.restore` with a noise model
    to restore by conditional inference.
    """
    warnings.warn(_DEPRECATED.format(name="denoise"), DeprecationWarning, stacklevel=2)
    if "fill" in kwargs:
        raise OptionError("denoise has no unobserved pixels to fill")
    return pseudo_gibbs(model, x, None, refiner, **kwargs)


class ChainPosterior(Posterior):
    """The chain's last posterior, evaluated on the chain's last images whatever it is given.

    q(z | x'_T) depends on the images it was refined for (an amortized posterior runs its
    encoder on them). To use it as a proposal for the observed data y (for the conditional
    log-likelihood), its guide must still see x'_T: this wrapper passes the chain's images
    to it, row by row.

    Args:
        posterior: The chain's last posterior.
        images: x'_T, the images it belongs to.
    """

    def __init__(self, posterior: Posterior, images: torch.Tensor):
        super().__init__()
        self._inner = [posterior]  # a list keeps the posterior's parameters out of this one
        self.images = images
        self.num_datapoints = images.shape[0]

    def guide(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        self.check_batch_size(x.shape[0])
        self._inner[0].guide(self.images, None)

    def rows(self, index: slice | torch.Tensor) -> Posterior:
        return ChainPosterior(self._inner[0].rows(index), self.images[index])


def iteration_seed(refiner_seed: int, chain_seed: int, iteration: int) -> int:
    """The refiner's seed at iteration t: a separate stream per (refiner seed, chain seed, t)."""
    entropy = [v % 2**64 for v in (refiner_seed, chain_seed, iteration)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] % 2**63)


def _for_iteration(refiner: Refiner, chain_seed: int, iteration: int) -> Refiner:
    """The refiner with its ``seed`` option (if it has one) new at every iteration.

    Re-running a refiner with one seed would reuse the same optimisation noise in every
    iteration, so the warm-started posterior would be fitted to a few fixed draws.
    """
    if "seed" not in refiner.option_names():
        return refiner
    return refiner.with_options(seed=iteration_seed(refiner.options.seed, chain_seed, iteration))


def _draw_latents(model: Model, posterior: Posterior, x: torch.Tensor) -> dict[str, torch.Tensor]:
    trace = poutine.trace(posterior).get_trace(x)
    latents = {}
    for name in model.latent_shapes:
        if name not in trace.nodes:
            raise LvmError(
                f"the posterior has no sample site {name!r}; {model.name} needs one for each "
                f"latent site ({', '.join(model.latent_shapes)})"
            )
        latents[name] = trace.nodes[name]["value"]
    return latents


def _likelihood_mean(likelihood: torch.distributions.Distribution, model: Model) -> torch.Tensor:
    try:
        return likelihood.mean
    except NotImplementedError:
        raise LvmError(
            f"the {model.name} likelihood has no closed-form mean; use output='sample'"
        ) from None


def _gibbs(
    model: Model,
    x: torch.Tensor,
    observed: torch.Tensor,
    refiner: Refiner | None,
    iterations: int,
    seed: int,
    output: str,
    record_every: int,
    warm_start: bool,
) -> GibbsResult:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise OptionError(f"iterations must be an integer >= 1, got {iterations!r}")
    if output not in ("mean", "sample"):
        raise OptionError(f"output must be 'mean' or 'sample', got {output!r}")
    if record_every < 0:
        raise OptionError(f"record_every must be >= 0, got {record_every}")
    if refiner is None:
        refiner = gibbs_refiner("amortized")
    started = time.perf_counter()
    current = x
    trajectory: list[torch.Tensor] = []
    recorded_at: list[int] = []
    refiner_nelbo: list[float] = []
    posterior: Posterior | None = None
    posterior_input = current
    shown = current
    first_counted = iterations // 2 + 1  # the chain's spread over its second half
    total = torch.zeros_like(x)
    total_square = torch.zeros_like(x)

    with frozen(model), seeded(seed, x.device), pyro.validation_enabled(False):
        for t in range(1, iterations + 1):
            result = _for_iteration(refiner, seed, t).refine(
                model, current, init=posterior if warm_start else None
            )
            posterior, posterior_input = result.posterior, current
            if result.trace.numel():
                refiner_nelbo.append(float(result.trace[-1].mean()))
            with torch.no_grad():
                likelihood = model.decode(_draw_latents(model, posterior, current))
                drawn = likelihood.sample().to(x.dtype)
                # where(), not m*a + (1-m)*b: observed pixels are copied bit for bit
                current = torch.where(observed, current, drawn)
                if t >= first_counted:
                    total += current
                    total_square += current**2
                if output == "mean":
                    shown = torch.where(observed, current, _likelihood_mean(likelihood, model))
                else:
                    shown = current
            if record_every and t % record_every == 0:
                trajectory.append(shown.detach().clone())
                recorded_at.append(t)

    return GibbsResult(
        images=shown.detach(),
        trajectory=trajectory,
        recorded_at=recorded_at,
        observed=observed,
        iterations=iterations,
        refiner=refiner.name,
        seconds=time.perf_counter() - started,
        info={"refiner_nelbo": refiner_nelbo},
        posterior=posterior,
        chain_images=posterior_input,
        std=_spread(total, total_square, iterations - first_counted + 1, observed),
    )


def _spread(
    total: torch.Tensor, total_square: torch.Tensor, count: int, observed: torch.Tensor
) -> torch.Tensor:
    mean = total / count
    std = (total_square / count - mean**2).clamp(min=0.0).sqrt()
    return torch.where(observed, torch.zeros_like(std), std)
