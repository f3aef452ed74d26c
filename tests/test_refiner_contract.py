"""Every registered refiner keeps the Refiner contract on every installed backend
(lvmtoolkit.testing.check_refiner), and the base class does the shared work for them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lvmtoolkit import plugins
from lvmtoolkit.core.refiner import Refiner, RefineResult
from lvmtoolkit.data import binarize_fixed
from lvmtoolkit.errors import LvmError, OptionError, RefinerMismatch
from lvmtoolkit.plugins import load_checkpoint
from lvmtoolkit.testing import RefinerCheckError, check_refiner, make_tiny_model

REFINERS = sorted(plugins.refiners())
BACKENDS = sorted(
    name for name, reg in plugins.backends().items() if reg.obj.default_checkpoint() is not None
)


@pytest.fixture(scope="module")
def bundled():
    models = {}

    def get(name):
        if name not in models:
            path = plugins.get_backend(name).default_checkpoint()
            models[name] = load_checkpoint(path, backend=name)
        return models[name]

    return get


def test_backends_and_refiners_were_found():
    assert {"vae", "gmvae", "nvae", "nvae-flow"} <= set(BACKENDS)
    assert {"amortized", "svi", "svi-paper", "svi-flow"} <= set(REFINERS)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("refiner_name", REFINERS)
def test_every_refiner_keeps_the_contract_on_every_backend(
    refiner_name, backend, bundled, mnist5k_test_images
):
    model = bundled(backend)
    x = model.evaluation_data(mnist5k_test_images[:6])
    refiner = plugins.get_refiner(refiner_name)()
    if refiner.iterative:
        refiner = refiner.with_options(steps=4)
    try:
        check_refiner(refiner, model, x)
    except RefinerMismatch as err:  # a refiner for other posterior families says so
        pytest.skip(str(err))


@dataclasses.dataclass
class StepsOnly:
    steps: int = 3


def test_check_refiner_catches_a_refiner_that_ignores_checkpoints(mnist5k_test_images):
    class Forgetful(Refiner):
        name = "forgetful"
        iterative = True
        options_class = StepsOnly

        def _refine(self, call):
            return RefineResult(call.init, torch.zeros(3, call.x.shape[0]), steps=3)

    model = make_tiny_model()
    x = binarize_fixed(mnist5k_test_images[:4])
    with pytest.raises(RefinerCheckError, match="on_checkpoint called at"):
        check_refiner(Forgetful(), model, x)


def test_check_refiner_catches_a_refiner_that_makes_things_worse(mnist5k_test_images):
    from lvmtoolkit.core.posterior import LocalGaussianPosterior

    class Worse(Refiner):
        name = "worse"

        def _refine(self, call):
            params = call.init.gaussian_params(call.x)
            bad = {k: (loc + 5.0, scale) for k, (loc, scale) in params.items()}
            call.checkpoint(0, call.init)
            return RefineResult(LocalGaussianPosterior(bad), torch.empty(0, len(call.x)), 0)

    model = make_tiny_model()
    x = binarize_fixed(mnist5k_test_images[:4])
    with pytest.raises(RefinerCheckError, match="got worse"):
        check_refiner(Worse(), model, x)


def test_refine_validates_the_batch_for_every_refiner(mnist5k_test_images):
    model = make_tiny_model()
    for name in REFINERS:
        refiner = plugins.get_refiner(name)()
        with pytest.raises(LvmError, match="shape"):
            refiner.refine(model, torch.zeros(3, 1, 14, 14))


def test_refine_refuses_a_start_refined_for_another_batch(mnist5k_test_images):
    model = make_tiny_model()
    x = binarize_fixed(mnist5k_test_images[:8])
    svi = plugins.get_refiner("svi")(steps=2)
    start = svi.refine(model, x).posterior
    with pytest.raises(LvmError, match="holds 8 datapoints"):
        svi.refine(model, x[:5], init=start)


def test_checkpoints_outside_the_run_are_dropped_before_the_refiner_sees_them():
    seen = {}

    class Recorder(Refiner):
        name = "recorder"
        iterative = True
        options_class = StepsOnly

        def _refine(self, call):
            seen["checkpoints"] = call.checkpoints
            seen["init"] = call.init
            return RefineResult(call.init, torch.zeros(5, call.x.shape[0]), steps=5)

    model = make_tiny_model()
    Recorder(steps=5).refine(model, torch.zeros(2, 1, 28, 28), checkpoints=[7, 5, 0, -1, 5, 2])
    assert seen["checkpoints"] == [0, 2, 5]
    assert seen["init"] is not None  # resolved to the amortized posterior


def test_with_options_validates_again():
    svi = plugins.get_refiner("svi")(steps=3)
    changed = svi.with_options(lr="0.01")
    assert changed.options.lr == 0.01 and changed.options.steps == 3
    assert svi.options.lr == 0.05  # the original is untouched
    with pytest.raises(OptionError, match="lr"):
        svi.with_options(lr=-1)
    with pytest.raises(OptionError, match="unknown option"):
        svi.with_options(nonsense=1)


def test_iterative_is_declared_not_probed():
    assert plugins.get_refiner("svi").iterative
    assert plugins.get_refiner("svi-flow").iterative
    assert not plugins.get_refiner("amortized").iterative
    assert plugins.get_refiner("amortized")().steps == 0
