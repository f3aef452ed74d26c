"""The ``svi`` refiner: per-datapoint Gaussian posteriors optimised from the encoder's.

Unamortized inference as in Hjelm et al. (2016), Krishnan et al. (2018) and Cremer et al.
(2018): each datapoint gets its own mean and scale for every latent site, initialised from
the starting posterior (the encoder's by default), and all datapoints of a batch are
optimised together: their losses are independent, so one vectorised step is N
per-datapoint steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyro
import torch

from lvmtoolkit.core.model import Model, model_elbo
from lvmtoolkit.core.nelbo import nelbo
from lvmtoolkit.core.options import option
from lvmtoolkit.core.posterior import LocalPosterior, Posterior
from lvmtoolkit.core.refiner import RefineCall, Refiner, RefineResult
from lvmtoolkit.core.runtime import chunks, frozen, mask_rows, seeded, stream_seed
from lvmtoolkit.core.validation import check_allocation
from lvmtoolkit.refiners.local import STRUCTURES, make_local_posterior


def _fused(make: Any) -> Any:
    """``make(params, fused=True)`` where torch has a fused kernel for these tensors.

    A fused step reads and writes each parameter and its state once; the per-tensor loop
    makes several passes, which dominates a step when per-datapoint flows hold millions
    of weights (measured: 6x faster on 60M CPU parameters). Falls back to the loop where
    a device or dtype has no fused kernel.
    """

    def build(params: Any, **kwargs: Any) -> torch.optim.Optimizer:
        try:
            return make(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            return make(params, **kwargs)

    return build


OPTIMIZERS = {
    "adam": lambda params, o: _fused(torch.optim.Adam)(params, lr=o.lr),
    "sgd": lambda params, o: _fused(torch.optim.SGD)(params, lr=o.lr, momentum=o.momentum),
    "rmsprop": lambda params, o: torch.optim.RMSprop(params, lr=o.lr, momentum=o.momentum),
    "adagrad": lambda params, o: _fused(torch.optim.Adagrad)(params, lr=o.lr),
}


def gradient_option(default: str, where: str = "") -> Any:
    """The ``gradient`` option: reparam, or stl (sticking the landing); ``where`` says which
    posteriors take stl, where not all do."""
    return option(
        default,
        "gradient estimator: reparam, or stl (sticking the landing: Monte-Carlo KL, score "
        f"term dropped; zero variance at the true posterior{'; ' + where if where else ''})",
        choices=("reparam", "stl"),
    )


@dataclass
class SVIOptions:
    """Options of the ``svi`` refiner.

    Defaults were picked by measurement (``examples/refinement_recipes.py``, see
    ``docs/results/recipes.md``): Adam, lr 0.05 decayed to 0 by a cosine schedule over the
    run, sticking-the-landing gradients. On the bundled VAE this closes 73% / 92% / 99% /
    100% of the amortization gap in 10 / 30 / 100 / 1000 steps, against 7% / 18% / 47% /
    97% for the paper's recipe (Adam, lr 1e-3, constant), which stays available as the
    ``svi-paper`` refiner.
    """

    steps: int = option(1000, "gradient steps per datapoint", minimum=0)
    optimizer: str = option("adam", "torch optimiser", choices=tuple(OPTIMIZERS))
    lr: float = option(5e-2, "learning rate", minimum=0.0, exclusive_minimum=True)
    momentum: float = option(0.0, "momentum (sgd and rmsprop only)", minimum=0.0)
    lr_scaling: str = option(
        "dimension",
        "dimension: divide the rate of each latent site's parameters by sqrt(D / 10) for a "
        "site of D > 10 dimensions (noise-driven drift costs KL in proportion to D * lr^2); "
        "none: lr for all",
        choices=("dimension", "none"),
    )
    structure: str = option(
        "hierarchical",
        "hierarchical: a posterior that has a per-datapoint form of its own keeps its "
        "dependence between latent groups (NVAE: offsets to the encoder's residual "
        "parameters); mean-field: independent per-datapoint Gaussians per site",
        choices=STRUCTURES,
    )
    schedule: str = option(
        "cosine",
        "learning-rate schedule over the run: constant, or cosine decay to 0",
        choices=("constant", "cosine"),
    )
    clip_norm: float = option(
        0.0, "clip each datapoint's gradient to this norm (0: no clipping)", minimum=0.0
    )
    num_particles: int = option(1, "samples of z per datapoint per step", minimum=1)
    analytic_kl: bool = option(True, "closed-form KL where the guide/prior pair has one")
    gradient: str = gradient_option(
        "stl",
        "for per-datapoint Gaussians and hierarchical posteriors that support it, e.g. the "
        "NVAE's offsets; others use reparam",
    )
    chunk_size: int = option(
        0,
        "datapoints per forward pass (speed and memory; same optimisation, other noise "
        "draws); 0: the backend's own size (2048 for the VAE and GMVAE, 1024 for the NVAE)",
        minimum=0,
    )
    select_samples: int = option(
        16, "samples of the NELBO estimate that picks each datapoint's best posterior", minimum=1
    )
    seed: int = option(0, "seed of the sampling noise (refinement is reproducible)")


class SVIRefiner(Refiner):
    """Per-datapoint mu/sigma, initialised from the starting posterior, optimised jointly.

    For each datapoint the refiner keeps the best posterior it has seen: at the start, at
    every requested checkpoint and at the last step, each datapoint's current posterior is
    scored with a ``select_samples``-sample NELBO estimate under fixed noise (the same noise
    for every candidate), and replaces the kept one only where it scores lower. So the
    result is never worse than the start under that estimate. Non-finite gradients are
    zeroed per element, so no parameter ever becomes NaN.

    References:
        Cremer, Li & Duvenaud, "Inference Suboptimality in Variational Autoencoders",
        ICML 2018.
    """

    name = "svi"
    description = "per-datapoint mu/sigma initialised from the encoder, optimised by SVI"
    options_class = SVIOptions

    iterative = True

    def _refine(self, call: RefineCall) -> RefineResult:
        o = self.options
        model, x, mask = call.model, call.x, call.mask
        n = x.shape[0]
        chunk_size = self.pass_size(model)
        # Selection noise differs from the optimisation noise (and from the plain seed an
        # evaluation would use) but is the same for every candidate, so per-datapoint
        # comparisons are paired.
        select_seed = self.selection_seed

        def score(posterior: Posterior) -> torch.Tensor:
            return nelbo(
                model,
                posterior,
                x,
                mask,
                num_samples=o.select_samples,
                seed=select_seed,
                chunk_size=chunk_size,
                analytic_kl=o.analytic_kl,
            )

        with frozen(model):
            local = self._make_local(call.init, x)
        # STL drops the guide's own parameters from log q. Detaching a Normal site's
        # parameters does exactly that for independent per-datapoint Gaussians; in a
        # hierarchical posterior it would also cut the path through the groups above.
        # Families that drop only their own parameters declare it; the others use reparam.
        stl = o.gradient == "stl" and local.supports_stl
        best = local.select(slice(None))
        best_score = score(best)
        # Refuse --steps 10**12 here rather than fail in the allocator (or swap).
        check_allocation(
            (o.steps, n), torch.float32, f"the trace of {o.steps} steps x {n} datapoints"
        )
        trace = torch.empty(o.steps, n)
        marks = {s for s in call.checkpoints if s >= 1} | ({o.steps} if o.steps else set())
        improved: dict[int, int] = {}
        call.checkpoint(0, best)
        params = [p for p in local.parameters() if p.requires_grad]
        optimizer = self._optimizer(local, params)
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=o.steps)
            if o.schedule == "cosine" and o.steps
            else None
        )
        parts = chunks(n, chunk_size)

        with (
            frozen(model),
            seeded(self.optimisation_seed, x.device),
            pyro.validation_enabled(False),
        ):
            for step in range(1, o.steps + 1):
                # None, not zeros: the first backward pass then hands its gradient over
                # instead of adding it to a zeroed copy (a pass over every parameter).
                optimizer.zero_grad(set_to_none=True)
                for part in parts:
                    loss = self._loss(
                        model, local.rows(part), x[part], mask_rows(mask, part, x), stl
                    )
                    finite = torch.isfinite(loss)
                    loss.where(finite, torch.zeros_like(loss)).sum().backward()
                    trace[step - 1, part] = loss.detach().where(finite, math.inf).cpu()
                zero_non_finite(params)
                if o.clip_norm > 0:
                    clip_per_datapoint(params, o.clip_norm)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                if step in marks:
                    current = score(local)
                    better = current < best_score
                    best.assign(local, better)
                    best_score = torch.where(better, current, best_score)
                    improved[step] = int(better.sum())
                    call.checkpoint(step, best)
        return RefineResult(
            best,
            trace,
            steps=o.steps,
            info={"selection_nelbo": best_score, "datapoints_improved_at": improved},
        )

    def pass_size(self, model: Model) -> int:
        """Datapoints per forward pass on ``model``: ``chunk_size``, or the backend's own
        (`Model.chunk_size`) where it is 0."""
        return model.rows_per_pass(self.options.chunk_size or None, "chunk_size")

    @property
    def selection_seed(self) -> int:
        """Seed of the noise that scores candidates for keep-best (derived from ``seed``)."""
        return stream_seed(self.options.seed, "svi/select")

    @property
    def optimisation_seed(self) -> int:
        """Seed of the noise of the gradient steps (derived from ``seed``)."""
        return stream_seed(self.options.seed, "svi/optimise")

    def _make_local(self, init: Posterior, x: torch.Tensor) -> LocalPosterior:
        """The per-datapoint posterior to optimise, starting equal to ``init`` at ``x``."""
        o = self.options
        return make_local_posterior(init, x, structure=o.structure, num_flows=0, seed=o.seed)

    def _optimizer(
        self, local: LocalPosterior, params: list[torch.Tensor]
    ) -> torch.optim.Optimizer:
        """The optimiser of ``local``'s trainable ``params`` (``optimizer`` of `OPTIMIZERS`)."""
        return OPTIMIZERS[self.options.optimizer](self._param_groups(local, params), self.options)

    def _param_groups(self, local: LocalPosterior, params: list[torch.Tensor]) -> list[dict]:
        """One learning rate per tensor: ``lr``, scaled by the size of its latent site."""
        return rate_groups(params, {}, self.options)

    def _loss(
        self,
        model: Model,
        rows: Posterior,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        stl: bool = False,
    ) -> torch.Tensor:
        o = self.options
        total = 0.0
        for _ in range(o.num_particles):
            total = total - model_elbo(
                model, rows, x, mask, analytic_kl=o.analytic_kl and not stl, stl=stl
            )
        return total / o.num_particles


