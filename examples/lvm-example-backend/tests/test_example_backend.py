"""Tests of the example plugin, one per hook, using the fixtures lvmtoolkit gives pytest.

Run them with the plugin installed: ``pip install -e '.[test]' && pytest``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from lvm_example_backend.data import Shapes
from lvm_example_backend.model import ConvVAE, ConvVAEConfig
from lvm_example_backend.refiner import ImportanceRefiner
from torch import nn

import lvmtoolkit as lvm
from lvmtoolkit import hookimpl
from lvmtoolkit.testing import check_model


def test_register_backends(lvm_pyro, lvm_digits):
    assert lvm.get_backend("conv-vae") is ConvVAE
    torch.manual_seed(0)
    check_model(ConvVAE(ConvVAEConfig(channels=4)).eval(), lvm_digits[:8])
    bundled = lvm.load_checkpoint(ConvVAE.default_checkpoint(), backend="conv-vae")
    assert bundled.latent_shapes == {"z": (2, 7, 7)}


def test_register_datasets():
    assert lvm.get_dataset("shapes") is Shapes
    test = Shapes().load("test")
    assert test.images.shape == (500, 1, 28, 28)
    assert set(test.images.unique().tolist()) == {0.0, 1.0}
    assert set(test.labels.tolist()) == {0, 1}
    assert torch.equal(test.images, Shapes().load("test").images)  # generated from a seed


def test_register_refiners(lvm_tiny_model, lvm_digits):
    assert lvm.get_refiner("importance") is ImportanceRefiner
    model = lvm_tiny_model
    result = ImportanceRefiner(steps=3, samples=16).refine(model, lvm_digits)
    assert result.trace.shape == (3, 16)
    before = lvm.nelbo(model, model.amortized_posterior(), lvm_digits, seed=1)
    after = lvm.nelbo(model, result.posterior, lvm_digits, seed=1)
    assert after.mean() < before.mean()


def test_register_commands(lvm_cli, tmp_path):
    output = tmp_path / "samples.png"
    result = lvm_cli("sample-grid", "--backend", "conv-vae", "-n", "4", "-o", str(output))
    assert result.exit_code == 0, result.output
    assert output.read_bytes().startswith(b"\x89PNG")


@dataclass
class TinyConfig:
    latent_dim: int = 2


class TinyVAE(lvm.TorchVAE):
    """A throwaway backend, registered for one test only."""

    name = "example-test-tiny"
    config_class = TinyConfig

    def __init__(self, config: TinyConfig | None = None):
        config = config or TinyConfig()
        encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, 2 * config.latent_dim))
        decoder = nn.Linear(config.latent_dim, 784)
        super().__init__(
            encoder,
            decoder,
            data_shape=(1, 28, 28),
            latent_shape=(config.latent_dim,),
            config=config,
        )


class TinyPlugin:
    @hookimpl
    def register_backends(self, register):
        register(TinyVAE)


def test_importance_refiner_from_the_command_line(lvm_plugins, lvm_cli, lvm_pyro, tmp_path):
    lvm_plugins.register(TinyPlugin(), name="tiny")
    lvm.save_checkpoint(TinyVAE(), tmp_path / "tiny")
    result = lvm_cli(
        "refine", "--backend", "example-test-tiny", "--checkpoint", str(tmp_path / "tiny"),
        "--refiner", "importance", "--steps", "1,2", "--split", "test", "--num-images", "8",
        "--eval-samples", "4", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    steps = report["results"]["test"]["steps"]
    assert steps["2"]["nelbo"] <= report["results"]["test"]["amortized"] + 0.01


def test_register_observations(lvm_tiny_model, lvm_digits):
    from lvm_example_backend.observation import Occlusion

    assert lvm.get_observation("occlusion") is Occlusion
    observation = lvm.parse_observation("occlusion:rate=0.3")
    occluded = observation.corrupt(lvm_digits, seed=0).y
    assert set(occluded.unique().tolist()) <= {0.0, 0.5, 1.0}
    # Binary pixels: lvmtoolkit derives p(y | z) and restores from the log_prob alone.
    restored = lvm.restore(lvm_tiny_model, occluded, observation, refiner="amortized")
    covered = occluded == 0.5
    assert torch.equal(restored.mean[~covered], occluded[~covered])  # exact pixels stay
    assert ((restored.mean[covered] > 0) & (restored.mean[covered] < 1)).all()
