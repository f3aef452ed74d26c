"""IWAE and the gap decomposition, checked against a model where everything is exact."""

import json

import pytest
import torch
from click.testing import CliRunner
from lvm_linear_gaussian.model import LinearGaussian

from lvmtoolkit.cli import cli
from lvmtoolkit.core.checkpoint import save_checkpoint
from lvmtoolkit.core.posterior import LocalGaussianPosterior
from lvmtoolkit.metrics import iwae_bound, nelbo
from lvmtoolkit.plugins import get_dataset


@pytest.fixture(scope="module")
def ppca():
    """pPCA fitted in closed form on the mnist-5k train split, encoder then perturbed."""
    model = LinearGaussian.fit_ppca(get_dataset("mnist-5k")().load("train").images, 8)
    torch.manual_seed(0)
    with torch.no_grad():
        model.enc_weight.add_(0.01 * torch.randn_like(model.enc_weight))
        model.enc_log_scale.add_(0.3)
    return model


@pytest.fixture(scope="module")
def grey_digits():
    return get_dataset("mnist-5k")().load("test").images[:24]


def test_exact_posterior_is_diagonal_and_gives_exact_elbo(ppca, grey_digits):
    mean, cov = ppca.exact_posterior(grey_digits)
    assert torch.allclose(cov, torch.diag(torch.diagonal(cov)), atol=1e-6)
    exact = ppca.exact_elbo(grey_digits, mean, torch.diagonal(cov).sqrt().expand_as(mean))
    assert torch.allclose(exact, ppca.log_marginal(grey_digits), atol=1e-2)


def test_monte_carlo_elbo_matches_closed_form(ppca, grey_digits):
    loc, scale = ppca.encode(grey_digits)["z"]
    closed = ppca.exact_elbo(grey_digits, loc, scale)
    estimate = -nelbo(ppca, ppca.amortized_posterior(), grey_digits, num_samples=400)
    # unbiased: the signed error averages out; each datapoint's error is sampling noise
    assert abs((estimate - closed).mean()) < 0.1
    assert (estimate - closed).abs().max() < 1.0


def test_iwae_is_between_elbo_and_log_px_and_grows_with_k(ppca, grey_digits):
    log_px = ppca.log_marginal(grey_digits)
    loc, scale = ppca.encode(grey_digits)["z"]
    elbo = ppca.exact_elbo(grey_digits, loc, scale)
    small = iwae_bound(ppca, ppca.amortized_posterior(), grey_digits, num_samples=10)
    large = iwae_bound(
        ppca, ppca.amortized_posterior(), grey_digits, num_samples=2000, max_rows=5000
    )
    assert (elbo.mean() < small.mean()) and (small.mean() < large.mean())
    assert large.mean() <= log_px.mean() + 0.01


@pytest.mark.parametrize("max_rows", [7, 24, 5000])
def test_iwae_with_the_exact_posterior_is_exact_in_any_block_layout(ppca, grey_digits, max_rows):
    """With q = p(z|x) every importance weight equals p(x): blocks must not change that."""
    mean, cov = ppca.exact_posterior(grey_digits)
    exact = LocalGaussianPosterior({"z": (mean, torch.diagonal(cov).sqrt().expand_as(mean))})
    bound = iwae_bound(ppca, exact, grey_digits, num_samples=30, max_rows=max_rows)
    assert torch.allclose(bound, ppca.log_marginal(grey_digits), atol=2e-2)


def test_lvm_gaps_matches_closed_form(ppca, grey_digits, tmp_path):
    checkpoint = save_checkpoint(ppca, tmp_path / "ppca")
    result = CliRunner().invoke(
        cli,
        [
            "gaps",
            "--backend",
            "linear-gaussian",
            "--checkpoint",
            str(checkpoint),
            "--num-images",
            "24",
            "--iwae-samples",
            "500",
            "--eval-samples",
            "2000",
            "--steps",
            "10,100",
            "-o",
            "lr=0.05",
            "-o",
            "gradient=stl",
            "--round-steps",
            "300",
            "--max-steps",
            "1500",
            "--threads",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["results"]["test"]
    log_px = ppca.log_marginal(grey_digits).mean().item()
    loc, scale = ppca.encode(grey_digits)["z"]
    amortized = ppca.exact_elbo(grey_digits, loc, scale).mean().item()
    assert report["log_px"] == pytest.approx(log_px, abs=0.05)
    assert abs(report["approximation_gap"]) < 0.05
    assert report["amortization_gap"] == pytest.approx(log_px - amortized, abs=0.1)
    assert report["amortization_gap"] > 1.0
    assert 0 < report["fraction_closed_at_step"]["10"] < report["fraction_closed_at_step"]["100"]
