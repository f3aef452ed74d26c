"""The svi-flow refiner and per-datapoint flow posteriors on the VAE and GMVAE backends."""

import json

import pytest
import torch
from click.testing import CliRunner

from lvmtoolkit.cli import cli
from lvmtoolkit.core.elbo import per_datapoint_elbo
from lvmtoolkit.core.posterior import LocalGaussianPosterior
from lvmtoolkit.core.runtime import frozen
from lvmtoolkit.errors import LvmError, OptionError
from lvmtoolkit.metrics import iwae_bound, nelbo
from lvmtoolkit.plugins import get_refiner
from lvmtoolkit.refiners import (
    LocalFlowPosterior,
    SVIFlowRefiner,
    SVIRefiner,
    make_local_posterior,
)


def amortized_nelbo(model, x, **kwargs):
    return nelbo(model, model.amortized_posterior(), x, **kwargs)


def test_svi_flow_is_registered():
    assert get_refiner("svi-flow") is SVIFlowRefiner


def test_svi_flow_lowers_the_nelbo_of_every_datapoint(tiny_vae, digits):
    result = SVIFlowRefiner(steps=200, lr=0.02).refine(tiny_vae, digits)
    before = amortized_nelbo(tiny_vae, digits, num_samples=32, seed=11)
    after = nelbo(tiny_vae, result.posterior, digits, num_samples=32, seed=11)
    assert isinstance(result.posterior, LocalFlowPosterior)
    assert (after < before).all(), (after - before).max()
    assert result.trace.shape == (200, digits.shape[0])
    assert result.trace[-20:].mean() < result.trace[:20].mean()


@pytest.mark.slow
def test_svi_flow_beats_svi_at_equal_steps_on_the_bundled_vae(bundled_vae, digits):
    """The richer family pays off once the Gaussian has converged (1000 steps, the paper's)."""
    svi = SVIRefiner(steps=1000).refine(bundled_vae, digits).posterior
    flow = SVIFlowRefiner(steps=1000).refine(bundled_vae, digits).posterior
    svi_nelbo = nelbo(bundled_vae, svi, digits, num_samples=64, seed=5, analytic_kl=False)
    flow_nelbo = nelbo(bundled_vae, flow, digits, num_samples=64, seed=5, analytic_kl=False)
    assert flow_nelbo.mean() < svi_nelbo.mean() - 0.2, (flow_nelbo.mean(), svi_nelbo.mean())


def test_without_flows_it_is_the_svi_refiner(tiny_vae, digits):
    """num_flows=0 takes the same steps as svi under the same seed, bit for bit."""
    ours = SVIFlowRefiner(steps=15, num_flows=0).refine(tiny_vae, digits)
    theirs = SVIRefiner(steps=15, gradient="reparam").refine(tiny_vae, digits)
    assert isinstance(ours.posterior, LocalGaussianPosterior)
    assert torch.equal(ours.trace, theirs.trace)
    assert torch.equal(ours.posterior.loc["z"], theirs.posterior.loc["z"])


def test_never_worse_than_start_and_never_nan(tiny_vae, digits, refine_keeps_the_start):
    """A learning rate far too high: the kept-best rule still returns the start or better."""
    refiner = SVIFlowRefiner(steps=5, lr=1e4, select_samples=8)
    refine_keeps_the_start(refiner, tiny_vae, digits, num_samples=8, tolerance=1e-4)


