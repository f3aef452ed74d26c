import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lvmtoolkit import hookimpl, plugins
from lvmtoolkit.errors import LvmError, UnknownNameError
from lvmtoolkit.refiners import AmortizedRefiner

FIXTURE = Path(__file__).parent / "fixtures" / "lvm-dummy-plugin"


class MockRefiner(AmortizedRefiner):
    name = "mock-refiner"


class MockPlugin:
    __name__ = "mock_plugin"

    @hookimpl
    def register_refiners(self, register):
        register(MockRefiner)


@pytest.fixture
def mock_plugin(lvm_plugins):
    return lvm_plugins.register(MockPlugin(), name="mock")


def test_register_backends():
    table = plugins.backends()
    assert table["vae"].plugin == "vae"
    assert plugins.get_backend("vae").name == "vae"


def test_register_refiners(mock_plugin):
    assert plugins.get_refiner("mock-refiner") is MockRefiner
    assert plugins.refiners()["mock-refiner"].plugin == "mock"
    assert {"amortized", "svi"} <= set(plugins.refiners())


def test_register_refiners_gone_after_unregister(mock_plugin):
    plugins.pm.unregister(mock_plugin)
    with pytest.raises(UnknownNameError):
        plugins.get_refiner("mock-refiner")
    plugins.pm.register(mock_plugin, name="mock")  # the fixture unregisters it again


def test_register_datasets():
    assert {"mnist-5k", "mnist", "fashion-mnist"} <= set(plugins.datasets())


def test_unknown_names_list_what_is_installed():
    with pytest.raises(
        UnknownNameError, match=r"unknown backend 'nope'; installed backends: .*vae"
    ):
        plugins.get_backend("nope")
    with pytest.raises(KeyError):  # UnknownNameError is a KeyError, as in llm
        plugins.get_refiner("nope")
    with pytest.raises(UnknownNameError, match="mnist-5k"):
        plugins.get_dataset("nope")


def test_duplicate_names_are_an_error(mock_plugin):
    class Again:
        @hookimpl
        def register_refiners(self, register):
            register(type("Other", (AmortizedRefiner,), {"name": "mock-refiner"}))

    again = Again()
    plugins.pm.register(again, name="again")
    try:
        with pytest.raises(LvmError, match="registered twice"):
            plugins.refiners()
    finally:
        plugins.pm.unregister(again)


def test_plugin_info_lists_vae_from_its_distribution():
    info = {p["name"]: p for p in plugins.plugin_info()}
    assert info["vae"]["kind"] == "entry-point"
    assert info["vae"]["distribution"] == "lvm-vae"
    assert info["vae"]["hooks"] == ["register_backends"]
    assert info["vae"]["registers"] == {"backends": ["vae"]}
    assert info["lvmtoolkit.refiners"]["kind"] == "default"


@pytest.fixture(scope="module")
def installed_dummy(tmp_path_factory):
    """pip-install the fixture plugin into a target folder: real entry-point metadata."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(FIXTURE),
        ],
        check=True,
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    return env


def _lvm(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "lvmtoolkit", *args], env=env, capture_output=True, text=True
    )


def test_entry_point_plugin_is_loaded(installed_dummy):
    result = _lvm(installed_dummy, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    info = {p["name"]: p for p in json.loads(result.stdout)}
    assert info["dummy"]["distribution"] == "lvm-dummy-plugin"
    assert info["dummy"]["version"] == "0.0.1"
    assert info["dummy"]["kind"] == "entry-point"
    assert info["dummy"]["registers"] == {"refiners": ["dummy-echo"]}
    assert sorted(info["dummy"]["hooks"]) == ["register_commands", "register_refiners"]


def test_register_commands(installed_dummy):
    result = _lvm(installed_dummy, "dummy-hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello from lvm-dummy-plugin"


def test_lvm_load_plugins_limits_entry_points(installed_dummy):
    env = {**installed_dummy, "LVM_LOAD_PLUGINS": "dummy"}
    info = {p["name"] for p in json.loads(_lvm(env, "plugins", "--json").stdout)}
    assert "dummy" in info and "vae" not in info
    env["LVM_LOAD_PLUGINS"] = ""
    result = _lvm(env, "refine", "--steps", "1")
    assert result.returncode == 1
    assert result.stderr.strip() == ("Error: unknown backend 'vae'; installed backends: none")
