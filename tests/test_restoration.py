"""`restore`: conditional inference, importance sampling, Metropolis-within-Gibbs and the
paper's chain; checked against the exact Gaussian conditionals of probabilistic PCA."""

from __future__ import annotations

import math
import re

import pytest
import torch

from lvmtoolkit.errors import LvmError, OptionError
from lvmtoolkit.metrics.ssim import ssim
from lvmtoolkit.tasks import (
    GaussianNoise,
    Missing,
    ObservedModel,
    make_mask,
    restoration_refiner,
    restore,
)
from lvmtoolkit.tasks.restoration import PixelSummary, conditional_nll_estimate

# --- the exact answer: probabilistic PCA ----------------------------------------------


@pytest.fixture(scope="module")
def ppca():
    """pPCA (5 latent dimensions) fitted to 1,000 real digits, and 8 other digits."""
    from lvm_linear_gaussian.model import LinearGaussian

    from lvmtoolkit.plugins import get_dataset

    data = get_dataset("mnist-5k")()
    model = LinearGaussian.fit_ppca(data.load("train").images[:1000], latent_dim=5)
    return model, data.load("test").images[:8]


def _exact_missing(model, x, mask):
    """p(x_miss | x_obs) per image: mean, epistemic variance diag(W_m S W_m^T), log-density.

    x = W z + b + e: p(z | x_o) = N(mu, S), S = (I + W_o^T W_o / s2)^-1, and
    x_m | x_o = N(W_m mu + b_m, W_m S W_m^T + s2 I).
    """
    w, b, s2 = model.weight.double(), model.bias.double(), model.noise.double() ** 2
    out = []
    for xi, mi in zip(x, mask, strict=True):
        o = mi.flatten()
        m = ~o
        wo, wm = w[o], w[m]
        cov_z = torch.linalg.inv(torch.eye(w.shape[1], dtype=w.dtype) + wo.T @ wo / s2)
        mu = cov_z @ wo.T @ (xi.flatten().double()[o] - b[o]) / s2
        epistemic = wm @ cov_z @ wm.T
        total = epistemic + s2 * torch.eye(int(m.sum()), dtype=w.dtype)
        mean = wm @ mu + b[m]
        log_density = torch.distributions.MultivariateNormal(mean, total).log_prob(
            xi.flatten().double()[m]
        )
        out.append((m, mean, torch.diagonal(epistemic), log_density.item()))
    return out, s2


def _errors(restored, exact, s2):
    """Per image: RMS error of the mean in units of the exact epistemic sd, and the ratio of
    the estimated to the exact epistemic variance (the part of Var[x | y] that z carries)."""
    mean_errors, variance_ratios = [], []
    for i, (m, mean, epistemic, _) in enumerate(exact):
        ok = epistemic > 1e-6  # border pixels: constant in the data, no variance at all
        estimate = restored.mean[i].flatten()[m].double()
        variance = restored.std[i].flatten()[m].double() ** 2 - s2
        z = (estimate - mean)[ok] / epistemic[ok].sqrt()
        mean_errors.append(z.pow(2).mean().sqrt().item())
        variance_ratios.append((variance[ok] / epistemic[ok]).mean().item())
    return torch.tensor(mean_errors), torch.tensor(variance_ratios)


@pytest.mark.slow
def test_mwg_and_importance_resampling_match_the_exact_gaussian_conditional(ppca):
    model, x = ppca
    mask = make_mask("random", x.shape, seed=1)
    exact, s2 = _exact_missing(model, x, mask)
    refiner = restoration_refiner("svi", steps=300)
    runs = {
        "importance": restore(
            model, x, "missing", mask=mask, method="importance", refiner=refiner,
            num_samples=4000, keep=500,
        ),
        "mwg": restore(
            model, x, "missing", mask=mask, method="mwg", refiner=refiner, iterations=2000,
            burn_in=200, keep=500,
        ),
        "conditional": restore(model, x, "missing", mask=mask, refiner=refiner),
    }  # fmt: skip
    errors = {name: _errors(run, exact, s2) for name, run in runs.items()}
    ess = runs["importance"].info["effective_sample_size"]
    assert (ess > 1000).all()
    for name in ("importance", "mwg"):
        mean_error, variance_ratio = errors[name]
        # Monte-Carlo error of a mean of ~1,000-4,000 effective draws: ~0.02-0.03 sd.
        assert (mean_error < 0.08).all(), (name, mean_error)
        assert ((variance_ratio > 0.9) & (variance_ratio < 1.1)).all(), (name, variance_ratio)
        # The kept samples (importance resampling; the chain, thinned) are draws of x_miss.
        for i, (m, mean, epistemic, _) in enumerate(exact):
            draws = runs[name].samples[:, i].flatten(1)[:, m].double()
            total = epistemic + s2
            z = (draws.mean(0) - mean) / total.sqrt()
            assert z.pow(2).mean().sqrt() < 0.1, (name, i)  # 500 draws: ~0.045
            ratio = (draws.var(0) / total).mean()
            assert 0.93 < ratio < 1.07, (name, i, ratio)
    # The variational posterior alone is not exact: these checks can fail.
    assert errors["conditional"][0].max() > 0.2
    assert errors["conditional"][0].mean() > 4 * errors["importance"][0].mean()


