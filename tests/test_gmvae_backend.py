"""The GMVAE backend and its shipped checkpoint."""

import pyro
import pytest
import torch
from lvm_gmvae.model import GMVAE, GMVAEConfig

from lvmtoolkit.core.elbo import per_datapoint_elbo
from lvmtoolkit.data import binarize_fixed
from lvmtoolkit.metrics import nelbo
from lvmtoolkit.plugins import load_checkpoint
from lvmtoolkit.refiners import SVIRefiner


@pytest.fixture(scope="module")
def bundled_gmvae():
    return load_checkpoint(GMVAE.default_checkpoint(), backend="gmvae")


def test_mixture_prior_has_k_learnable_components():
    model = GMVAE(GMVAEConfig(hidden=(16,), latent_dim=3, components=7))
    prior = model.prior(5, torch.zeros(1))
    assert prior.batch_shape == (5,) and prior.event_shape == (3,)
    assert model.prior_loc.shape == (7, 3) and model.prior_loc.requires_grad
    # a uniform mixture: log p(z) = logsumexp_i log N(z; mu_i, sigma_i) - log k
    z = torch.randn(5, 3)
    components = torch.distributions.Normal(
        model.prior_loc, torch.nn.functional.softplus(model.prior_raw_scale) + 1e-4
    )
    expected = components.log_prob(z[:, None]).sum(-1).logsumexp(-1) - torch.log(torch.tensor(7.0))
    assert torch.allclose(prior.log_prob(z), expected, atol=1e-5)


def test_kl_is_monte_carlo(digits):
    """No closed-form KL exists for a mixture prior: both settings give the same estimate."""
    model = GMVAE(GMVAEConfig(hidden=(16,), latent_dim=3, components=7))
    guide = model.amortized_posterior()
    pyro.set_rng_seed(2)
    a = per_datapoint_elbo(model.model, guide, digits, analytic_kl=True)
    pyro.set_rng_seed(2)
    b = per_datapoint_elbo(model.model, guide, digits, analytic_kl=False)
    assert torch.equal(a, b)


def test_bundled_checkpoint(bundled_gmvae):
    info = bundled_gmvae.checkpoint_info
    assert info["backend"] == "gmvae" and info["config"]["components"] == 500
    assert info["data"] == {
        "binarization": "dynamic",
        "dataset": "mnist-5k",
        "size": 4000,
        "split": "train",
        "trained_on": [{"dataset": "mnist-5k", "split": "train", "start": 0, "stop": 4000}],
    }


def test_gmvae_beats_vae_on_held_out_digits(bundled_gmvae, bundled_vae, mnist5k_test_images):
    """The paper's claim, for the shipped checkpoints (same data, same training recipe)."""
    x = binarize_fixed(mnist5k_test_images[:500])
    gmvae = nelbo(bundled_gmvae, bundled_gmvae.amortized_posterior(), x, num_samples=16)
    vae = nelbo(bundled_vae, bundled_vae.amortized_posterior(), x, num_samples=16)
    assert gmvae.mean() < vae.mean()


@pytest.mark.slow
def test_svi_improves_every_datapoint(bundled_gmvae, mnist5k_test_images):
    x = binarize_fixed(mnist5k_test_images[:100])
    before = nelbo(bundled_gmvae, bundled_gmvae.amortized_posterior(), x, num_samples=100, seed=3)
    result = SVIRefiner(steps=1000).refine(bundled_gmvae, x)
    after = nelbo(bundled_gmvae, result.posterior, x, num_samples=100, seed=3)
    assert (after < before).all(), (after - before).max()


@pytest.mark.parametrize("trained", [False, True])
def test_mixture_prior_log_prob_matches_mixture_same_family(trained, bundled_gmvae):
    # The prior scores by matrix products; it must equal torch's broadcast computation,
    # in value and in gradient (training learns the components through it).
    torch.manual_seed(0)
    model = bundled_gmvae if trained else GMVAE(GMVAEConfig(components=7, latent_dim=3))
    d = model.config.latent_dim
    z = (3 * torch.randn(50, d)).requires_grad_()
    params = [z, model.prior_loc, model.prior_raw_scale]
    fast = model.prior(50, z)
    assert type(fast).__name__ == "DiagonalGaussianMixture" and fast.batch_shape == (50,)
    slow_parts = model.prior(50, z)
    slow = pyro.distributions.MixtureSameFamily(
        slow_parts.mixture_distribution, slow_parts.component_distribution
    )
    value, reference = fast.log_prob(z), slow.log_prob(z)
    assert torch.allclose(value, reference, rtol=1e-5, atol=1e-4)
    grads = torch.autograd.grad(value.sum(), params)
    expected = torch.autograd.grad(reference.sum(), params)
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    assert fast.sample().shape == (50, d)
