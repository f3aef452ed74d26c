"""Hostile input through the library: a wrong tensor is a clear LvmError, never a wrong number.

Classes 5-7 and 9 of issue 13: values a Bernoulli model cannot score, posteriors used for
other datapoints, adapters told the wrong thing about their networks, raw torch errors
where an LvmError belongs, and what the docs promise about the public API.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lvmtoolkit
from lvmtoolkit import LvmError
from lvmtoolkit.adapters import AdapterError, TorchVAE
from lvmtoolkit.core.options import parse_options
from lvmtoolkit.errors import CheckpointError, OptionError
from lvmtoolkit.metrics import iwae_bound, nelbo
from lvmtoolkit.refiners import SVIOptions, SVIRefiner

ROOT = Path(__file__).resolve().parents[1]


# --- class 5: nonsense values accepted ------------------------------------------------


def test_values_outside_0_1_for_a_bernoulli_model_are_refused(tiny_vae, digits):
    posterior = tiny_vae.amortized_posterior()
    with pytest.raises(LvmError, match=r"values in \[-1, 2\].*\[0, 1\]"):
        nelbo(tiny_vae, posterior, digits * 3 - 1)


def test_grey_images_for_a_bernoulli_model_are_refused_with_how_to_binarise(
    tiny_vae, mnist5k_test_images
):
    grey = mnist5k_test_images[:8]
    with pytest.raises(LvmError, match=r"grey values.*binarize_fixed"):
        nelbo(tiny_vae, tiny_vae.amortized_posterior(), grey)
    with pytest.raises(LvmError, match="grey values"):
        SVIRefiner(steps=1).refine(tiny_vae, grey)
    with pytest.raises(LvmError, match="grey values"):
        iwae_bound(tiny_vae, tiny_vae.amortized_posterior(), grey, num_samples=2)


def test_infinite_option_values_are_refused():
    for text in ("inf", "-inf", "nan", "1e400"):
        with pytest.raises(OptionError, match="finite"):
            parse_options(SVIOptions, {"lr": text})
    with pytest.raises(OptionError):
        parse_options(SVIOptions, {"steps": float("inf")})


# --- class 6: silent wrong numbers -----------------------------------------------------


def test_a_posterior_refined_for_n_datapoints_refuses_m_of_them(tiny_vae, digits):
    result = SVIRefiner(steps=2, select_samples=1).refine(tiny_vae, digits[:20])
    with pytest.raises(LvmError, match="20 datapoints"):
        nelbo(tiny_vae, result.posterior, digits[10:20])
    with pytest.raises(LvmError, match="20 datapoints"):
        iwae_bound(tiny_vae, result.posterior, digits[10:20], num_samples=2)


def _networks(decoder_tail: nn.Module | None = None, scale_tail: nn.Module | None = None):
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, 8))
    if scale_tail is not None:
        encoder = nn.Sequential(encoder, scale_tail)
    decoder = nn.Sequential(nn.Linear(4, 784))
    if decoder_tail is not None:
        decoder.append(decoder_tail)
    return encoder, decoder


def test_torch_vae_warns_about_a_sigmoid_decoder_declared_as_logits():
    from lvmtoolkit.adapters import AdapterWarning

    encoder, decoder = _networks(decoder_tail=nn.Sigmoid())
    with pytest.warns(AdapterWarning, match="bernoulli-probs"):
        TorchVAE(encoder, decoder, data_shape=(1, 28, 28), latent_shape=(4,))
    encoder, decoder = _networks()
    with warnings.catch_warnings():
        warnings.simplefilter("error", AdapterWarning)
        TorchVAE(encoder, decoder, data_shape=(1, 28, 28), latent_shape=(4,))


def test_torch_vae_refuses_logits_declared_as_probabilities():
    encoder, decoder = _networks()
    with pytest.raises(AdapterError, match="bernoulli-probs.*logits"):
        TorchVAE(
            encoder,
            decoder,
            data_shape=(1, 28, 28),
            latent_shape=(4,),
            likelihood="bernoulli-probs",
        )


def test_torch_vae_refuses_a_log_variance_declared_as_a_scale():
    encoder, decoder = _networks()  # the second half of a Linear is mostly-signed: not scales
    with pytest.raises(AdapterError, match="negative scales.*logvar"):
        TorchVAE(encoder, decoder, data_shape=(1, 28, 28), latent_shape=(4,), encoder_scale="scale")


# --- class 7: raw torch errors ---------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda x: x[:0], "empty batch"),
        (lambda x: (x * 255).to(torch.uint8), r"dtype torch.uint8.*x.float\(\) / 255"),
        (lambda x: x.long(), r"dtype torch.int64.*x.float\(\)"),
        (lambda x: x.double(), r"dtype torch.float64.*x.float\(\)"),
        (lambda x: x.numpy(), r"numpy|ndarray.*torch.from_numpy"),
        (lambda x: x.tolist(), "torch.Tensor"),
        (lambda x: x.view(x.shape[0], 784), r"shape \(16, 784\).*\(N, 1, 28, 28\)"),
        (lambda x: x[:, :, :14], r"shape"),
    ],
)
def test_bad_batches_are_one_clear_error_everywhere(tiny_vae, digits, make, message):
    bad = make(digits[:16])
    posterior = tiny_vae.amortized_posterior()
    for call in (
        lambda: SVIRefiner(steps=1).refine(tiny_vae, bad),
        lambda: nelbo(tiny_vae, posterior, bad),
        lambda: iwae_bound(tiny_vae, posterior, bad, num_samples=2),
    ):
        with pytest.raises(LvmError, match=message):
            call()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda x: torch.ones(3, 1, 28, 28, dtype=torch.bool), r"mask has shape \(3, 1, 28, 28\)"),
        (lambda x: torch.ones(1, 14, 14, dtype=torch.bool), r"mask has shape"),
        (lambda x: torch.ones_like(x), r"mask has dtype torch.float32.*mask.bool\(\)"),
        (lambda x: np.ones(x.shape, dtype=bool), "mask must be a boolean torch.Tensor"),
    ],
)
def test_bad_masks_are_one_clear_error(tiny_vae, digits, make, message):
    x = digits[:8]
    with pytest.raises(LvmError, match=message):
        SVIRefiner(steps=1).refine(tiny_vae, x, mask=make(x))
    with pytest.raises(LvmError, match=message):
        nelbo(tiny_vae, tiny_vae.amortized_posterior(), x, mask=make(x))


def test_a_shared_mask_of_one_datapoint_is_accepted(tiny_vae, digits):
    mask = torch.ones(1, 28, 28, dtype=torch.bool)
    mask[:, :14] = False
    value = nelbo(tiny_vae, tiny_vae.amortized_posterior(), digits[:4], mask=mask)
    assert value.shape == (4,) and torch.isfinite(value).all()


def test_load_checkpoint_with_a_list_as_backend_name(tiny_vae, tmp_path):
    folder = lvmtoolkit.save_checkpoint(tiny_vae, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="backend must be a name"):
        lvmtoolkit.load_checkpoint(folder, backend=["vae"])
    with pytest.raises(LvmError, match="device 'meta' is not supported"):
        lvmtoolkit.load_checkpoint(folder, device="meta")


# --- class 9: what the docs promise ----------------------------------------------------


def test_train_keeps_grey_levels_for_a_gaussian_likelihood(mnist5k_test_images):
    from lvm_linear_gaussian.model import LinearGaussian, LinearGaussianConfig

    model = LinearGaussian(LinearGaussianConfig(latent_dim=2))
    assert model.binary_data is False
    seen = []
    original = model.training_loss

    def spy(x):
        seen.append(x.detach().clone())
        return original(x)

    model.training_loss = spy
    summary = lvmtoolkit.train(model, mnist5k_test_images[:20], epochs=1, batch_size=20)
    assert summary["binarization"] == "none"
    assert torch.equal(seen[0].sort(0).values, mnist5k_test_images[:20].sort(0).values)


def test_check_model_on_directly_built_adapters(digits):
    from lvmtoolkit.testing import check_model, make_tiny_model

    check_model(make_tiny_model(), digits[:8])


def test_check_model_does_not_need_pytest(fresh_python):
    code = (
        "import sys; sys.modules['pytest'] = None\n"
        "from lvmtoolkit.testing import check_model, make_tiny_model\n"
        "from lvmtoolkit.data import binarize_fixed\n"
        "import lvmtoolkit\n"
        "x = binarize_fixed(lvmtoolkit.get_dataset('mnist-5k')().load('test').images[:4])\n"
        "check_model(make_tiny_model(), x)\n"
        "print('ok')\n"
    )
    assert fresh_python(code) == "ok"


def test_every_public_name_is_importable_and_listed():
    listed = set(dir(lvmtoolkit))
    for name in lvmtoolkit.__all__:
        assert name in listed, name
        assert getattr(lvmtoolkit, name) is not None, name
    for name in ("iwae_bound", "gap_report", "nelbo", "check_batch", "load_checkpoint"):
        assert name in lvmtoolkit.__all__
        exec(f"from lvmtoolkit import {name}", {})


def test_docs_render_no_sphinx_roles():
    """mkdocstrings renders Markdown: a reST role such as :class:`X` shows up literally."""
    role = re.compile(r":(class|func|meth|mod|data|attr|exc|obj):`")
    found = []
    for path in [*ROOT.joinpath("lvmtoolkit").rglob("*.py"), *ROOT.joinpath("docs").rglob("*.md")]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if role.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}")
    assert not found, found


def test_json_reports_never_hold_nan():
    from lvmtoolkit.cli.common import dump_json

    text = dump_json({"nelbo": float("nan"), "steps": [1.0, float("inf")], "ok": 2.5})
    assert json.loads(text) == {"nelbo": None, "steps": [1.0, None], "ok": 2.5}