@pytest.mark.slow
def test_conditional_nll_estimate_converges_to_the_exact_value(ppca):
    model, x = ppca
    mask = make_mask("random", x.shape, seed=1)
    exact, _ = _exact_missing(model, x, mask)
    exact_log_density = torch.tensor([e[3] for e in exact])
    refined = restore(model, x, "missing", mask=mask, refiner=restoration_refiner("svi", steps=300))
    wrapped = ObservedModel(model, Missing())
    y = torch.where(mask, x, torch.zeros_like(x))

    def error(k: int) -> torch.Tensor:
        estimate = conditional_nll_estimate(wrapped, refined.posterior, y, mask, x, k, seed=3)
        return estimate.double() - exact_log_density

    few, many = error(10), error(10000)
    assert many.abs().mean() < 0.2 and many.abs().max() < 0.75, many
    assert many.abs().mean() < few.abs().mean() / 3, (few, many)
    # restore's own estimate (reference=...) is the same estimator.
    again = restore(
        model, x, "missing", mask=mask, refiner=restoration_refiner("svi", steps=300),
        reference=x, nll_samples=10000,
    )  # fmt: skip
    assert (again.log_likelihood.double() - exact_log_density).abs().mean() < 0.2


def test_scoring_passes_follow_the_backends_chunk_size(ppca):
    # A fixed 8,192 rows per pass took the NVAE's scoring to 6.9 GB for 40 images.
    from lvmtoolkit.metrics.conditional import weighted_latents

    model, x = ppca
    wrapped = ObservedModel(model, Missing())
    wrapped.chunk_size = 12
    posterior = wrapped.amortized_posterior()
    with torch.no_grad():
        sizes = [
            index.numel() for index, _, _ in weighted_latents(wrapped, posterior, x, num_samples=5)
        ]
    assert max(sizes) <= 12 and sum(sizes) == 5 * x.shape[0], sizes


@pytest.mark.slow
def test_denoising_under_unclipped_gaussian_noise_matches_the_exact_posterior_mean(ppca):
    """y = x + e: p(z | y) is Gaussian with the variances added, and
    E[x | y] = (1 - k) (W mu + b) + k y with k = s2 / (s2 + v)."""
    model, x = ppca
    variance = 0.1
    observation = GaussianNoise(variance=variance, clip=False)
    y = observation.corrupt(x, seed=0).y
    w, b, s2 = model.weight.double(), model.bias.double(), model.noise.double() ** 2
    cov_z = torch.linalg.inv(torch.eye(5, dtype=w.dtype) + w.T @ w / (s2 + variance))
    mu = (y.flatten(1).double() - b) @ w @ cov_z / (s2 + variance)
    k = s2 / (s2 + variance)
    exact_mean = (1 - k) * (mu @ w.T + b) + k * y.flatten(1).double()
    epistemic = (1 - k) ** 2 * torch.einsum("pi,ij,pj->p", w, cov_z, w)
    restored = restore(
        model, y, observation, method="importance", refiner=restoration_refiner("svi"),
        num_samples=2000,
    )  # fmt: skip
    ok = epistemic > 1e-6
    z = (restored.mean.flatten(1).double() - exact_mean)[:, ok] / epistemic[ok].sqrt()
    assert z.pow(2).mean().sqrt() < 0.1
    total = epistemic + k * variance
    ratio = restored.std.flatten(1).double() ** 2 / total
    assert 0.95 < ratio.mean() < 1.05


