"""Observation models: p(y | x) per pixel, p(y | z) and p(x | y, z) for a model's pixels,
the ``register_observations`` hook, ``NAME:KEY=VALUE`` parsing and the model wrapper."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pyro
import pytest
import torch
from click.testing import CliRunner
from torch.distributions import Bernoulli, Normal

import lvmtoolkit as lvm
from lvmtoolkit import hookimpl, plugins
from lvmtoolkit.errors import LvmError, OptionError, UnknownNameError
from lvmtoolkit.tasks import (
    BitFlip,
    GaussianNoise,
    Missing,
    ObservationMismatch,
    ObservedModel,
    SaltPepper,
    add_noise,
    make_mask,
    parse_observation,
)
from lvmtoolkit.tasks.observations import CensoredGaussianPosterior, CensoredNormal

BUILT_INS = ["bit-flip", "gaussian", "missing", "salt-pepper"]


@dataclass
class FlipOptions:
    rate: float = lvm.option(0.3, "flip probability", minimum=0.0, maximum=1.0)


class Inverter(lvm.ObservationModel):
    """A third-party model: only log_prob and sample, as a plugin author writes them."""

    name = "test-inverter"
    options_class = FlipOptions

    def log_prob(self, y, x):
        rate = self.options.rate
        return torch.where(y == 1 - x, math.log(rate), math.log(1 - rate)).to(y.dtype)

    def sample(self, x, generator=None):
        flip = torch.rand(x.shape, generator=generator) < self.options.rate
        return torch.where(flip, 1 - x, x)


class InverterPlugin:
    @hookimpl
    def register_observations(self, register):
        register(Inverter)


@pytest.fixture
def inverter_plugin(lvm_plugins):
    lvm_plugins.register(InverterPlugin(), name="test-inverter-plugin")


def test_register_observations(inverter_plugin):
    registered = plugins.observations()
    assert set(BUILT_INS) <= set(registered)
    assert registered["gaussian"].plugin == "lvmtoolkit.tasks.observations"
    assert lvm.get_observation("test-inverter") is Inverter
    assert registered["test-inverter"].plugin == "test-inverter-plugin"
    info = {p["name"]: p for p in plugins.plugin_info()}
    assert info["lvmtoolkit.tasks.observations"]["registers"] == {"observations": BUILT_INS}
    assert info["test-inverter-plugin"]["registers"] == {"observations": ["test-inverter"]}
    result = CliRunner().invoke(lvm_cli(), ["plugins", "--json"])
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    assert listed["lvmtoolkit.tasks.observations"]["hooks"] == ["register_observations"]
    with pytest.raises(UnknownNameError, match="unknown observation model 'nope'; installed"):
        lvm.get_observation("nope")


def lvm_cli():
    from lvmtoolkit.cli import cli

    return cli


@pytest.mark.parametrize(
    "spec, cls, options",
    [
        ("missing", Missing, {"region": "centre", "fraction": 0.5}),
        ("gaussian", GaussianNoise, {"variance": 0.5, "clip": True}),
        ("gaussian:variance=0.1,clip=false", GaussianNoise, {"variance": 0.1, "clip": False}),
        (" salt-pepper : rate = 0.3 ", SaltPepper, {"rate": 0.3}),
        ("bit-flip:rate=0.05", BitFlip, {"rate": 0.05}),
    ],
)
def test_parse_observation(spec, cls, options):
    observation = parse_observation(spec)
    assert type(observation) is cls and observation.option_values() == options
    assert parse_observation(observation.spec).option_values() == options  # round trip
    assert parse_observation(observation) is observation


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "NAME[:KEY=VALUE"),
        ("speckle", "unknown observation model 'speckle'"),
        ("gaussian:variance", "'variance' is not KEY=VALUE"),
        ("gaussian:variance=0", "observation model gaussian: option variance: must be > 0"),
        ("gaussian:variance=-2", "must be > 0"),
        ("gaussian:variance=nan", "expected a finite number"),
        ("gaussian:variance=1,variance=2", "variance given twice"),
        ("gaussian:sd=1", "unknown option sd; options: clip, variance"),
        ("salt-pepper:rate=2", "option rate: must be <= 1"),
        ("missing:region=ring", "'ring' is not one of centre, half, random"),
    ],
)
def test_parse_observation_refuses_bad_text(spec, message):
    with pytest.raises(LvmError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_observation(spec)


# --- p(y | x): a distribution over y for every clean x -----------------------------------


@pytest.mark.parametrize("observation", [SaltPepper(rate=0.3), BitFlip(rate=0.2), Missing()])
def test_discrete_observations_sum_to_one_over_y(observation):
    for x in (0.0, 1.0):
        total = sum(
            observation.log_prob(torch.tensor(y), torch.tensor(x)).exp() for y in (0.0, 1.0)
        )
        assert total.item() == pytest.approx(1.0)


@pytest.mark.parametrize("x", [0.0, 0.3, 1.0, 1.4])
def test_clipped_gaussian_noise_integrates_to_one(x):
    observation = GaussianNoise(variance=0.3)
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)[1:-1]
    density = observation.log_prob(grid, torch.tensor(x, dtype=torch.float64)).exp()
    inside = torch.trapezoid(density, grid)
    atoms = sum(observation.log_prob(torch.tensor(b), torch.tensor(x)).exp() for b in (0.0, 1.0))
    assert (inside + atoms).item() == pytest.approx(1.0, abs=1e-4)


def test_corruptions_are_seeded_and_the_same_as_add_noise(digits):
    gaussian = GaussianNoise(variance=0.5).corrupt(digits, seed=4)
    assert gaussian.mask is None and torch.equal(gaussian.y, add_noise("gaussian", digits, seed=4))
    assert gaussian.y.min() >= 0 and gaussian.y.max() <= 1
    salt = SaltPepper(rate=0.2).corrupt(digits, seed=4)
    assert torch.equal(salt.y, add_noise("salt-pepper", digits, seed=4, amount=0.2))
    assert not torch.equal(salt.y, SaltPepper(rate=0.2).corrupt(digits, seed=5).y)
    flipped = BitFlip(rate=0.1).corrupt(digits, seed=4).y
    assert 0.07 < (flipped != digits).float().mean() < 0.13
    missing = Missing(region="half").corrupt(digits, seed=4)
    assert torch.equal(missing.mask, make_mask("half", digits.shape))
    assert torch.equal(missing.y[missing.mask], digits[missing.mask])
    assert (missing.y[~missing.mask] == 0).all()
    with pytest.raises(OptionError, match="binary images"):
        BitFlip().corrupt(digits * 0.5)


# --- p(y | z) and p(x | y, z) ------------------------------------------------------------


@pytest.mark.parametrize(
    "observation",
    [GaussianNoise(variance=0.4), SaltPepper(rate=0.3), BitFlip(rate=0.2), Missing()],
)
def test_binary_pixel_marginal_and_posterior_are_the_exact_sums(observation):
    logits = torch.tensor([-2.0, 0.3, 1.5, 4.0])
    pixels = Bernoulli(logits=logits)
    p1 = torch.sigmoid(logits)
    for y in ([0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 1.0, 1.0], [0.0, 0.3, 0.9, 1.0]):
        y = torch.tensor(y)
        if observation.name in ("salt-pepper", "bit-flip", "missing") and ((y > 0) & (y < 1)).any():
            continue
        joint1 = observation.log_prob(y, torch.ones(4)).exp() * p1
        joint0 = observation.log_prob(y, torch.zeros(4)).exp() * (1 - p1)
        if observation.name == "missing":  # the pixel likelihood itself, at y
            joint1, joint0 = p1 * (y == 1), (1 - p1) * (y == 0)
        marginal = observation.marginal(pixels).log_prob(y).exp()
        torch.testing.assert_close(marginal, joint1 + joint0)
        posterior = observation.posterior(pixels, y)
        torch.testing.assert_close(posterior.mean, joint1 / (joint1 + joint0))


def test_third_party_model_gets_binary_pixels_for_free():
    inverter = Inverter(rate=0.25)
    pixels = Bernoulli(logits=torch.tensor([0.0, 2.0]))
    y = torch.tensor([1.0, 0.0])
    expected = 0.75 * torch.tensor([0.5, 1 - torch.sigmoid(torch.tensor(2.0))]) + 0.25 * (
        torch.tensor([0.5, torch.sigmoid(torch.tensor(2.0))])
    )
    torch.testing.assert_close(inverter.marginal(pixels).log_prob(y).exp(), expected)
    with pytest.raises(ObservationMismatch, match="'test-inverter' with Gaussian pixels"):
        inverter.marginal(Normal(torch.zeros(2), torch.ones(2)))


def test_gaussian_pixels_with_gaussian_noise_add_variances_and_censor():
    observation = GaussianNoise(variance=0.2)
    loc, scale = torch.tensor([0.1, 0.6, 0.95], dtype=torch.float64), torch.full((3,), 0.3)
    scale = scale.double()
    marginal = observation.gaussian_marginal(loc, scale)
    grid = torch.linspace(-4, 5, 40001, dtype=torch.float64)
    prior = Normal(loc[:, None], scale[:, None]).log_prob(grid).exp()
    for y in (0.0, 0.37, 1.0):  # an atom, the density, an atom
        likelihood = observation.log_prob(torch.tensor(y, dtype=torch.float64), grid).exp()
        numeric = torch.trapezoid(prior * likelihood, grid, dim=-1)
        torch.testing.assert_close(marginal.log_prob(torch.full((3,), y)).exp(), numeric)
        posterior = observation.gaussian_posterior(loc, scale, torch.full((3,), y).double())
        weights = prior * likelihood / numeric[:, None]
        mean = torch.trapezoid(weights * grid, grid, dim=-1)
        variance = torch.trapezoid(weights * (grid - mean[:, None]) ** 2, grid, dim=-1)
        torch.testing.assert_close(posterior.mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(posterior.variance, variance, rtol=1e-4, atol=1e-6)
        torch.manual_seed(0)
        draws = posterior.sample(torch.Size([40000]))
        torch.testing.assert_close(draws.mean(0), mean, atol=0.01, rtol=0)
        torch.testing.assert_close(draws.var(0), variance, atol=0.0, rtol=0.05)
        density = posterior.log_prob(grid[:, None]).exp().T
        torch.testing.assert_close(torch.trapezoid(density, grid, dim=-1), torch.ones(3).double())


def test_censored_normal_mean_and_samples():
    torch.manual_seed(0)
    noise = CensoredNormal(torch.tensor([0.2, 0.9]), torch.tensor([0.5, 0.5]))
    draws = noise.sample(torch.Size([200000]))
    assert draws.min() == 0 and draws.max() == 1
    torch.testing.assert_close(draws.mean(0), noise.mean, atol=0.005, rtol=0)
    atom = (draws == 0).float().mean(0)
    torch.testing.assert_close(atom, noise.log_prob(torch.zeros(2)).exp(), atol=0.005, rtol=0)


def test_censored_posterior_is_stable_far_in_the_tails():
    loc, scale = torch.tensor([-30.0, 30.0]), torch.tensor([0.1, 0.1])
    posterior = CensoredGaussianPosterior(loc, scale, 0.5, torch.tensor([0.0, 1.0]))
    assert torch.isfinite(posterior.mean).all() and torch.isfinite(posterior.variance).all()
    torch.testing.assert_close(posterior.mean, loc, atol=0.01, rtol=0)
    assert torch.isfinite(posterior.sample()).all()


@pytest.mark.parametrize("observation", [SaltPepper(), BitFlip()])
def test_atoms_with_gaussian_pixels_are_refused_naming_the_pair(observation):
    with pytest.raises(ObservationMismatch, match=f"'{observation.name}' with Gaussian pixels"):
        observation.marginal(Normal(torch.zeros(3), torch.ones(3)))


# --- the wrapper: any backend, p(y | z) in place of p(x | z) -----------------------------


def _elbo(model, guide, y, mask=None, seed=0):
    pyro.set_rng_seed(seed)
    return lvm.per_datapoint_elbo(model.model, guide, y, mask=mask, analytic_kl=False)


def test_missing_through_the_wrapper_is_the_backend_with_a_mask(tiny_vae, digits):
    mask = make_mask("centre", digits.shape)
    wrapped = ObservedModel(tiny_vae, Missing())
    guide = tiny_vae.amortized_posterior()
    torch.testing.assert_close(
        _elbo(wrapped, guide, digits, mask), _elbo(tiny_vae, guide, digits, mask)
    )


def test_the_wrapper_scores_the_exact_marginal(tiny_vae, digits):
    observation = SaltPepper(rate=0.2)
    y = observation.corrupt(digits, seed=0).y
    wrapped = ObservedModel(tiny_vae, observation)
    z = tiny_vae.sample_prior(digits.shape[0])
    logits = tiny_vae.decode(z).base_dist.logits
    expected = (
        torch.logaddexp(
            observation.log_prob(y, torch.ones_like(y)) + torch.nn.functional.logsigmoid(logits),
            observation.log_prob(y, torch.zeros_like(y)) + torch.nn.functional.logsigmoid(-logits),
        )
        .flatten(1)
        .sum(1)
    )
    torch.testing.assert_close(wrapped.decode(z).log_prob(y), expected)
    trace = pyro.poutine.trace(pyro.poutine.condition(wrapped.model, data=z)).get_trace(y)
    torch.testing.assert_close(trace.nodes["x"]["fn"].log_prob(y), expected)


def test_the_wrapper_refuses_a_pair_without_an_exact_marginal(mnist5k_test_images):
    from lvm_linear_gaussian.model import LinearGaussian

    ppca = LinearGaussian.fit_ppca(mnist5k_test_images[:200], latent_dim=3)
    ObservedModel(ppca, GaussianNoise(variance=0.1))  # variances add: fine
    with pytest.raises(ObservationMismatch, match="the linear-gaussian model's likelihood"):
        ObservedModel(ppca, SaltPepper())


def test_the_wrapper_checks_observations(tiny_vae, digits):
    with pytest.raises(LvmError, match="grey values; threshold it first"):
        ObservedModel(tiny_vae, SaltPepper()).check(digits * 0.5)
    with pytest.raises(LvmError, match=r"clipped to \[0, 1\]"):
        ObservedModel(tiny_vae, GaussianNoise()).check(digits + 0.5)
    ObservedModel(tiny_vae, GaussianNoise(clip=False)).check(digits + 0.5)
    ObservedModel(tiny_vae, Missing()).check(digits * 0.5)  # grey: soft targets, as before


def test_adapters_get_observation_models_without_extra_code(digits):
    from torch import nn

    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, 6))
    gaussian = lvm.TorchVAE(
        encoder, nn.Linear(3, 784), data_shape=(1, 28, 28), latent_shape=(3,),
        likelihood="gaussian", obs_scale=0.2,
    )  # fmt: skip
    bernoulli = lvm.TorchVAE(
        nn.Sequential(nn.Flatten(), nn.Linear(784, 6)), nn.Linear(3, 784),
        data_shape=(1, 28, 28), latent_shape=(3,),
    )  # fmt: skip
    y = GaussianNoise(variance=0.2).corrupt(digits[:4], seed=0).y
    for model in (gaussian, bernoulli):
        wrapped = ObservedModel(model, GaussianNoise(variance=0.2))
        elbo = _elbo(wrapped, model.amortized_posterior(), y)
        assert elbo.shape == (4,) and torch.isfinite(elbo).all()
    with pytest.raises(ObservationMismatch, match="'bit-flip' with Gaussian pixels"):
        ObservedModel(gaussian, BitFlip())
