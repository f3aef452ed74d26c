"""Restoration as inference on what was observed: `restore`, the one entry point.

Given observations y of clean images x under an observation model p(y | x) (``missing``
pixels, ``gaussian`` noise, ...), `restore` estimates p(x | y) with one of the methods of
`METHODS`:

- ``conditional`` (the default): refine q(z | y) under p(y | z) with any refiner, starting
  from the encoder applied to y (unobserved pixels filled with ``fill``, 0 by default: the
  background of dark-background images, and what the paper's chain starts from); the
  result is E[x | y] averaged over q (`lvmtoolkit.tasks.conditional`);
- ``importance``: self-normalised importance sampling and importance resampling with the
  refined q as proposal (`lvmtoolkit.tasks.importance`);
- ``mwg``: Metropolis-within-Gibbs with the refined q as proposal
  (`lvmtoolkit.tasks.mwg`);
- ``pseudo-gibbs``: the paper's chain, the baseline (`lvmtoolkit.tasks.gibbs`).

Every method returns the posterior mean, the per-pixel standard deviation and samples; with
clean ``reference`` images it also estimates the conditional log-likelihood
log p(reference | y) (for ``missing``: log p(x_miss | x_obs)).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from lvmtoolkit.core.model import Model
from lvmtoolkit.core.posterior import Posterior
from lvmtoolkit.core.refiner import Refiner
from lvmtoolkit.core.runtime import check_seed, frozen, mask_rows, seeded, stream_seed
from lvmtoolkit.errors import LvmError, OptionError
from lvmtoolkit.metrics.conditional import conditional_log_likelihood
from lvmtoolkit.tasks.conditional import conditional_summary
from lvmtoolkit.tasks.gibbs import ChainPosterior, gibbs_refiner, pseudo_gibbs
from lvmtoolkit.tasks.importance import importance_summary
from lvmtoolkit.tasks.kinds import METHODS
from lvmtoolkit.tasks.mwg import metropolis_within_gibbs
from lvmtoolkit.tasks.observation_model import ObservationModel, parse_observation
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
