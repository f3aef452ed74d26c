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
        "register_observations",
        "register_refiners",
    ]
    assert info["registers"] == {
        "backends": ["conv-vae"],
        "datasets": ["shapes"],
        "observations": ["occlusion"],
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


def test_lvm_denoise_with_the_example_observation_model(example_env, tmp_path, digits):
    """A third-party observation model, found by its entry point, used by `lvm denoise`."""
    from PIL import Image

    from lvmtoolkit.metrics.ssim import ssim

    sys.path.insert(0, str(EXAMPLE / "src"))
    try:
        from lvm_example_backend.observation import Occlusion
    finally:
        sys.path.remove(str(EXAMPLE / "src"))
    occluded = Occlusion(rate=0.25).corrupt(digits[:3], seed=1).y
    assert ((occluded > 0) & (occluded < 1)).any()  # grey blocks
    folder, out = tmp_path / "occluded", tmp_path / "restored"
    folder.mkdir()
    for i, image in enumerate(occluded):
        pixels = np.rint(image[0].numpy() * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    result = lvm(
        example_env, "denoise", str(folder), "-o", str(out), "--noise",
        "occlusion:rate=0.25", "--threads", "1", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "assuming noise occlusion:level=0.5,rate=0.25,size=8" in result.stderr
    assert json.loads(result.stdout)["noise"] == "occlusion:level=0.5,rate=0.25,size=8"
    for i in range(3):
        restored = np.asarray(Image.open(out / f"{i}.png"), dtype=np.float32) / 255
        restored = torch.from_numpy(restored)[None, None]
        before = ssim(occluded[i : i + 1], digits[i : i + 1]).item()
        assert ssim(restored, digits[i : i + 1]).item() > before
    # The same model with Gaussian pixels has no exact p(y | z): one line, nothing written.
    from lvm_linear_gaussian.model import LinearGaussian

    from lvmtoolkit.core.checkpoint import save_checkpoint

    ppca = save_checkpoint(LinearGaussian.fit_ppca(digits, latent_dim=2), tmp_path / "ppca")
    refused = lvm(
        example_env, "denoise", str(folder / "0.png"), "-o", str(tmp_path / "x.png"),
        "--noise", "occlusion", "--backend", "linear-gaussian", "--checkpoint", str(ppca),
    )  # fmt: skip
    assert refused.returncode != 0 and not (tmp_path / "x.png").exists()
    assert refused.stderr.strip().splitlines() == [
        "Error: observation model 'occlusion' with Gaussian pixels (the linear-gaussian "
        "model's likelihood) has no exact p(y | z); occlusion fits Bernoulli pixels"
    ]


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
