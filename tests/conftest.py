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
