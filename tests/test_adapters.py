"""The adapters: plain PyTorch encoders/decoders and Pyro model/guide pairs as toolkit Models."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import lvmtoolkit as lvm
from lvmtoolkit import hookimpl
from lvmtoolkit.adapters import AdapterError, PyroVAE, TorchVAE, TorchVAEConfig
from lvmtoolkit.core.checkpoint import save_checkpoint
from lvmtoolkit.plugins import load_checkpoint
from lvmtoolkit.testing import check_model

ROOT = Path(__file__).parent.parent


def mlp_encoder(latent: int, out: int | None = None) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 32), nn.ELU(), nn.Linear(32, out or latent * 2)
    )


def mlp_decoder(latent: int, out: int = 784) -> nn.Module:
    return nn.Sequential(nn.Linear(latent, 32), nn.ELU(), nn.Linear(32, out))


class TupleEncoder(nn.Module):
    """Returns (mu, logvar) as two tensors, as most PyTorch VAE code does."""

    def __init__(self, latent: int = 3):
        super().__init__()
        self.net = mlp_encoder(latent)

    def forward(self, x):
        return self.net(x).chunk(2, dim=-1)


class SpatialEncoder(nn.Module):
    """Latent of shape (2, 7, 7): one tensor with loc and log-scale stacked on dim 1."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 4, stride=4))  # (N, 4, 7, 7)

    def forward(self, x):
        return self.net(x)


class DistributionEncoder(nn.Module):
    def __init__(self, latent: int = 3):
        super().__init__()
        self.net = mlp_encoder(latent)

    def forward(self, x):
        loc, raw = self.net(x).chunk(2, dim=-1)
        return torch.distributions.Independent(
            torch.distributions.Normal(loc, nn.functional.softplus(raw)), 1
        )


class MeanScaleDecoder(nn.Module):
    def __init__(self, latent: int = 3):
        super().__init__()
        self.net = mlp_decoder(latent, 2 * 784)

    def forward(self, z):
        mean, raw = self.net(z).chunk(2, dim=-1)
        return torch.sigmoid(mean), nn.functional.softplus(raw) + 0.05


def build(kind: str) -> TorchVAE:
    torch.manual_seed(0)
    shape = {"data_shape": (1, 28, 28), "latent_shape": (3,)}
    if kind == "bernoulli-tuple-logvar":
        return TorchVAE(TupleEncoder(), mlp_decoder(3), **shape)
    if kind == "bernoulli-probs-log-scale":
        decoder = nn.Sequential(mlp_decoder(3), nn.Sigmoid())
        return TorchVAE(
            TupleEncoder(),
            decoder,
            likelihood="bernoulli-probs",
            encoder_scale="log_scale",
            **shape,
        )
    if kind == "spatial-latent":
        decoder = nn.Sequential(nn.ConvTranspose2d(2, 1, 4, stride=4))
        return TorchVAE(SpatialEncoder(), decoder, data_shape=(1, 28, 28), latent_shape=(2, 7, 7))
    if kind == "gaussian-fixed-scale":
        return TorchVAE(
            DistributionEncoder(), mlp_decoder(3), likelihood="gaussian", obs_scale=0.3, **shape
        )
    if kind == "gaussian-decoder-scale":
        return TorchVAE(TupleEncoder(), MeanScaleDecoder(), likelihood="gaussian", **shape)
    if kind == "custom-likelihood":

        def continuous_bernoulli(logits):
            return torch.distributions.ContinuousBernoulli(logits=logits.view(-1, 1, 28, 28))

        return TorchVAE(TupleEncoder(), mlp_decoder(3), likelihood=continuous_bernoulli, **shape)
    raise ValueError(kind)


KINDS = [
    "bernoulli-tuple-logvar",
    "bernoulli-probs-log-scale",
    "spatial-latent",
    "gaussian-fixed-scale",
    "gaussian-decoder-scale",
    "custom-likelihood",
]