def test_reproducible_and_leaves_the_model_untouched(tiny_vae, digits):
    weights = {k: v.clone() for k, v in tiny_vae.state_dict().items()}
    tiny_vae.train()
    first = SVIFlowRefiner(steps=10, lr=0.01, seed=3).refine(tiny_vae, digits)
    second = SVIFlowRefiner(steps=10, lr=0.01, seed=3).refine(tiny_vae, digits)
    assert torch.equal(first.trace, second.trace)
    for (name, a), b in zip(
        first.posterior.state_dict().items(), second.posterior.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert tiny_vae.training and all(p.requires_grad for p in tiny_vae.parameters())
    for name, value in tiny_vae.state_dict().items():
        assert torch.equal(value, weights[name]), name


def test_warm_start_continues_from_the_result(tiny_vae, digits):
    first = SVIFlowRefiner(steps=30, lr=0.02).refine(tiny_vae, digits)
    second = SVIFlowRefiner(steps=30, lr=0.02, seed=1).refine(
        tiny_vae, digits, init=first.posterior
    )
    assert isinstance(second.posterior, LocalFlowPosterior)
    assert second.posterior is not first.posterior
    before = nelbo(tiny_vae, first.posterior, digits, num_samples=16, seed=2)
    after = nelbo(tiny_vae, second.posterior, digits, num_samples=16, seed=2)
    assert after.mean() < before.mean()


def test_starts_from_an_svi_result_with_identity_flows(tiny_vae, digits):
    svi = SVIRefiner(steps=5, lr=0.01).refine(tiny_vae, digits).posterior
    with frozen(tiny_vae):
        local = make_local_posterior(svi, digits, num_flows=1)
    assert isinstance(local, LocalFlowPosterior)
    assert torch.equal(local.loc["z"], svi.loc["z"])
    z = torch.randn(digits.shape[0], 4)
    step = local.flows["z"][0].transform()
    assert torch.equal(step(z), z)


def test_runs_on_the_gmvae(digits):
    from lvm_gmvae.model import GMVAE, GMVAEConfig

    torch.manual_seed(0)
    model = GMVAE(GMVAEConfig(hidden=(32,), latent_dim=4, components=5)).eval()
    result = SVIFlowRefiner(steps=100, lr=0.02).refine(model, digits)
    before = amortized_nelbo(model, digits, num_samples=32, seed=4)
    after = nelbo(model, result.posterior, digits, num_samples=32, seed=4)
    assert after.mean() < before.mean() - 1.0
    assert torch.isfinite(result.info["selection_nelbo"]).all()


def test_checkpoints_receive_the_kept_posterior(tiny_vae, digits):
    seen = {}
    SVIFlowRefiner(steps=6, lr=0.01).refine(
        tiny_vae,
        digits,
        checkpoints=[0, 2, 6],
        on_checkpoint=lambda step, post: seen.setdefault(
            step, nelbo(tiny_vae, post, digits, num_samples=4, seed=0)
        ),
    )
    assert sorted(seen) == [0, 2, 6]


def test_each_datapoint_only_depends_on_its_own_flow(tiny_vae, digits):
    with frozen(tiny_vae):
        local = make_local_posterior(tiny_vae.amortized_posterior(), digits, num_flows=2)
        elbo = per_datapoint_elbo(tiny_vae.model, local, digits, analytic_kl=False)
        elbo[3].backward()
    for name, param in local.named_parameters():
        assert param.shape[0] == digits.shape[0], name
        others = torch.cat([param.grad[:3], param.grad[4:]])
        assert torch.count_nonzero(others) == 0, name
    assert local.loc["z"].grad[3].abs().sum() > 0


def test_select_and_assign_copy_rows(tiny_vae, digits):
    with frozen(tiny_vae):
        a = make_local_posterior(tiny_vae.amortized_posterior(), digits, num_flows=1)
    b = a.select(slice(None))
    with torch.no_grad():
        for param in b.parameters():
            param.add_(1.0)
    where = torch.zeros(digits.shape[0], dtype=torch.bool)
    where[[1, 5]] = True
    a.assign(b, where)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa[where], pb[where]), name
        assert not torch.equal(pa[~where], pb[~where]), name
    part = a.select(torch.tensor([5, 1]))
    assert part.num_datapoints == 2
    assert torch.equal(part.loc["z"][0], a.loc["z"][5])


