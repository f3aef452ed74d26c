"""The NVAE backend: structure, training aids, checkpoints, and refinement on it."""

import json
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from click.testing import CliRunner
from lvm_nvae.model import NVAE, NVAEConfig, NVAEFlow, NVAEFlowConfig
from lvm_nvae.posterior import NVAELocalPosterior, NVAEPosterior

from lvmtoolkit.cli import cli
from lvmtoolkit.core.checkpoint import save_checkpoint
from lvmtoolkit.core.elbo import DATA_PLATE, per_datapoint_elbo
from lvmtoolkit.core.runtime import frozen
from lvmtoolkit.core.training import train
from lvmtoolkit.errors import CheckpointError
from lvmtoolkit.flows import GaussianFlow
from lvmtoolkit.metrics import iwae_bound, nelbo
from lvmtoolkit.plugins import get_backend, load_checkpoint
from lvmtoolkit.refiners import SVIFlowRefiner, SVIRefiner, make_local_posterior
from lvmtoolkit.refiners.svi import dimension_scale
from lvmtoolkit.tasks.observations import parse_observation
from lvmtoolkit.tasks.observed_model import ObservedModel
from lvmtoolkit.tasks.restoration import (
    conditional_summary,
    importance_summary,
    metropolis_within_gibbs,
    restoration_refiner,
    restore,
)

TINY = dict(
    channels=(8, 8, 8),
    groups_per_scale=(1, 1),
    latent_channels=2,
    preprocess_cells=0,
    flow_hidden=4,
)


def tiny(cls=NVAE, seed=0, **overrides):
    torch.manual_seed(seed)
    config_class = NVAEFlowConfig if cls is NVAEFlow else NVAEConfig
    return cls(config_class(**{**TINY, **overrides}))


@pytest.fixture(scope="session", params=[NVAE, NVAEFlow], ids=["nvae", "nvae-flow"])
def trained(request, mnist5k_test_images):
    """A tiny NVAE (with and without flows) trained briefly on 512 real digits."""
    model = tiny(request.param)
    train(model, mnist5k_test_images[-512:], epochs=6, batch_size=64, lr=3e-3, seed=0)
    return model.eval()


def test_both_backends_are_registered():
    assert get_backend("nvae") is NVAE
    assert get_backend("nvae-flow") is NVAEFlow
    assert NVAEFlow().config.num_flows == 2 and NVAE().config.num_flows == 0


def test_default_config_has_groups_at_two_scales():
    model = NVAE()
    assert model.latent_shapes == {
        "z1": (8, 7, 7),
        "z2": (8, 7, 7),
        "z3": (8, 14, 14),
        "z4": (8, 14, 14),
    }


@pytest.mark.parametrize("cls", [NVAE, NVAEFlow])
def test_every_group_is_a_site_in_the_data_plate(cls, digits):
    model = tiny(cls, groups_per_scale=(2, 1)).eval()
    x = digits[:5]
    model_trace = poutine.trace(model.model).get_trace(x)
    guide_trace = poutine.trace(model.amortized_posterior()).get_trace(x)
    for name, shape in model.latent_shapes.items():
        for trace in (model_trace, guide_trace):
            site = trace.nodes[name]
            assert any(f.name == DATA_PLATE for f in site["cond_indep_stack"])
            assert site["fn"].batch_shape == (5,) and site["fn"].event_shape == shape
            assert site["value"].shape == (5, *shape)
    assert model_trace.nodes["x"]["is_observed"]
    assert list(model.latent_shapes) == ["z1", "z2", "z3"]


def test_sample_prior_and_decode_shapes():
    model = tiny(groups_per_scale=(2, 1)).eval()
    z = model.sample_prior(3)
    assert {k: tuple(v.shape[1:]) for k, v in z.items()} == model.latent_shapes
    likelihood = model.decode(z)
    assert likelihood.batch_shape == (3,) and likelihood.event_shape == (1, 28, 28)
    assert likelihood.sample().unique().tolist() in ([0.0, 1.0], [0.0], [1.0])


@pytest.mark.parametrize("cls", [NVAE, NVAEFlow])
def test_training_loss_is_the_pyro_nelbo_once_warm(cls, digits):
    """One pass through the shared top-down path gives per_datapoint_elbo's value."""
    model = tiny(cls).eval()
    if cls is NVAEFlow:
        with torch.no_grad():  # a fresh flow is the identity; make it do something
            for cell in (c for cells in model.flows for c in cells):
                cell.w2.normal_(0, 0.1)
    pyro.set_rng_seed(4)
    fused = model.training_loss(digits)
    pyro.set_rng_seed(4)
    traced = -per_datapoint_elbo(model.model, model.amortized_posterior(), digits)
    assert fused.shape == (digits.shape[0],)
    assert torch.allclose(fused, traced, rtol=1e-5, atol=1e-3)


