"""SSIM, FID (Inception with stand-in weights, and the shipped MNIST classifier)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from lvmtoolkit.cli import cli
from lvmtoolkit.data import binarize_fixed
from lvmtoolkit.errors import MetricError
from lvmtoolkit.metrics.classifier import (
    MnistClassifier,
    accuracy,
    load_classifier,
    save_classifier,
    train_classifier,
)
from lvmtoolkit.metrics.fid import (
    INCEPTION_WEIGHTS_FILE,
    InceptionFeatures,
    MnistClassifierFeatures,
    fid,
    fid_inception_network,
    frechet_distance,
)
from lvmtoolkit.metrics.ssim import ssim
from lvmtoolkit.tasks import add_noise


@pytest.fixture(scope="session")
def standin_inception(tmp_path_factory):
    """pytorch-fid's FID Inception architecture with random weights, saved as a .pth file.

    Convolutions get He initialisation so activations neither vanish nor explode through
    the 90-odd layers, making the features (and the FID) non-trivial numbers.
    """
    torch.manual_seed(0)
    network = fid_inception_network()
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / INCEPTION_WEIGHTS_FILE
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def labels():
    """Labels of the mnist-5k test split (the images are the ``mnist5k_test_images``)."""
    from lvmtoolkit.plugins import get_dataset

    return get_dataset("mnist-5k")().load("test").labels


def test_ssim_is_one_for_identical_images_and_falls_with_noise(mnist5k_test_images):
    clean = binarize_fixed(mnist5k_test_images[:16])
    assert torch.allclose(ssim(clean, clean), torch.ones(16))
    noisy = add_noise("salt-pepper", clean, seed=0)
    very_noisy = add_noise("gaussian", clean, seed=0)
    assert (ssim(noisy, clean) < 0.9).all()
    assert ssim(very_noisy, clean).mean() < ssim(noisy, clean).mean()


def test_ssim_with_data_range_255_scores_noise_as_nearly_perfect(mnist5k_test_images):
    """Why the data range matters: pytorch_msssim's default of 255 on [0, 1] images."""
    clean = binarize_fixed(mnist5k_test_images[:16])
    noisy = add_noise("gaussian", clean, seed=0)
    assert ssim(noisy, clean).mean() < 0.4
    assert ssim(noisy, clean, data_range=255).mean() > 0.99


def test_ssim_bad_shapes():
    with pytest.raises(MetricError, match="of one shape"):
        ssim(torch.rand(2, 1, 28, 28), torch.rand(3, 1, 28, 28))
    with pytest.raises(MetricError, match="at least 11x11"):
        ssim(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8))


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    assert abs(frechet_distance(a, a)) < 1e-6
    shifted = frechet_distance(a + 1.0, a)
    assert shifted == pytest.approx(4.0, rel=1e-6)  # ||mu difference||^2, same covariance
    with pytest.raises(MetricError, match="at least 2 images"):
        frechet_distance(a[:1], a)


def test_shipped_classifier_is_small_accurate_and_as_described(mnist5k_test_images, labels):
    features = MnistClassifierFeatures()
    assert features.label == "FID (MNIST-classifier features)"
    measured = accuracy(features.classifier, mnist5k_test_images, labels)
    assert measured == pytest.approx(features.info["test_accuracy"], abs=1e-4)
    assert measured > 0.97
    size = sum(t.numel() * t.element_size() for t in features.classifier.state_dict().values())
    assert size < 1_000_000


def test_classifier_fid_ranks_noise_and_matches_the_real_distribution(mnist5k_test_images):
    clean = binarize_fixed(mnist5k_test_images)
    same_distribution = fid(clean[:500], clean[500:])
    noisy = fid(add_noise("gaussian", clean[:500], seed=0), clean[500:])
    assert 0 < same_distribution < noisy / 10


def test_classifier_rejects_other_image_sizes():
    with pytest.raises(MetricError, match=r"takes \(N, 1, 28, 28\) images"):
        fid(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32))


