"""Kill tests (issue 13, class 3): SIGINT, SIGTERM or SIGKILL at a random moment of
`lvm inpaint -o` and `lvm train -o` never leaves a partial output, and an existing output
stays intact unless the run completed. A killed `lvm refine --output` job leaves no lock
that blocks its resume (issue 31).

Real processes, real signals. The moments are drawn from a seeded generator, so a failure
reproduces. SIGKILL cannot be handled: it may leave a hidden temporary file next to the
outputs, but never a partial file under an output's name.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]


def start(*args: object) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lvmtoolkit", *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_at(process: subprocess.Popen, seconds: float, signum: int) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    if process.poll() is None:
        process.send_signal(signum)
    process.communicate(timeout=300)
    return process.returncode


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".old")))


@pytest.fixture(scope="module")
def digits(tmp_path_factory, mnist5k_test_images):
    folder = tmp_path_factory.mktemp("digits")
    for i in range(24):
        pixels = np.rint(mnist5k_test_images[i, 0].numpy() * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((56, 56)).save(folder / f"d{i:02d}.png")
    mask = np.zeros((56, 56), dtype=np.uint8)
    mask[20:36] = 255
    Image.fromarray(mask).save(folder.parent / "mask.png")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("moment", [0, 1])
def test_inpaint_outputs_are_all_old_or_all_new(tmp_path, digits, signum, moment):
    out = tmp_path / "out"
    out.mkdir()
    old = {}
    for path in sorted(digits.iterdir()):  # an earlier run's outputs, to be kept intact
        (out / path.name).write_bytes(b"old " + path.name.encode())
        old[path.name] = (out / path.name).read_bytes()
    seconds = random.Random(f"inpaint-{signum}-{moment}").uniform(2.5, 7.0)
    process = start(
        "inpaint", digits, "--mask", digits.parent / "mask.png", "-o", out, "--iterations", 40
    )
    code = kill_at(process, seconds, signum)
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert names == set(old)
    current = {name: (out / name).read_bytes() for name in names}
    replaced = {name for name in names if current[name] != old[name]}
    for name in replaced:  # a replaced output is always a new, complete image
        with Image.open(out / name) as image:
            assert image.size == (56, 56)
    if code == 0:
        assert replaced == names
    elif signum != signal.SIGKILL:
        # Ctrl-C and SIGTERM are held during the renames: all outputs or none.
        assert replaced in (set(), names), f"killed (exit {code}) with {replaced} replaced"
    if signum != signal.SIGKILL:
        assert leftovers(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_train_keeps_the_old_checkpoint_unless_it_completes(tmp_path, signum):
    from lvmtoolkit.plugins import load_checkpoint

    output = tmp_path / "ckpt"
    first = start(
        "train", "-c", "hidden=[8]", "-c", "latent_dim=2", "--epochs", 1, "--eval-split", "",
        "-o", output,
    )  # fmt: skip
    assert first.wait(timeout=300) == 0, first.stderr.read()
    old = {p.name: p.read_bytes() for p in output.iterdir()}
    seconds = random.Random(f"train-{signum}").uniform(3.0, 8.0)
    process = start(
        "train", "-c", "hidden=[8]", "-c", "latent_dim=2", "--epochs", 3, "--seed", 1,
        "--eval-split", "", "-o", output, "--overwrite",
    )  # fmt: skip
    code = kill_at(process, seconds, signum)
    visible = {p.name for p in output.iterdir() if not p.name.startswith(".")}
    assert visible == {"model.safetensors", "config.json"}
    model = load_checkpoint(output)  # whatever happened, the checkpoint loads
    current = {name: (output / name).read_bytes() for name in visible}
    changed = {name for name in visible if current[name] != old[name]}
    if code == 0:
        assert changed == visible and model.checkpoint_info["training"]["epochs"] == 3
    elif changed:
        # The signal landed after the new checkpoint was in place: it must be whole (both
        # files from the new run), never the new config with the old weights or back.
        assert changed == visible, f"killed (exit {code}) with only {changed} replaced"
        assert model.checkpoint_info["training"]["epochs"] == 3
    if signum != signal.SIGKILL:
        assert leftovers(output) == []


# SIGTERM exactly while an output is being written: the moment random kills rarely hit.
_TERM_DURING_WRITE = """
import os, signal, sys
import PIL.Image
import safetensors.torch

def half_then_term(real):
    def write(*args, **kwargs):
        target = args[1] if len(args) > 1 and isinstance(args[1], str) else args[0]
        with open(target if isinstance(target, str) else os.devnull, "wb") as handle:
            handle.write(b"half a file")
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)
    return write

def save(self, fp, *args, **kwargs):
    with open(fp, "wb") as handle:
        handle.write(b"half a file")
    os.kill(os.getpid(), signal.SIGTERM)

PIL.Image.Image.save = save
safetensors.torch.save_file = half_then_term(safetensors.torch.save_file)
from lvmtoolkit.cli import main
sys.argv = ["lvm", *sys.argv[1:]]
main()
"""


def test_sigterm_while_writing_leaves_nothing_behind(tmp_path, digits):
    image = sorted(digits.iterdir())[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.png").write_bytes(b"an earlier result")
    args = [image, "--mask", digits.parent / "mask.png", "-o", out / "kept.png"]
    inpaint = subprocess.run(
        [sys.executable, "-c", _TERM_DURING_WRITE, "inpaint", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert inpaint.returncode == 128 + signal.SIGTERM, inpaint.stderr
    assert sorted(p.name for p in out.iterdir()) == ["kept.png"]
    assert (out / "kept.png").read_bytes() == b"an earlier result"

    checkpoint = tmp_path / "ckpt"
    train = subprocess.run(
        [sys.executable, "-c", _TERM_DURING_WRITE, "train", "-c", "hidden=[8]", "-c",
         "latent_dim=2", "--epochs", "1", "--eval-split", "", "-o", str(checkpoint)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert train.returncode == 128 + signal.SIGTERM, train.stderr
    assert list(checkpoint.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
def test_a_killed_jobs_lock_does_not_block_its_resume(tmp_path, signum):
    """The job holds its folder's lock when it is killed; the kernel drops the lock, so
    the same command resumes (and finishes with a lone run's results)."""
    import lvmtoolkit as lvm
    from tests.test_job_integrity import job_args, same_results, start_paused
    from tests.test_jobs import as_uint8, lvm_run

    images = lvm.get_dataset("mnist-5k")().load("test").images[:12]
    data = tmp_path / "digits.npy"
    np.save(data, as_uint8(images))
    out = tmp_path / "out"
    job = start_paused(tmp_path / "go", *job_args(data, out))  # shard 0 written, lock held
    assert (out / ".lvm.lock").read_text().startswith(f"pid {job.pid} on ")
    job.send_signal(signum)
    job.communicate(timeout=60)
    assert job.returncode != 0
    if signum == signal.SIGKILL:  # no cleanup ran: the file still names the dead job
        assert (out / ".lvm.lock").read_text().startswith(f"pid {job.pid} on ")
    assert not (out / "summary.json").exists()
    resumed = lvm_run(*job_args(data, out))
    assert resumed.exit_code == 0, resumed.output
    assert "resuming: 1 of 3 shards" in resumed.stderr
    assert lvm_run(*job_args(data, tmp_path / "lone")).exit_code == 0
    same_results(out, tmp_path / "lone")