def test_iwae_bound_accepts_a_flow_posterior(tiny_vae, digits):
    result = SVIFlowRefiner(steps=20, lr=0.02).refine(tiny_vae, digits[:8])
    bound = iwae_bound(tiny_vae, result.posterior, digits[:8], num_samples=16)
    elbo = -nelbo(tiny_vae, result.posterior, digits[:8], num_samples=16, analytic_kl=False)
    assert torch.isfinite(bound).all()
    assert bound.mean() > elbo.mean()


def test_rows_must_match_the_batch(tiny_vae, digits):
    with frozen(tiny_vae):
        local = make_local_posterior(tiny_vae.amortized_posterior(), digits, num_flows=1)
    with pytest.raises(LvmError, match="holds 2 datapoints"):
        per_datapoint_elbo(tiny_vae.model, local.rows(slice(0, 2)), digits[:3])
    with pytest.raises(LvmError, match="holds 32"):
        per_datapoint_elbo(tiny_vae.model, local, digits[:3])


def test_learning_rates_follow_fan_in_and_dimension(tiny_vae, digits):
    from lvmtoolkit.refiners.svi import dimension_scale

    assert dimension_scale(4) == 1.0 and dimension_scale(1000) == pytest.approx(0.1)
    with frozen(tiny_vae):
        local = make_local_posterior(tiny_vae.amortized_posterior(), digits, num_flows=1)
    rate = {
        id(p): g["lr"]
        for g in SVIFlowRefiner(lr=0.05, flow_lr=0.3)._param_groups(local, list(local.parameters()))
        for p in g["params"]
    }
    cell = local.flows["z"][0]
    assert rate[id(local.loc["z"])] == pytest.approx(0.05)  # 4 dimensions: unscaled
    assert rate[id(cell.b2)] == pytest.approx(0.05 * 0.3)
    assert rate[id(cell.w2)] == pytest.approx(0.05 * 0.3 / cell.w2[0, 0].numel())


def test_flat_flow_steps_are_narrowed_to_the_weight_limit():
    from lvmtoolkit.refiners.local import DEFAULT_MAX_FLAT_WEIGHTS, flat_flow_hidden

    assert flat_flow_hidden(10, 4, DEFAULT_MAX_FLAT_WEIGHTS) == 40  # the bundled VAE: unchanged
    assert flat_flow_hidden(50, 4, DEFAULT_MAX_FLAT_WEIGHTS) == 8  # not 200
    assert flat_flow_hidden(2000, 4, DEFAULT_MAX_FLAT_WEIGHTS) == 1  # at least one unit
    params = {"z": (torch.zeros(3, 50), torch.ones(3, 50)), "img": (torch.zeros(3, 2, 4, 4),) * 2}
    local = LocalFlowPosterior(params, num_flows=2)
    assert local.flows["z"][0].w1.shape == (3, 8, 50, 1, 1)
    assert local.flows["img"][0].w1.shape[1] == 8  # image latents: 4 per channel, not narrowed
    wide = LocalFlowPosterior(params, num_flows=1, max_flat_weights=10**9)
    assert wide.flows["z"][0].w1.shape[1] == 200


def test_options_are_validated():
    with pytest.raises(OptionError, match="structure"):
        SVIFlowRefiner(structure="tree")
    with pytest.raises(OptionError, match="num_flows"):
        SVIFlowRefiner(num_flows=-1)


def test_cli_refine_prints_the_table_for_svi_flow(lvm_refine):
    result = lvm_refine("--refiner", "svi-flow", steps="1,3")
    assert result.exit_code == 0, result.output
    assert "svi-flow" in result.stderr and "amortized" in result.stderr
    assert "NELBO test" in result.stderr and "step 3: NELBO" in result.stderr


def test_refiners_show_lists_the_flow_options():
    result = CliRunner().invoke(cli, ["refiners", "show", "svi-flow", "--json"])
    assert result.exit_code == 0, result.output
    names = {row["name"] for row in json.loads(result.stdout)["options"]}
    assert {"num_flows", "flow_hidden", "structure", "steps", "lr"} <= names
