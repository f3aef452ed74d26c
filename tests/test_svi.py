import pytest
import torch

from lvmtoolkit.core.posterior import AmortizedGaussianPosterior, LocalGaussianPosterior
from lvmtoolkit.core.runtime import stream_seed
from lvmtoolkit.errors import LvmError, OptionError
from lvmtoolkit.metrics import nelbo
from lvmtoolkit.refiners import AmortizedRefiner, SVIFlowRefiner, SVIRefiner
from lvmtoolkit.refiners.svi import zero_non_finite


def test_svi_lowers_nelbo_of_every_datapoint(tiny_vae, digits):
    refiner = SVIRefiner(steps=200, lr=0.05)
    result = refiner.refine(tiny_vae, digits)
    before = nelbo(tiny_vae, tiny_vae.amortized_posterior(), digits, num_samples=32, seed=11)
    after = nelbo(tiny_vae, result.posterior, digits, num_samples=32, seed=11)
    assert (after < before).all()
    assert result.trace.shape == (200, digits.shape[0])
    # the optimiser's own objective went down on average
    assert result.trace[-20:].mean() < result.trace[:20].mean()


def test_svi_never_worse_than_start_and_never_nan(tiny_vae, digits):
    """A learning rate far too high: the kept-best rule still returns the start or better."""
    refiner = SVIRefiner(steps=5, lr=1e4, select_samples=8)
    result = refiner.refine(tiny_vae, digits)
    for tensor in result.posterior.parameters():
        assert torch.isfinite(tensor).all()
    start = nelbo(
        tiny_vae,
        tiny_vae.amortized_posterior(),
        digits,
        num_samples=8,
        seed=refiner.selection_seed,
    )
    assert (result.info["selection_nelbo"] <= start + 1e-4).all()


@pytest.mark.parametrize(
    "refiner", [SVIRefiner(steps=20, lr=0.05), SVIFlowRefiner(steps=20, lr=0.02)], ids=str
)
def test_svi_survives_nan_likelihoods(refiner, nan_first_row, digits):
    """A datapoint whose likelihood turns NaN keeps finite parameters; the others improve."""
    result = refiner.refine(nan_first_row, digits)
    for tensor in result.posterior.parameters():
        assert torch.isfinite(tensor).all()
    assert torch.isinf(result.trace[:, 0]).all()
    assert torch.isfinite(result.trace[:, 1:]).all()
    assert result.trace[-1, 1:].mean() < result.trace[0, 1:].mean()


def test_non_finite_input_is_an_error(tiny_vae, digits):
    x = digits.clone()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(LvmError, match="non-finite"):
        SVIRefiner(steps=1).refine(tiny_vae, x)


def test_checkpoints_are_reported_in_order(tiny_vae, digits):
    seen = []
    SVIRefiner(steps=10, lr=0.01).refine(
        tiny_vae,
        digits,
        checkpoints=[1, 5, 10, 50],
        on_checkpoint=lambda step, posterior: seen.append((step, type(posterior).__name__)),
    )
    assert seen == [
        (1, "LocalGaussianPosterior"),
        (5, "LocalGaussianPosterior"),
        (10, "LocalGaussianPosterior"),
    ]


def test_svi_is_reproducible_and_leaves_model_untouched(tiny_vae, digits):
    weights = {k: v.clone() for k, v in tiny_vae.state_dict().items()}
    flags = [p.requires_grad for p in tiny_vae.parameters()]
    a = SVIRefiner(steps=15, lr=0.01, seed=4).refine(tiny_vae, digits)
    b = SVIRefiner(steps=15, lr=0.01, seed=4).refine(tiny_vae, digits)
    assert torch.equal(a.trace, b.trace)
    for key, value in tiny_vae.state_dict().items():
        assert torch.equal(value, weights[key])
    assert [p.requires_grad for p in tiny_vae.parameters()] == flags


def test_chunking_gives_the_same_objective(tiny_vae, digits):
    """Chunks change the noise draws but not the objective: deterministic at zero scale."""
    params = tiny_vae.amortized_posterior().gaussian_params(digits)
    tiny = {k: (loc.detach(), torch.full_like(scale, 1e-8)) for k, (loc, scale) in params.items()}
    init = LocalGaussianPosterior(tiny)
    whole = SVIRefiner(steps=3, lr=0.01, gradient="reparam", chunk_size=1024).refine(
        tiny_vae, digits, init=init
    )
    parts = SVIRefiner(steps=3, lr=0.01, gradient="reparam", chunk_size=7).refine(
        tiny_vae, digits, init=init
    )
    assert torch.allclose(whole.trace, parts.trace, atol=1e-3)


def test_other_optimisers(tiny_vae, digits):
    for name in ("sgd", "rmsprop", "adagrad"):
        result = SVIRefiner(steps=3, optimizer=name, lr=1e-3, momentum=0.5).refine(tiny_vae, digits)
        assert result.trace.shape == (3, digits.shape[0])


def test_zero_steps_returns_the_start(tiny_vae, digits):
    result = SVIRefiner(steps=0).refine(tiny_vae, digits)
    start = tiny_vae.amortized_posterior().gaussian_params(digits)["z"]
    loc, scale = result.posterior.gaussian_params(digits)["z"]
    assert torch.allclose(loc, start[0]) and torch.allclose(scale, start[1], rtol=1e-5)


