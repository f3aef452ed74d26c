"""`lvm inpaint`, `lvm denoise` and `lvm evaluate` on real digits written as PNG files."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lvmtoolkit.cli import cli

# The official MNIST test set, beside the repository in its development environment;
# elsewhere the mnist-5k test split (real MNIST digits too) stands in.
MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def mnist_test_digits():
    from lvmtoolkit.plugins import get_dataset

    if (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        images = get_dataset("mnist")(MNIST_DIR).load("test").images[:3]
    else:
        images = get_dataset("mnist-5k")().load("test").images[:3]
    return np.rint(images[:, 0].numpy() * 255).astype(np.uint8)


@pytest.fixture
def files(tmp_path, mnist_test_digits):
    """Three digit PNGs (one enlarged to 56x84, one RGB) and a mask for each."""
    folder = tmp_path / "digits"
    masks = tmp_path / "masks"
    folder.mkdir()
    masks.mkdir()
    big = Image.fromarray(mnist_test_digits[0]).resize((56, 84), Image.Resampling.BICUBIC)
    big.save(folder / "a.png")
    Image.fromarray(mnist_test_digits[1]).save(folder / "b.png")
    Image.fromarray(mnist_test_digits[2]).convert("RGB").save(folder / "c.png")
    for name, (w, h) in {"a": (56, 84), "b": (28, 28), "c": (28, 28)}.items():
        levels = np.zeros((h, w), np.uint8)
        levels[h // 4 : h // 2, :] = 255  # white: fill these rows
        Image.fromarray(levels).save(masks / f"{name}.png")
    return folder, masks


def _known_unchanged(image_path, mask_path, out_path):
    image = np.asarray(Image.open(image_path).convert("L"))
    known = np.asarray(Image.open(mask_path)) == 0
    out = np.asarray(Image.open(out_path))
    assert out.shape == image.shape
    assert np.array_equal(out[known], image[known])
    return image, known, out


def test_inpaint_one_image_keeps_known_pixels(files, tmp_path):
    folder, masks = files
    out = tmp_path / "filled.png"
    grid = tmp_path / "grid.png"
    result = run(
        "inpaint", folder / "a.png", "--mask", masks / "a.png", "-o", out,
        "--iterations", "8", "--refiner", "svi", "-O", "steps=2", "--grid", grid,
        "--threads", "1", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    image, known, filled = _known_unchanged(folder / "a.png", masks / "a.png", out)
    assert not np.array_equal(filled[~known], image[~known])  # the hole was filled
    report = json.loads(result.stdout)
    assert report["refiner"] == "svi" and report["options"]["steps"] == "2"
    assert report["files"] == [
        {"input": str(folder / "a.png"), "output": str(out), "mask": str(masks / "a.png")}
    ]
    # input, mask, t=2, t=4, t=6, result; each cell 28 * 3 pixels wide
    assert Image.open(grid).size[0] >= 6 * 84


def test_inpaint_a_folder_with_a_folder_of_masks(files, tmp_path):
    folder, masks = files
    out = tmp_path / "out"
    result = run(
        "inpaint", folder, "--mask", masks, "-o", out, "--iterations", "3", "--threads", "1"
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    for name in ("a", "b", "c"):
        _known_unchanged(folder / f"{name}.png", masks / f"{name}.png", out / f"{name}.png")
    assert "wrote 3 image(s)" in result.stderr


def test_inpaint_white_is_known_flag_inverts_the_mask(files, tmp_path):
    folder, masks = files
    out = tmp_path / "inverted.png"
    result = run(
        "inpaint", folder / "b.png", "--mask", masks / "b.png", "--white-is-known",
        "-o", out, "--iterations", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    image = np.asarray(Image.open(folder / "b.png"))
    white = np.asarray(Image.open(masks / "b.png")) == 255
    assert np.array_equal(np.asarray(Image.open(out))[white], image[white])


def test_denoise_writes_images_of_the_input_size(files, tmp_path):
    folder, _ = files
    out = tmp_path / "clean"
    out.mkdir()
    result = run(
        "denoise", folder / "a.png", "-o", out, "--iterations", "2", "--result", "sample",
        "--grid", tmp_path / "g.png", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    written = Image.open(out / "a.png")
    assert written.size == (56, 84)
    assert json.loads(result.stdout)["result"] == "sample"


def _bad_inputs(tmp_path, folder, masks):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "notes.png").write_text("hello")
    grey = np.zeros((28, 28), np.uint8)
    grey[5, 5] = 100
    Image.fromarray(grey).save(tmp_path / "grey-mask.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "small-mask.png")
    (tmp_path / "empty").mkdir()
    b, mb = folder / "b.png", masks / "b.png"
    out = tmp_path / "out.png"
    return [
        (["inpaint", tmp_path / "missing.png", "--mask", mb, "-o", out], "does not exist"),
        (["inpaint", b, "--mask", tmp_path / "missing.png", "-o", out], "does not exist"),
        (["inpaint", tmp_path / "notes.png", "--mask", mb, "-o", out], "is not an image file"),
        (["inpaint", b, "--mask", tmp_path / "notes.txt", "-o", out], "is not an image file"),
        (["inpaint", folder / "a.png", "--mask", mb, "-o", out], "is 28x28 pixels, the image"),
        (["inpaint", b, "--mask", tmp_path / "grey-mask.png", "-o", out], "is not binary"),
        (
            ["inpaint", tmp_path / "small.png", "--mask", tmp_path / "small-mask.png", "-o", out],
            "needs at least 28x28",
        ),
        (["denoise", tmp_path / "small.png", "-o", out], "needs at least 28x28"),
        (["inpaint", b, "--mask", mb, "-o", tmp_path / "nowhere" / "o.png"], "does not exist"),
        (["denoise", b, "-o", tmp_path / "notes.txt" / "o.png"], "does not exist"),
        (["denoise", b, "-o", tmp_path / "o.png", "--grid", tmp_path / "x" / "g.png"], "exist"),
        (["denoise", b, "-o", tmp_path / "out.xyz"], "unknown image suffix"),
        (["denoise", folder, "-o", tmp_path / "notes.txt"], "is a file"),
        (["denoise", tmp_path / "empty", "-o", tmp_path / "d"], "holds no image files"),
        (["inpaint", folder, "--mask", tmp_path / "empty", "-o", tmp_path / "d"], "no mask for"),
        (["denoise", b, "-o", out, "--refiner", "nope"], "unknown refiner 'nope'"),
        (["denoise", b, "-o", out, "-O", "lr=-1", "--refiner", "svi"], "option lr: must be >"),
        (["inpaint", b, "-o", out], "Missing option '--mask'"),
    ]


def test_bad_input_is_one_line_and_writes_nothing(files, tmp_path):
    folder, masks = files
    before = {p for p in tmp_path.rglob("*")}
    for args, message in _bad_inputs(tmp_path, folder, masks):
        made = {p for p in tmp_path.rglob("*")}
        result = run(*args, "--iterations", "2")
        assert result.exit_code != 0, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.stderr)
        assert message in lines[0], (args, lines[0])
        assert "Traceback" not in result.output
        assert {p for p in tmp_path.rglob("*")} == made, args  # no output, no temporary
    assert not (tmp_path / "out.png").exists() and before


def test_evaluate_inpaint_json_markdown_and_grid(tmp_path):
    base = ["evaluate", "inpaint", "--backend", "vae", "--refiner", "amortized,svi", "-o",
            "svi.steps=2", "--num-images", "6", "--iterations", "3", "--threads", "1"]  # fmt: skip
    grid = tmp_path / "grid.png"
    result = run(*base, "--record-every", "1", "--grid", grid, "--grid-rows", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["protocol"]["fid"] == "FID (MNIST-classifier features)"
    assert report["refiners"]["svi"]["steps"] == "2"
    rows = report["results"]["vae"]
    assert set(rows) == {"centre", "half", "random"}
    for kind in rows.values():
        assert set(kind) == {"corrupted", "amortized", "svi"}
        for row in kind.values():
            assert 0 < row["ssim"] <= 1 and row["fid"] >= 0
        assert kind["svi"]["ssim_by_iteration"].keys() == {"1", "2", "3"}
        # the restored images score better than the corrupted input
        assert kind["amortized"]["ssim"] > kind["corrupted"]["ssim"]
    # original, input, vae amortized, vae svi; 2 rows per kind
    width, height = Image.open(grid).size
    assert height == 14 + 6 * (84 + 4) + 4 and width >= 4 * 84
    markdown = run(*base, "--masks", "half", "--fid-features", "none", "--markdown")
    assert markdown.exit_code == 0, markdown.output
    lines = markdown.stdout.strip().splitlines()
    assert lines[0] == "| backend | refiner | half: SSIM ↑ |"
    assert [line.split(" | ")[1] for line in lines[2:]] == ["(corrupted input)", "amortized", "svi"]


def test_evaluate_denoise_table(tmp_path):
    result = run(
        "evaluate", "denoise", "--backend", "vae", "--refiner", "amortized",
        "--noise", "salt-pepper", "--num-images", "4", "--iterations", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "salt-pepper: SSIM" in result.stderr and "(corrupted input)" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--masks", "ring"], "unknown kind ring"),
        (["-o", "svi.nope=1"], "unknown option nope"),
        (["-o", "colour=red"], "none of the refiners"),
        (["-o", "flow.steps=1"], "refiner 'flow' is not evaluated"),
        (["--refiner", "nope"], "unknown refiner 'nope'"),
        (["--backend", "nope"], "unknown backend 'nope'"),
        (["--checkpoint", "vae=/nonexistent"], "does not exist"),
        (["--fid-features", "inception", "--fid-weights", "/nonexistent.pth"], "not found at"),
        (["--fid-dims", "64"], "--fid-dims applies to inception features only"),
        (["--json", "--markdown"], "choose one of --json and --markdown"),
    ],
)
def test_evaluate_bad_input(args, message):
    result = run("evaluate", "inpaint", "--backend", "vae", "--num-images", "2", *args)
    assert result.exit_code != 0
    assert result.stderr.startswith("Error: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_train_classifier_command(tmp_path):
    out = tmp_path / "c.safetensors"
    result = run("evaluate", "train-classifier", "--epochs", "1", "--threads", "1", "-o", out)
    assert result.exit_code == 0, result.output
    from lvmtoolkit.metrics.classifier import load_classifier

    _, info = load_classifier(out)
    assert info["epochs"] == 1 and 0.1 < info["test_accuracy"] <= 1
    bad = run("evaluate", "train-classifier", "--epochs", "1", "-o", tmp_path / "c.pt")
    assert bad.exit_code != 0 and "must end in .safetensors" in bad.stderr