@dataclass
class PaperSVIOptions(SVIOptions):
    """The recipe of "Improving Inference in Latent Variable Models": Adam, lr 1e-3, constant."""

    lr: float = option(1e-3, "learning rate", minimum=0.0, exclusive_minimum=True)
    schedule: str = option(
        "constant",
        "learning-rate schedule over the run: constant, or cosine decay to 0",
        choices=("constant", "cosine"),
    )
    gradient: str = gradient_option("reparam")


class PaperSVIRefiner(SVIRefiner):
    """The ``svi`` refiner with the paper's recipe: Adam, lr 1e-3, constant, reparam."""

    name = "svi-paper"
    description = "svi with the paper's recipe: Adam, lr 1e-3, constant rate"
    options_class = PaperSVIOptions


REFERENCE_DIMENSION = 10
"""Latent dimension at which ``lr`` applies unscaled: the VAE's, where the recipe was tuned."""


def dimension_scale(dimension: int) -> float:
    """``min(1, sqrt(10 / D))``: the rate factor of a latent site of D dimensions.

    Adam moves every coordinate by about ``lr`` per step, also where the gradient is pure
    noise (inactive dimensions, which an NVAE has by the thousand); the KL this drift adds
    grows like ``D * lr**2``, so dividing the rate by ``sqrt(D / 10)`` makes a site of any
    size pay what a 10-dimensional one does.
    """
    return min(1.0, math.sqrt(REFERENCE_DIMENSION / max(dimension, 1)))


