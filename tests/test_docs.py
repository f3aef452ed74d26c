"""Meta-tests that keep the docs and the CLI honest (as datasette has them).

Every hook is documented in the plugin tutorial with its exact signature, every hook has a
test named after it, and every `lvm` command's help says what it does, with an example.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from lvmtoolkit import hookspecs

ROOT = Path(__file__).parent.parent
TUTORIAL = ROOT / "docs" / "plugins" / "tutorial.md"
HOOKS = sorted(
    name
    for name, value in vars(hookspecs).items()
    if inspect.isfunction(value) and hasattr(value, "lvmtoolkit_spec")
)


def exact_signature(name: str) -> str:
    """``def name(arg: Annotation, ...) -> Return: ...`` as written in hookspecs.py."""
    function = getattr(hookspecs, name)
    annotations = function.__annotations__  # strings: hookspecs uses postponed annotations
    params = ", ".join(f"{p}: {annotations[p]}" for p in inspect.signature(function).parameters)
    return f"def {name}({params}) -> {annotations['return']}: ..."


def test_hookspecs_are_found():
    assert HOOKS == [
        "register_backends",
        "register_commands",
        "register_datasets",
        "register_observations",
        "register_refiners",
    ]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_exact_signature(hook):
    text = TUTORIAL.read_text()
    assert re.search(rf"^## .*\{{#{hook}\}}$", text, re.MULTILINE), f"no section for {hook}"
    assert f"```python\n{exact_signature(hook)}\n```" in text, exact_signature(hook)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test_named_after_it(hook):
    pattern = re.compile(rf"^def test_{hook}\b", re.MULTILINE)
    assert any(pattern.search(path.read_text()) for path in (ROOT / "tests").rglob("test_*.py"))


def _commands(command: click.Command, path: str):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}")


def _core_commands():
    from lvmtoolkit.cli import cli

    return [
        (path, command)
        for path, command in _commands(cli, "lvm")
        # Commands of entry-point plugins are their authors' to word.
        if command.callback is None or command.callback.__module__.startswith("lvmtoolkit")
    ]


@pytest.mark.parametrize(("path", "command"), _core_commands(), ids=lambda v: str(v))
def test_every_command_help_fits_a_newcomer(path, command):
    text = command.help or ""
    summary = text.strip().splitlines()[0] if text.strip() else ""
    assert summary.endswith("."), f"{path}: the first line should say what it does"
    if not isinstance(command, click.Group) or path == "lvm":
        assert re.search(r"^\s*Examples?:$", text, re.MULTILINE), f"{path}: no example"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"{path} {param.opts[0]}: option without help"
            takes_value = not param.is_flag and not param.multiple and not param.required
            if takes_value and param.default is not None:
                assert param.show_default, f"{path} {param.opts[0]}: default not shown"


def test_gaps_figure_script_draws_the_figure(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "gaps.png"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gaps_figure.py"), "--out", str(out)], check=True
    )
    assert out.read_bytes().startswith(b"\x89PNG")


def test_restoration_tables_are_the_run_jsons():
    # The results page's tables are generated from the runs' JSON beside it; an edit by hand
    # or a new run without regenerating fails here.
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "restoration_tables.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_gaps_tables_are_the_run_jsons():
    # The AIS table of gaps.md is generated from docs/results/gaps-ais-*.json.
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gaps_tables.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def _restoration_tables():
    """scripts/restoration_tables.py as a module (scripts/ is not a package)."""
    if str(ROOT / "scripts") not in sys.path:  # for its sibling page_section.py
        sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(
        "restoration_tables", ROOT / "scripts" / "restoration_tables.py"
    )
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    return tables


def test_restoration_rows_of_another_checkpoint_are_labelled_with_it():
    # A run of a checkpoint the user trained must never appear as the bundled model's row.
    tables = _restoration_tables()
    bundled = tables.get_backend("vae").default_checkpoint()
    assert tables.backend_label("vae", str(bundled)) == "vae"
    assert tables.backend_label("vae", "/tmp/runs/vae-long") == "vae (vae-long)"
    # A run that recorded its weights' digest is judged by it, not by the folder's name.
    digest = tables.bundled_digest("vae")
    assert tables.backend_label("vae", "/tmp/x/vae-copy", digest) == "vae"
    other = "/tmp/x/" + bundled.name
    assert tables.backend_label("vae", other, "0" * 64) == f"vae ({bundled.name})"
    corrupted = {
        ("denoise", "g", "vae (vae-long)"): {},
        ("denoise", "g", "gmvae"): {},
        ("denoise", "g", "vae"): {},
        ("inpaint", "g", "nvae"): {},
    }
    assert tables.ordered_labels(corrupted, "denoise", "g") == ["vae", "vae (vae-long)", "gmvae"]
    # A --model run names its model after the user's file: labelled, listed, never dropped.
    assert tables.backend_label("mine", "examples/mine.py:build") == "mine (mine.py:build)"
    corrupted[("denoise", "g", "mine (mine.py:build)")] = {}
    assert tables.ordered_labels(corrupted, "denoise", "g")[-1] == "mine (mine.py:build)"


def test_restoration_tables_refuse_runs_off_the_defaults():
    # A row run with `-o steps=1000 --samples 128` must not appear as the default svi row.
    tables = _restoration_tables()
    run = {
        "refiners": {"svi": {"steps": "300", "lr": "0.2", "lr_scaling": "none"}},
        "protocol": {
            "restoration_refiner_defaults": {"steps": 300, "lr": 0.2, "lr_scaling": "none"}
        },
    }
    assert tables.off_defaults(run) == []
    run["refiners"]["svi"]["steps"] = "1000"
    run["protocol"]["num_samples"] = 128
    assert tables.off_defaults(run) == ["svi.steps=1000 (default 300)", "num_samples=128"]
    # The chain's refiners are checked against the chain's own per-iteration defaults.
    chain = {
        "refiners": {},
        "protocol": {
            "chain_refiner_defaults": {"steps": 10},
            "chain_refiners": {"svi": {"steps": 20}},
        },
    }
    assert tables.off_defaults(chain) == ["chain svi.steps=20 (default 10)"]


def test_paired_number_on_the_results_page_comes_from_the_stored_runs():
    # restoration.md quotes the 13,000-digit vs 150-epoch difference from this command.
    script = ROOT / "scripts" / "paired_refiner_difference.py"
    results = ROOT / "docs" / "results"
    longer = results / "paired-longer-training-nvae-flow.json"
    more = results / "paired-more-digits-13k-vs-bundled-nvae-flow.json"
    done = subprocess.run(
        [sys.executable, str(script), "--stored", f"{longer}:b", f"{more}:b"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "B - A = -0.0014 ± 0.0020" in done.stdout and "better on 0.43" in done.stdout
    assert "**-0.001 ± 0.002** (better on 43%)" in " ".join(
        (results / "restoration.md").read_text().split()
    )
    other_images = results / "paired-gradient-nvae-heldout.json"
    refused = subprocess.run(
        [sys.executable, str(script), "--stored", f"{longer}:b", f"{other_images}:b"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "differ in images" in refused.stderr