# --- behaviour on the bundled models ------------------------------------------------------


@pytest.mark.parametrize("method", ["conditional", "importance", "mwg", "pseudo-gibbs"])
@pytest.mark.parametrize("result", ["mean", "sample"])
def test_observed_pixels_are_kept_bit_for_bit(tiny_vae, digits, method, result):
    mask = make_mask("centre", digits.shape)
    grey = digits * 0.8  # soft targets, kept as they are
    restored = restore(
        tiny_vae, grey, "missing", mask=mask, method=method, refiner="amortized", result=result,
        keep=2, num_samples=4, iterations=3, burn_in=1, reference=torch.where(mask, grey, digits),
    )  # fmt: skip
    assert torch.equal(restored.images[mask], grey[mask])
    assert torch.equal(restored.mean[mask], grey[mask])
    assert (restored.std[mask] == 0).all() and (restored.std[~mask] > 0).any()
    for sample in restored.samples:
        assert torch.equal(sample[mask], grey[mask])
    assert restored.log_likelihood.shape == (digits.shape[0],)
    assert torch.isfinite(restored.log_likelihood).all()
    assert restored.method == method and torch.equal(restored.observed, mask)


def test_samples_are_draws_of_binary_pixels_and_the_mean_is_not(tiny_vae, digits):
    mask = make_mask("half", digits.shape)
    restored = restore(tiny_vae, digits, "missing", mask=mask, refiner="amortized", keep=3)
    assert restored.samples.shape == (3, *digits.shape)
    assert set(restored.samples[:, ~mask].unique().tolist()) <= {0.0, 1.0}
    hidden = restored.mean[~mask]
    assert ((hidden > 0) & (hidden < 1)).all()
    sample = restore(tiny_vae, digits, "missing", mask=mask, refiner="amortized", result="sample")
    assert set(sample.images[~mask].unique().tolist()) <= {0.0, 1.0}


def test_the_same_seed_gives_the_same_restoration(tiny_vae, digits):
    y = GaussianNoise().corrupt(digits, seed=0).y
    refiner = restoration_refiner("svi", steps=3)
    a = restore(tiny_vae, y, "gaussian", refiner=refiner, seed=1, keep=1)
    b = restore(tiny_vae, y, "gaussian", refiner=refiner, seed=1, keep=1)
    c = restore(tiny_vae, y, "gaussian", refiner=refiner, seed=2, keep=1)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.samples, b.samples)
    assert not torch.equal(a.samples, c.samples)


def test_conditional_svi_denoises_where_amortized_and_the_chain_do_not(bundled_vae, digits):
    """Gaussian noise of variance 0.5: the noisy input's SSIM is about 0.33."""
    x = digits[:16]
    y = GaussianNoise(variance=0.5).corrupt(x, seed=0).y
    noisy = ssim(y, x).mean()
    runs = {
        "svi": restore(bundled_vae, y, "gaussian", reference=x, nll_samples=32),
        "amortized": restore(
            bundled_vae, y, "gaussian", refiner="amortized", reference=x, nll_samples=32
        ),
        "chain": restore(
            bundled_vae, y, "gaussian", method="pseudo-gibbs", iterations=20, reference=x,
            nll_samples=32,
        ),
    }  # fmt: skip
    score = {name: ssim(run.images, x).mean() for name, run in runs.items()}
    nll = {name: -run.log_likelihood.mean() for name, run in runs.items()}
    assert score["svi"] > 1.6 * noisy
    assert score["svi"] > score["amortized"] + 0.1 and score["svi"] > score["chain"] + 0.1
    assert nll["svi"] < nll["amortized"] - 20 and nll["svi"] < nll["chain"] - 20