def test_amortized_refiner_is_identity(tiny_vae, digits):
    result = AmortizedRefiner().refine(tiny_vae, digits)
    assert isinstance(result.posterior, AmortizedGaussianPosterior)
    assert result.steps == 0 and result.trace.shape == (0, digits.shape[0])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"lr": "0"}, "must be > 0"),
        ({"steps": "-1"}, "must be >= 0"),
        ({"optimizer": "lbfgs"}, "not one of"),
        ({"learning_rate": "1"}, "unknown option"),
        ({"steps": "ten"}, "expected int"),
        ({"analytic_kl": "maybe"}, "true or false"),
    ],
)
def test_invalid_options(options, message):
    with pytest.raises(OptionError, match=message):
        SVIRefiner(**options)


def test_wrong_batch_shape(tiny_vae):
    with pytest.raises(LvmError, match="expects"):
        SVIRefiner(steps=1).refine(tiny_vae, torch.zeros(4, 1, 32, 32))


def test_local_posterior_refuses_other_batch_sizes(tiny_vae, digits):
    local = LocalGaussianPosterior.from_posterior(tiny_vae.amortized_posterior(), digits)
    with pytest.raises(LvmError, match="holds 32 datapoints"):
        local.gaussian_params(digits[:3])
    sub = local.select(slice(0, 3))
    assert sub.num_datapoints == 3


def test_svi_paper_keeps_the_papers_recipe():
    from lvmtoolkit.refiners import PaperSVIRefiner

    options = PaperSVIRefiner().options
    assert (options.optimizer, options.lr, options.schedule, options.gradient) == (
        "adam",
        1e-3,
        "constant",
        "reparam",
    )
    assert PaperSVIRefiner(lr="0.01").options.lr == 0.01


def test_cosine_schedule_and_clipping_and_stl_run(tiny_vae, digits):
    for options in (
        {"schedule": "cosine"},
        {"clip_norm": 0.1},
        {"gradient": "stl"},
        {"gradient": "stl", "num_particles": 2},
    ):
        result = SVIRefiner(steps=30, lr=0.05, **options).refine(tiny_vae, digits)
        before = nelbo(tiny_vae, tiny_vae.amortized_posterior(), digits, seed=5)
        after = nelbo(tiny_vae, result.posterior, digits, seed=5)
        assert after.mean() < before.mean(), options


def test_per_datapoint_clipping_bounds_each_row():
    from lvmtoolkit.refiners.svi import clip_per_datapoint

    loc = torch.zeros(3, 2, requires_grad=True)
    scale = torch.zeros(3, 2, requires_grad=True)
    loc.grad = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    scale.grad = torch.zeros(3, 2)
    clip_per_datapoint([loc, scale], 1.0)
    assert torch.allclose(loc.grad[0], torch.tensor([0.6, 0.8]))
    assert torch.allclose(loc.grad[1], torch.tensor([0.3, 0.4]))  # already below the bound


def test_stream_seeds_are_stable_and_distinct():
    assert stream_seed(0, "svi/optimise") == stream_seed(0, "svi/optimise")
    seeds = {stream_seed(s, p) for s in (0, 1) for p in ("svi/optimise", "svi/select")}
    assert len(seeds) == 4
    assert not seeds & {0, 1}
    assert all(0 <= s < 2**63 for s in seeds)


def test_optimisation_noise_is_not_the_evaluation_noise_of_the_same_seed(tiny_vae, digits):
    """Scoring a posterior on the draws it was fitted to flatters it (flows fit them).

    The first step's per-datapoint loss is the one-sample NELBO of the start under the
    optimisation noise; an evaluation seeded with the refiner's seed must draw other noise.
    """
    refiner = SVIRefiner(steps=1, gradient="reparam", seed=0)
    result = refiner.refine(tiny_vae, digits)
    start = LocalGaussianPosterior.from_posterior(tiny_vae.amortized_posterior(), digits)
    same_stream = nelbo(tiny_vae, start, digits, num_samples=1, seed=refiner.optimisation_seed)
    torch.testing.assert_close(result.trace[0], same_stream)  # the loss is that NELBO
    evaluation = nelbo(tiny_vae, start, digits, num_samples=1, seed=0)
    assert (result.trace[0] - evaluation).abs().min() > 1e-4


def test_zero_non_finite_zeroes_exactly_the_non_finite_elements():
    big = torch.full((3,), 3e38)  # finite elements whose sum overflows: nothing changes
    params = [torch.zeros(2, 2, requires_grad=True) for _ in range(4)]
    params[0].grad = torch.tensor([[1.0, float("nan")], [float("inf"), -2.0]])
    params[1].grad = torch.tensor([[-float("inf"), 5.0], [6.0, 7.0]])
    params[2].grad = None
    params[3].grad = torch.stack([big[:2], big[1:]])
    zero_non_finite(params)
    assert torch.equal(params[0].grad, torch.tensor([[1.0, 0.0], [0.0, -2.0]]))
    assert torch.equal(params[1].grad, torch.tensor([[0.0, 5.0], [6.0, 7.0]]))
    assert torch.equal(params[2].grad, torch.zeros(2, 2))
    assert torch.equal(params[3].grad, torch.full((2, 2), 3e38))
    finite = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    params[0].grad = finite.clone()
    zero_non_finite(params[:1])
    assert torch.equal(params[0].grad, finite)
