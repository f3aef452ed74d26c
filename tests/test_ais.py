"""AIS and BDMC, checked where log p(x) is exact: a linear-Gaussian model with a correlated
posterior, which no mean-field proposal matches, so IWAE stays nats below log p(x)."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from click.testing import CliRunner
from lvm_linear_gaussian.model import LinearGaussian

import lvmtoolkit.metrics.ais as ais
from lvmtoolkit.cli import cli
from lvmtoolkit.core.checkpoint import save_checkpoint
from lvmtoolkit.core.posterior import LocalGaussianPosterior
from lvmtoolkit.errors import LvmError
from lvmtoolkit.metrics import iwae_bound
from lvmtoolkit.metrics.ais import PRIOR, AISSchedule, ais_log_px, bdmc, simulate
from lvmtoolkit.plugins import get_dataset

# The schedule whose accuracy the must-show numbers are about (docs/results/gaps.md).
EXACT_SCHEDULE = AISSchedule(num_steps=1000)


def tangled_model() -> LinearGaussian:
    """16 Gaussian pixels (noise 0.5) and 10 correlated latents (docs/results/gaps.md)."""
    return LinearGaussian.random((1, 4, 4), latent_dim=10, noise=0.5, seed=0).correlate(0.9)


@pytest.fixture(scope="module")
def tangled():
    """The model, 100 datapoints simulated from it, their exact log p(x), and q*."""
    model = tangled_model()
    x, _ = simulate(model, 100, seed=0)
    q_star = LocalGaussianPosterior({"z": model.mean_field_optimum(x)})
    return model, x, model.log_marginal(x), q_star


def miss(tangled, start, schedule=EXACT_SCHEDULE, seed=0) -> float:
    """Mean of log p̂(x) - log p(x) over the 100 datapoints (negative: below)."""
    model, x, exact, _ = tangled
    return (ais_log_px(model, x, start, schedule, seed=seed).log_px - exact).mean().item()


def test_iwae_with_the_mean_field_optimum_misses_log_px_by_nats(tangled):
    model, x, exact, q_star = tangled
    iwae = iwae_bound(model, q_star, x, num_samples=5000, max_rows=100_000)
    assert (exact - iwae).mean() > 1.0


@pytest.mark.parametrize("start", ["q*", PRIOR])
def test_ais_is_within_a_tenth_of_a_nat_of_the_exact_log_px(tangled, start):
    assert abs(miss(tangled, tangled[3] if start == "q*" else start)) < 0.1


@pytest.mark.parametrize(
    "broken, patch",
    [
        # HMC without the Metropolis test (divergent proposals are still refused).
        ("_accept", lambda log_ratio: torch.isfinite(log_ratio)),
        # Weights of a path (b^2) other than the one the chains follow (b).
        ("_weight_increment", lambda b0, b1, h, e: (b1**2 - b0**2) * (h - ais._log_normal(e))),
    ],
)
def test_a_broken_sampler_fails_the_accuracy_check(tangled, monkeypatch, broken, patch):
    monkeypatch.setattr(ais, broken, patch)
    assert not abs(miss(tangled, tangled[3])) < 0.1


def test_bdmc_sandwiches_the_exact_log_px(tangled):
    model = tangled[0]
    result = bdmc(model, EXACT_SCHEDULE, num_datapoints=100, start=PRIOR, seed=5)
    exact = model.log_marginal(result.x)
    below, above = exact - result.lower, result.upper - exact
    assert below.mean() > -2 * below.std() / 10
    assert above.mean() > -2 * above.std() / 10
    assert 0 < result.width < 0.5
    summary = result.summary()
    assert summary["num_datapoints"] == 100
    assert summary["passes_per_datapoint"] == result.passes > EXACT_SCHEDULE.passes_per_datapoint


def test_rows_per_pass_does_not_change_the_estimate(tangled):
    model, x, _, q_star = tangled
    schedule = AISSchedule(num_steps=5, num_chains=3, pilot_chains=1)
    whole = ais_log_px(model, x[:12], q_star.select(torch.arange(12)), schedule, seed=3)
    blocks = ais_log_px(
        model, x[:12], q_star.select(torch.arange(12)), schedule, seed=3, max_rows=1000
    )
    assert torch.allclose(whole.log_px, blocks.log_px)
    assert whole.passes == 4 * (5 * 5 + 1)
    assert whole.steps.shape == (5, 12)


@pytest.mark.parametrize(
    "options, named",
    [
        ({"num_steps": 0}, "num_steps"),
        ({"num_chains": 0}, "num_chains"),
        ({"leapfrog_steps": 0}, "leapfrog_steps"),
        ({"pilot_chains": 0}, "pilot_chains"),
        ({"num_steps": 2.5}, "num_steps"),
        ({"step_size": float("nan")}, "step_size"),
        ({"target_acceptance": 1.0}, "target_acceptance"),
        ({"path": "cosine"}, "path"),
    ],
)
def test_bad_schedules_are_refused_by_name(options, named):
    with pytest.raises(LvmError, match=named):
        AISSchedule(**options)


def test_a_model_whose_log_density_turns_nan_is_named(tangled, monkeypatch):
    model, x, _, _ = tangled
    honest = model.decode

    def decode(z):  # NaN once a chain wanders past |z| = 1.5
        likelihood = honest(z)
        far = (z["z"].abs() > 1.5).any(1)
        loc = torch.where(far[:, None, None, None], math.nan, likelihood.mean)
        return dist.Normal(loc, likelihood.stddev).to_event(3)

    monkeypatch.setattr(model, "decode", decode)
    with pytest.raises(LvmError, match=r"model 'linear-gaussian' is not finite .*datapoint \d+"):
        ais_log_px(model, x, PRIOR, AISSchedule(num_steps=50))


def test_a_start_that_is_not_gaussian_is_refused(tangled, monkeypatch):
    model, x, _, _ = tangled
    monkeypatch.setattr(
        model,
        "latent_prior",
        lambda rows, x=None: {"z": dist.Laplace(torch.zeros(rows, 10), 1.0).to_event(1)},
    )
    with pytest.raises(LvmError, match="site 'z' is a Laplace"):
        ais_log_px(model, x, PRIOR, AISSchedule(num_steps=2))


def lvm_gaps_ais(tmp_path, latent_dim: int, options: str):
    """``lvm gaps --log-px ais`` on a correlated pPCA of the mnist-5k train split."""
    images = get_dataset("mnist-5k")().load("train").images
    model = LinearGaussian.fit_ppca(images, latent_dim).correlate()
    checkpoint = save_checkpoint(model, tmp_path / "tangled")
    args = ["gaps", "--backend", "linear-gaussian", "--checkpoint", str(checkpoint)]
    result = CliRunner().invoke(cli, [*args, "--log-px", "ais", "--threads", "1", *options.split()])
    assert result.exit_code == 0, result.output
    return model, result


def test_lvm_gaps_with_ais_is_tighter_than_iwae_where_the_posterior_is_correlated(tmp_path):
    model, result = lvm_gaps_ais(
        tmp_path,
        6,
        "--num-images 16 --ais-steps 300 --bdmc-datapoints 16 --iwae-samples 200 --steps 10 "
        "-o lr=0.05 --round-steps 200 --max-steps 600 --json",
    )
    report = json.loads(result.stdout)
    numbers = report["results"]["test"]
    exact = model.log_marginal(get_dataset("mnist-5k")().load("test").images[:16]).mean().item()
    assert exact - numbers["log_px_iwae"] > 0.5
    assert abs(numbers["log_px_ais"] - exact) < 0.2
    assert numbers["log_px"] == numbers["log_px_ais"]
    assert numbers["approximation_gap_ais"] > numbers["approximation_gap_iwae"] + 0.3
    assert numbers["stderr"]["approximation_gap_ais"] > 0
    assert numbers["passes_per_datapoint"] == {"iwae": 200, "ais": 10 * (300 * 5 + 1)}
    assert report["protocol"]["ais"]["num_steps"] == 300
    bdmc_summary = report["protocol"]["bdmc"]
    assert bdmc_summary["num_datapoints"] == 16
    assert bdmc_summary["upper"] > bdmc_summary["lower"] - 0.5


def test_lvm_gaps_prints_both_estimates(tmp_path):
    _, result = lvm_gaps_ais(
        tmp_path,
        4,
        "--num-images 4 --ais-steps 5 --bdmc-datapoints 4 --iwae-samples 10 --steps 1 "
        "--max-steps 2 --round-steps 1",
    )
    for line in ("log p̂(x) IWAE", "log p̂(x) AIS", "approximation gap (AIS)", "BDMC on 4 simulated"):
        assert line in result.output


def test_ais_options_without_log_px_ais_are_refused():
    result = CliRunner().invoke(cli, ["gaps", "--ais-chains", "4", "--num-images", "2"])
    assert result.exit_code != 0
    assert "--ais-chains applies only with --log-px ais" in result.output


def small_torch_vae(digits):
    import lvmtoolkit as lvm
    from lvmtoolkit.adapters import TorchVAE

    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 6))

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = encoder

        def forward(self, x):
            return self.net(x).chunk(2, dim=-1)

    model = TorchVAE(Encoder(), torch.nn.Linear(3, 784), data_shape=(1, 28, 28), latent_shape=(3,))
    lvm.train(model, digits, epochs=5, batch_size=16, lr=1e-2)
    return model.eval()


def test_ais_on_a_torch_vae_is_tighter_than_iwae_from_the_same_start(digits):
    model = small_torch_vae(digits)
    x = digits[:16]
    start = model.amortized_posterior()
    estimate = ais_log_px(model, x, start, AISSchedule(num_steps=100), seed=1)
    assert estimate.log_px.mean() > iwae_bound(model, start, x, num_samples=1000).mean()
    assert 0.4 < estimate.acceptance.mean() < 0.9


def tangled_pyro_vae():
    """The tangled linear-Gaussian model written as a Pyro model/guide pair (own plate and
    site names) whose amortized guide is exactly q*, wrapped by `PyroVAE`: AIS through
    Pyro's traces, checked against the exact log p(x)."""
    from lvmtoolkit.adapters import PyroVAE

    exact = tangled_model()
    w, bias, sigma = exact.weight.detach(), exact.bias.detach(), exact.noise.detach()
    _, cov = exact.exact_posterior(torch.zeros(1, 1, 4, 4))
    to_mean = w @ cov / sigma**2  # q*'s mean is linear in x
    scale = torch.diagonal(torch.linalg.inv(cov)).rsqrt()

    def model(images, mask=None):
        with pyro.plate("batch", images.shape[0]):
            z = pyro.sample("code", dist.Normal(0.0, 1.0).expand([10]).to_event(1))
            loc = (z @ w.T + bias).view(-1, 1, 4, 4)
            pyro.sample("image", dist.Normal(loc, sigma).to_event(3), obs=images)

    def guide(images, mask=None):
        with pyro.plate("batch", images.shape[0]):
            loc = (images.flatten(1) - bias) @ to_mean
            pyro.sample("code", dist.Normal(loc, scale).to_event(1))

    wrapped = PyroVAE(
        model, guide, data_shape=(1, 4, 4), obs_site="image", data_plate="batch", binary_data=False
    )
    return wrapped


