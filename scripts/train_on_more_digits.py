"""Train a backend on more MNIST digits than mnist-5k's 4,000, none of them evaluated.

The bundled checkpoints were trained on the 4,000 digits of the mnist-5k train split, all
the MNIST *training* digits this machine has offline. The restoration tables
(docs/results/restoration.md) score the first 1,000 digits of the official test set. The
other 9,000 official test digits are never scored, so a model may learn from them without
seeing one evaluated digit. This script trains on

    mnist-5k train (4,000)  +  official test digits ``--skip-first`` ... 9,999

(13,000 digits with the default ``--skip-first 1000``), reports the held-out NELBO on the
mnist-5k test split (as ``lvm train`` does) and writes a checkpoint that ``lvm evaluate
--checkpoint`` reads. The checkpoint's data description names both sources and the
excluded range, so the model cannot later pass for one trained on MNIST's train split.
It answers one question: does more training data lift the restoration bar? Such a model
is a study, not a release: it must never be scored on official test digits it was trained
on, which is every one from ``--skip-first`` on.

The script refuses to start if any digit of the excluded range also occurs in the training
images (by exact pixel match).

Usage:
    python scripts/train_on_more_digits.py --data-dir ../shared/data/mnist \
        --backend nvae-flow --epochs 46 --threads 1 -o runs/nvae-flow-13k
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from lvmtoolkit.core.checkpoint import WEIGHTS_FILE, save_checkpoint
from lvmtoolkit.core.provenance import TRAINED_ON, image_range
from lvmtoolkit.core.runtime import set_threads
from lvmtoolkit.core.training import held_out_nelbo, train
from lvmtoolkit.plugins import get_backend, get_dataset


def _digest(image: torch.Tensor) -> str:
    return hashlib.sha1((image * 255).round().to(torch.uint8).numpy().tobytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder with the MNIST test IDX files")
    parser.add_argument("--backend", default="nvae-flow", help="backend to train")
    parser.add_argument(
        "--skip-first",
        type=int,
        default=1000,
        help="official test digits kept out of training (the ones the tables score)",
    )
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-o", "--output", required=True, type=Path)
    args = parser.parse_args()
    if (args.output / WEIGHTS_FILE).exists():
        raise SystemExit(f"{args.output} already holds a checkpoint; choose another folder")
    set_threads(args.threads)

    five_k = get_dataset("mnist-5k")()
    official = get_dataset("mnist")(args.data_dir).load("test").images
    if not 0 < args.skip_first < official.shape[0]:
        raise SystemExit(f"--skip-first must be in 1..{official.shape[0] - 1}")
    five_k_train = five_k.load("train").images
    training = torch.cat([five_k_train, official[args.skip_first :]])
    excluded = {_digest(image) for image in official[: args.skip_first]}
    leaked = sum(_digest(image) in excluded for image in training)
    if leaked:
        raise SystemExit(f"{leaked} training digits equal one of the excluded test digits")

    backend = get_backend(args.backend)
    torch.manual_seed(args.seed)
    model = backend()
    start = time.perf_counter()

    def progress(epoch: int, total: int, loss: float) -> None:
        if epoch % 5 == 0 or epoch == total:
            elapsed = time.perf_counter() - start
            print(f"epoch {epoch}/{total} NELBO {loss:.2f} ({elapsed / 60:.1f} min)", flush=True)

    summary = train(model, training, epochs=args.epochs, seed=args.seed, progress=progress)
    scored = held_out_nelbo(model, five_k.load("test").images)
    summary["test_nelbo"] = scored["nelbo"]
    summary["eval_protocol"] = f"mnist-5k test split: {scored['eval_protocol']}"
    description = {
        "dataset": "mnist-5k train + official MNIST test",
        "split": f"mnist-5k train, official test digits {args.skip_first}-{official.shape[0] - 1}",
        "excluded": f"official test digits 0-{args.skip_first - 1} (never trained on)",
        "size": int(training.shape[0]),
        # Machine-readable: `lvm evaluate` refuses to score these digits with this model.
        TRAINED_ON: [
            image_range("mnist-5k", "train", 0, five_k_train.shape[0]),
            image_range("mnist", "test", args.skip_first, official.shape[0]),
        ],
        "binarization": summary["binarization"],
    }
    path = save_checkpoint(model, args.output, data=description, training=summary)
    print(json.dumps({"checkpoint": str(path), "data": description, "training": summary}))


if __name__ == "__main__":
    main()
