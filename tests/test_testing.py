"""The pytest plugin for plugin authors (lvmtoolkit.testing, entry point ``pytest11``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from lvmtoolkit import hookimpl, plugins
from lvmtoolkit.adapters import TorchVAE
from lvmtoolkit.errors import UnknownNameError
from lvmtoolkit.testing import ModelCheckError, check_model, make_tiny_model

# A plugin author's test file: no imports of fixtures, no conftest.
AUTHOR_TESTS = """
import pytest
import torch

import lvmtoolkit as lvm
from lvmtoolkit import hookimpl
from lvmtoolkit.refiners import AmortizedRefiner
from lvmtoolkit.testing import check_model


class EchoRefiner(AmortizedRefiner):
    name = "echo"


class EchoPlugin:
    @hookimpl
    def register_refiners(self, register):
        register(EchoRefiner)


def test_a_registers_for_this_test(lvm_plugins, lvm_cli):
    lvm_plugins.register(EchoPlugin(), name="echo-plugin")
    assert lvm.get_refiner("echo") is EchoRefiner
    result = lvm_cli("refiners", "list", "--json")
    assert result.exit_code == 0
    assert "echo-plugin" in result.stdout


def test_b_is_gone_in_the_next_test():
    with pytest.raises(lvm.UnknownNameError):
        lvm.get_refiner("echo")


def test_data_and_tiny_model(lvm_images, lvm_digits, lvm_tiny_model):
    assert lvm_images.shape == (64, 1, 28, 28)
    assert set(lvm_digits.unique().tolist()) <= {0.0, 1.0}
    check_model(lvm_tiny_model, lvm_digits[:8], rebuild=False)


def test_pyro_state_is_clean(lvm_pyro):
    import pyro

    assert not list(pyro.get_param_store().keys())
    with pytest.raises(ValueError):  # validation is on: a negative scale is refused
        pyro.distributions.Normal(0.0, -1.0)
"""


def test_fixtures_reach_a_third_party_test_suite(tmp_path):
    """A separate pytest run finds the fixtures through the installed entry point."""
    (tmp_path / "test_author.py").write_text(textwrap.dedent(AUTHOR_TESTS))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


class _Echo:
    @hookimpl
    def register_refiners(self, register):
        from lvmtoolkit.refiners import AmortizedRefiner

        register(type("Echo", (AmortizedRefiner,), {"name": "testing-echo"}))


def test_plugin_registrar_unregisters_everything_on_close():
    from lvmtoolkit.testing import PluginRegistrar

    registrar = PluginRegistrar()
    plugin = registrar.register(_Echo(), name="testing-echo")
    assert plugins.get_refiner("testing-echo").name == "testing-echo"
    registrar.close()
    assert not plugins.pm.is_registered(plugin)
    with pytest.raises(UnknownNameError):
        plugins.get_refiner("testing-echo")


def test_make_tiny_model_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b = make_tiny_model(seed=3), make_tiny_model(seed=3)
    assert torch.rand(1) == expected
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


class IgnoresMask(TorchVAE):
    """Broken on purpose: drops the mask, so unknown pixels still enter the likelihood."""

    def model(self, x, mask=None):
        super().model(x, None)


class WrongEvent(TorchVAE):
    """Broken on purpose: decode's event shape is one pixel row short."""

    def decode(self, z):
        logits = super().decode(z).base_dist.logits[..., :-1]
        return torch.distributions.Independent(torch.distributions.Bernoulli(logits=logits), 3)


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (IgnoresMask, "a pixel where the mask is False changes the likelihood"),
        (WrongEvent, r"decode's event shape \(1, 28, 27\) is not data_shape"),
    ],
)
def test_check_model_names_the_broken_expectation(broken, message, digits):
    tiny = make_tiny_model()
    model = broken(tiny.encoder, tiny.decoder, data_shape=(1, 28, 28), latent_shape=(4,))
    with pytest.raises(ModelCheckError, match=message):
        check_model(model.eval(), digits[:4], rebuild=False)
