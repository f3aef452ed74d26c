"""`lvm inpaint`, `lvm denoise` and `lvm evaluate` on real digits written as PNG files."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
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
        "-O", "steps=20", "--grid", grid, "--threads", "1", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    image, known, filled = _known_unchanged(folder / "a.png", masks / "a.png", out)
    assert not np.array_equal(filled[~known], image[~known])  # the hole was filled
    report = json.loads(result.stdout)
    assert (report["method"], report["noise"]) == (
        "conditional",
        "missing:region=centre,fraction=0.5",
    )
    assert report["refiner"] == "svi" and report["options"]["steps"] == "20"
    assert report["files"][0]["input"] == str(folder / "a.png")
    assert report["files"][0]["mask"] == str(masks / "a.png")
    assert 0 < report["files"][0]["mean_std"] < 0.5
    # input, mask, result, uncertainty, 3 samples; each cell 28 * 3 pixels wide
    assert Image.open(grid).size[0] >= 7 * 84


def test_inpaint_pseudo_gibbs_and_notes_on_unused_options(files, tmp_path):
    folder, masks = files
    out = tmp_path / "chain.png"
    result = run(
        "inpaint", folder / "b.png", "--mask", masks / "b.png", "-o", out, "--method",
        "pseudo-gibbs", "--iterations", "3", "--samples", "4", "--threads", "1", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    _known_unchanged(folder / "b.png", masks / "b.png", out)
    report = json.loads(result.stdout)
    assert report["method"] == "pseudo-gibbs" and report["iterations"] == 3
    assert report["options"]["steps"] == "10"  # the chain's per-iteration default
    assert "--samples applies to conditional and importance" in result.stderr


def test_inpaint_a_folder_with_a_folder_of_masks(files, tmp_path):
    folder, masks = files
    out = tmp_path / "out"
    result = run(
        "inpaint", folder, "--mask", masks, "-o", out, "-O", "steps=20", "--threads", "1"
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
        "-o", out, "-O", "steps=5",
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
        "denoise", folder / "a.png", "-o", out, "-O", "steps=5", "--result", "sample",
        "--grid", tmp_path / "g.png", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    written = Image.open(out / "a.png")
    assert written.size == (56, 84)
    assert json.loads(result.stdout)["result"] == "sample"
    assert "denoise: assuming noise gaussian:variance=0.5,clip=true" in result.stderr


def test_inpaint_with_noisy_known_pixels_restores_them_too(files, tmp_path):
    folder, masks = files
    out = tmp_path / "both.png"
    result = run(
        "inpaint", folder / "b.png", "--mask", masks / "b.png", "-o", out, "--noise",
        "gaussian:variance=0.1", "-O", "steps=20", "--threads", "1", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["noise"] == "gaussian:variance=0.1,clip=true"
    image = np.asarray(Image.open(folder / "b.png"))
    known = np.asarray(Image.open(masks / "b.png")) == 0
    restored = np.asarray(Image.open(out))
    assert not np.array_equal(restored[known], image[known])  # not copied: denoised


def test_denoise_thresholds_grey_input_for_binary_observations(files, tmp_path):
    folder, _ = files
    result = run(
        "denoise", folder / "a.png", "-o", tmp_path / "sp.png", "--noise",
        "salt-pepper:rate=0.1", "-O", "steps=5", "--iterations", "3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "note: salt-pepper observes black and white: input thresholded at 0.5" in (result.stderr)
    assert "note: --iterations applies to mwg and pseudo-gibbs" in result.stderr


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


@pytest.fixture(scope="module")
def ppca_checkpoint(tmp_path_factory):
    """A linear-Gaussian (pPCA) checkpoint fitted to real digits: Gaussian pixels."""
    from lvm_linear_gaussian.model import LinearGaussian

    from lvmtoolkit.core.checkpoint import save_checkpoint
    from lvmtoolkit.plugins import get_dataset

    images = get_dataset("mnist-5k")().load("train").images[:500]
    model = LinearGaussian.fit_ppca(images, latent_dim=5)
    return save_checkpoint(model, tmp_path_factory.mktemp("ppca") / "ppca")


def test_bad_noise_models_are_one_line_and_write_nothing(files, tmp_path, ppca_checkpoint):
    folder, masks = files
    b, out = folder / "b.png", tmp_path / "out.png"
    ppca = ["--backend", "linear-gaussian", "--checkpoint", ppca_checkpoint]
    cases = [
        (["denoise", b, "--noise", "speckle"], "unknown observation model 'speckle'"),
        (["denoise", b, "--noise", "gaussian:sigma=1"], "unknown option sigma; options: clip"),
        (["denoise", b, "--noise", "gaussian:variance=0"], "option variance: must be > 0"),
        (["denoise", b, "--noise", "gaussian:variance=-0.5"], "option variance: must be > 0"),
        (["denoise", b, "--noise", "gaussian:variance=x"], "option variance: expected float"),
        (["denoise", b, "--noise", "gaussian:variance"], "is not KEY=VALUE"),
        (["denoise", b, "--noise", "salt-pepper:rate=1.5"], "option rate: must be <= 1"),
        (["denoise", b, "--noise", "missing"], "missing is not a noise model"),
        (
            ["denoise", b, "--noise", "salt-pepper", *ppca],
            "observation model 'salt-pepper' with Gaussian pixels (the linear-gaussian "
            "model's likelihood) has no exact p(y | z)",
        ),
        (["denoise", b, "--noise", "bit-flip", *ppca], "'bit-flip' with Gaussian pixels"),
        (["inpaint", b, "--mask", masks / "b.png", "--noise", "nope"], "unknown observation"),
        (["denoise", b, "--method", "gibbs"], "Invalid value for '--method'"),
    ]
    for args, message in cases:
        made = {p for p in tmp_path.rglob("*")}
        result = run(*args, "-o", out, "--threads", "1")
        assert result.exit_code != 0, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.stderr)
        assert message in lines[0], (args, lines[0])
        assert {p for p in tmp_path.rglob("*")} == made, args
    assert not out.exists()


def test_denoise_a_noisy_official_test_digit_gets_closer_to_the_clean_digit(tmp_path):
    """Must-show: `lvm denoise noisy.png -o clean.png --noise gaussian:variance=0.5`."""
    from lvmtoolkit.data import binarize_fixed
    from lvmtoolkit.metrics.ssim import ssim
    from lvmtoolkit.plugins import get_dataset
    from lvmtoolkit.tasks import GaussianNoise

    if (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        images = get_dataset("mnist")(MNIST_DIR).load("test").images[:4]
    else:
        images = get_dataset("mnist-5k")().load("test").images[:4]
    clean = binarize_fixed(images)
    noisy = GaussianNoise(variance=0.5).corrupt(clean, seed=11).y
    folder = tmp_path / "noisy"
    folder.mkdir()
    for i, image in enumerate(noisy):
        Image.fromarray(np.rint(image[0].numpy() * 255).astype(np.uint8)).save(folder / f"{i}.png")
    result = run(
        "denoise", folder, "-o", tmp_path / "clean", "--noise", "gaussian:variance=0.5",
        "--threads", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    def read(path):
        return torch.from_numpy(np.array(Image.open(path))).float()[None, None] / 255

    for i in range(4):
        restored = read(tmp_path / "clean" / f"{i}.png")
        before = ssim(read(folder / f"{i}.png"), clean[i : i + 1]).item()
        after = ssim(restored, clean[i : i + 1]).item()
        assert after > before + 0.1, (i, before, after)


def test_evaluate_inpaint_json_markdown_and_grid(tmp_path):
    base = ["evaluate", "inpaint", "--backend", "vae", "--refiner", "amortized,svi",
            "-o", "svi.steps=30", "--num-images", "6", "--nll-samples", "8",
            "--threads", "1"]  # fmt: skip
    grid = tmp_path / "grid.png"
    result = run(
        *base, "--method", "conditional,pseudo-gibbs", "--iterations", "3", "--grid", grid,
        "--grid-rows", "2", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["protocol"]["fid"] == "FID (MNIST-classifier features)"
    assert report["refiners"]["svi"]["steps"] == "30"
    chain_svi = report["protocol"]["chain_refiners"]["svi"]
    assert (chain_svi["steps"], chain_svi["select_samples"]) == (30, 2)
    rows = report["results"]["vae"]
    assert set(rows) == {"centre", "half", "random"}
    for kind in rows.values():
        assert set(kind["methods"]) == {"conditional", "pseudo-gibbs"}
        assert 0 < kind["corrupted"]["ssim"] <= 1 and "nll" not in kind["corrupted"]
        for by_refiner in kind["methods"].values():
            assert set(by_refiner) == {"amortized", "svi"}
            for row in by_refiner.values():
                assert 0 < row["ssim"] <= 1 and row["fid"] >= 0
                assert 0 < row["nll"] < 500 and row["seconds_per_image"] > 0
        # restoring beats the corrupted input
        assert kind["methods"]["conditional"]["svi"]["ssim"] > kind["corrupted"]["ssim"]
    # original, input, 2 methods x 2 refiners; 2 rows per kind
    width, height = Image.open(grid).size
    assert height == 14 + 6 * (84 + 4) + 4 and width >= 6 * 84
    markdown = run(*base, "--masks", "half", "--fid-features", "none", "--markdown")
    assert markdown.exit_code == 0, markdown.output
    lines = markdown.stdout.strip().splitlines()
    assert lines[0].startswith("**half**: ")
    assert lines[2] == "| backend | method | refiner | SSIM ↑ | NLL ↓ | s / image |"
    assert [line.split(" | ")[1:3] for line in lines[4:]] == [
        ["(corrupted input)", ""],
        ["conditional", "amortized"],
        ["conditional", "svi"],
    ]


def test_evaluate_denoise_table():
    result = run(
        "evaluate", "denoise", "--backend", "vae", "--refiner", "svi", "-o", "steps=20",
        "--noise", "salt-pepper:rate=0.2,gaussian:variance=0.5,clip=true", "--num-images", "4",
        "--nll-samples", "4", "--method", "importance", "--samples", "8",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "denoise salt-pepper:rate=0.2" in result.stderr
    assert "denoise gaussian:variance=0.5,clip=true" in result.stderr
    table = result.stderr[result.stderr.index("denoise salt-pepper:rate=0.2") :]
    assert " input " in table and " importance " in table


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
        (["--method", "conditional,nope"], "unknown method nope"),
        (["--noise", "gaussian:variance=0"], "option variance: must be > 0"),
        (["--noise", "speckle"], "unknown observation model 'speckle'"),
    ],
)
def test_evaluate_bad_input(args, message):
    task = "denoise" if "--noise" in args else "inpaint"
    result = run("evaluate", task, "--backend", "vae", "--num-images", "2", *args)
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


def test_evaluate_charges_a_reused_refinement_to_every_row_with_and_without_scoring():
    # importance reuses conditional's refined q(z | y); both of its times must include it.
    result = run(
        "evaluate", "denoise", "--backend", "vae", "--refiner", "svi", "-o", "svi.steps=300",
        "--method", "conditional,importance", "--noise", "salt-pepper:rate=0.2",
        "--num-images", "4", "--nll-samples", "2", "--fid-features", "none", "--threads", "1",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]["vae"]["salt-pepper:rate=0.2"]["methods"]
    first, reused = rows["conditional"]["svi"], rows["importance"]["svi"]
    assert first["seconds"] > 0 and reused["seconds"] > 0
    for row in (first, reused):
        assert row["seconds_with_scoring"] >= row["seconds"], row
