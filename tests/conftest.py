"""Shared fixtures: one torch thread, fresh Pyro state, small real models and real digits."""

from __future__ import annotations

import pyro
import pytest
import torch

from lvmtoolkit.data import binarize_fixed
from lvmtoolkit.plugins import get_dataset

# Two threads on a busy 2-core machine were measured ~20x slower per step than one.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.enable_validation(False)


@pytest.fixture(scope="session")
def mnist5k_test_images() -> torch.Tensor:
    """The real mnist-5k test split, grey levels in [0, 1], shape (1000, 1, 28, 28)."""
    return get_dataset("mnist-5k")().load("test").images


@pytest.fixture
def digits(mnist5k_test_images) -> torch.Tensor:
    """32 real digits, binarised with the fixed evaluation seed."""
    return binarize_fixed(mnist5k_test_images[:32])


@pytest.fixture
def tiny_vae():
    """A small VAE (one hidden layer of 32, z=4) on 28x28 digits, fixed initialisation."""
    from lvm_vae.model import VAE, VAEConfig

    torch.manual_seed(0)
    return VAE(VAEConfig(hidden=(32,), latent_dim=4)).eval()


@pytest.fixture(scope="session")
def bundled_vae():
    """The VAE checkpoint shipped in the lvm-vae package."""
    from lvm_vae.model import VAE

    from lvmtoolkit.plugins import load_checkpoint

    return load_checkpoint(VAE.default_checkpoint(), backend="vae")


@pytest.fixture
def lvm_refine():
    """``lvm refine`` in-process on a few test digits: ``lvm_refine("--refiner", "svi-flow")``.

    Small defaults (4 images, 2 evaluation samples, the test split, one thread) keep a run
    to seconds; keywords override them (``steps="1,3"``; None leaves an option out).
    """
    from click.testing import CliRunner

    from lvmtoolkit.cli import cli

    def run(*args, steps="1,2", num_images=4, eval_samples=2, split="test", threads=1):
        given = {"--steps": steps, "--num-images": num_images, "--eval-samples": eval_samples}
        given |= {"--split": split, "--threads": threads}
        options = [
            str(p) for key, value in given.items() if value is not None for p in (key, value)
        ]
        return CliRunner().invoke(cli, ["refine", *map(str, args), *options])

    return run


@pytest.fixture
def nan_first_row(tiny_vae):
    """``tiny_vae`` whose decoder gives NaN for the first datapoint of every batch."""

    def poison_first_row(module, inputs, output):
        output = output.clone()
        output[0] = float("nan")
        return output

    handle = tiny_vae.decoder.register_forward_hook(poison_first_row)
    yield tiny_vae
    handle.remove()


@pytest.fixture
def refine_keeps_the_start():
    """Refine with a flow refiner and check the kept-best rule: finite, never worse than q0.

    ``refine_keeps_the_start(refiner, model, x, num_samples=8, tolerance=1e-4)`` returns the
    result; the start is the encoder's posterior with the refiner's flows at identity.
    """
    from lvmtoolkit.core.runtime import frozen
    from lvmtoolkit.metrics import nelbo
    from lvmtoolkit.refiners import make_local_posterior

    def check(refiner, model, x, *, num_samples, tolerance):
        result = refiner.refine(model, x)
        for tensor in result.posterior.parameters():
            assert torch.isfinite(tensor).all()
        with frozen(model):
            start = make_local_posterior(
                model.amortized_posterior(), x, num_flows=refiner.options.num_flows
            )
        score = nelbo(model, start, x, num_samples=num_samples, seed=refiner.selection_seed)
        assert (result.info["selection_nelbo"] <= score + tolerance).all()
        return result

    return check


@pytest.fixture
def fresh_python():
    """Run Python code in a new interpreter (nothing imported yet); return its stdout, stripped.

    For what only a fresh process shows: which modules an import pulls in, what works with
    a dependency missing. A non-zero exit fails the test with the process's stderr.
    """
    import subprocess
    import sys

    def run(code: str) -> str:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    return run