@pytest.mark.parametrize("kind", KINDS)
def test_torch_vae_meets_the_model_contract(kind, digits, mnist5k_test_images):
    model = build(kind).eval()
    binary = kind.startswith("bernoulli") or kind == "spatial-latent"
    x = digits[:8] if binary else mnist5k_test_images[:8]
    assert model.binary_data is binary or kind == "custom-likelihood"
    check_model(model, x, rebuild=False)


@pytest.mark.parametrize(
    ("encoder_scale", "raw"),
    [("logvar", math.log(4.0)), ("log_scale", math.log(2.0)), ("scale", 2.0)],
)
def test_torch_vae_reads_the_encoder_scale_as_declared(encoder_scale, raw):
    def encoder(x):  # any callable works as an encoder, not only an nn.Module
        return torch.zeros(len(x), 3), torch.full((len(x), 3), raw)

    model = TorchVAE(
        encoder,
        mlp_decoder(3),
        data_shape=(1, 28, 28),
        latent_shape=(3,),
        encoder_scale=encoder_scale,
    )
    loc, scale = model.encode(torch.zeros(2, 1, 28, 28))["z"]
    assert torch.equal(loc, torch.zeros(2, 3))
    assert torch.allclose(scale, torch.full((2, 3), 2.0))


def test_probing_the_networks_gives_each_submodule_its_own_mode_back():
    """Building a TorchVAE runs the networks once in eval mode; a network whose parts are in
    different modes (a frozen batch norm inside a training network) keeps them."""
    encoder, decoder = TupleEncoder(), mlp_decoder(3)
    frozen_part = next(m for m in decoder.modules() if m is not decoder)
    frozen_part.eval()
    modes = {m: m.training for net in (encoder, decoder) for m in net.modules()}
    assert decoder.training and not frozen_part.training
    TorchVAE(encoder, decoder, data_shape=(1, 28, 28), latent_shape=(3,))
    assert all(m.training is mode for m, mode in modes.items())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"likelihood": "poisson"}, "unknown likelihood 'poisson'"),
        ({"encoder_scale": "softplus"}, "unknown encoder_scale 'softplus'"),
        ({"latent_shape": (0,)}, "latent_shape must be a non-empty tuple of positive"),
        ({"data_shape": "28x28"}, "data_shape must be a tuple of positive integers"),
        ({"obs_scale": -1.0}, "obs_scale must be a positive number"),
    ],
)
def test_torch_vae_rejects_bad_settings(kwargs, message):
    settings = {"data_shape": (1, 28, 28), "latent_shape": (3,), **kwargs}
    with pytest.raises(AdapterError, match=message):
        TorchVAE(TupleEncoder(), mlp_decoder(3), **settings)


def test_torch_vae_explains_networks_that_do_not_fit(digits):
    x = digits[:4]
    wrong_latent = TorchVAE(
        TupleEncoder(5), mlp_decoder(3), data_shape=(1, 28, 28), latent_shape=(3,)
    )
    with pytest.raises(
        AdapterError, match=r"encoder's loc has shape \(4, 5\); expected 4 rows of 3"
    ):
        wrong_latent.encode(x)
    odd = TorchVAE(mlp_encoder(3, out=7), mlp_decoder(3), data_shape=(1, 28, 28), latent_shape=(3,))
    with pytest.raises(AdapterError, match="stacked along dimension 1"):
        odd.encode(x)
    wrong_pixels = TorchVAE(
        TupleEncoder(), mlp_decoder(3, 100), data_shape=(1, 28, 28), latent_shape=(3,)
    )
    with pytest.raises(AdapterError, match=r"decoder's output has shape \(4, 100\)"):
        lvm.nelbo(wrong_pixels, wrong_pixels.amortized_posterior(), x, num_samples=1)
    no_scale = TorchVAE(
        TupleEncoder(),
        mlp_decoder(3),
        data_shape=(1, 28, 28),
        latent_shape=(3,),
        likelihood="gaussian",
    )
    with pytest.raises(AdapterError, match="needs obs_scale="):
        no_scale.decode(no_scale.sample_prior(2))


