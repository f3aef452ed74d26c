"""svi-natural: natural-gradient steps for per-datapoint Gaussians (improved Bayesian
learning rule), checked on a Gaussian target, a linear-Gaussian model with a known optimum,
and the bundled models."""

from __future__ import annotations

import math

import pytest
import torch
from lvm_linear_gaussian.model import LinearGaussian

from lvmtoolkit.core.runtime import frozen
from lvmtoolkit.errors import LvmError, RefinerMismatch
from lvmtoolkit.metrics import nelbo
from lvmtoolkit.metrics.ais import simulate
from lvmtoolkit.plugins import get_backend, load_checkpoint
from lvmtoolkit.refiners import GaussianNaturalGradient, NaturalSVIRefiner, SVIRefiner
from lvmtoolkit.testing import check_refiner


def gaussian_target_step(optimizer, loc, log_scale, mean, variance):
    """Exact gradients of KL(q || N(mean, variance)) per coordinate, then one step."""
    scale2 = (2 * log_scale).exp()
    loc.grad = (loc - mean) / variance
    log_scale.grad = scale2 / variance - 1
    optimizer.step()


def test_natural_steps_reach_a_gaussian_target():
    mean = torch.tensor([[2.0, -1.0, 0.0]])
    variance = torch.tensor([[0.01, 4.0, 1.0]])
    loc = torch.zeros(1, 3, requires_grad=True)
    log_scale = torch.zeros(1, 3, requires_grad=True)
    optimizer = GaussianNaturalGradient([(loc, log_scale)], lr=0.5)
    for _ in range(60):
        gaussian_target_step(optimizer, loc, log_scale, mean, variance)
    # Scale-free: the coordinate of variance 0.01 converges as fast as the one of 4.
    torch.testing.assert_close(loc.detach(), mean, atol=1e-4, rtol=0)
    torch.testing.assert_close((2 * log_scale).exp().detach(), variance, atol=0, rtol=1e-4)


def test_a_huge_gradient_keeps_the_scale_positive_and_finite():
    loc = torch.zeros(1, 2, requires_grad=True)
    log_scale = torch.zeros(1, 2, requires_grad=True)
    optimizer = GaussianNaturalGradient([(loc, log_scale)], lr=1.0)
    loc.grad = torch.tensor([[1e6, -1e6]])
    log_scale.grad = torch.tensor([[-1e6, -1.0]])  # rg = -1: the most it can widen
    optimizer.step()
    assert torch.isfinite(loc).all() and torch.isfinite(log_scale).all()
    # 1 + rg + (rg)^2 / 2 >= 1/2: sigma grows by at most sqrt(2) in one step.
    assert (log_scale <= 0.5 * math.log(2) + 1e-6).all()


def test_pairs_of_other_shapes_are_refused():
    with pytest.raises(LvmError, match=r"of one shape, got \(2, 3\) and \(2, 4\)"):
        GaussianNaturalGradient([(torch.zeros(2, 3), torch.zeros(2, 4))], lr=0.1)


def test_svi_natural_reaches_the_mean_field_optimum_of_a_linear_gaussian_model():
    model = LinearGaussian.random((1, 4, 4), latent_dim=10, noise=0.5, seed=0)
    x, _ = simulate(model, 50, seed=0)
    loc, scale = model.mean_field_optimum(x)
    # Its posterior is correlated: a short step (measured: 0.2 stops 33 nats short).
    result = NaturalSVIRefiner(steps=300, lr=0.05, schedule="cosine").refine(model, x)
    q_loc, q_scale = result.posterior.gaussian_params(x)["z"]
    # Monte-Carlo gradients, one sample per step: close, not exact.
    assert (q_loc - loc).abs().max() < 0.2
    assert (q_scale / scale).log().abs().max() < 0.2
    gap = model.exact_elbo(x, loc, scale) - model.exact_elbo(x, q_loc, q_scale)
    assert gap.mean() < 0.05


@pytest.fixture(scope="module")
def vae():
    return load_checkpoint(get_backend("vae").default_checkpoint(), backend="vae")


def test_svi_natural_keeps_the_contract_on_a_flat_model(vae, digits):
    check_refiner(NaturalSVIRefiner(steps=4), vae, digits[:6])


def test_svi_natural_closes_more_than_adam_in_ten_steps(vae, digits):
    with frozen(vae):
        adam = SVIRefiner(steps=10).refine(vae, digits).posterior
        natural = NaturalSVIRefiner(steps=10).refine(vae, digits).posterior
        start = nelbo(vae, vae.amortized_posterior(), digits, num_samples=50, seed=3).mean()
        by_adam = nelbo(vae, adam, digits, num_samples=50, seed=3).mean()
        by_natural = nelbo(vae, natural, digits, num_samples=50, seed=3).mean()
    assert by_natural < by_adam < start


def test_hierarchical_posteriors_are_refused_by_name(digits):
    nvae = load_checkpoint(get_backend("nvae").default_checkpoint(), backend="nvae")
    with pytest.raises(RefinerMismatch, match="NVAELocalPosterior, which keeps its hierarchy"):
        NaturalSVIRefiner(steps=2).refine(nvae, digits[:2])