def test_the_chain_through_restore(tiny_vae, digits):
    mask = make_mask("half", digits.shape)
    restored = restore(
        tiny_vae, digits, "missing", mask=mask, method="pseudo-gibbs", iterations=4,
        result="sample", reference=digits, nll_samples=4,
    )  # fmt: skip
    assert restored.samples.shape == (1, *digits.shape)
    assert set(restored.images[~mask].unique().tolist()) <= {0.0, 1.0}
    assert restored.posterior is not None and torch.isfinite(restored.log_likelihood).all()
    noisy = GaussianNoise().corrupt(digits, seed=0).y
    chain = restore(tiny_vae, noisy, "gaussian", method="pseudo-gibbs", iterations=2)
    assert chain.observed.all() and not torch.equal(chain.images, noisy)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"method": "gibbs"}, OptionError, "unknown method 'gibbs'; methods: conditional"),
        ({"result": "median"}, OptionError, "result must be 'mean' or 'sample'"),
        ({"keep": -1}, OptionError, "keep must be an integer >= 0"),
        ({"num_samples": 0}, OptionError, "num_samples must be an integer >= 1"),
        ({"method": "mwg", "iterations": 5, "burn_in": 5}, OptionError, "burn_in (5) must be"),
        ({"seed": -1}, LvmError, "seed must be between 0 and 2**63-1"),
        ({"mask": torch.ones(3, 1, 28, 28, dtype=torch.bool)}, LvmError, "does not match"),
        ({"reference": torch.zeros(2, 1, 28, 28)}, LvmError, "reference must be a tensor"),
        ({"observation": "speckle"}, LvmError, "unknown observation model 'speckle'"),
    ],
)
def test_bad_settings(tiny_vae, digits, kwargs, error, message):
    kwargs = {"observation": "missing", **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        restore(tiny_vae, digits, kwargs.pop("observation"), refiner="amortized", **kwargs)


def test_weighted_resampling_picks_draws_in_proportion_to_their_weights():
    from torch.distributions import Bernoulli

    torch.manual_seed(0)
    summary = PixelSummary(1, (1,), keep=4000, weighted=True)
    weights = torch.tensor([1.0, 2.0, 5.0, 2.0])
    for value, weight in enumerate(weights):
        pixels = Bernoulli(probs=torch.full((1, 1), float(value % 2)))
        pixels.sample = lambda value=value: torch.full((1, 1), float(value))  # type: ignore[method-assign]
        summary.add(torch.tensor([0]), pixels, torch.tensor([math.log(weight)]))
    chosen = torch.bincount(summary.samples.flatten().long(), minlength=4).float() / 4000
    torch.testing.assert_close(chosen, weights / weights.sum(), atol=0.025, rtol=0)
    expected_mean = (weights * torch.tensor([0.0, 1.0, 0.0, 1.0])).sum() / weights.sum()
    torch.testing.assert_close(summary.mean, expected_mean.view(1, 1))
    torch.testing.assert_close(summary.effective_sample_size, weights.sum().pow(2).view(1) / 34)


def test_a_refined_posterior_is_reused_not_refined_again(tiny_vae, digits):
    y = GaussianNoise().corrupt(digits, seed=0).y
    refiner = restoration_refiner("svi", steps=5)
    first = restore(tiny_vae, y, "gaussian", refiner=refiner, seed=4)
    again = restore(tiny_vae, y, "gaussian", refiner=refiner, seed=4, posterior=first.posterior)
    assert torch.equal(first.mean, again.mean)
    assert "refiner_nelbo" in first.info and "refiner_nelbo" not in again.info
    with pytest.raises(LvmError, match="holds 32 datapoints but was given a batch of 8"):
        restore(tiny_vae, y[:8], "gaussian", posterior=first.posterior)
    with pytest.raises(OptionError, match="pseudo-gibbs refines its own posteriors"):
        restore(tiny_vae, y, "gaussian", method="pseudo-gibbs", posterior=first.posterior)


def test_restoration_defaults_apply_to_the_refiners_that_declare_them():
    flow = restoration_refiner("svi-flow")
    # The NVAEs' flows keep the absolute rate tuned for refinement (0.03 of lr 0.05) when
    # restoration raises lr to 0.2; flat flows and svi keep their own settings.
    assert (flow.options.lr, flow.options.hierarchical_flow_lr) == (0.2, 0.0075)
    assert flow.options.flow_lr == type(flow.options)().flow_lr
    svi = restoration_refiner("svi").options
    assert (svi.lr_scaling, svi.gradient) == ("none", "stl")
    assert restoration_refiner("svi-paper").options.lr == 1e-3
    assert (
        restoration_refiner("svi-flow", hierarchical_flow_lr="0.03").options.hierarchical_flow_lr
        == 0.03
    )
    # A refiner that declares none of them gets none (an undeclared option would raise).
    assert restoration_refiner("amortized").name == "amortized"
