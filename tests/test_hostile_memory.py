"""Class 8 of issue 13: memory in proportion to the input, measured.

Each case runs in a fresh process that imports everything first, then records its peak
resident memory (``ru_maxrss``) before and after handing the hostile input to the
toolkit. Before the fix these took 1-3.5 GB; the bound asserted is 150 MB of growth, a
wide margin over what the checks themselves need (the IDX case reads the 47 MB its header
declares before finding the excess).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

LIMIT_MB = 150

_HARNESS = """
import resource, sys
import numpy, torch, PIL.Image
import lvmtoolkit, lvmtoolkit.images, lvmtoolkit.data.idx, lvmtoolkit.core.checkpoint
from lvmtoolkit.plugins import get_backend, load_checkpoint
get_backend("vae")
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
before = peak_mb()
try:
{body}
    outcome = "accepted"
except lvmtoolkit.LvmError as err:
    outcome = "refused: " + str(err)
print(round(peak_mb() - before, 1))
print(outcome)
"""


def grown_mb(body: str) -> tuple[float, str]:
    code = _HARNESS.format(body=textwrap.indent(textwrap.dedent(body), "    "))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    growth, outcome = result.stdout.strip().splitlines()[-2:]
    return float(growth), outcome


def test_a_long_thin_image_is_refused_without_padding_it_to_a_square(tmp_path):
    strip = tmp_path / "strip.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (28, 16000), dtype=np.uint8)).save(strip)
    growth, outcome = grown_mb(f"lvmtoolkit.images.load_batch([{str(strip)!r}], (1, 28, 28))")
    assert outcome.startswith("refused:") and "16000x16000" in outcome, outcome
    assert growth < LIMIT_MB, f"{growth} MB"


@pytest.mark.slow
def test_a_gzip_bomb_idx_file_is_refused_reading_only_what_its_header_declares(tmp_path):
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (60000, 28, 28))
    zeros = bytes(1 << 20)
    with gzip.open(bomb, "wb", compresslevel=1) as handle:
        handle.write(header)
        for _ in range(256):  # 256 MiB inflated, about 0.25 MB on disk
            handle.write(zeros)
    assert bomb.stat().st_size < 2 << 20
    growth, outcome = grown_mb(f"lvmtoolkit.data.idx.read_idx({str(bomb)!r})")
    assert outcome.startswith("refused:") and "more bytes than its header" in outcome, outcome
    assert growth < LIMIT_MB, f"{growth} MB"


def test_a_config_asking_for_a_huge_layer_is_refused_before_it_is_built(tmp_path):
    from lvm_vae.model import VAE, VAEConfig

    from lvmtoolkit.core.checkpoint import save_checkpoint

    torch.manual_seed(0)
    folder = save_checkpoint(VAE(VAEConfig(hidden=(8,), latent_dim=2)), tmp_path / "ckpt")
    info = json.loads((folder / "config.json").read_text())
    info["config"]["hidden"] = [300000]  # 2.4 GB of weights if built
    (folder / "config.json").write_text(json.dumps(info))
    growth, outcome = grown_mb(f"load_checkpoint({str(Path(folder))!r})")
    assert outcome.startswith("refused:") and "shape" in outcome, outcome
    assert growth < LIMIT_MB, f"{growth} MB"
