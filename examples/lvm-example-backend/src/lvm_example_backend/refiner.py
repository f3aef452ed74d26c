"""``importance``: refine by moment matching to importance-weighted samples (no gradients).

Each round draws ``samples`` latents per datapoint from the current Gaussian posterior,
weights them by p(x, z) / q(z | x), and moves the Gaussian to the weighted mean and
standard deviation (adaptive importance sampling). A round costs ``samples`` passes
through the decoder and no backward pass. As every refiner must, it returns for each
datapoint the best posterior it has seen, never one worse than the start.

References:
    Cappé, Guillin, Marin & Robert, "Population Monte Carlo", Journal of Computational and
    Graphical Statistics, 2004.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro import poutine

import lvmtoolkit as lvm
from lvmtoolkit import frozen, seeded, stream_seed


@dataclass
class ImportanceOptions:
    """Options of the ``importance`` refiner."""

    steps: int = lvm.option(5, "rounds of moment matching", minimum=0)
    samples: int = lvm.option(32, "importance samples per datapoint per round", minimum=2)
    select_samples: int = lvm.option(
        16, "samples of the NELBO estimate that picks each datapoint's best posterior", minimum=1
    )
    seed: int = lvm.option(0, "seed of the sampling noise")


class ImportanceRefiner(lvm.Refiner):
    """Adaptive importance sampling: a Gaussian moved to the weighted moments each round."""

    name = "importance"
    description = "moment matching to importance-weighted samples, round by round (no gradients)"
    options_class = ImportanceOptions
    iterative = True  # it takes `steps` rounds

    def _refine(self, call: lvm.RefineCall) -> lvm.RefineResult:
        # Refiner.refine has validated x and mask, resolved init and kept the checkpoints
        # within 0..steps before calling this.
        o = self.options
        model, x, mask = call.model, call.x, call.mask
        with frozen(model), torch.no_grad():
            current = lvm.LocalGaussianPosterior.from_posterior(call.init, x)
            best = current.select(slice(None))
            best_score = self._score(model, best, x, mask)
            call.checkpoint(0, best)
            trace = torch.empty(o.steps, x.shape[0])
            marks = {s for s in call.checkpoints if s >= 1} | {o.steps}
            with seeded(stream_seed(o.seed, "importance/sample"), x.device):
                for step in range(1, o.steps + 1):
                    log_w, z = self._weighted_samples(model, current, x, mask)
                    trace[step - 1] = -log_w.mean(0)  # the NELBO estimate before this update
                    current = self._moment_match(current, log_w, z)
                    if step in marks:
                        score = self._score(model, current, x, mask)
                        better = score < best_score
                        best.assign(current, better)
                        best_score = torch.where(better, score, best_score)
                        call.checkpoint(step, best)
        return lvm.RefineResult(best, trace, steps=o.steps, info={"selection_nelbo": best_score})

    def _score(
        self, model: lvm.Model, posterior: lvm.Posterior, x: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        # Fixed noise, other than the sampling noise (and than an evaluation's seed):
        # candidates are compared fairly.
        seed = stream_seed(self.options.seed, "importance/select")
        return lvm.nelbo(
            model, posterior, x, mask, num_samples=self.options.select_samples, seed=seed
        )

    def _weighted_samples(
        self, model: lvm.Model, posterior: lvm.Posterior, x: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Log importance weights ``(samples, N)`` and the latents ``{site: (samples, N, ...)}``."""
        log_w, latents = [], []
        for _ in range(self.options.samples):
            guide_trace = poutine.trace(posterior).get_trace(x)
            replayed = poutine.replay(posterior, trace=guide_trace)
            # One-sample ELBO without closed-form KL is exactly log p(x, z) - log q(z | x).
            log_w.append(
                lvm.per_datapoint_elbo(model.model, replayed, x, mask=mask, analytic_kl=False)
            )
            latents.append({k: guide_trace.nodes[k]["value"] for k in model.latent_shapes})
        z = {k: torch.stack([s[k] for s in latents]) for k in model.latent_shapes}
        return torch.stack(log_w), z

    @staticmethod
    def _moment_match(
        posterior: lvm.LocalGaussianPosterior, log_w: torch.Tensor, z: dict[str, torch.Tensor]
    ) -> lvm.LocalGaussianPosterior:
        weights = torch.softmax(log_w, dim=0)  # (samples, N): normalised over samples
        old = posterior.gaussian_params()
        params = {}
        for site, values in z.items():
            w = weights.view(*weights.shape, *([1] * (values.dim() - 2)))
            mean = (w * values).sum(0)
            std = ((w * (values - mean) ** 2).sum(0)).sqrt()
            # With one dominant weight the spread collapses; shrinking at most by half per
            # round keeps the next round's proposal wide enough to find better samples.
            params[site] = (mean, torch.maximum(std, 0.5 * old[site][1]))
        return lvm.LocalGaussianPosterior(params)
