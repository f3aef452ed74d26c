"""Restoration as inference on what was observed: `restore`, the one entry point, and its methods.

Given observations y of clean images x under an observation model p(y | x) (``missing``
pixels, ``gaussian`` noise, ...), `restore` estimates p(x | y) with one of the methods of
`METHODS`:

- ``conditional`` (the default): refine q(z | y) under p(y | z) with any refiner, starting
  from the encoder applied to y (unobserved pixels filled with ``fill``, 0 by default: the
  background of dark-background images, and what the paper's chain starts from); the
  result is E[x | y] = E_{z ~ q(z | y)} [ E[x | y, z] ], the average over draws of z of the
  pixel posterior given y and z (`conditional_summary`); its variance follows from the law
  of total variance. Imputation by the conditional mean under the model is that of
  MIWAE (Mattei & Frellsen, ICML 2019).
- ``importance``: self-normalised importance sampling with the refined q as proposal
  (`importance_summary`). Draw z_1..z_K ~ q(z | y), weigh each by
  w_k = p(y, z_k) / q(z_k | y); the mean is sum_k w_k E[x | y, z_k] / sum_k w_k
  (consistent as K grows whatever the proposal's quality, if it covers the posterior),
  samples come by importance resampling (Rubin 1988), and the conditional log-likelihood
  of clean data by the same weights. The better the proposal, the larger the effective
  sample size ``(sum w)^2 / sum w^2``.
- ``mwg``: Metropolis-within-Gibbs with the refined q as proposal, asymptotically exact
  (`metropolis_within_gibbs`). The chain's state is (z, x); each iteration proposes
  z' ~ q(z | y) independently of the state and accepts it with probability
  min(1, w(z') / w(z)), w(z) = p(y | z) p(z) / q(z | y) (x is integrated out exactly, since
  the observation model gives p(y | z)), then draws x ~ p(x | y, z). Step 2 after step 1
  is a partially collapsed Gibbs sampler (van Dyk & Park 2008). Mattei & Frellsen (2018)
  propose z' from the encoder applied to the current completed image; with a refined
  q(z | y), whose draws do not depend on the current x, the collapsed step accepts far
  more often. After ``burn_in`` iterations the restored image is the Rao-Blackwellised mean
  (1 / T) sum_t E[x | y, z_t].
- ``pseudo-gibbs``: the paper's chain, the baseline (`lvmtoolkit.tasks.gibbs`).

Every method returns the posterior mean, the per-pixel standard deviation and samples; with
clean ``reference`` images it also estimates the conditional log-likelihood
log p(reference | y) (for ``missing``: log p(x_miss | x_obs)). Every method folds the draws
it visits into a `PixelSummary`, so memory does not grow with the number of draws.

References:
    Mattei & Frellsen, "MIWAE: Deep Generative Modelling and Imputation of Incomplete Data
    Sets", ICML 2019; Mattei & Frellsen, "Leveraging the Exact Likelihood of Deep Latent
    Variable Models", NeurIPS 2018; van Dyk & Park, "Partially Collapsed Gibbs Samplers",
    JASA 2008; Rubin, "Using the SIR Algorithm to Simulate Posterior Distributions",
    Bayesian Statistics 3, 1988.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.distributions import Distribution

from lvmtoolkit.core.model import Model
from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.core.refiner import Refiner
from lvmtoolkit.core.runtime import (
    check_seed,
    chunks,
    eval_mode,
    frozen,
    mask_rows,
    seeded,
    stream_seed,
)
from lvmtoolkit.errors import LvmError, OptionError
from lvmtoolkit.metrics.conditional import (
    conditional_log_likelihood,
    distinct_rows,
    posterior_latents,
    weighted_latents,
)
from lvmtoolkit.tasks import METHODS
from lvmtoolkit.tasks.gibbs import ChainPosterior, gibbs_refiner, pseudo_gibbs
from lvmtoolkit.tasks.observations import ObservationModel, parse_observation
from lvmtoolkit.tasks.observed_model import ObservedModel

Result = Literal["mean", "sample"]

RESTORATION_REFINER_DEFAULTS: dict[str, Any] = {
    "steps": 300,
    "lr": 0.2,
    "lr_scaling": "none",
    "hierarchical_flow_lr": 0.0075,
}
"""Defaults for refiners that declare these options when they refine q(z | y) for
restoration (see `restoration_refiner`), chosen by measurement on held-out digits (the
mnist-5k test split; docs/results/restoration.md). Restoration starts far from the
posterior (the encoder saw a corrupted image), so it wants larger moves than refining a
clean image. With the VAE, lr 0.2 reaches in 300 steps the SSIM of 1,000 steps at 0.05
(0.685 vs 0.681), and more steps add less than 0.002. With the NVAE (50 held-out digits,
Gaussian noise of variance 0.5, measured again after the batch-norm fix), svi restored at
SSIM 0.715 with these defaults, 0.695 with lr 0.05 and 0.638 with
``lr_scaling="dimension"`` (a slower rate for large latent groups).