def test_kl_warmup_and_balance(digits):
    model = tiny(kl_warmup=0.5, kl_min=0.01).eval()
    model.on_train_step(0, 100)
    assert model.kl_weight == pytest.approx(0.02)
    pyro.set_rng_seed(0)
    warming = model.training_loss(digits)
    model.on_train_step(49, 100)
    assert model.kl_weight == 1.0
    pyro.set_rng_seed(0)
    warm = model.training_loss(digits)
    assert (warming < warm).all()  # a down-weighted KL
    kls = torch.tensor([[1.0, 100.0], [3.0, 300.0]])
    model.kl_weight = 0.5
    balanced = model._weighted_kl(kls)
    model.config.kl_balance = False
    assert torch.allclose(model._weighted_kl(kls), 0.5 * kls.sum(1))
    assert not torch.allclose(balanced, 0.5 * kls.sum(1))


def test_gradient_clipping_and_skipping(digits):
    model = tiny(grad_clip=1.0)
    model.training_loss(digits).mean().backward()
    model.on_before_optimizer_step()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm <= 1.0 + 1e-4
    next(model.parameters()).grad[0] = float("nan")
    model.on_before_optimizer_step()
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def test_train_calls_the_hooks(mnist5k_test_images):
    model = tiny(kl_warmup=1.0)
    seen = []
    original = model.on_train_step
    model.on_train_step = lambda step, total: (seen.append((step, total)), original(step, total))
    summary = train(model, mnist5k_test_images[:64], epochs=2, batch_size=32, seed=0)
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert model.kl_weight == 1.0 and summary["steps"] == 4
    assert torch.isfinite(torch.tensor(summary["final_train_nelbo"]))


def test_the_posterior_is_residual_to_the_prior(digits):
    """Zero residual heads: q(z_l | z_<l, x) is the prior of every group below the top."""
    model = tiny(groups_per_scale=(2, 1)).eval()
    with torch.no_grad():
        for head in model.posterior_heads:
            head[-1].weight.zero_()
            head[-1].bias.zero_()
    guide_trace = poutine.trace(model.amortized_posterior()).get_trace(digits)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(digits)
    for name in model.latent_shapes:
        q, p = guide_trace.nodes[name]["fn"].base_dist, model_trace.nodes[name]["fn"].base_dist
        assert torch.allclose(q.loc, p.loc) and torch.allclose(q.scale, p.scale)


def test_encoder_top_down_path_is_the_decoders(digits):
    """The posterior's parameters depend on the decoder's (shared) top-down weights."""
    model = tiny(groups_per_scale=(2, 1)).eval()
    guide_trace = poutine.trace(model.amortized_posterior()).get_trace(digits)
    guide_trace.nodes["z3"]["fn"].base_dist.loc.sum().backward()
    for module in (model.between, model.prior_heads, model.merge):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_batch_norm_uses_running_statistics_when_frozen(digits):
    """Frozen (as refiners and metrics run it), a datapoint's output ignores its batch."""
    model = tiny()
    model.train()
    model.training_loss(digits)  # move the running statistics away from their start
    z = model.sample_prior(4)
    one = {k: v[:1] for k, v in z.items()}

    def logits(latents):
        return model.decode(latents).base_dist.logits[0]

    assert not torch.allclose(logits(one), logits(z))  # training mode: batch statistics
    with frozen(model):
        assert torch.allclose(logits(one), logits(z), atol=1e-5)
    assert model.training  # frozen() restored the mode


def test_frozen_gives_every_module_back_its_own_mode():
    """A wrapper starts in training mode (as every new nn.Module does); freezing it must
    not hand that mode to the model it wraps, or batch norm runs on batch statistics and
    updates its running statistics after the first frozen block."""
    model = tiny().eval()
    wrapper = torch.nn.Module()
    wrapper.base = model
    assert wrapper.training and not model.training
    with frozen(wrapper):
        assert not wrapper.training and not any(m.training for m in model.modules())
    assert wrapper.training
    assert not any(m.training for m in model.modules())


