import json

import pytest
import torch
from safetensors.torch import save_file

from lvmtoolkit.core.checkpoint import read_checkpoint_info, save_checkpoint
from lvmtoolkit.core.provenance import (
    image_range,
    refuse_scoring_training_images,
    scored_training_images,
)
from lvmtoolkit.errors import CheckpointError
from lvmtoolkit.plugins import load_checkpoint


def test_roundtrip_folder_and_single_file(tiny_vae, tmp_path):
    folder = save_checkpoint(
        tiny_vae, tmp_path / "ckpt", data={"dataset": "x"}, training={"epochs": 1}
    )
    for path in (folder, folder / "model.safetensors"):
        loaded = load_checkpoint(path)
        assert loaded.config == tiny_vae.config
        for key, value in tiny_vae.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value)
    info = read_checkpoint_info(folder)
    assert info["backend"] == "vae" and info["data"] == {"dataset": "x"}
    assert info["config"]["hidden"] == [32]


def test_missing_and_corrupt(tiny_vae, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    folder = save_checkpoint(tiny_vae, tmp_path / "ckpt")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_checkpoint(folder)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(bad)


def test_pickle_file_is_refused(tmp_path):
    """A torch.save pickle is never unpickled."""
    path = tmp_path / "model.safetensors"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_mismatched_weights_and_config(tiny_vae, tmp_path):
    folder = save_checkpoint(tiny_vae, tmp_path / "ckpt")
    info = json.loads((folder / "config.json").read_text())
    info["config"]["latent_dim"] = 5
    (folder / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="expects"):
        load_checkpoint(folder)
    info["config"]["colour"] = "red"
    (folder / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="unknown VAEConfig keys: colour"):
        load_checkpoint(folder)
    save_file({"x": torch.zeros(1)}, str(folder / "model.safetensors"))
    info["config"].pop("colour")
    info["config"]["latent_dim"] = 4
    (folder / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(folder)


def test_backend_mismatch(tiny_vae, tmp_path):
    folder = save_checkpoint(tiny_vae, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="is a 'vae' checkpoint, not a 'gmvae' one"):
        load_checkpoint(folder, backend="gmvae")


def test_unknown_backend_in_checkpoint(tiny_vae, tmp_path):
    folder = save_checkpoint(tiny_vae, tmp_path / "ckpt")
    info = json.loads((folder / "config.json").read_text())
    info["backend"] = "martian"
    (folder / "config.json").write_text(json.dumps(info))
    with pytest.raises(KeyError, match="unknown backend 'martian'"):
        load_checkpoint(folder)


def test_checkpoint_files_get_the_usual_mode(tiny_vae, tmp_path):
    """Package data must be readable by others: not the 0600 of a temporary file."""
    import os

    umask = os.umask(0o022)
    try:
        folder = save_checkpoint(tiny_vae, tmp_path / "ckpt")
    finally:
        os.umask(umask)
    for name in ("model.safetensors", "config.json"):
        assert (folder / name).stat().st_mode & 0o777 == 0o644


def test_trained_on_ranges_found_in_the_scored_images(tiny_vae, tmp_path):
    trained = [image_range("mnist-5k", "train", 0, 4000), image_range("mnist", "test", 1000, 10000)]
    folder = save_checkpoint(tiny_vae, tmp_path / "ckpt", data={"trained_on": trained})
    info = load_checkpoint(folder).checkpoint_info
    assert scored_training_images(info, "mnist", "test", 1000) is None
    assert scored_training_images(info, "mnist", "test", 1001) == (1000, 1000)
    assert scored_training_images(info, "mnist", "test", 20000) == (1000, 9999)
    assert scored_training_images(info, "mnist", "train", 20000) is None
    assert scored_training_images(info, "mnist-5k", "train", 5) == (0, 4)
    refuse_scoring_training_images(info, "mnist", "test", 1000, str(folder))
    with pytest.raises(CheckpointError, match=r"mnist test images 1000-1999, which the first 2000"):
        refuse_scoring_training_images(info, "mnist", "test", 2000, str(folder))
    # A checkpoint without the record (the bundled ones) is not checked.
    refuse_scoring_training_images({"data": {}}, "mnist", "test", 10, "x")


@pytest.mark.parametrize(
    "record",
    [
        {"dataset": "mnist", "split": "test"},
        {"dataset": "mnist", "split": "test", "start": 5, "stop": 5},
        {"dataset": "mnist", "split": "test", "start": -1, "stop": 5},
        {"dataset": "mnist", "split": "test", "start": True, "stop": 5},
        "mnist test 0-99",
    ],
)
def test_malformed_trained_on_is_refused_not_ignored(record):
    with pytest.raises(CheckpointError, match="trained_on"):
        scored_training_images({"data": {"trained_on": [record]}}, "mnist", "test", 10, "x")
    with pytest.raises(CheckpointError, match="must be a list"):
        scored_training_images({"data": {"trained_on": record}}, "mnist", "test", 10, "x")


@pytest.mark.parametrize(
    "command",
    [
        ["refine", "--steps", "1", "--eval-samples", "1"],
        ["refine", "--steps", "1", "--eval-samples", "1", "--output", "{tmp}/job-{n}"],
        ["gaps", "--steps", "1", "--iwae-samples", "2", "--eval-samples", "1"],
    ],
)
def test_gaps_and_refine_refuse_a_test_split_the_model_was_trained_on(tiny_vae, tmp_path, command):
    from click.testing import CliRunner

    from lvmtoolkit.cli import cli

    trained = [image_range("mnist-5k", "train", 0, 4000), image_range("mnist-5k", "test", 5, 10)]
    folder = save_checkpoint(tiny_vae, tmp_path / "ckpt", data={"trained_on": trained})

    def invoke(n):
        args = [part.format(tmp=tmp_path, n=n) for part in command]
        args += ["--backend", "vae", "--checkpoint", str(folder), "--threads", "1", "--json"]
        return CliRunner().invoke(cli, [*args, "--split", "train,test", "--num-images", str(n)])

    # Its own train split is expected in these tables; test images 0-4 were not trained on.
    held_out = invoke(5)
    assert held_out.exit_code == 0, held_out.output
    refused = invoke(6)
    assert refused.exit_code != 0 and refused.stdout == ""
    assert not (tmp_path / "job-6").exists()
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert f"{folder} was trained on mnist-5k test images 5-5, which the first 6" in refused.stderr


@pytest.mark.parametrize("backend", ["vae", "gmvae", "nvae", "nvae-flow"])
def test_bundled_checkpoints_record_their_training_images(backend):
    from lvmtoolkit.plugins import get_backend

    info = read_checkpoint_info(get_backend(backend).default_checkpoint())
    # Trained on mnist-5k's whole train split (4,000 digits), nothing of any test split.
    assert scored_training_images(info, "mnist-5k", "train", 5000) == (0, 3999)
    assert scored_training_images(info, "mnist-5k", "test", 1000) is None
    assert scored_training_images(info, "mnist", "test", 10000) is None


def test_evaluate_refuses_the_bundled_models_training_digits(tmp_path):
    from click.testing import CliRunner

    from lvmtoolkit.cli import cli

    args = ["evaluate", "denoise", "--backend", "vae", "--refiner", "amortized"]
    args += ["--dataset", "mnist-5k", "--split", "train", "--num-images", "3", "--threads", "1"]
    refused = CliRunner().invoke(cli, [*args, "--grid", str(tmp_path / "grid.png"), "--json"])
    assert refused.exit_code != 0 and refused.stdout == ""
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "was trained on mnist-5k train images 0-2" in refused.stderr
    assert not (tmp_path / "grid.png").exists()