def test_train_save_and_load_a_classifier(tmp_path, mnist5k_test_images, labels):
    model, summary = train_classifier(mnist5k_test_images[:600], labels[:600], epochs=2, seed=0)
    assert summary["epochs"] == 2 and summary["train_images"] == 600
    assert accuracy(model, mnist5k_test_images[600:], labels[600:]) > 0.3  # chance: 0.1
    path = save_classifier(model, tmp_path / "c.safetensors", {"note": "test"})
    loaded, info = load_classifier(path)
    assert info == {"note": "test"}
    x = mnist5k_test_images[:4]
    assert torch.equal(loaded.features(x), model.features(x))
    with pytest.raises(MetricError, match="not found"):
        load_classifier(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_text("junk")
    with pytest.raises(MetricError, match="not a readable safetensors file"):
        load_classifier(tmp_path / "junk.safetensors")


def test_missing_inception_weights_give_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MetricError) as raised:
        InceptionFeatures()
    message = str(raised.value)
    assert str(tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE) in message
    assert "--fid-weights" in message and "\n" not in message


def test_wrong_inception_weights_files(tmp_path):
    (tmp_path / "junk.pth").write_text("junk")
    with pytest.raises(MetricError, match="is not a readable weights file"):
        InceptionFeatures(tmp_path / "junk.pth")
    torch.save(MnistClassifier().state_dict(), tmp_path / "other.pth")
    with pytest.raises(MetricError, match="does not hold the weights of pytorch-fid's"):
        InceptionFeatures(tmp_path / "other.pth")


@pytest.mark.slow
def test_inception_features_equal_pytorch_fid_inception_v3(
    standin_inception, tmp_path, monkeypatch, mnist5k_test_images
):
    """Our extractor and pytorch-fid's own InceptionV3, same weights: the same features.

    pytorch-fid loads its weights from torch.hub's cache; the stand-in file is put there,
    so nothing is downloaded. Our extractor reads the same cache by default.
    """
    from pytorch_fid.inception import InceptionV3

    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / INCEPTION_WEIGHTS_FILE).symlink_to(standin_inception)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    images = mnist5k_test_images[:3]
    ours = InceptionFeatures()(images)
    with torch.no_grad():
        reference = InceptionV3([3]).eval()(images.expand(-1, 3, -1, -1))[0].flatten(1)
    assert ours.shape == (3, 2048)
    assert ours.abs().mean() > 1e-3  # not a degenerate all-zero stand-in
    torch.testing.assert_close(ours, reference)
    early = InceptionFeatures(dims=192)(images)
    with torch.no_grad():
        block = InceptionV3([1]).eval()(images.expand(-1, 3, -1, -1))[0]
    torch.testing.assert_close(early, block.mean((2, 3)))


@pytest.mark.slow
def test_fid_inception_end_to_end_through_the_cli(standin_inception):
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "inpaint",
            "--backend",
            "vae",
            "--refiner",
            "amortized",
            "--masks",
            "centre",
            "--num-images",
            "3",
            "--iterations",
            "2",
            "--fid-features",
            "inception",
            "--fid-weights",
            str(standin_inception),
            # 64 features: the 2048 of the standard FID cost a minute of matrix square roots
            "--fid-dims",
            "64",
            "--threads",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["protocol"]["fid"] == "FID (Inception, 64 features)"
    # The report names the weights that made its rows, not only the folder they came from.
    from lvmtoolkit.jobs import parameters_sha256
    from lvmtoolkit.plugins import load_backend_model

    assert report["parameters_sha256"] == {"vae": parameters_sha256(load_backend_model("vae")[0])}
    rows = report["results"]["vae"]["centre"]
    scored = [rows["corrupted"], *(m["amortized"] for m in rows["methods"].values())]
    assert len(scored) >= 2  # the corrupted input and at least one restoration method
    for row in scored:
        assert np.isfinite(row["fid"]) and row["fid"] > 0