def state_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state_unchanged(model, before):
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def assert_runs_in_eval_mode(model, run, expected):
    """``run()`` on ``model`` left in training mode gives ``expected`` (its result in eval
    mode) and hands every module its training mode back."""
    model.train()
    try:
        assert torch.equal(run(), expected)
        assert all(m.training for m in model.modules())
    finally:
        model.eval()


def test_restoration_leaves_the_model_as_it_found_it(trained, digits):
    """Restoration runs the model in eval mode and changes none of its parameters or
    batch-norm statistics, so a row does not depend on the rows restored before it."""
    y = digits[:6].clamp(0.2, 0.8)
    before = state_of(trained)

    def svi_mean():
        svi = restoration_refiner("svi", steps=20)
        return restore(trained, y, "gaussian:variance=0.5", refiner=svi, seed=3).images

    first = svi_mean()
    restore(trained, y, "gaussian:variance=0.5", refiner="amortized")
    assert torch.equal(svi_mean(), first)
    assert not any(m.training for m in trained.modules())
    assert_state_unchanged(trained, before)
    # A model left in training mode is restored in eval mode and handed back training.
    assert_runs_in_eval_mode(trained, svi_mean, first)


@pytest.mark.parametrize("sampler", ["conditional", "importance", "mwg"])
def test_samplers_run_the_model_in_eval_mode_when_called_directly(trained, digits, sampler):
    """The samplers behind `restore` are library functions too: called on a model left in
    training mode they still use batch norm's running statistics, and hand every module
    its mode back."""
    observed = ObservedModel(trained, parse_observation("gaussian:variance=0.5"))
    y = digits[:4].clamp(0.2, 0.8)
    posterior = trained.amortized_posterior()

    def mean():
        with torch.random.fork_rng():
            torch.manual_seed(5)
            if sampler == "conditional":
                return conditional_summary(observed, posterior, y, None, num_samples=3).mean
            if sampler == "importance":
                return importance_summary(observed, posterior, y, None, num_samples=3)[0].mean
            summary, _, _ = metropolis_within_gibbs(
                observed, posterior, y, None, iterations=3, burn_in=1
            )
            return summary.mean

    before = state_of(trained)
    assert_runs_in_eval_mode(trained, mean, mean())
    assert_state_unchanged(trained, before)


@pytest.mark.parametrize("cls", [NVAE, NVAEFlow])
def test_checkpoint_round_trip(cls, tmp_path, digits):
    model = tiny(cls).eval()
    path = save_checkpoint(model, tmp_path / "ckpt", training={"steps": 0})
    loaded = load_checkpoint(path, backend=cls.name)
    assert type(loaded) is cls and loaded.config == model.config
    before = nelbo(model, model.amortized_posterior(), digits, num_samples=2, seed=1)
    after = nelbo(loaded, loaded.amortized_posterior(), digits, num_samples=2, seed=1)
    assert torch.equal(before, after)
    info = json.loads((path / "config.json").read_text())
    assert info["backend"] == cls.name and info["config"]["num_flows"] == model.config.num_flows


def test_config_is_validated():
    with pytest.raises(CheckpointError, match="channels needs 3"):
        NVAEConfig(channels=(8, 8))
    with pytest.raises(CheckpointError, match="divisible by 8"):
        NVAEConfig(groups_per_scale=(1, 1, 1), channels=(8, 8, 8, 8))


def test_default_checkpoints_are_looked_for_in_the_package():
    for cls, name in ((NVAE, "nvae-mnist-5k"), (NVAEFlow, "nvae-flow-mnist-5k")):
        path = cls.default_checkpoint()
        assert path is None or (path.name == name and (path / "model.safetensors").is_file())


def test_gaussian_params_summarise_the_posterior_on_its_mean_path(digits):
    model = tiny().eval()
    posterior = model.amortized_posterior()
    assert isinstance(posterior, NVAEPosterior)
    params = posterior.gaussian_params(digits)
    top = poutine.trace(posterior).get_trace(digits).nodes["z1"]["fn"].base_dist
    assert torch.allclose(params["z1"][0], top.loc) and torch.allclose(params["z1"][1], top.scale)
    assert set(params) == set(model.latent_shapes)


# --- refinement --------------------------------------------------------------------------


