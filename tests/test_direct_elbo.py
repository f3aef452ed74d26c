"""The direct ELBO path: the same estimator as Pyro's traces, for flat models and mean-field q."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch
from lvm_gmvae.model import GMVAE, GMVAEConfig
from lvm_linear_gaussian.model import LinearGaussian
from lvm_nvae.model import NVAE, NVAEConfig

from lvmtoolkit.adapters import PyroVAE
from lvmtoolkit.core.elbo import per_datapoint_elbo
from lvmtoolkit.core.model import direct_elbo, model_elbo
from lvmtoolkit.core.posterior import AmortizedGaussianPosterior, LocalGaussianPosterior
from lvmtoolkit.errors import LvmError
from lvmtoolkit.refiners import SVIFlowRefiner, SVIRefiner
from lvmtoolkit.tasks.observations import parse_observation
from lvmtoolkit.tasks.observed_model import ObservedModel
from lvmtoolkit.testing import ModelCheckError, check_model, make_tiny_model

SETTINGS = {
    "closed-form KL": {"analytic_kl": True},
    "Monte-Carlo KL": {"analytic_kl": False},
    "sticking the landing": {"analytic_kl": False, "stl": True},
}


def both_paths(model, posterior, x, mask=None, seed=0, **kwargs):
    """(direct, Pyro): values and gradients of the loc/log-scale parameters, same draws."""
    results = []
    for path in ("direct", "pyro"):
        torch.manual_seed(seed)
        if path == "direct":
            elbo = direct_elbo(model, posterior, x, mask, **kwargs)
        else:
            elbo = per_datapoint_elbo(model.model, posterior, x, mask=mask, **kwargs)
        posterior.zero_grad(set_to_none=True)
        elbo.sum().backward()
        results.append((elbo.detach(), [p.grad.clone() for p in posterior.parameters()]))
    return results


def flat_models():
    torch.manual_seed(0)
    return {
        "vae": lambda vae: vae,
        "gmvae": lambda _: GMVAE(GMVAEConfig(hidden=(32,), latent_dim=4, components=3)).eval(),
        "torch-vae": lambda _: make_tiny_model(),
        "linear-gaussian": lambda _: LinearGaussian().eval(),
    }


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("name", list(flat_models()))
@pytest.mark.parametrize("masked", [False, True], ids=["all pixels", "masked"])
def test_direct_path_is_pyros_estimator_exactly(tiny_vae, digits, name, setting, masked):
    model = flat_models()[name](tiny_vae)
    x = digits[:16]
    mask = None
    if masked:
        mask = torch.ones_like(x, dtype=torch.bool)
        mask[:, :, 10:20, 5:25] = False
    local = LocalGaussianPosterior.from_posterior(model.amortized_posterior(), x)
    (ours, our_grads), (pyros, pyro_grads) = both_paths(model, local, x, mask, **SETTINGS[setting])
    # The same draws, distributions and order of additions: equal to rounding.
    torch.testing.assert_close(ours, pyros, rtol=1e-6, atol=1e-5)
    for a, b in zip(our_grads, pyro_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("setting", ["closed-form KL", "Monte-Carlo KL"])
def test_per_datapoint_flows_take_the_direct_path_with_pyros_values(digits, setting):
    torch.manual_seed(0)
    vae = make_tiny_model()
    x = digits[:8]
    flows = SVIFlowRefiner(steps=0)._make_local(vae.amortized_posterior(), x)
    # A few Adam steps move the flows off the identity, so that their log-densities matter.
    optimizer = torch.optim.Adam(flows.parameters(), lr=0.05)
    for _ in range(5):
        optimizer.zero_grad()
        (-per_datapoint_elbo(vae.model, flows, x).sum()).backward()
        optimizer.step()
    second_layers = [cell.w2 for cell in flows.modules() if hasattr(cell, "w2")]
    assert second_layers and any(bool(w.abs().sum() > 0) for w in second_layers)
    assert flows.mean_field(x) is not None
    (ours, our_grads), (pyros, pyro_grads) = both_paths(vae, flows, x, **SETTINGS[setting])
    torch.testing.assert_close(ours, pyros, rtol=1e-6, atol=1e-5)
    for a, b in zip(our_grads, pyro_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_bundled_vae_gives_identical_values_on_both_paths(bundled_vae, digits):
    local = LocalGaussianPosterior.from_posterior(bundled_vae.amortized_posterior(), digits)
    for kwargs in SETTINGS.values():
        (ours, our_grads), (pyros, pyro_grads) = both_paths(bundled_vae, local, digits, **kwargs)
        assert torch.equal(ours, pyros)
        # Gradients sum the same terms, possibly in another order: equal to float rounding.
        for a, b in zip(our_grads, pyro_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_rows_of_a_local_posterior_and_an_encoder_take_the_direct_path(tiny_vae, digits):
    local = LocalGaussianPosterior.from_posterior(tiny_vae.amortized_posterior(), digits)
    index = torch.tensor([3, 3, 7])
    assert direct_elbo(tiny_vae, local.rows(index), digits[index]) is not None
    assert direct_elbo(tiny_vae, local.rows(slice(4, 9)), digits[4:9]) is not None
    assert direct_elbo(tiny_vae, tiny_vae.amortized_posterior(), digits) is not None
    # Rows of the wrong batch are refused on this path too.
    with pytest.raises(LvmError, match="holds 3 datapoints"):
        direct_elbo(tiny_vae, local.rows(index), digits[:4])


def test_svi_refines_to_the_same_posterior_as_on_pyros_path(tiny_vae, digits):
    """The svi refiner's result does not depend on which path computes its ELBO."""

    class TracedOnly(type(tiny_vae)):
        def latent_prior(self, num, like):
            return None  # a model that does not declare itself flat: Pyro's traces

    traced = TracedOnly(tiny_vae.config)
    traced.load_state_dict(tiny_vae.state_dict())
    traced.eval()
    assert direct_elbo(traced, tiny_vae.amortized_posterior(), digits) is None
    refiner = SVIRefiner(steps=15, select_samples=4)
    fast = refiner.refine(tiny_vae, digits, checkpoints=[5])
    slow = refiner.refine(traced, digits, checkpoints=[5])
    torch.testing.assert_close(fast.trace, slow.trace, rtol=1e-5, atol=1e-4)
    for (name, a), (_, b) in zip(
        fast.posterior.named_parameters(), slow.posterior.named_parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


def test_models_that_are_not_flat_keep_pyros_path(digits):
    torch.manual_seed(0)
    vae = make_tiny_model()
    x = digits[:8]
    # A hierarchical model declares no latent prior.
    nvae = NVAE(
        NVAEConfig(
            channels=(8, 8, 8), groups_per_scale=(1, 1), latent_channels=2, preprocess_cells=0
        )
    ).eval()
    assert nvae.latent_prior(2, x) is None
    assert direct_elbo(nvae, nvae.amortized_posterior(), x[:2]) is None
    # A model seen through an observation model has p(y | z), not decode's likelihood.
    observed = ObservedModel(vae, parse_observation("gaussian:variance=0.5"))
    assert observed.latent_prior(8, x) is None


def test_a_gaussian_posterior_with_a_guide_of_its_own_is_not_taken_as_mean_field(tiny_vae, digits):
    class ShiftedGuide(AmortizedGaussianPosterior):
        def guide(self, x, mask=None):  # samples something other than gaussian_params
            raise AssertionError("not called here")

    posterior = ShiftedGuide(tiny_vae.encode)
    assert posterior.mean_field(digits) is None
    assert tiny_vae.amortized_posterior().mean_field(digits) is not None


def test_a_pyro_vae_keeps_pyros_path(digits):
    torch.manual_seed(0)
    tiny = make_tiny_model()

    def model(x):
        import pyro

        with pyro.plate("batch", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 4), 1.0).to_event(1))
            logits = tiny.decoder(z).view(-1, 1, 28, 28)
            pyro.sample("obs", dist.Bernoulli(logits=logits).to_event(3), obs=x)

    def guide(x):
        import pyro

        loc, scale = tiny.encode(x)["z"]
        with pyro.plate("batch", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    pyro_vae = PyroVAE(model, guide, data_shape=(1, 28, 28), obs_site="obs", data_plate="batch")
    assert pyro_vae.latent_prior(4, digits) is None
    assert pyro_vae.amortized_posterior().mean_field(digits[:4]) is None


def test_model_elbo_refuses_stl_with_the_closed_form_kl(tiny_vae, digits):
    with pytest.raises(LvmError, match="stl applies to the Monte-Carlo KL"):
        model_elbo(tiny_vae, tiny_vae.amortized_posterior(), digits, stl=True)


def test_check_model_catches_a_latent_prior_the_model_does_not_use(digits):
    torch.manual_seed(0)
    honest = make_tiny_model()

    class Wide(type(honest)):
        def latent_prior(self, num, like):
            zeros = like.new_zeros(num, 4)  # the model itself draws from N(0, 1)
            return {"z": dist.Normal(zeros, 2.0 + zeros).to_event(1)}

    wide = Wide(
        encoder=honest.encoder,
        decoder=honest.decoder,
        data_shape=honest.data_shape,
        latent_shape=honest.latent_shape,
    )
    check_model(honest, digits[:8])
    with pytest.raises(ModelCheckError, match="not flat as latent_prior promises"):
        check_model(wide, digits[:8])


def test_a_subclass_with_its_own_model_is_not_taken_as_flat(tiny_vae, digits):
    torch.manual_seed(0)
    tiny = make_tiny_model()

    class OwnModel(type(tiny_vae)):
        def model(self, x, mask=None):  # might draw z from anything
            return super().model(x, mask)

    class OwnDecode(type(tiny)):
        def decode(self, z):
            return super().decode(z)

    assert OwnModel(tiny_vae.config).latent_prior(2, digits) is None
    own_decode = OwnDecode(
        encoder=tiny.encoder,
        decoder=tiny.decoder,
        data_shape=tiny.data_shape,
        latent_shape=tiny.latent_shape,
    )
    assert own_decode.latent_prior(2, digits) is None
    assert tiny.latent_prior(2, digits) is not None


def test_passes_default_to_the_backends_chunk_size_and_refuse_zero(tiny_vae, digits):
    from lvmtoolkit.core.nelbo import nelbo
    from lvmtoolkit.metrics import iwae_bound

    assert type(tiny_vae).chunk_size == 2048 and make_tiny_model().chunk_size == 1024
    posterior = tiny_vae.amortized_posterior()
    # The default and the backend's own size are one setting: the same draws, same values.
    torch.testing.assert_close(
        nelbo(tiny_vae, posterior, digits, num_samples=3),
        nelbo(tiny_vae, posterior, digits, num_samples=3, chunk_size=2048),
    )
    torch.testing.assert_close(
        iwae_bound(tiny_vae, posterior, digits, num_samples=3),
        iwae_bound(tiny_vae, posterior, digits, num_samples=3, max_rows=2048),
    )
    with pytest.raises(LvmError, match="chunk_size must be positive"):
        nelbo(tiny_vae, posterior, digits, chunk_size=0)


def test_every_pass_size_is_resolved_and_checked_by_the_backend(tiny_vae, digits, monkeypatch):
    from lvmtoolkit.metrics import iwae_bound
    from lvmtoolkit.metrics.conditional import conditional_log_likelihood
    from lvmtoolkit.tasks.restoration import metropolis_within_gibbs

    posterior = tiny_vae.amortized_posterior()
    assert tiny_vae.rows_per_pass(None) == 2048 and tiny_vae.rows_per_pass(7) == 7
    with pytest.raises(LvmError, match="max_rows must be positive, got 0"):
        iwae_bound(tiny_vae, posterior, digits, num_samples=3, max_rows=0)
    with pytest.raises(LvmError, match="max_rows must be positive, got -1"):
        conditional_log_likelihood(
            tiny_vae, posterior, digits, lambda i, z: torch.zeros(len(i)), max_rows=-1
        )
    with pytest.raises(LvmError, match="max_rows must be positive, got 0"):
        metropolis_within_gibbs(
            tiny_vae, posterior, digits, None, iterations=2, burn_in=0, max_rows=0
        )
    # A backend whose own size is broken is named, not the caller's argument.
    monkeypatch.setattr(type(tiny_vae), "chunk_size", 0)
    with pytest.raises(LvmError, match=r"\.chunk_size must be positive, got 0"):
        iwae_bound(tiny_vae, posterior, digits, num_samples=3)
