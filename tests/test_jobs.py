"""``lvm refine`` as a job: --data sources, --model, --output, resume, load_results, bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from pyro import poutine

import lvmtoolkit as lvm
from lvmtoolkit.cli import cli
from lvmtoolkit.core.runtime import stream_seed
from lvmtoolkit.errors import DataError, LvmError
from lvmtoolkit.jobs import ResultsFolder, load_user_model, open_data

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_vae.py"
TINY_MODULE = "lvmtoolkit.testing:make_tiny_model"
# A small job: the tiny untrained VAE, a few steps, few evaluation samples.
FAST = ("--steps", "2,5", "--eval-samples", "3", "--threads", "1")


def lvm_run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def tree_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (to check nothing changed)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def shard_files(root: Path) -> dict[str, str]:
    """A digest of each shard file and the summary, by content.

    Tables and the summary by their bytes; tensor files by their tensors' bytes and their
    metadata (safetensors writes the metadata map in no fixed order); receipts without the
    tensor file's SHA-256 (and their own checksum), which follow that order.
    """
    from safetensors import safe_open

    found = {}
    for path in sorted([*root.glob("shards/*"), root / "summary.json"]):
        digest = hashlib.sha256()
        if path.name.endswith(".receipt.json"):
            receipt = json.loads(path.read_text())
            del receipt["checksum"]
            del receipt["files"][path.name.replace(".receipt.json", ".safetensors")]["sha256"]
            digest.update(json.dumps(receipt, sort_keys=True).encode())
        elif path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                digest.update(json.dumps(handle.metadata(), sort_keys=True).encode())
                for key in sorted(handle.keys()):
                    digest.update(key.encode() + handle.get_tensor(key).numpy().tobytes())
        else:
            digest.update(path.read_bytes())
        found[str(path.relative_to(root))] = digest.hexdigest()
    return found


@pytest.fixture
def tiny(tmp_path) -> str:
    """``--model`` of a file defining the tiny untrained VAE of ``lvmtoolkit.testing``."""
    (tmp_path / "tiny.py").write_text("from lvmtoolkit.testing import make_tiny_model as build\n")
    return f"{tmp_path}/tiny.py:build"


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """40 real mnist-5k test digits, uint8-exact grey levels."""
    x = lvm.get_dataset("mnist-5k")().load("test").images[:40]
    return (x * 255).round() / 255


def as_uint8(images: torch.Tensor) -> np.ndarray:
    return (images * 255).round().to(torch.uint8).numpy()


def write_pngs(folder: Path, images: torch.Tensor) -> Path:
    folder.mkdir(parents=True)
    for i, pixels in enumerate(as_uint8(images)):
        Image.fromarray(pixels[0], mode="L").save(folder / f"{i:03d}.png")
    return folder


# --- data sources ---------------------------------------------------------------------------


def test_every_data_format_reads_the_same_images(tmp_path, images):
    pixels = as_uint8(images)
    np.save(tmp_path / "u8.npy", pixels[:, 0])  # (N, H, W) uint8
    np.save(tmp_path / "f32.npy", images.numpy())  # (N, 1, H, W) floats
    np.savez_compressed(tmp_path / "a.npz", images=pixels)
    from safetensors.torch import save_file

    save_file({"x": images.contiguous()}, tmp_path / "a.safetensors")
    header = bytes([0, 0, 8, 3]) + b"".join(v.to_bytes(4, "big") for v in (40, 28, 28))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(header + pixels[:, 0].tobytes())
    )
    write_pngs(tmp_path / "pngs", images)
    names = ["u8.npy", "f32.npy", "a.npz", "a.safetensors", "t10k-images-idx3-ubyte.gz", "pngs"]
    for name in names:
        source = open_data([tmp_path / name], (1, 28, 28))
        assert len(source) == 40, name
        # Read in uneven ranges, out of order: rows are addressed, not streamed once.
        parts = [source.read(25, 40), source.read(0, 7), source.read(7, 25)]
        read = torch.cat([parts[1], parts[2], parts[0]])
        assert torch.equal(read, images.float()), name
    both = open_data([tmp_path / "u8.npy", tmp_path / "pngs"], (1, 28, 28), num_images=50)
    assert len(both) == 50 and torch.equal(both.read(35, 45), torch.cat([images[35:], images[:5]]))
    assert open_data([tmp_path / "pngs"], (1, 28, 28)).ids(0, 2) == ["000.png", "001.png"]


def test_fingerprint_changes_with_the_data(tmp_path, images):
    np.save(tmp_path / "a.npy", as_uint8(images))
    before = open_data([tmp_path / "a.npy"], (1, 28, 28)).fingerprint()
    changed = as_uint8(images)
    changed[3, 0, 5, 5] ^= 1
    np.save(tmp_path / "a.npy", changed)
    assert open_data([tmp_path / "a.npy"], (1, 28, 28)).fingerprint() != before


# --- bad input: one line, nothing written, earlier results intact ---------------------------


def test_bad_data_and_models_fail_in_one_line_and_write_nothing(tmp_path, images):
    pngs = write_pngs(tmp_path / "pngs", images[:4])
    with_text = write_pngs(tmp_path / "with-text", images[:4])
    (with_text / "notes.txt").write_text("not an image")
    mixed = write_pngs(tmp_path / "mixed", images[:4])
    Image.new("L", (32, 32)).save(mixed / "big.png")
    np.save(tmp_path / "wrong.npy", np.zeros((5, 3, 28, 28), dtype=np.uint8))
    (tmp_path / "no_build.py").write_text("x = 1\n")
    (tmp_path / "not_a_model.py").write_text("def build():\n    return 'a string'\n")
    shutil.copy(EXAMPLE, tmp_path / "my_vae.py")
    out = tmp_path / "out"
    cases = {
        "a non-image file": (["--data", with_text], "notes.txt is not an image file"),
        "mixed sizes": (["--data", mixed], "images differ in size"),
        "wrong array shape": (["--data", tmp_path / "wrong.npy"], "has shape (5, 3, 28, 28)"),
        "missing model file": (["--model", "missing.py:build", "--data", pngs], "not exist"),
        "no such function": (["--model", f"{tmp_path}/no_build.py:build"], "defines no 'build'"),
        "wrong return type": (
            ["--model", f"{tmp_path}/not_a_model.py:build", "--data", pngs],
            "returned str, not a lvmtoolkit Model",
        ),
        "data and dataset": (["--data", pngs, "--dataset", "mnist-5k"], "not both"),
    }
    for name, (args, message) in cases.items():
        if "--model" not in args:
            args = ["--model", f"{tmp_path}/my_vae.py:build", *args]
        result = lvm_run("refine", *args, "--output", out, *FAST)
        assert result.exit_code == 1, (name, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (name, result.stderr)
        assert message in lines[0], (name, lines[0])
        assert not out.exists(), name


def test_an_output_folder_of_another_command_is_refused_unless_overwrite(tmp_path, images, tiny):
    np.save(tmp_path / "a.npy", as_uint8(images[:6]))
    out = tmp_path / "out"
    first = lvm_run("refine", "--model", tiny, "--data", tmp_path / "a.npy", "--output", out, *FAST)
    assert first.exit_code == 0, first.output
    before = tree_digest(out)
    umask = os.umask(0)
    os.umask(umask)
    for path in [out / "manifest.json", *out.glob("shards/*")]:  # not mkstemp's 0600
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    other = ("--model", tiny, "--data", tmp_path / "a.npy", "--output", out, *FAST)
    refused = lvm_run("refine", *other, "-o", "lr=0.01")
    assert refused.exit_code == 1
    assert "holds results of another command (it differs in: refiner)" in refused.stderr
    assert "--overwrite" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert tree_digest(out) == before
    # A folder with other files is refused too, and left alone.
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("keep me")
    refused = lvm_run("refine", "--model", tiny, "--data", tmp_path / "a.npy", "--output", stranger)
    assert refused.exit_code == 1 and "holds no lvm results" in refused.stderr
    assert sorted(p.name for p in stranger.iterdir()) == ["thesis.tex"]
    # With --overwrite the other command's results are replaced.
    replaced = lvm_run("refine", *other, "-o", "lr=0.01", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert (
        json.loads((out / "manifest.json").read_text())["job"]["refiner"]["options"]["lr"] == 0.01
    )
    # The same command again is a resume with nothing left to do: the files do not change.
    again = tree_digest(out)
    rerun = lvm_run("refine", *other, "-o", "lr=0.01", "--json")
    assert rerun.exit_code == 0 and "resuming: 1 of 1 shards" in rerun.stderr
    assert tree_digest(out) == again


def test_user_model_errors_are_lvm_errors(tmp_path):
    (tmp_path / "broken.py").write_text("import no_such_package_anywhere\n")
    with pytest.raises(LvmError, match="importing .*broken.py failed: ModuleNotFoundError"):
        load_user_model(f"{tmp_path}/broken.py:build")
    with pytest.raises(LvmError, match="give path/to/file.py:function"):
        load_user_model("no-colon")
    model, identity = load_user_model(TINY_MODULE)
    assert isinstance(model, lvm.Model) and identity["kind"] == "module"
    assert len(identity["parameters_sha256"]) == 64


def test_an_array_with_values_outside_0_1_is_refused(tmp_path):
    np.save(tmp_path / "big.npy", np.full((4, 28, 28), 3.0, dtype=np.float32))
    with pytest.raises(DataError, match=r"values must lie in \[0, 1\]"):
        open_data([tmp_path / "big.npy"], (1, 28, 28)).read(0, 4)


# --- your model, your PNGs, load_results ----------------------------------------------------


def test_a_single_file_vae_on_a_folder_of_pngs_gives_decodable_posteriors(tmp_path, images):
    shutil.copy(EXAMPLE, tmp_path / "my_vae.py")
    pngs = write_pngs(tmp_path / "pngs", images[:20])
    out = tmp_path / "out"
    args = ["--model", f"{tmp_path}/my_vae.py:build", "--data", pngs, "--output", out]
    result = lvm_run("refine", *args, *FAST, "--shard-size", "8", "--iwae-samples", "4", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["results"]["num_images"] == 20 and set(report["results"]["steps"]) == {"2", "5"}

    results = lvm.load_results(out)
    assert len(results) == 20 and results.table[0]["id"] == "000.png"
    assert results.summary == report
    assert set(results.table[0]) == {
        "index", "id", "shard", "nelbo_amortized", "nelbo_2", "nelbo_5",
        "iwae_amortized", "iwae_refined",
    }  # fmt: skip
    x = results.data()
    assert x.shape == (20, 1, 28, 28)
    # The saved posterior is the one that was scored: rescoring each shard with its
    # evaluation seed gives the table's numbers exactly.
    for shard, part in enumerate((slice(0, 8), slice(8, 16), slice(16, 20))):
        seed = stream_seed(0, f"jobs/eval/{shard}")
        again = lvm.nelbo(
            results.model, results.posterior.select(part), x[part], num_samples=3, seed=seed
        )
        assert torch.equal(again, results.column("nelbo_5")[part].float())
    # Sampleable and decodable; accepted by iwae_bound.
    z = poutine.trace(results.posterior).get_trace(x).nodes["z"]["value"]
    decoded = results.model.decode({"z": z}).mean
    assert decoded.shape == (20, 1, 28, 28) and torch.all((decoded >= 0) & (decoded <= 1))
    bound = lvm.metrics.iwae_bound(results.model, results.posterior, x, num_samples=4)
    assert bound.shape == (20,) and torch.isfinite(bound).all()
    # Refinement helped where the table says it did (same noise, same numbers).
    assert (results.column("nelbo_5") <= results.column("nelbo_amortized")).float().mean() > 0.5


@pytest.mark.parametrize(
    ("refiner", "options", "family"),
    [
        ("amortized", (), "LocalGaussianPosterior"),
        ("svi-flow", ("-o", "num_flows=1"), "LocalFlowPosterior"),
    ],
)
def test_load_results_rebuilds_each_posterior_family(
    tmp_path, images, tiny, refiner, options, family
):
    np.save(tmp_path / "a.npy", as_uint8(images[:6]))
    out = tmp_path / "out"
    args = ["--model", tiny, "--data", tmp_path / "a.npy", "--output", out, "--refiner", refiner]
    result = lvm_run("refine", *args, *options, *FAST, "--shard-size", "4")
    assert result.exit_code == 0, result.output
    results = lvm.load_results(out)
    assert type(results.posterior).__name__ == family
    x = results.data()
    seed = stream_seed(0, "jobs/eval/1")
    rescored = lvm.nelbo(
        results.model, results.posterior.select(slice(4, 6)), x[4:], num_samples=3, seed=seed
    )
    column = "nelbo_amortized" if refiner == "amortized" else "nelbo_5"
    assert torch.equal(rescored, results.column(column)[4:].float())
    if refiner == "amortized":  # stored as the encoder's Gaussian at each datapoint
        loc, _ = results.model.encode(x)["z"]
        assert torch.allclose(results.posterior.loc["z"], loc)


def test_load_results_of_an_unfinished_job_says_how_to_finish(tmp_path, images, tiny):
    np.save(tmp_path / "a.npy", as_uint8(images[:8]))
    out = tmp_path / "out"
    args = ["--model", tiny, "--data", tmp_path / "a.npy", "--output", out, "--shard-size", "4"]
    assert lvm_run("refine", *args, *FAST).exit_code == 0
    (out / "summary.json").unlink()
    (out / "shards" / "00001.jsonl").unlink()
    with pytest.raises(LvmError, match="finished 1 of 2 shards; run the same command again"):
        lvm.load_results(out)
    with pytest.raises(LvmError, match="not a results folder"):
        lvm.load_results(tmp_path)


# --- resume -----------------------------------------------------------------------------------


def test_an_interrupted_job_resumes_to_the_results_of_a_clean_run(
    tmp_path, images, tiny, monkeypatch
):
    np.save(tmp_path / "a.npy", as_uint8(images[:20]))
    common = ["--model", tiny, "--data", tmp_path / "a.npy", "--shard-size", "6", *FAST]
    clean = lvm_run("refine", *common, "--output", tmp_path / "clean", "--json")
    assert clean.exit_code == 0, clean.output

    from lvmtoolkit.jobs.runner import RefineJob

    real = RefineJob.run_shard

    def interrupted(self, shard):
        if shard == 2:
            raise KeyboardInterrupt
        return real(self, shard)

    monkeypatch.setattr(RefineJob, "run_shard", interrupted)
    stopped = lvm_run("refine", *common, "--output", tmp_path / "resumed")
    assert stopped.exit_code == 130
    assert not (tmp_path / "resumed" / "summary.json").exists()
    # A half-written file from a killed run is cleaned up on resume.
    (tmp_path / "resumed" / "shards" / ".00002.jsonl.abc.tmp").write_text("{")
    monkeypatch.setattr(RefineJob, "run_shard", real)
    resumed = lvm_run("refine", *common, "--output", tmp_path / "resumed", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming: 2 of 4 shards already done" in resumed.stderr
    assert resumed.stdout == clean.stdout
    assert shard_files(tmp_path / "resumed") == shard_files(tmp_path / "clean")


def test_a_shard_does_not_depend_on_which_run_or_process_computed_it(tmp_path, images, tiny):
    """Each shard's noise comes from the job's seeds and the shard index alone."""
    np.save(tmp_path / "a.npy", as_uint8(images[:12]))
    common = ["--model", tiny, "--data", tmp_path / "a.npy", "--shard-size", "4", *FAST]
    assert lvm_run("refine", *common, "--output", tmp_path / "a").exit_code == 0
    folder = ResultsFolder(tmp_path / "a")
    assert folder.read_table(0)[0]["nelbo_5"] != folder.read_table(1)[0]["nelbo_5"]
    # Delete shard 1 only; the rerun recomputes it, identically.
    before = shard_files(tmp_path / "a")
    (tmp_path / "a" / "shards" / "00001.safetensors").unlink()
    (tmp_path / "a" / "summary.json").unlink()
    assert lvm_run("refine", *common, "--output", tmp_path / "a").exit_code == 0
    assert shard_files(tmp_path / "a") == before


# --- the same inputs for lvm gaps and lvm evaluate ---------------------------------------------


def test_gaps_and_evaluate_take_data_and_model(tmp_path, images, tiny):
    np.save(tmp_path / "a.npy", as_uint8(images[:10]))
    inputs = ["--model", tiny, "--data", tmp_path / "a.npy", "--num-images", "4", "--threads", "1"]
    gaps = lvm_run(
        "gaps", *inputs, "--steps", "1", "--iwae-samples", "5", "--eval-samples", "2",
        "--round-steps", "2", "--max-steps", "4", "--json",
    )  # fmt: skip
    assert gaps.exit_code == 0, gaps.output
    report = json.loads(gaps.stdout)
    assert list(report["results"]) == ["data"] and report["results"]["data"]["num_images"] == 4
    evaluate = lvm_run(
        "evaluate", "inpaint", *inputs, "--iterations", "1", "--refiner", "amortized",
        "--fid-features", "none", "--masks", "centre", "--json",
    )  # fmt: skip
    assert evaluate.exit_code == 0, evaluate.output
    assert list(json.loads(evaluate.stdout)["results"]) == [tiny]
    both = lvm_run("gaps", *inputs, "--dataset", "mnist-5k")
    assert both.exit_code == 1 and "not both" in both.stderr


def test_load_results_refuses_a_model_with_other_parameters(tmp_path, images, tiny):
    np.save(tmp_path / "a.npy", as_uint8(images[:4]))
    out = tmp_path / "out"
    assert (
        lvm_run(
            "refine", "--model", tiny, "--data", tmp_path / "a.npy", "--output", out, *FAST
        ).exit_code
        == 0
    )
    from lvmtoolkit.testing import make_tiny_model

    assert len(lvm.load_results(out, model=make_tiny_model())) == 4
    with pytest.raises(LvmError, match="other parameters"):
        lvm.load_results(out, model=make_tiny_model(seed=1))


def test_a_job_over_a_registered_dataset_takes_the_first_images_of_each_split(tmp_path, tiny):
    out = tmp_path / "out"
    args = ["--model", tiny, "--dataset", "mnist-5k", "--split", "test,train", "--num-images", "3"]
    result = lvm_run("refine", *args, "--output", out, *FAST, "--shard-size", "4")
    assert result.exit_code == 0, result.output
    results = lvm.load_results(out, posterior=False)
    assert [row["id"] for row in results.table] == [
        "test/0", "test/1", "test/2", "train/0", "train/1", "train/2",
    ]  # fmt: skip
    assert results.posterior is None
    # Shard 1 holds rows 4-5 (train/1, train/2), binarised as one batch by the model.
    train = lvm.get_dataset("mnist-5k")().load("train").images
    assert torch.equal(results.data()[4:], results.model.evaluation_data(train[1:3]))


def test_results_rebuild_flat_flows_at_the_width_they_were_saved_with():
    from lvm_vae.model import VAE, VAEConfig

    from lvmtoolkit.jobs.results import build_posterior_skeleton

    model = VAE(VAEConfig(hidden=(8,), latent_dim=50)).eval()
    builder = {"structure": "hierarchical", "num_flows": 1, "flow_hidden": 4}
    # saved before flat flows were narrowed: no entry, the full width of 4 per dimension
    assert build_posterior_skeleton(model, builder, 2).flows["z"][0].w1.shape[1] == 200
    narrowed = build_posterior_skeleton(model, {**builder, "max_flat_weights": 1200}, 2)
    assert narrowed.flows["z"][0].w1.shape[1] == 8
    # a refiner without the option used make_local_posterior's default
    default = build_posterior_skeleton(model, {**builder, "max_flat_weights": None}, 2)
    assert default.flows["z"][0].w1.shape[1] == 8


def test_a_jobs_identity_records_the_chunk_size_the_backend_resolves_to(tmp_path, images, tiny):
    """svi's chunk_size 0 means the backend's own; the job records the size itself, so a
    folder made when the default was a fixed 1,024 still resumes on a 1,024 backend."""
    np.save(tmp_path / "a.npy", as_uint8(images[:4]))
    common = ["--model", tiny, "--data", tmp_path / "a.npy", *FAST]
    assert lvm_run("refine", *common, "--output", tmp_path / "a").exit_code == 0
    assert (
        lvm_run("refine", *common, "-o", "chunk_size=1024", "--output", tmp_path / "b").exit_code
        == 0
    )
    manifests = [ResultsFolder(tmp_path / name).read_manifest() for name in ("a", "b")]
    options = [m["job"]["refiner"]["options"] for m in manifests]
    assert options[0]["chunk_size"] == options[1]["chunk_size"] == 1024
    assert manifests[0]["identity"] == manifests[1]["identity"]
