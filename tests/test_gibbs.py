"""The paper's pseudo-Gibbs chain (inpainting and denoising) and the evaluation corruptions."""

import itertools
from typing import ClassVar

import pytest
import torch

from lvmtoolkit import hookimpl, plugins
from lvmtoolkit.errors import LvmError, OptionError
from lvmtoolkit.metrics.ssim import ssim
from lvmtoolkit.refiners import AmortizedRefiner, SVIOptions, SVIRefiner
from lvmtoolkit.tasks import (
    GibbsResult,
    add_noise,
    denoise,
    gibbs_refiner,
    inpaint,
    make_mask,
    pseudo_gibbs,
)
from lvmtoolkit.tasks.gibbs import iteration_seed


class RecordingRefiner(SVIRefiner):
    """The svi refiner, recording the starting posterior and seed of every call."""

    name = "recording-svi"
    calls: ClassVar[list] = []

    def refine(self, model, x, init=None, mask=None, checkpoints=(), on_checkpoint=None):
        result = super().refine(model, x, init=init, mask=mask)
        RecordingRefiner.calls.append((init, self.options.seed, result.posterior))
        return result


class RecordingPlugin:
    @hookimpl
    def register_refiners(self, register):
        register(RecordingRefiner)


@pytest.fixture
def recording_refiner(lvm_plugins):
    lvm_plugins.register(RecordingPlugin(), name="recording")
    RecordingRefiner.calls = []


def test_inpaint_never_changes_observed_pixels(tiny_vae, digits):
    observed = make_mask("random", digits.shape, seed=3)
    for output in ("mean", "sample"):
        result = pseudo_gibbs(
            tiny_vae,
            digits,
            observed,
            SVIRefiner(steps=2, select_samples=1),
            iterations=5,
            output=output,
            record_every=1,
        )
        assert isinstance(result, GibbsResult)
        assert torch.equal(result.images[observed], digits[observed])
        for image in result.trajectory:
            assert torch.equal(image[observed], digits[observed])
        assert result.recorded_at == [1, 2, 3, 4, 5]
        assert torch.equal(result.trajectory[-1], result.images)


def test_unobserved_pixels_start_from_fill_not_from_x(bundled_vae, digits):
    """What x holds under the mask must not leak into the chain."""
    observed = make_mask("centre", digits.shape)
    noise = torch.rand(digits.shape, generator=torch.Generator().manual_seed(0))
    leaked = torch.where(observed, digits, noise)
    a = pseudo_gibbs(bundled_vae, digits, observed, iterations=3)
    b = pseudo_gibbs(bundled_vae, leaked, observed, iterations=3)
    assert torch.equal(a.images, b.images)
    unknown = torch.where(observed, digits, torch.full_like(digits, float("nan")))
    assert torch.equal(pseudo_gibbs(bundled_vae, unknown, observed, iterations=3).images, a.images)


def test_sample_output_is_binary_for_a_bernoulli_model_and_mean_is_not(bundled_vae, digits):
    observed = make_mask("half", digits.shape)
    sample = pseudo_gibbs(bundled_vae, digits, observed, iterations=2, output="sample")
    mean = pseudo_gibbs(bundled_vae, digits, observed, iterations=2, output="mean")
    hidden = ~observed
    assert set(sample.images[hidden].unique().tolist()) <= {0.0, 1.0}
    assert ((mean.images[hidden] > 0) & (mean.images[hidden] < 1)).any()


def test_same_seed_same_result_other_seed_other_result(tiny_vae, digits):
    observed = make_mask("centre", digits.shape)
    refiner = SVIRefiner(steps=2, select_samples=1)
    a = pseudo_gibbs(tiny_vae, digits, observed, refiner, iterations=3, seed=1)
    b = pseudo_gibbs(tiny_vae, digits, observed, refiner, iterations=3, seed=1)
    c = pseudo_gibbs(tiny_vae, digits, observed, refiner, iterations=3, seed=2)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


