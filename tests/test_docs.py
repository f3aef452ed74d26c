"""Meta-tests that keep the docs and the CLI honest (as datasette has them).

Every hook is documented in the plugin tutorial with its exact signature, every hook has a
test named after it, and every `lvm` command's help says what it does, with an example.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import re
import shutil
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


RESULTS = ROOT / "docs" / "results"
PAGES_SCRIPT = ROOT / "scripts" / "results_pages.py"


def _results_pages():
    """scripts/results_pages.py as a module (scripts/ is not a package)."""
    if str(ROOT / "scripts") not in sys.path:  # it imports its siblings by name too
        sys.path.insert(0, str(ROOT / "scripts"))
    return importlib.import_module("results_pages")


def _copy_results(tmp_path: Path) -> Path:
    """The results pages and their data, copied so that a test may edit them."""
    copy = tmp_path / "results"
    shutil.copytree(RESULTS, copy, ignore=shutil.ignore_patterns("*.png"))
    return copy


def test_results_pages_are_the_stored_runs():
    # Every generated table and the data index equal what the stored JSON gives: an edit by
    # hand, or a new run without regenerating, fails here.
    done = subprocess.run(
        [sys.executable, str(PAGES_SCRIPT), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_results_check_names_the_page_and_section_of_a_number_edited_by_hand(tmp_path):
    results = _copy_results(tmp_path)
    page = results / "restoration.md"
    row = "| vae | 1000 | conditional | svi | 0.685 ± 0.004 |"
    assert page.read_text().count(row) == 1
    page.write_text(page.read_text().replace(row, row.replace("0.685", "0.695")))
    done = subprocess.run(
        [sys.executable, str(PAGES_SCRIPT), "--check", "--results", str(results)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert f"{page}, section 'tables'" in done.stderr
    assert "0.695 ± 0.004" in done.stderr and "0.685 ± 0.004" in done.stderr
    assert "gaps.md" not in done.stderr  # only what drifted is named


def test_results_pages_follow_a_number_edited_in_the_stored_json(tmp_path):
    pages = _results_pages()
    results = _copy_results(tmp_path)
    run_file = results / "data" / "restoration-denoise-vae.json"
    run = json.loads(run_file.read_text())
    scores = run["results"]["vae"]["gaussian"]["methods"]["conditional"]["svi"]
    assert f"{scores['ssim']:.3f}" == "0.685"
    scores["ssim"] = 0.6949
    run_file.write_text(json.dumps(run, indent=1))
    problems = "\n".join(pages.drift(results))
    for section in ("summary", "tables"):
        assert f"{results / 'restoration.md'}, section '{section}'" in problems
    assert f"{results / 'data' / 'index.json'}: differs from the data" in problems  # digest
    text, _ = pages.expected(results)[results / "restoration.md"]
    assert text != (RESULTS / "restoration.md").read_text()
    assert "| vae | 1000 | conditional | svi | 0.695 ± 0.004 |" in text


def test_results_index_lists_every_stored_run_with_its_provenance():
    index = json.loads((RESULTS / "data" / "index.json").read_text())
    files = sorted(p.name for p in (RESULTS / "data").glob("*.json") if p.name != "index.json")
    assert sorted(entry["file"] for entry in index["runs"]) == files
    for entry in index["runs"]:
        assert entry["title"] and entry["command"]
        assert re.fullmatch(r"[0-9a-f]{7,}", entry["commit"]), entry["file"]
        assert entry["model_sha256"] == "not recorded" or all(
            re.fullmatch(r"[0-9a-f]{64}", digest) for digest in entry["model_sha256"].values()
        )


def test_results_catalogue_command_must_agree_with_its_run():
    # The runs record their settings, not their command: a slip in the catalogue's command
    # (the number of images, the backend) is refused rather than published.
    pages = _results_pages()
    entry = next(run for run in pages.RUNS if run.file == "restoration-denoise-nvae-1000.json")
    record = json.loads((RESULTS / "data" / entry.file).read_text())
    pages.check_command(entry, record)
    fewer = dataclasses.replace(entry, command=entry.command.replace("1000", "200"))
    with pytest.raises(pages.DataError, match="--num-images"):
        pages.check_command(fewer, record)
    other = dataclasses.replace(entry, command=entry.command.replace("nvae", "nvae-flow", 1))
    with pytest.raises(pages.DataError, match="--backend"):
        pages.check_command(other, record)


def test_restoration_rows_of_another_checkpoint_are_labelled_with_it():
    # A run of a checkpoint the user trained must never appear as the bundled model's row.
    tables = _results_pages()
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
    tables = _results_pages()
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
    data = RESULTS / "data"
    longer = data / "paired-longer-training-nvae-flow.json"
    more = data / "paired-more-digits-13k-vs-bundled-nvae-flow.json"
    done = subprocess.run(
        [sys.executable, str(script), "--stored", f"{longer}:b", f"{more}:b"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "B - A = -0.0014 ± 0.0020" in done.stdout and "better on 0.43" in done.stdout
    assert "**-0.001 ± 0.002** (better on 43%)" in " ".join(
        (RESULTS / "restoration.md").read_text().split()
    )
    other_images = data / "paired-gradient-nvae-heldout.json"
    refused = subprocess.run(
        [sys.executable, str(script), "--stored", f"{longer}:b", f"{other_images}:b"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "differ in images" in refused.stderr