@pytest.mark.parametrize("num_flows", [0, 2])
def test_hierarchical_local_posterior_starts_at_the_amortized_one(trained, digits, num_flows):
    with frozen(trained):
        local = make_local_posterior(trained.amortized_posterior(), digits, num_flows=num_flows)
    assert isinstance(local, NVAELocalPosterior)
    amortized = nelbo(trained, trained.amortized_posterior(), digits, num_samples=4, seed=2)
    start = nelbo(trained, local, digits, num_samples=4, seed=2)
    if num_flows == 0 or trained.has_flows:  # same family: same noise, same numbers
        assert torch.allclose(start, amortized, atol=1e-3)
    for name, tensor in local.per_datapoint_tensors():
        assert tensor.shape[0] == digits.shape[0], name


@pytest.mark.parametrize("num_flows", [0, 2], ids=["svi", "svi-flow"])
def test_refinement_lowers_every_datapoints_nelbo(trained, digits, num_flows):
    x = digits[:16]
    result = SVIFlowRefiner(steps=60, num_flows=num_flows).refine(trained, x)
    # Monte-Carlo KL for both: flow posteriors have no closed form, and the same estimator
    # with the same noise makes the per-datapoint comparison a paired one.
    score = dict(num_samples=64, seed=9, analytic_kl=False)
    amortized = nelbo(trained, trained.amortized_posterior(), x, **score)
    refined = nelbo(trained, result.posterior, x, **score)
    assert isinstance(result.posterior, NVAELocalPosterior)
    assert (refined < amortized).all(), (refined - amortized).max()


def test_mean_field_variant_keeps_the_best_of_its_start(trained, digits):
    x = digits[:16]
    refiner = SVIFlowRefiner(steps=20, num_flows=0, structure="mean-field")
    result = refiner.refine(trained, x)
    with frozen(trained):
        start = make_local_posterior(trained.amortized_posterior(), x, structure="mean-field")
    start_score = nelbo(trained, start, x, num_samples=16, seed=refiner.selection_seed)
    assert (result.info["selection_nelbo"] <= start_score + 1e-4).all()
    assert type(result.posterior).__name__ == "LocalGaussianPosterior"


def test_refiners_never_return_nan_and_keep_the_start(trained, digits, refine_keeps_the_start):
    x = digits[:8]
    refiner = SVIFlowRefiner(steps=4, lr=1e4, select_samples=4)
    refine_keeps_the_start(refiner, trained, x, num_samples=4, tolerance=1e-3)
    svi = SVIRefiner(steps=4, lr=1e4, select_samples=4).refine(trained, x)
    assert all(torch.isfinite(t).all() for t in svi.posterior.parameters())


def test_refinement_leaves_the_model_untouched(trained, digits):
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    SVIFlowRefiner(steps=3, lr=0.05).refine(trained, digits[:4])
    for name, value in trained.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert not trained.training


def test_per_datapoint_flows_copy_the_models_own(trained, digits):
    with frozen(trained):
        local = make_local_posterior(trained.amortized_posterior(), digits[:4], num_flows=1)
    expected = trained.config.num_flows if trained.has_flows else 1
    assert all(len(cells) == expected for cells in local.flows.values())


def test_iwae_bound_of_a_refined_nvae_posterior(trained, digits):
    x = digits[:4]
    posterior = SVIFlowRefiner(steps=5, lr=0.02).refine(trained, x).posterior
    bound = iwae_bound(trained, posterior, x, num_samples=8)
    elbo = -nelbo(trained, posterior, x, num_samples=8, analytic_kl=False)
    assert torch.isfinite(bound).all() and bound.mean() > elbo.mean()


@pytest.mark.slow
def test_cli_trains_and_refines_the_nvae(tmp_path, lvm_refine):
    config = ["-c", "channels=[8,8,8]", "-c", "groups_per_scale=[1,1]", "-c", "latent_channels=2"]
    out = tmp_path / "nvae"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--backend",
            "nvae",
            *config,
            "--epochs",
            "1",
            "--threads",
            "1",
            "--eval-split",
            "",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    result = lvm_refine("--backend", "nvae", "--checkpoint", out, "--refiner", "svi-flow")
    assert result.exit_code == 0, result.output
    assert "nvae, svi-flow" in result.stderr and "amortized" in result.stderr
    assert "NELBO test" in result.stderr and "step 2: NELBO" in result.stderr


@pytest.mark.parametrize("name", ["nvae", "nvae-flow"])
def test_bundled_checkpoint_beats_the_vae(name, bundled_vae, mnist5k_test_images):
    """The paper's claim for the shipped checkpoints, all trained on the same 4,000 digits."""
    from lvmtoolkit.data import binarize_fixed

    model = load_checkpoint(get_backend(name).default_checkpoint(), backend=name)
    assert model.checkpoint_info["data"]["split"] == "train"
    x = binarize_fixed(mnist5k_test_images[:64])
    ours = nelbo(model, model.amortized_posterior(), x, num_samples=4)
    vae = nelbo(bundled_vae, bundled_vae.amortized_posterior(), x, num_samples=4)
    assert ours.mean() < vae.mean() - 5.0