def test_refiner_is_warm_started_with_fresh_noise_each_iteration(
    recording_refiner, tiny_vae, digits
):
    """A registered refiner plugs in by name; each iteration starts from the last posterior."""
    refiner = gibbs_refiner("recording-svi", steps=1)
    observed = make_mask("half", digits.shape)
    pseudo_gibbs(tiny_vae, digits, observed, refiner, iterations=4, seed=5)
    calls = RecordingRefiner.calls
    assert len(calls) == 4
    assert calls[0][0] is None  # the first iteration starts from the encoder
    for previous, current in itertools.pairwise(calls):
        assert current[0] is previous[2]
    seeds = [seed for _, seed, _ in calls]
    assert seeds == [iteration_seed(0, 5, t) for t in range(1, 5)]
    assert len(set(seeds)) == 4
    assert refiner.options.seed == 0  # the caller's refiner is not modified


def test_without_warm_start_every_iteration_starts_from_the_encoder(
    recording_refiner, tiny_vae, digits
):
    refiner = gibbs_refiner("recording-svi", steps=1)
    pseudo_gibbs(tiny_vae, digits, None, refiner, iterations=3, warm_start=False)
    assert [init for init, _, _ in RecordingRefiner.calls] == [None, None, None]


def test_gibbs_refiner_applies_per_iteration_defaults_only_where_declared():
    svi = gibbs_refiner("svi")
    assert (svi.options.steps, svi.options.select_samples) == (10, 2)
    assert svi.options.lr == SVIOptions().lr  # the optimiser's settings stay the refiner's
    assert gibbs_refiner("svi", steps="3", lr=0.5).options.steps == 3
    assert isinstance(gibbs_refiner("amortized"), AmortizedRefiner)
    with pytest.raises(OptionError, match="unknown option"):
        gibbs_refiner("svi", colour="red")


def test_denoise_starts_from_the_input(bundled_vae, digits):
    """One iteration from clean digits reconstructs them; from blank images it does not."""
    clean = pseudo_gibbs(bundled_vae, digits, None, iterations=1)
    blank = pseudo_gibbs(bundled_vae, torch.zeros_like(digits), None, iterations=1)
    assert ssim(clean.images, digits).mean() > 0.5
    assert ssim(clean.images, digits).mean() > ssim(blank.images, digits).mean() + 0.2
    assert not clean.observed.any()


def test_svi_inpainting_follows_the_observed_pixels_better(bundled_vae, digits):
    """With the per-iteration defaults, svi fills the centre square better than amortized."""
    observed = make_mask("centre", digits.shape)
    amortized = pseudo_gibbs(bundled_vae, digits, observed, iterations=20)
    svi = pseudo_gibbs(bundled_vae, digits, observed, gibbs_refiner("svi"), iterations=20)
    assert ssim(svi.images, digits).mean() > ssim(amortized.images, digits).mean()
    assert len(svi.info["refiner_nelbo"]) == 20


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"iterations": 0}, OptionError, "iterations must be an integer >= 1"),
        ({"output": "median"}, OptionError, "output must be 'mean' or 'sample'"),
        ({"record_every": -1}, OptionError, "record_every must be >= 0"),
    ],
)
def test_bad_settings(tiny_vae, digits, kwargs, error, message):
    with pytest.raises(error, match=message):
        pseudo_gibbs(tiny_vae, digits, make_mask("half", digits.shape), **kwargs)


def test_mask_of_the_wrong_shape_is_an_error(tiny_vae, digits):
    with pytest.raises(LvmError, match="does not match images"):
        pseudo_gibbs(tiny_vae, digits, torch.ones(3, 1, 28, 28, dtype=torch.bool))


def test_one_mask_for_all_images_broadcasts(tiny_vae, digits):
    observed = make_mask("centre", (1, 1, 28, 28))[0]
    result = pseudo_gibbs(tiny_vae, digits, observed, iterations=1)
    assert result.observed.shape == digits.shape
    assert torch.equal(result.images[:, observed], digits[:, observed])


