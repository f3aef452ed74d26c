import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

from lvmtoolkit.core.elbo import per_datapoint_elbo
from lvmtoolkit.core.posterior import LocalGaussianPosterior
from lvmtoolkit.errors import LvmError


@pytest.mark.parametrize(
    "analytic_kl, pyro_elbo", [(False, Trace_ELBO), (True, TraceMeanField_ELBO)]
)
def test_per_datapoint_elbo_sums_to_pyros_elbo(tiny_vae, digits, analytic_kl, pyro_elbo):
    guide = tiny_vae.amortized_posterior()
    pyro.set_rng_seed(3)
    ours = per_datapoint_elbo(tiny_vae.model, guide, digits, analytic_kl=analytic_kl)
    pyro.set_rng_seed(3)
    theirs = -pyro_elbo().loss(tiny_vae.model, guide, digits)
    assert ours.shape == (digits.shape[0],)
    assert ours.sum().item() == pytest.approx(theirs, rel=1e-5)


def test_each_datapoint_only_depends_on_its_own_parameters(tiny_vae, digits):
    """Batched refinement is only valid if datapoint i's ELBO ignores datapoint j's posterior."""
    local = LocalGaussianPosterior.from_posterior(tiny_vae.amortized_posterior(), digits)
    elbo = per_datapoint_elbo(tiny_vae.model, local, digits)
    elbo[3].backward()
    grad = local.loc["z"].grad
    assert grad[3].abs().sum() > 0
    assert torch.count_nonzero(torch.cat([grad[:3], grad[4:]])) == 0


def test_masked_pixels_do_not_count(tiny_vae, digits):
    guide = tiny_vae.amortized_posterior()
    mask = torch.zeros_like(digits, dtype=torch.bool)
    pyro.set_rng_seed(0)
    masked = per_datapoint_elbo(tiny_vae.model, guide, digits, mask=mask)
    with torch.no_grad():
        loc, scale = guide.gaussian_params(digits)["z"]
    prior = dist.Normal(torch.zeros_like(loc), torch.ones_like(scale)).to_event(1)
    kl = kl_divergence(dist.Normal(loc, scale).to_event(1), prior)
    # Nothing observed: the ELBO is just -KL.
    assert torch.allclose(masked, -kl, atol=1e-5)


def test_site_outside_data_plate_is_an_error(digits):
    def model(x, mask=None):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide(x, mask=None):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(LvmError, match="outside pyro.plate"):
        per_datapoint_elbo(model, guide, digits)