def test_ais_through_pyro_traces_matches_the_exact_log_px(tangled):
    model = tangled_pyro_vae()
    x, exact = tangled[1], tangled[2]
    start = model.amortized_posterior()
    assert not ais._Path(model, start.evaluation_form(x), x).direct
    iwae = iwae_bound(model, start, x, num_samples=5000, max_rows=100_000)
    assert (exact - iwae).mean() > 1.0
    estimate = ais_log_px(model, x, start, EXACT_SCHEDULE, seed=0)
    assert abs((estimate.log_px - exact).mean()) < 0.1


@pytest.mark.parametrize("name", ["nvae", "nvae-flow"])
def test_ais_on_the_nvae_hierarchy_and_its_flows(name, mnist5k_test_images):
    """The bundled NVAEs: chains in the noise of every group (through the flows for
    nvae-flow); noise -> latents -> noise is the identity (BDMC's reverse start needs it);
    AIS from the encoder is above its ELBO."""
    from lvmtoolkit.data import binarize_fixed
    from lvmtoolkit.metrics import nelbo
    from lvmtoolkit.plugins import get_backend, load_checkpoint

    model = load_checkpoint(get_backend(name).default_checkpoint(), backend=name)
    x = binarize_fixed(mnist5k_test_images[:4])
    start = model.amortized_posterior().evaluation_form(x)
    path = ais._Path(model, start, x)
    assert not path.direct
    noise = torch.randn(4, path.dim)
    driven = ais._NoiseSites(noise=path.split(noise))
    with driven:
        trace = pyro.poutine.trace(start.guide).get_trace(x)
    latents = {name: trace.nodes[name]["value"] for name in model.latent_shapes}
    assert torch.allclose(path.noise_of(latents), noise, atol=1e-4)
    elbo = -nelbo(model, model.amortized_posterior(), x, num_samples=200, analytic_kl=False)
    estimate = ais_log_px(model, x, model.amortized_posterior(), AISSchedule(num_steps=20))
    assert estimate.passes == 10 * (20 * 5 + 1)
    assert (estimate.log_px > elbo).all()


def test_the_gmvae_prior_is_refused_as_a_start_by_name(mnist5k_test_images):
    from lvmtoolkit.data import binarize_fixed
    from lvmtoolkit.plugins import get_backend, load_checkpoint

    model = load_checkpoint(get_backend("gmvae").default_checkpoint(), backend="gmvae")
    x = binarize_fixed(mnist5k_test_images[:2])
    with pytest.raises(LvmError, match="site 'z' is a DiagonalGaussianMixture"):
        ais_log_px(model, x, PRIOR, AISSchedule(num_steps=2))
