"""Class 1 of issue 13: one broken third-party plugin never breaks `lvm`.

Real entry points: a folder on PYTHONPATH holds a distribution's metadata (dist-info with
entry_points.txt) and one module per broken plugin, as pip would install them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lvmtoolkit import hookimpl, plugins
from lvmtoolkit.errors import UnknownNameError

BROKEN = {
    "b-import": "import no_such_module_for_lvm\n",
    "b-syntax": "def register_backends(:\n",
    "b-raises": (
        "from lvmtoolkit import hookimpl\n"
        "@hookimpl\n"
        "def register_backends(register):\n"
        "    raise RuntimeError('backend registry exploded')\n"
    ),
    "b-signature": (
        "from lvmtoolkit import hookimpl\n"
        "@hookimpl\n"
        "def register_refiners(register, extra):\n"
        "    pass\n"
    ),
    "b-misspelt": (
        "from lvmtoolkit import hookimpl\n@hookimpl\ndef register_backend(register):\n    pass\n"
    ),
    "b-commands": (
        "from lvmtoolkit import hookimpl\n"
        "@hookimpl\n"
        "def register_commands(cli):\n"
        "    @cli.command()\n"
        "    def half_added():\n"
        "        pass\n"
        "    raise ValueError('no commands today')\n"
    ),
}
EXPECTED_ERRORS = {
    "b-import": "ModuleNotFoundError: No module named 'no_such_module_for_lvm'",
    "b-syntax": "SyntaxError",
    "b-raises": "register_backends raised RuntimeError: backend registry exploded",
    "b-signature": "'extra'",
    "b-misspelt": "unknown hook 'register_backend'",
    "b-commands": "register_commands raised ValueError: no commands today",
}


@pytest.fixture(scope="module")
def broken_env(tmp_path_factory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("site")
    info = site / "lvm_broken_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: lvm-broken-plugins\nVersion: 0.1\n"
    )
    lines = ["[lvmtoolkit]"]
    for name, source in BROKEN.items():
        module = name.replace("-", "_")
        (site / f"{module}.py").write_text(source)
        lines.append(f"{name} = {module}")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return env


def lvm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lvmtoolkit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_works_whatever_plugins_are_installed(broken_env):
    result = lvm(broken_env, "--help")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "refine" in result.stdout and "half-added" not in result.stdout


def test_lvm_plugins_lists_broken_plugins_with_their_error(broken_env):
    result = lvm(broken_env, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    info = {p["name"]: p for p in json.loads(result.stdout)}
    for name, error in EXPECTED_ERRORS.items():
        assert info[name]["kind"] == "broken", info[name]
        assert info[name]["distribution"] == "lvm-broken-plugins"
        assert error in info[name]["error"], info[name]["error"]
    assert info["vae"]["error"] is None and info["vae"]["registers"] == {"backends": ["vae"]}


def test_other_commands_warn_once_per_broken_plugin_and_work(broken_env):
    result = lvm(broken_env, "backends", "--json")
    assert result.returncode == 0, result.stderr
    assert "vae" in {row["name"] for row in json.loads(result.stdout)}
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    for name in BROKEN:
        assert sum(f"plugin {name!r} skipped" in line for line in warnings) == 1, warnings
    assert "Traceback" not in result.stderr


def test_a_command_that_needs_a_broken_plugin_fails_with_its_error(broken_env):
    result = lvm(broken_env, "refine", "--backend", "b-raises", "--steps", "1")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert errors[0].startswith("Error: unknown backend 'b-raises'")
    assert "plugin 'b-raises' is broken: register_backends raised RuntimeError" in errors[0]


class RaisingPlugin:
    @hookimpl
    def register_refiners(self, register):
        raise KeyError("oops")


def test_a_hook_that_raises_in_process_marks_its_plugin_broken():
    plugin = RaisingPlugin()
    plugins.pm.register(plugin, name="raising")
    try:
        table = plugins.refiners()  # no exception: the plugin is left out
        assert "svi" in table
        assert not plugins.pm.is_registered(plugin)
        assert "register_refiners raised KeyError" in plugins.broken_plugins()["raising"]
        with pytest.raises(UnknownNameError, match="plugin 'raising' is broken"):
            plugins.get_refiner("raising")
    finally:
        if plugins.pm.is_registered(plugin):
            plugins.pm.unregister(plugin)
        plugins._broken.pop("raising", None)


def test_plugins_are_not_loaded_when_the_cli_is_imported(fresh_python):
    code = (
        "import lvmtoolkit.cli, lvmtoolkit.plugins as p\n"
        "print(p._loaded, sorted(n for n, _ in p.pm.list_name_plugin()))\n"
    )
    assert fresh_python(code) == "False []"


def test_every_hook_documents_when_it_is_called():
    from lvmtoolkit import hookspecs

    for name in ("register_backends", "register_refiners", "register_datasets"):
        doc = getattr(hookspecs, name).__doc__
        assert "Called whenever" in doc and "idempotent" in doc, name
    assert "Called once per ``lvm`` process" in hookspecs.register_commands.__doc__
