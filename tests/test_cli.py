import json

import pytest
from click.testing import CliRunner

from lvmtoolkit.cli import cli
from lvmtoolkit.cli.refine import _backend_defaults


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_refine_json_parses_and_reports_every_step(lvm_refine):
    result = lvm_refine("--json", steps="1,5", num_images=8, eval_samples=4, split=None)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["protocol"]["samples_per_nelbo"] == 4
    for split in ("train", "test"):
        rows = report["results"][split]
        assert rows["num_images"] == 8
        assert set(rows["steps"]) == {"1", "5"}
        assert rows["steps"]["5"]["nelbo"] <= rows["amortized"] + 1e-6


def test_refine_prints_table(lvm_refine):
    result = lvm_refine(steps="2")
    assert result.exit_code == 0, result.output
    assert "amortized" in result.stderr and "NELBO test" in result.stderr
    assert result.stdout == ""


def test_refine_amortized_refiner_has_only_the_amortized_row(lvm_refine):
    result = lvm_refine("--refiner", "amortized", "--json", steps=None, threads=None)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"]["test"]["steps"] == {}


def test_refine_defaults_are_the_backends():
    # The NVAE declares smaller defaults (its steps cost ~70x the VAE's); given values win.
    assert _backend_defaults("vae", None, None, None) == ([1, 10, 100, 1000], 1000)
    assert _backend_defaults("nvae", None, None, None) == ([1, 10, 100], 100)
    assert _backend_defaults("nvae-flow", None, [5], 7) == ([5], 7)
    assert _backend_defaults("nvae", "my_vae.py:build", None, None) == ([1, 10, 100, 1000], 1000)
    result = run(
        "refine", "--backend", "nvae", "--refiner", "amortized", "--split", "test",
        "--eval-samples", "1", "--threads", "1", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"]["test"]["num_images"] == 100


def test_train_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "vae"
    result = run(
        "train",
        "--epochs",
        "1",
        "-c",
        "hidden=[16]",
        "-c",
        "latent_dim=3",
        "--threads",
        "1",
        "-o",
        str(out),
    )
    assert result.exit_code == 0, result.output
    info = json.loads((out / "config.json").read_text())
    assert info["config"]["hidden"] == [16] and info["data"]["split"] == "train"
    assert "test_nelbo" in info["training"]
    result = run(
        "refine",
        "--checkpoint",
        str(out),
        "--steps",
        "1",
        "--num-images",
        "3",
        "--eval-samples",
        "1",
        "--split",
        "test",
        "--json",
    )
    assert result.exit_code == 0, result.output
    # The checkpoint records what it was trained on, and evaluation will not score it.
    assert info["data"]["trained_on"] == [
        {"dataset": "mnist-5k", "split": "train", "start": 0, "stop": info["data"]["size"]}
    ]
    evaluate = ("evaluate", "denoise", "--backend", "vae", "--checkpoint", f"vae={out}",
                "--refiner", "amortized", "--num-images", "2", "--nll-samples", "2",
                "--fid-features", "none", "--threads", "1", "--json")  # fmt: skip
    refused = run(*evaluate, "--split", "train")
    assert refused.exit_code != 0 and refused.stdout == ""
    assert refused.stderr.startswith("Error: ") and len(refused.stderr.strip().splitlines()) == 1
    assert f"{out} was trained on mnist-5k train images 0-1" in refused.stderr, refused.stderr
    held_out = run(*evaluate, "--split", "test")
    assert held_out.exit_code == 0, held_out.output
    assert json.loads(held_out.stdout)["backends"] == {"vae": str(out)}


def test_listing_commands():
    for args in (
        ["plugins"],
        ["backends", "--json"],
        ["datasets", "--json"],
        ["refiners", "list", "--json"],
        ["refiners", "show", "svi", "--json"],
    ):
        result = run(*args)
        assert result.exit_code == 0, (args, result.output)
    shown = json.loads(run("refiners", "show", "svi", "--json").stdout)
    assert {o["name"] for o in shown["options"]} >= {"lr", "optimizer", "steps"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["refine", "--backend", "nope"], "unknown backend 'nope'; installed backends: "),
        (["refine", "--refiner", "nope"], "unknown refiner 'nope'; installed refiners: "),
        (["refine", "--dataset", "nope"], "unknown dataset 'nope'; installed datasets: "),
        (["refine", "--steps", "1,x"], "is not a comma-separated list of integers"),
        (["refine", "--steps", "0"], "each at least 1"),
        (["refine", "-o", "lr=-1"], "option lr: must be > 0.0"),
        (["refine", "-o", "lr"], "'lr' is not KEY=VALUE"),
        (["refine", "-o", "steps=3"], "set the number of steps with --steps"),
        (["refine", "--checkpoint", "/nonexistent/ckpt"], "does not exist"),
        (["refine", "--dataset", "mnist", "--data-dir", "/nonexistent"], "is not a folder"),
        (["refine", "--split", "valid", "--num-images", "2"], "has no split 'valid'"),
        (["refine", "--device", "cuda:0"], "CUDA is not available"),
        (["refine", "--device", "gpu"], "unknown device"),
        (["refine", "--threads", "0"], "--threads must be at least 1"),
        (["refiners", "show", "nope"], "unknown refiner 'nope'"),
        (["train", "--epochs", "1", "-c", "colour=red", "-o", "x"], "unknown VAEConfig keys"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args, message):
    import torch

    if "cuda:0" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    result = run(*args)
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"garbage")
    result = run("refine", "--checkpoint", str(bad))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "not a safetensors file" in result.stderr


def test_every_command_has_help_with_an_example():
    import click

    def walk(group, prefix):
        for name, command in group.commands.items():
            yield [*prefix, name], command
            if isinstance(command, click.Group):
                yield from walk(command, [*prefix, name])

    for path, command in walk(cli, []):
        result = run(*path, "--help")
        assert result.exit_code == 0
        assert command.help and len(command.help.strip()) > 20, path
        if not isinstance(command, click.Group) and path[0] in {"refine", "train", "plugins"}:
            assert "Example" in result.output, path