def test_torch_vae_trains_and_refines_like_a_backend(digits):
    model = build("bernoulli-tuple-logvar")
    untrained = lvm.nelbo(model, model.amortized_posterior(), digits).mean()
    summary = lvm.train(model, digits, epochs=3, batch_size=16, lr=1e-2)
    trained = lvm.nelbo(model, model.amortized_posterior(), digits).mean()
    assert trained < untrained
    assert summary["steps"] == 6
    result = lvm.get_refiner("svi")(steps=30, lr=1e-2).refine(model, digits)
    refined = lvm.nelbo(model, result.posterior, digits).mean()
    assert refined < trained - 0.5


# --- registered as a backend --------------------------------------------------------------


@dataclass
class SmallConfig:
    latent_dim: int = 3


class SmallVAE(TorchVAE):
    """A TorchVAE subclass that builds its networks from a config: a registrable backend."""

    name = "test-small-vae"
    version = "1.0"
    config_class = SmallConfig

    def __init__(self, config: SmallConfig | None = None):
        config = config or SmallConfig()
        super().__init__(
            TupleEncoder(config.latent_dim),
            mlp_decoder(config.latent_dim),
            data_shape=(1, 28, 28),
            latent_shape=(config.latent_dim,),
            config=config,
        )


class SmallVAEPlugin:
    @hookimpl
    def register_backends(self, register):
        register(SmallVAE)


def test_torch_vae_subclass_registers_and_round_trips_a_checkpoint(lvm_plugins, digits, tmp_path):
    lvm_plugins.register(SmallVAEPlugin(), name="small")
    assert lvm.get_backend("test-small-vae") is SmallVAE
    torch.manual_seed(0)
    model = SmallVAE(SmallConfig(latent_dim=5)).eval()
    check_model(model, digits[:8])
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt", backend="test-small-vae")
    assert loaded.config == SmallConfig(latent_dim=5)
    with torch.no_grad():
        assert torch.equal(model.encode(digits)["z"][0], loaded.encode(digits)["z"][0])


def test_plain_torch_vae_checkpoint_records_its_settings(tmp_path):
    model = build("gaussian-fixed-scale")
    save_checkpoint(model, tmp_path / "ckpt")
    info = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert info["backend"] == "torch-vae"
    assert TorchVAEConfig(**info["config"]) == TorchVAEConfig(
        [1, 28, 28], [3], "gaussian", "logvar", 0.3
    )


# --- Pyro model and guide -----------------------------------------------------------------


class PyroPair(nn.Module):
    """A Pyro VAE written without lvmtoolkit in mind: its own plate and site names."""

    def __init__(self, latent: int = 3, takes_mask: bool = False):
        super().__init__()
        self.latent = latent
        self.enc = mlp_encoder(latent)
        self.dec = mlp_decoder(latent)
        self.takes_mask = takes_mask

    def model(self, images, mask=None):
        pyro.module("dec", self.dec)
        with pyro.plate("batch", images.shape[0]):
            z = pyro.sample("code", dist.Normal(0.0, 1.0).expand([self.latent]).to_event(1))
            pixels = dist.Bernoulli(logits=self.dec(z).view(-1, 1, 28, 28))
            if mask is not None:
                pixels = pixels.mask(mask)
            pyro.sample("image", pixels.to_event(3), obs=images)

    def model_without_mask(self, images):
        self.model(images)

    def guide(self, images, mask=None):
        pyro.module("enc", self.enc)
        with pyro.plate("batch", images.shape[0]):
            loc, raw = self.enc(images).chunk(2, dim=-1)
            pyro.sample("code", dist.Normal(loc, nn.functional.softplus(raw)).to_event(1))

    def wrapped(self, with_mask: bool = True) -> PyroVAE:
        """This pair as a toolkit Model (the model taking a mask, or one without it)."""
        return PyroVAE(
            self.model if with_mask else self.model_without_mask,
            self.guide,
            data_shape=(1, 28, 28),
            modules=self,
            obs_site="image",
            data_plate="batch",
        )


