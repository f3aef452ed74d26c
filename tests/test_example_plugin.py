"""The third-party plugin example (examples/lvm-example-backend), installed with pip.

The package is pip-installed into a temporary folder (real wheel build, real entry-point
metadata) and ``lvm`` runs in subprocesses with that folder on PYTHONPATH, as a user who
ran ``pip install`` would run it. Its own test suite runs the same way, with the fixtures
of lvmtoolkit's pytest plugin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "lvm-example-backend"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def example_env(tmp_path_factory):
    """Environment in which the example plugin is installed (pip install --target)."""
    target = tmp_path_factory.mktemp("example-site")
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
            "--no-build-isolation", "--no-index", "--target", str(target), str(EXAMPLE),
        ],
        check=True,
    )  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    env.pop("LVM_LOAD_PLUGINS", None)
    return env


def lvm(env, *args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "lvmtoolkit", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )


def test_installed_example_registers_every_hook(example_env):
    result = lvm(example_env, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    info = {p["name"]: p for p in json.loads(result.stdout)}["example"]
    assert info["distribution"] == "lvm-example-backend"
    assert info["version"] == "0.1.0"
    assert info["hooks"] == [
        "register_backends",
        "register_commands",
        "register_datasets",
        "register_refiners",
    ]
    assert info["registers"] == {
        "backends": ["conv-vae"],
        "datasets": ["shapes"],
        "refiners": ["importance"],
    }


def test_lvm_refine_on_the_example_backend(example_env):
    args = ["--backend", "conv-vae", "--split", "test", "--num-images", "20", "--threads", "1"]
    args += ["--json"]
    result = lvm(example_env, "refine", *args, "--steps", "1,20", "-o", "lr=0.01")
    assert result.returncode == 0, result.stderr
    test = json.loads(result.stdout)["results"]["test"]
    assert test["steps"]["20"]["nelbo"] < test["amortized"]
    # The plugin's refiner on the plugin's dataset, through the core's command.
    result = lvm(
        example_env, "refine", *args, "--refiner", "importance", "--dataset", "shapes",
        "--steps", "1,2", "-o", "samples=8", "--eval-samples", "8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    test = json.loads(result.stdout)["results"]["test"]
    assert test["steps"]["2"]["nelbo"] <= test["amortized"] + 1e-3


def test_lvm_inpaint_on_the_example_backend(example_env, tmp_path, digits):
    if lvm(example_env, "inpaint", "--help").returncode != 0:
        pytest.skip("`lvm inpaint` (issue 5) is not there yet")
    from torchvision.utils import save_image

    image, mask, out = tmp_path / "digit.png", tmp_path / "mask.png", tmp_path / "filled.png"
    save_image(digits[0], image)
    hole = torch.zeros(1, 28, 28)
    hole[:, 14:, :] = 1.0  # white marks the pixels to fill
    save_image(hole, mask)
    result = lvm(
        example_env, "inpaint", str(image), "--mask", str(mask), "-o", str(out),
        "--backend", "conv-vae", "--refiner", "svi", "--iterations", "5", "--threads", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    from PIL import Image

    filled = torch.from_numpy(np.array(Image.open(out).convert("L"))).float() / 255
    assert filled.shape == (28, 28)
    assert torch.allclose(filled[:14], digits[0, 0, :14], atol=1 / 255)


def test_example_plugin_own_tests_pass(example_env):
    """The example's tests, run as its author would, with lvmtoolkit's pytest fixtures."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        env=example_env,
        capture_output=True,
        text=True,
        cwd=EXAMPLE,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "skipped" not in result.stdout