def test_mask_kinds():
    shape = (4, 1, 28, 28)
    centre = make_mask("centre", shape)
    assert (~centre).sum().item() == 4 * 14 * 14
    assert not centre[:, :, 7:21, 7:21].any() and centre[:, :, :7].all()
    half = make_mask("half", shape)
    assert half[:, :, :14].all() and not half[:, :, 14:].any()
    random = make_mask("random", shape, seed=1)
    assert 0.4 < (~random).float().mean().item() < 0.6
    assert torch.equal(random, make_mask("random", shape, seed=1))
    assert not torch.equal(random[0], random[1])
    rgb = make_mask("random", (2, 3, 28, 28))
    assert torch.equal(rgb[:, 0], rgb[:, 2])  # channels of a pixel share its mask
    with pytest.raises(OptionError, match="unknown mask kind 'ring'"):
        make_mask("ring", shape)


def test_noise_kinds(digits):
    gaussian = add_noise("gaussian", digits, seed=1)
    assert gaussian.min() >= 0 and gaussian.max() <= 1
    # variance 0.5 before clipping: on black pixels about half the noise survives (> 0)
    background = gaussian[digits == 0]
    assert 0.4 < (background > 0).float().mean() < 0.6
    assert 0.25 < background.mean() < 0.32  # E[max(0, N(0, 0.5))] clipped at 1 is about 0.27
    salt_pepper = add_noise("salt-pepper", digits, seed=1)
    changed = (salt_pepper != digits).float().mean()
    assert 0.05 < changed < 0.2  # 20% are hit, about half of those already had that value
    assert set(salt_pepper.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(gaussian, add_noise("gaussian", digits, seed=1))
    with pytest.raises(OptionError, match="unknown noise kind"):
        add_noise("speckle", digits)


def _backends_with_checkpoints():
    return sorted(
        name for name, reg in plugins.backends().items() if reg.obj.default_checkpoint() is not None
    )


@pytest.mark.parametrize("backend", _backends_with_checkpoints())
def test_every_installed_backend_plugs_in(backend, mnist5k_test_images):
    from lvmtoolkit.plugins import load_checkpoint

    model = load_checkpoint(plugins.get_backend(backend).default_checkpoint())
    x = mnist5k_test_images[:4]
    observed = make_mask("centre", x.shape)
    result = pseudo_gibbs(model, x, observed, gibbs_refiner("svi", steps=1), iterations=2)
    assert result.images.shape == x.shape and torch.isfinite(result.images).all()
    assert torch.equal(result.images[observed], x[observed])


def test_inpaint_and_denoise_are_deprecated_aliases_of_the_chain(tiny_vae, digits):
    observed = make_mask("half", digits.shape)
    with pytest.warns(DeprecationWarning, match="pseudo_gibbs"):
        old = inpaint(tiny_vae, digits, observed, iterations=2, seed=3)
    assert torch.equal(
        old.images, pseudo_gibbs(tiny_vae, digits, observed, iterations=2, seed=3).images
    )
    with pytest.warns(DeprecationWarning, match="restore"):
        old = denoise(tiny_vae, digits, iterations=2, seed=3)
    assert torch.equal(
        old.images, pseudo_gibbs(tiny_vae, digits, None, iterations=2, seed=3).images
    )


def test_the_chain_returns_its_last_posterior_state_and_spread(tiny_vae, digits):
    observed = make_mask("centre", digits.shape)
    result = pseudo_gibbs(tiny_vae, digits, observed, iterations=4, output="sample")
    assert result.posterior is not None and result.chain_images is not None
    assert set(result.chain_images[~observed].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(result.chain_images[observed], digits[observed])
    assert (result.std[observed] == 0).all() and (result.std[~observed] > 0).any()
    assert result.std.max() <= 0.5  # the spread of values in {0, 1}