@pytest.mark.parametrize("takes_mask", [True, False])
def test_pyro_vae_wraps_a_model_and_guide_as_they_are(takes_mask, digits):
    torch.manual_seed(0)
    pair = PyroPair()
    model = pair.wrapped(with_mask=takes_mask).eval()
    assert model.latent_shapes == {"code": (3,)}
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in pair.parameters())
    check_model(model, digits[:8], rebuild=False)


def test_pyro_vae_trains_and_refines(digits):
    torch.manual_seed(0)
    pair = PyroPair()
    model = pair.wrapped()
    untrained = lvm.nelbo(model, model.amortized_posterior(), digits).mean()
    lvm.train(model, digits, epochs=3, batch_size=16, lr=1e-2)
    trained = lvm.nelbo(model, model.amortized_posterior(), digits).mean()
    assert trained < untrained
    result = lvm.get_refiner("svi")(steps=30, lr=1e-2).refine(model, digits)
    assert lvm.nelbo(model, result.posterior, digits).mean() < trained - 0.5


def test_pyro_vae_explains_what_does_not_fit():
    pair = PyroPair()
    common = {"data_shape": (1, 28, 28), "modules": pair}
    with pytest.raises(AdapterError, match="no observed site named 'x'"):
        PyroVAE(pair.model, pair.guide, data_plate="batch", **common)
    with pytest.raises(AdapterError, match="outside the plate 'data'"):
        PyroVAE(pair.model, pair.guide, obs_site="image", **common)
    with pytest.raises(AdapterError, match=r"event shape \(1, 28, 28\), not data_shape \(784,\)"):
        PyroVAE(pair.model, pair.guide, obs_site="image", data_plate="batch", data_shape=(784,))

    def laplace_guide(images):
        with pyro.plate("batch", images.shape[0]):
            pyro.sample("code", dist.Laplace(torch.zeros(3), 1.0).to_event(1))

    with pytest.raises(AdapterError, match="samples 'code' from Laplace"):
        PyroVAE(pair.model, laplace_guide, obs_site="image", data_plate="batch", **common)

    def empty_guide(images):
        pass

    with pytest.raises(AdapterError, match="no site for the latent"):
        PyroVAE(pair.model, empty_guide, obs_site="image", data_plate="batch", **common)


# --- tasks and the example ------------------------------------------------------------------


def test_adapted_models_inpaint_without_touching_observed_pixels(digits):
    tasks = pytest.importorskip("lvmtoolkit.tasks", reason="lvmtoolkit.tasks (issue 5) missing")
    torch.manual_seed(0)
    pair = PyroPair()
    models = [
        build("spatial-latent"),
        pair.wrapped(with_mask=False),
    ]
    observed = torch.ones_like(digits[:4], dtype=torch.bool)
    observed[..., 14:, :] = False
    for model in models:
        result = tasks.inpaint(
            model.eval(), digits[:4], observed, lvm.get_refiner("svi")(steps=2), iterations=3
        )
        assert torch.equal(result.images[observed], digits[:4][observed])
        assert torch.isfinite(result.images).all()


@pytest.mark.slow
def test_bring_your_own_vae_example_runs_end_to_end(tmp_path):
    """The example trains a conv VAE in plain PyTorch, wraps it, refines and inpaints."""
    pytest.importorskip("lvmtoolkit.tasks", reason="lvmtoolkit.tasks (issue 5) missing")
    script = ROOT / "examples" / "bring_your_own_vae.py"
    args = ["--epochs", "2", "--train-images", "1000", "--test-images", "32", "--steps", "20"]
    args += ["--iterations", "3", "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    numbers = json.loads(done.stdout)
    assert numbers["nelbo_svi_20_steps"] < numbers["nelbo_amortized"]
    assert 0.5 < numbers["inpainted_pixel_accuracy"] <= 1.0
    assert (tmp_path / "inpainting.png").stat().st_size > 0