``svi-flow`` sets the rate of a hierarchical posterior's flows relative to ``lr``, so the
larger ``lr`` would also move the NVAEs' per-datapoint flows 4x faster than the rate tuned
for them (0.03 at svi's 0.05), and their noise in upper groups reaches every group below:
0.0075 keeps that tuned absolute rate. On the same 50 digits svi-flow restored at 0.721
with 0.0075 and 0.601 with 0.03.

``svi`` keeps its own gradient estimator (sticking the landing). Reparameterised gradients
scored 0.721 on those 50 digits (stl 0.715). Before the batch-norm fix, paired on 200
held-out digits, the difference was +0.001 ± 0.003 on the NVAE and +0.000 ± 0.001 on
the VAE (1,000 digits). That is not yet a reason to change a default."""

KEEPS_OWN: dict[str, tuple[str, ...]] = {"svi-paper": ("lr",)}
"""Options a refiner keeps although it declares them: ``svi-paper`` *is* the paper's
learning rate."""

METHOD_DEFAULTS: dict[str, dict[str, int]] = {
    "conditional": {"num_samples": 32},
    "importance": {"num_samples": 256},
    "mwg": {"iterations": 300},
    "pseudo-gibbs": {"iterations": 100},
}
"""Per-method defaults of `restore` (samples of z, chain lengths)."""

BURN_IN_FRACTION = 6
"""The ``mwg`` chain leaves out its first iterations // 6 by default (50 of 300)."""

NLL_SAMPLES = 256
"""Default importance samples of the conditional log-likelihood estimate."""


@dataclass
class Restoration:
    """What `restore` returns.

    Attributes:
        images: ``(N, *data_shape)`` the result: ``mean``, or the first of ``samples``
            (``result="sample"``). Under ``missing`` observed pixels are the input's, bit
            for bit.
        mean: E[x | y], the posterior mean of every pixel.
        std: The posterior standard deviation of every pixel (0 where a pixel is known);
            for ``pseudo-gibbs`` the spread of the chain over its second half.
        samples: ``(keep, N, *data_shape)`` samples of x from the method's p(x | y).
        observed: Boolean ``(N, *data_shape)``, True where a pixel was observed.
        method: The method's name.
        refiner: The refiner's name.
        observation: The observation model, as ``NAME:KEY=VALUE,...``.
        seconds: Wall-clock time of the restoration (refinement and sampling; not the
            log-likelihood estimate).
        posterior: The posterior the method used: the refined q(z | y) (conditional,
            importance, mwg) or the chain's last q(z | x'_T) (pseudo-gibbs).
        log_likelihood: ``(N,)`` estimates of log p(reference | y) in nats, when clean
            ``reference`` images were given; else None.
        info: Method extras: ``acceptance`` (mwg, per image), ``effective_sample_size``
            (importance), ``refine_seconds``, ``sample_seconds``, ``nll_seconds``, the
            refiner's ``refiner_nelbo``.
    """

    images: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    samples: torch.Tensor
    observed: torch.Tensor
    method: str
    refiner: str
    observation: str
    seconds: float
    posterior: Posterior | None = None
    log_likelihood: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


def restoration_refiner(name: str = "svi", **options: Any) -> Refiner:
    """A registered refiner configured for restoration (`RESTORATION_REFINER_DEFAULTS`;
    ``svi-paper`` keeps its learning rate, see `KEEPS_OWN`).

    Args:
        name: Registered refiner name (``lvm refiners list``).
        **options: Refiner options, typed or as strings; they override the defaults.

    Returns:
        The configured refiner.
    """
    from lvmtoolkit.plugins import get_refiner

    refiner_class = get_refiner(name)
    declared = refiner_class.option_names() - set(KEEPS_OWN.get(name, ()))
    defaults = {k: v for k, v in RESTORATION_REFINER_DEFAULTS.items() if k in declared}
    return refiner_class(**{**defaults, **options})


def _positive(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _full_mask(mask: Any, y: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise LvmError(f"mask must be a boolean torch.Tensor, got {type(mask).__name__}")
    try:
        return mask.to(y.device).bool().expand_as(y).clone()
    except RuntimeError:
        raise LvmError(
            f"mask of shape {tuple(mask.shape)} does not match images of shape {tuple(y.shape)}"
        ) from None


def restore(
    model: Model,
    y: torch.Tensor,
    observation: ObservationModel | str = "missing",
    *,
    mask: torch.Tensor | None = None,
    method: str = "conditional",
    refiner: Refiner | str | None = None,
    num_samples: int | None = None,
    keep: int = 0,
    iterations: int | None = None,
    burn_in: int | None = None,
    seed: int = 0,
    fill: float = 0.0,
    result: Result = "mean",
    reference: torch.Tensor | None = None,
    nll_samples: int = NLL_SAMPLES,
    posterior: Posterior | None = None,
) -> Restoration:
    """Restore images from observations y by inference on what was observed.

    Args:
        model: Any backend (its parameters are not changed).
        y: ``(N, *model.data_shape)`` observations. Pixels outside ``mask`` are ignored
            (they may be NaN) and filled with ``fill`` for the encoder.
        observation: How y came from the clean images: an `ObservationModel` or its
            ``NAME:KEY=VALUE,...`` text (``"missing"``, ``"gaussian:variance=0.5"``,
            ``"salt-pepper:rate=0.2"``, ``"bit-flip:rate=0.1"``, or a plugin's).
        mask: Boolean, broadcastable to ``y``: True where a pixel was observed. None: all
            were. Under ``missing`` these pixels are kept bit for bit.
        method: One of `METHODS`: ``conditional``, ``importance``, ``mwg``,
            ``pseudo-gibbs``.
        refiner: The refiner of q(z | y) (a name or a configured refiner). Default:
            ``svi`` with `RESTORATION_REFINER_DEFAULTS`; for ``pseudo-gibbs`` the chain's
            per-iteration defaults (`gibbs_refiner`) and ``amortized``.
        num_samples: Draws of z for the mean (``conditional``) or importance samples
            (``importance``); default `METHOD_DEFAULTS`.
        keep: Samples of x to return per image (at least 1 with ``result="sample"``).
        iterations: Chain length (``mwg``, ``pseudo-gibbs``); default `METHOD_DEFAULTS`.
        burn_in: Iterations of the ``mwg`` chain left out; default a sixth of them.
        seed: Seed of the sampling noise (the refiner's own noise comes from its ``seed``
            option; the chain's refiner gets a fresh one per iteration).
        fill: Value of the unobserved pixels for the encoder (and the chain's start).
        result: ``"mean"``: ``images`` is E[x | y]; ``"sample"``: one posterior sample.
        reference: Clean images; if given, ``log_likelihood`` estimates
            log p(reference | y) with the method's posterior (``nll_samples`` importance
            samples; ``mwg``: its chain).
        nll_samples: k of that estimate (`conditional_log_likelihood`).
        posterior: A q(z | y) already refined for these observations (e.g. the
            ``posterior`` of an earlier `Restoration`); the refiner is then not run, and
            only names the result. Not for ``pseudo-gibbs``.

    Returns:
        A `Restoration`.

    Raises:
        UnknownNameError: An unknown observation model or refiner.
        ObservationMismatch: An observation model without an exact p(y | z) for the
            model's pixel likelihood (e.g. ``salt-pepper`` with Gaussian pixels).
        LvmError: ``y`` or ``mask`` that do not fit the model or the observation model.
        OptionError: A setting out of range.

    References:
        Mattei & Frellsen, "Leveraging the Exact Likelihood of Deep Latent Variable
        Models", NeurIPS 2018 (``mwg``); Mattei & Frellsen, "MIWAE: Deep Generative
        Modelling and Imputation of Incomplete Data Sets", ICML 2019 (``importance``).
    """
    if method not in METHODS:
        raise OptionError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    if result not in ("mean", "sample"):
        raise OptionError(f"result must be 'mean' or 'sample', got {result!r}")
    check_seed(seed)
    if not isinstance(y, torch.Tensor):
        raise LvmError(f"y must be a torch.Tensor, got {type(y).__name__}")
    keep = _positive("keep", keep, minimum=0)
    if result == "sample":
        keep = max(keep, 1)
    defaults = METHOD_DEFAULTS[method]
    if num_samples is None:
        num_samples = defaults.get("num_samples", 1)
    if iterations is None:
        iterations = defaults.get("iterations", 1)
    num_samples = _positive("num_samples", num_samples)
    iterations = _positive("iterations", iterations)
    burn_in = iterations // BURN_IN_FRACTION if burn_in is None else burn_in
    burn_in = _positive("burn_in", burn_in, minimum=0)
    if method == "mwg" and burn_in >= iterations:
        raise OptionError(f"burn_in ({burn_in}) must be below iterations ({iterations})")
    nll_samples = _positive("nll_samples", nll_samples)
    observation = parse_observation(observation)
    # Eval mode throughout (batch norm on its running statistics, no dropout), whatever
    # mode the caller left the model in; every module's mode is restored afterwards.
    with frozen(model):
        observed_model = ObservedModel(model, observation)
        full_mask = None if mask is None else _full_mask(mask, y)
        filled = y if full_mask is None else torch.where(full_mask, y, torch.full_like(y, fill))
        observed_model.check(filled, full_mask)
        if reference is not None and (
            not isinstance(reference, torch.Tensor) or reference.shape != y.shape
        ):
            raise LvmError("reference must be a tensor of the shape of y")

        if method == "pseudo-gibbs":
            if posterior is not None:
                raise OptionError("pseudo-gibbs refines its own posteriors; it takes no posterior")
            return _pseudo_gibbs(
                observed_model, filled, full_mask, refiner, iterations, seed, fill, result,
                reference, nll_samples,
            )  # fmt: skip
        if refiner is None or isinstance(refiner, str):
            refiner = restoration_refiner(refiner or "svi")
        started = time.perf_counter()
        info: dict[str, Any] = {}
        if posterior is None:
            refined = refiner.refine(observed_model, filled, mask=full_mask)
            posterior = refined.posterior
            if refined.trace.numel():
                info["refiner_nelbo"] = float(refined.trace[-1].mean())
        else:
            posterior.check_batch_size(y.shape[0])
        refine_seconds = time.perf_counter() - started
        info["refine_seconds"] = refine_seconds
        log_likelihood = None
        with seeded(stream_seed(seed, f"restore/{method}"), y.device):
            if method == "conditional":
                summary = conditional_summary(
                    observed_model, posterior, filled, full_mask, num_samples=num_samples, keep=keep
                )
                samples = summary.samples
            elif method == "importance":
                summary, log_likelihood = importance_summary(
                    observed_model, posterior, filled, full_mask, num_samples=num_samples,
                    keep=keep, reference=reference,
                )  # fmt: skip
                samples = summary.samples
                info["effective_sample_size"] = summary.effective_sample_size
            else:
                summary, log_likelihood, extra = metropolis_within_gibbs(
                    observed_model, posterior, filled, full_mask, iterations=iterations,
                    burn_in=burn_in, keep=keep, reference=reference,
                )  # fmt: skip
                samples = summary.samples
                info.update(extra)
        seconds = time.perf_counter() - started
        info["sample_seconds"] = seconds - refine_seconds
        if reference is not None and log_likelihood is None:
            nll_started = time.perf_counter()
            log_likelihood = conditional_nll_estimate(
                observed_model, posterior, filled, full_mask, reference, nll_samples, seed
            )
            info["nll_seconds"] = time.perf_counter() - nll_started
        return _finish(
            observation, filled, full_mask, summary.mean, summary.variance.sqrt(), samples,
            method, refiner.name, seconds, posterior, log_likelihood, info, result,
        )  # fmt: skip


def conditional_nll_estimate(
    model: ObservedModel,
    posterior: Posterior,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    reference: torch.Tensor,
    num_samples: int = NLL_SAMPLES,
    seed: int = 0,
) -> torch.Tensor:
    """log p(reference | y) per image, importance-weighted with ``posterior`` as proposal.

    `conditional_log_likelihood` with log p(x | y, z) from the observed model's pixel
    posterior; noise drawn from a stream of ``seed`` of its own.
    """

    def log_target(index: torch.Tensor, z: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = model.pixel_posterior(z, y[index], mask_rows(mask, index, y))
        return pixels.log_prob(reference[index]).flatten(1).sum(1)

    return conditional_log_likelihood(
        model, posterior, y, log_target, mask, num_samples=num_samples,
        seed=stream_seed(seed, "restore/nll"),
    )  # fmt: skip


def _finish(
    observation: ObservationModel,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    mean: torch.Tensor,
    std: torch.Tensor,
    samples: torch.Tensor,
    method: str,
    refiner: str,
    seconds: float,
    posterior: Posterior | None,
    log_likelihood: torch.Tensor | None,
    info: dict[str, Any],
    result: str,
) -> Restoration:
    observed = torch.ones_like(y, dtype=torch.bool) if mask is None else mask
    mean, std, samples = mean.to(y.dtype), std.to(y.dtype), samples.to(y.dtype)
    if observation.keeps_observed:
        # where(), not arithmetic: the observed pixels are the input's, bit for bit.
        mean = torch.where(observed, y, mean)
        std = torch.where(observed, torch.zeros_like(std), std)
        samples = torch.where(observed, y, samples)
    images = mean if result == "mean" else samples[0]
    return Restoration(
        images=images,
        mean=mean,
        std=std,
        samples=samples,
        observed=observed,
        method=method,
        refiner=refiner,
        observation=observation.spec,
        seconds=seconds,
        posterior=posterior,
        log_likelihood=log_likelihood,
        info=info,
    )


def _pseudo_gibbs(
    model: ObservedModel,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    refiner: Refiner | str | None,
    iterations: int,
    seed: int,
    fill: float,
    result: str,
    reference: torch.Tensor | None,
    nll_samples: int,
) -> Restoration:
    """The paper's chain on the backend itself: it keeps the pixels a ``missing`` mask
    marks and redraws all others (every pixel, for noise); it has no noise model."""
    if refiner is None or isinstance(refiner, str):
        refiner = gibbs_refiner(refiner or "amortized")
    keeps = model.observation.keeps_observed and mask is not None
    chain = pseudo_gibbs(
        model.base, y, mask if keeps else None, refiner, iterations=iterations, seed=seed,
        output="mean", fill=fill,
    )  # fmt: skip
    info: dict[str, Any] = {"refiner_nelbo": chain.info.get("refiner_nelbo", [])}
    log_likelihood = None
    if reference is not None and chain.posterior is not None:
        started = time.perf_counter()
        proposal = ChainPosterior(chain.posterior, chain.chain_images)
        log_likelihood = conditional_nll_estimate(
            model, proposal, y, mask, reference, nll_samples, seed
        )
        info["nll_seconds"] = time.perf_counter() - started
    std = chain.std if chain.std is not None else torch.zeros_like(y)
    # The chain's state x'_T is one sample of what it draws.
    state = chain.chain_images if chain.chain_images is not None else chain.images
    samples = state.unsqueeze(0)[: 1 if result == "sample" else 0]
    restored = _finish(
        model.observation, y, mask if keeps else None, chain.images, std, samples,
        "pseudo-gibbs", refiner.name, chain.seconds, chain.posterior, log_likelihood, info,
        result,
    )  # fmt: skip
    restored.observed = torch.ones_like(y, dtype=torch.bool) if mask is None else mask
    return restored


# --- running summaries of p(x | y): mean, variance, kept samples --------------------


class PixelSummary:
    """Accumulates p(x | y, z_j) over draws j for N datapoints, one draw at a time.

    Every method visits latents z (drawn from a posterior, weighted by importance or
    visited by a chain) and, at each, the pixel posterior p(x | y, z). Folded in:

    - the mean E[x | y] = sum_j w_j E[x | y, z_j] / sum_j w_j;
    - the variance by the law of total variance, from the running E[x^2 | y];
    - ``keep`` samples of x: with weights, each slot holds a draw chosen with probability
      proportional to its weight (streaming importance resampling, exact for every slot);
      without weights, slot s holds the s-th draw.

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


# --- conditional: the posterior mean under a refined q(z | y) -----------------------


@torch.no_grad()
def conditional_summary(
    model: ObservedModel,
    posterior: Posterior,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    num_samples: int,
    keep: int = 0,
    max_rows: int | None = None,
) -> PixelSummary:
    """Mean, variance and ``keep`` samples of p(x | y) under ``posterior`` as q(z | y).

    Args:
        model: The backend seen through the observation model; run in eval mode (each
            module gets its own mode back afterwards).
        posterior: q(z | y) for the N datapoints of ``y`` (refined, or the encoder's).
        y: ``(N, *data_shape)`` observations (unobserved pixels filled).
        mask: Observed-pixel mask, or None.
        num_samples: Draws of z per datapoint.
        keep: Samples of x to keep per datapoint (the first ``keep`` draws).
        max_rows: Bound on datapoint-draws per forward pass; None: the model's
            `Model.chunk_size`.

    Returns:
        The summary; draws use torch's global RNG.
    """
    summary = PixelSummary(y.shape[0], tuple(y.shape[1:]), keep=keep, device=y.device)
    with eval_mode(model):
        for index, z in posterior_latents(
            model, posterior, y, mask, num_samples=num_samples, max_rows=max_rows
        ):
            summary.add(index, model.pixel_posterior(z, y[index], mask_rows(mask, index, y)))
    return summary


# --- importance sampling and resampling, q(z | y) as proposal -----------------------


@torch.no_grad()
def importance_summary(
    model: ObservedModel,
    posterior: Posterior,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    num_samples: int,
    keep: int = 0,
    reference: torch.Tensor | None = None,
    max_rows: int | None = None,
) -> tuple[PixelSummary, torch.Tensor | None]:
    """Importance-weighted mean, variance and resampled draws of p(x | y).

    Args:
        model: The backend seen through the observation model; run in eval mode (each
            module gets its own mode back afterwards).
        posterior: The proposal q(z | y) for the N datapoints of ``y``.
        y: ``(N, *data_shape)`` observations (unobserved pixels filled).
        mask: Observed-pixel mask, or None.
        num_samples: K, importance samples per datapoint.
        keep: Samples of x to draw by importance resampling, per datapoint.
        reference: Clean data; if given, also estimate log p(reference | y).
        max_rows: Bound on datapoint-draws per forward pass; None: the model's
            `Model.chunk_size`.

    Returns:
        The weighted summary (its ``effective_sample_size`` says what the weights are
        worth) and the ``(N,)`` log-likelihood estimates (None without ``reference``).
    """
    n = y.shape[0]
    summary = PixelSummary(n, tuple(y.shape[1:]), keep=keep, device=y.device, weighted=True)
    numerator = torch.full((n,), -math.inf, dtype=torch.float64, device=y.device)
    with eval_mode(model):
        for index, z, log_w in weighted_latents(
            model, posterior, y, mask, num_samples=num_samples, max_rows=max_rows
        ):
            pixels = model.pixel_posterior(z, y[index], mask_rows(mask, index, y))
            summary.add(index, pixels, log_w)
            if reference is not None:
                count = distinct_rows(index)
                target = pixels.log_prob(reference[index]).flatten(1).sum(1).double()
                numerator[index[:count]] = torch.logaddexp(
                    numerator[index[:count]],
                    torch.logsumexp((log_w.double() + target).view(-1, count), dim=0),
                )
    log_likelihood = None
    if reference is not None:
        log_likelihood = (numerator - summary.log_total).float()
    return summary, log_likelihood


# --- Metropolis-within-Gibbs, q(z | y) as proposal ----------------------------------


def _propose(
    model: ObservedModel, posterior: Posterior, y: torch.Tensor, mask: torch.Tensor | None,
    max_rows: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:  # fmt: skip
    """One draw of z ~ q per datapoint, in order, with its log weight."""
    zs, log_ws = [], []
    for _, z, log_w in weighted_latents(
        model, posterior, y, mask, num_samples=1, max_rows=max_rows
    ):
        zs.append(z)
        log_ws.append(log_w)
    return {k: torch.cat([z[k] for z in zs]) for k in zs[0]}, torch.cat(log_ws)


@torch.no_grad()
def metropolis_within_gibbs(
    model: ObservedModel,
    posterior: Posterior,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    iterations: int,
    burn_in: int,
    keep: int = 0,
    reference: torch.Tensor | None = None,
    max_rows: int | None = None,
) -> tuple[PixelSummary, torch.Tensor | None, dict[str, Any]]:
    """Run one chain per image; summarise p(x | y) from the iterations after ``burn_in``.

    Args:
        model: The backend seen through the observation model; run in eval mode (each
            module gets its own mode back afterwards).
        posterior: The proposal q(z | y) for the N datapoints of ``y``.
        y: ``(N, *data_shape)`` observations (unobserved pixels filled).
        mask: Observed-pixel mask, or None.
        iterations: Iterations of each chain (the first draw from q is iteration 1).
        burn_in: Iterations left out of the summary (fewer than ``iterations``).
        keep: Samples of x to keep per image, at evenly spaced iterations after burn-in.
        reference: Clean data; if given, also estimate log p(reference | y).
        max_rows: Bound on images per forward pass; None: the model's
            `Model.chunk_size`.

    Returns:
        The summary (samples in ``summary.samples``), the ``(N,)`` log-likelihood estimates
        (None without ``reference``), and ``{"acceptance": (N,) acceptance rates}``.
    """
    n = y.shape[0]
    max_rows = model.rows_per_pass(max_rows)
    summary = PixelSummary(n, tuple(y.shape[1:]), device=y.device)
    samples = torch.zeros(keep, n, *y.shape[1:], device=y.device)
    kept_at = {burn_in + 1 + (s * (iterations - burn_in)) // max(keep, 1): s for s in range(keep)}
    log_likelihood = torch.full((n,), -math.inf, dtype=torch.float64, device=y.device)
    accepted = torch.zeros(n, device=y.device)
    with eval_mode(model):
        z, log_w = _propose(model, posterior, y, mask, max_rows)
        for t in range(1, iterations + 1):
            if t > 1:
                proposal, proposal_log_w = _propose(model, posterior, y, mask, max_rows)
                log_u = torch.rand(n, device=y.device).log()
                accept = log_u < (proposal_log_w - log_w)
                accepted += accept.float()
                for name, value in z.items():
                    view = (-1,) + (1,) * (value.dim() - 1)
                    z[name] = torch.where(accept.view(view), proposal[name], value)
                log_w = torch.where(accept, proposal_log_w, log_w)
            if t <= burn_in:
                continue
            for part in chunks(n, max_rows):
                rows = torch.arange(part.start, part.stop, device=y.device)
                pixels = model.pixel_posterior(
                    {k: v[part] for k, v in z.items()}, y[part], mask_rows(mask, part, y)
                )
                summary.add(rows, pixels)
                if t in kept_at:
                    samples[kept_at[t], part] = pixels.sample().float()
                if reference is not None:
                    target = pixels.log_prob(reference[part]).flatten(1).sum(1).double()
                    log_likelihood[part] = torch.logaddexp(log_likelihood[part], target)
    summary.samples = samples
    estimate = None
    if reference is not None:
        estimate = (log_likelihood - math.log(iterations - burn_in)).float()
    rate = accepted / max(iterations - 1, 1)
    return summary, estimate, {"acceptance": rate}
