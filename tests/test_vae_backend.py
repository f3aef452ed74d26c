"""The shipped VAE checkpoint and what the foundation issue asks of it."""

import pytest
import torch

from lvmtoolkit.data import binarize_fixed
from lvmtoolkit.metrics import nelbo
from lvmtoolkit.plugins import get_dataset
from lvmtoolkit.refiners import SVIRefiner


def test_bundled_checkpoint_describes_its_training(bundled_vae):
    info = bundled_vae.checkpoint_info
    assert info["backend"] == "vae"
    assert info["config"] == {"image_shape": [1, 28, 28], "hidden": [300, 300], "latent_dim": 10}
    assert info["data"]["dataset"] == "mnist-5k" and info["data"]["split"] == "train"


def test_sample_prior_and_decode(bundled_vae):
    z = bundled_vae.sample_prior(5)
    assert z["z"].shape == (5, 10)
    likelihood = bundled_vae.decode(z)
    assert likelihood.batch_shape == (5,) and likelihood.event_shape == (1, 28, 28)


@pytest.mark.slow
@pytest.mark.parametrize("split", ["train", "test"])
def test_1000_svi_steps_beat_amortized_for_every_datapoint(bundled_vae, split):
    x = binarize_fixed(get_dataset("mnist-5k")().load(split).images[:200])
    amortized = nelbo(bundled_vae, bundled_vae.amortized_posterior(), x, num_samples=100, seed=1)
    result = SVIRefiner(steps=1000).refine(bundled_vae, x)
    refined = nelbo(bundled_vae, result.posterior, x, num_samples=100, seed=1)
    assert (refined < amortized).all(), (refined - amortized).max()
    assert refined.mean() < amortized.mean() - 0.1
    assert torch.isfinite(refined).all()