def rate_groups(
    params: list[torch.Tensor], factors: dict[int, tuple[float, int]], o: SVIOptions
) -> list[dict]:
    """Optimiser parameter groups: ``lr`` times ``factors[id(p)][0]`` (default 1), times
    `dimension_scale` of the tensor's site dimension (``factors[id(p)][1]``, default the
    size of one row) when ``o.lr_scaling == "dimension"``."""
    groups: dict[float, list[torch.Tensor]] = {}
    for p in params:
        factor, dimension = factors.get(id(p), (1.0, p[0].numel()))
        scale = dimension_scale(dimension) if o.lr_scaling == "dimension" else 1.0
        groups.setdefault(o.lr * factor * scale, []).append(p)
    return [{"params": group, "lr": rate} for rate, group in groups.items()]


def zero_non_finite(params: list[torch.Tensor]) -> None:
    """Give every parameter a gradient, with its non-finite elements zeroed.

    A parameter without one this step gets zeros. The sums of the gradients are checked
    first, in one reduction: a sum is finite whenever all its elements are (an overflowing
    sum only costs a needless pass), and the element-wise pass, which reads and writes
    every gradient, runs only when one is not.
    """
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    grads = [param.grad for param in params]
    if grads and not bool(torch.isfinite(torch.stack([g.sum() for g in grads]).sum())):
        for grad in grads:
            torch.nan_to_num_(grad, nan=0.0, posinf=0.0, neginf=0.0)


def clip_per_datapoint(params: list[torch.Tensor], max_norm: float) -> None:
    """Scale each datapoint's gradient (row ``i`` of every parameter) to norm <= max_norm."""
    grads = [p.grad for p in params if p.grad is not None]
    squared = sum(g.flatten(1).pow(2).sum(1) for g in grads)
    factor = (max_norm / (squared.sqrt() + 1e-12)).clamp(max=1.0)
    for g in grads:
        g.mul_(factor.view(-1, *([1] * (g.dim() - 1))))