@pytest.mark.parametrize("cls", [NVAE, NVAEFlow], ids=["nvae", "nvae-flow"])
def test_sticking_the_landing_drops_exactly_the_offsets_score(cls, digits):
    """STL on the hierarchical posterior drops d log q / d offsets at fixed z, nothing else.

    Same noise for both estimators: the ELBO's value is unchanged, the offsets' gradients
    differ by exactly their score (log q re-scored at the drawn z held fixed). The path through the
    groups above stays: detaching each group's whole loc and scale would drop it too (also
    zero-mean, but without STL's zero variance at the exact posterior).
    """
    model, x = tiny(cls), digits[:4]
    with frozen(model):
        local = make_local_posterior(model.amortized_posterior(), x)
        with torch.no_grad():  # move off the amortized posterior so the gradients are generic
            for p in local.parameters():
                p.add_(0.3 * torch.randn_like(p))
    assert local.supports_stl
    offsets = [*local.offset_loc.values(), *local.offset_log_scale.values()]
    flows = list(local.flows.parameters())  # none here; the model's own flows are frozen

    def flat(tensors):
        return torch.cat([t.flatten() for t in tensors]) if tensors else torch.zeros(0)

    def gradients(value):
        params = offsets + flows
        grads = torch.autograd.grad(value, params, allow_unused=True)
        grads = [
            torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
        ]
        return flat(grads[: len(offsets)]), flat(grads[len(offsets) :])

    with frozen(model), pyro.validation_enabled(False):
        for seed in range(3):
            results = []
            for stl in (False, True):
                torch.manual_seed(seed)
                elbo = per_datapoint_elbo(model.model, local, x, analytic_kl=False, stl=stl)
                results.append((elbo.detach(), *gradients(elbo.sum())))
            torch.manual_seed(seed)
            drawn = poutine.trace(local.guide).get_trace(x)
            for site in drawn.nodes.values():
                if site["type"] == "sample":
                    site["value"] = site["value"].detach()
            fixed = poutine.trace(poutine.replay(local.guide, trace=drawn)).get_trace(x)
            log_q = 0.0
            for name, site in fixed.nodes.items():
                if site["type"] != "sample" or name == DATA_PLATE:
                    continue
                q = site["fn"].fn
                if isinstance(q, GaussianFlow):
                    # At fixed z the flow's inverse is the drawn z0, whatever the offsets;
                    # only the base density depends on them.
                    z0 = drawn.nodes[name]["fn"].fn.last_draw[0].detach()
                    log_q = log_q + q.base_dist.log_prob(z0).sum()
                else:
                    log_q = log_q + q.log_prob(site["value"]).sum()
            score, _ = gradients(log_q)
            (value, reparam, _), (stl_value, stl, _) = results
            torch.testing.assert_close(value, stl_value)
            assert score.abs().max() > 1e-3
            torch.testing.assert_close(reparam - stl, -score, atol=1e-4, rtol=1e-3)


def test_stl_is_not_used_with_per_datapoint_flows(trained, digits):
    with frozen(trained):
        offsets_only = make_local_posterior(trained.amortized_posterior(), digits[:2])
        with_flows = make_local_posterior(trained.amortized_posterior(), digits[:2], num_flows=1)
    assert offsets_only.supports_stl
    assert not with_flows.supports_stl


def test_flows_in_the_hierarchical_posterior_learn_at_the_hierarchical_rate(trained, digits):
    with frozen(trained):
        local = make_local_posterior(trained.amortized_posterior(), digits[:2], num_flows=1)
    refiner = SVIFlowRefiner(lr=0.05, flow_lr=0.3, hierarchical_flow_lr=0.01)
    rate = {
        id(p): g["lr"]
        for g in refiner._param_groups(local, list(local.parameters()))
        for p in g["params"]
    }
    group = trained.groups[0]
    cell = local.flows[group.name][0]
    scale = dimension_scale(math.prod(group.shape))
    assert rate[id(cell.b2)] == pytest.approx(0.05 * 0.01 * scale)
    assert rate[id(local.offset_loc[group.name])] == pytest.approx(0.05 * scale)
