"""Paired SSIM difference between two option sets of a restoration refiner, or two models.

Restores the same corrupted digits twice with conditional inference, once with refiner
options A and once with options B (each given over the restoration defaults; with
``--checkpoint-b``, B also restores with that model), and reports
the per-image SSIM difference B - A: its mean, the standard error of that mean (paired:
the images' own difficulty cancels) and the fraction of images on which B is better. This
is the measurement behind a default chosen between two settings; an unpaired comparison
of two rows of docs/results/restoration.md carries each row's full spread and cannot
resolve differences of 0.01.

Images and corruption follow ``lvm evaluate``: the first ``--num`` images of the split,
binarised with the fixed evaluation seed for models of binary data, corrupted with the
evaluation's seed.

Usage:
    python scripts/paired_refiner_difference.py --backend nvae --dataset mnist-5k \
        --kind gaussian:variance=0.5 --a "gradient=stl" --b "gradient=reparam" --num 200
    python scripts/paired_refiner_difference.py --dataset mnist --data-dir ../shared/data/mnist \
        --kind centre --b "steps=1000" --num 50
    python scripts/paired_refiner_difference.py --backend nvae-flow --dataset mnist \
        --data-dir ../shared/data/mnist --checkpoint-b runs/nvae-flow-150-epochs --num 200
    python scripts/paired_refiner_difference.py --stored \
        docs/results/data/paired-longer-training-nvae-flow.json:b \
        docs/results/data/paired-more-digits-13k-vs-bundled-nvae-flow.json:b
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from lvmtoolkit.core.provenance import refuse_scoring_training_images
from lvmtoolkit.data import binarize_fixed
from lvmtoolkit.errors import LvmError
from lvmtoolkit.metrics.ssim import ssim
from lvmtoolkit.plugins import get_backend, get_dataset, load_checkpoint
from lvmtoolkit.tasks import MASK_KINDS
from lvmtoolkit.tasks.evaluation import corrupt, observation_of
from lvmtoolkit.tasks.restoration import restoration_refiner, restore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="vae")
    parser.add_argument("--checkpoint", help="checkpoint folder (default: the bundled one)")
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--data-dir", help="folder of the dataset's files (mnist: IDX .gz)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num", type=int, default=200, help="images: the first N of the split")
    parser.add_argument("--kind", default="gaussian:variance=0.5", help="mask kind or noise model")
    parser.add_argument("--refiner", default="svi")
    parser.add_argument("--a", default="", help="options A, KEY=VALUE,... (default: none)")
    parser.add_argument("--b", default="", help="options B, KEY=VALUE,... (default: none)")
    parser.add_argument("--checkpoint-b", help="B's checkpoint folder (default: A's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the per-image SSIMs and the summary here")
    parser.add_argument(
        "--stored",
        nargs=2,
        metavar="FILE:COLUMN",
        help="restore nothing: pair two columns (a or b) of JSON files this script wrote "
        "with --json; both must score the same images under the same kind",
    )
    args = parser.parse_args()
    if args.stored:
        _pair_stored(*args.stored)
        return
    if args.num < 2:
        raise SystemExit(f"--num must be at least 2 for a standard error, got {args.num}")
    torch.set_num_threads(args.threads)

    path = args.checkpoint or get_backend(args.backend).default_checkpoint()
    if path is None:
        raise SystemExit(f"{args.backend} ships no checkpoint; give --checkpoint")
    model = load_checkpoint(path, backend=args.backend).eval()
    path_b = args.checkpoint_b or path
    model_b = load_checkpoint(path_b, backend=args.backend).eval() if args.checkpoint_b else model
    if not args.checkpoint_b and args.a == args.b:
        raise SystemExit("A and B are the same: give --b or --checkpoint-b")
    dataset = (
        get_dataset(args.dataset)(args.data_dir) if args.data_dir else get_dataset(args.dataset)()
    )
    images = dataset.load(args.split).images[: args.num]
    for where, loaded in ((path, model), (path_b, model_b)):
        refuse_scoring_training_images(
            loaded.checkpoint_info, args.dataset, args.split, images.shape[0], str(where)
        )
    clean = binarize_fixed(images) if getattr(model, "binary_data", True) else images
    task = "inpaint" if args.kind in MASK_KINDS else "denoise"
    observation = observation_of(task, args.kind)
    data = corrupt(task, args.kind, clean)

    scores, seconds = {}, {}
    for label, spec, restorer in (("a", args.a, model), ("b", args.b, model_b)):
        pairs = [pair for pair in spec.split(",") if pair]
        if any("=" not in pair for pair in pairs):
            raise SystemExit(f"--{label}: expected KEY=VALUE,..., got {spec!r}")
        # Values stay text: the refiner's options class converts and checks them.
        options = dict(pair.split("=", 1) for pair in pairs)
        refiner = restoration_refiner(args.refiner, **options)
        started = time.perf_counter()
        restored = restore(
            restorer, data.corrupted, observation, mask=data.observed, refiner=refiner
        )
        seconds[label] = time.perf_counter() - started
        scores[label] = ssim(restored.images, clean)
    summary = {
        "backend": args.backend,
        "checkpoint": str(path),
        "checkpoint_b": str(path_b),
        "images": f"first {args.num} of {args.dataset} {args.split}",
        "kind": args.kind,
        "refiner": args.refiner,
        "a": args.a,
        "b": args.b,
        **_paired(scores["a"], scores["b"]),
        "seconds_a": round(seconds["a"], 1),
        "seconds_b": round(seconds["b"], 1),
    }
    model_b_note = f", {path_b}" if args.checkpoint_b else ""
    print(
        f"{args.backend} {args.kind} n={args.num}: A ({args.a or 'defaults'}) "
        f"{summary['ssim_a']:.4f}, B ({args.b or 'defaults'}{model_b_note}) "
        f"{summary['ssim_b']:.4f}; "
        f"B - A = {summary['b_minus_a']:+.4f} ± {summary['paired_sem']:.4f} (paired sem); "
        f"B better on {summary['b_better_on']:.2f} of images"
    )
    if args.json:
        per_image = {k: [round(v, 5) for v in s.tolist()] for k, s in scores.items()}
        with open(args.json, "w") as out:
            json.dump({**summary, "per_image_ssim": per_image}, out, indent=1)


def _paired(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Means of A and B, the mean of B - A per image with its standard error, and the
    fraction of images on which B is better."""
    difference = b - a
    return {
        "ssim_a": round(a.mean().item(), 4),
        "ssim_b": round(b.mean().item(), 4),
        "b_minus_a": round(difference.mean().item(), 4),
        "paired_sem": round(difference.std().item() / math.sqrt(difference.numel()), 4),
        "b_better_on": round((difference > 0).float().mean().item(), 3),
    }


def stored_difference(spec_a: str, spec_b: str) -> dict[str, float | str]:
    """The paired difference B - A of two stored per-image columns, ``FILE:a`` or ``FILE:b``
    of files this script wrote with ``--json``: the summary's numbers, and the images and
    kind both runs scored (refused if they differ)."""
    runs, columns = [], []
    for spec in (spec_a, spec_b):
        path, _, column = spec.rpartition(":")
        if not path or column not in ("a", "b"):
            raise SystemExit(f"--stored: expected FILE:a or FILE:b, got {spec!r}")
        try:
            with open(path) as file:
                run = json.load(file)
            values = run["per_image_ssim"][column]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SystemExit(f"--stored: {path} is not a JSON this script wrote: {err}") from None
        runs.append(run)
        columns.append(torch.tensor(values, dtype=torch.float64))
    # Pairing images that differ would report a difference between digits, not methods.
    for key in ("images", "kind"):
        if runs[0].get(key) != runs[1].get(key):
            raise SystemExit(
                f"--stored: the runs differ in {key}: {runs[0].get(key)!r} and {runs[1].get(key)!r}"
            )
    if columns[0].shape != columns[1].shape or columns[0].numel() < 2:
        raise SystemExit(
            f"--stored: {columns[0].numel()} and {columns[1].numel()} per-image SSIMs; "
            "need the same number, at least 2"
        )
    return {"images": runs[0]["images"], "kind": runs[0]["kind"], **_paired(*columns)}


def _pair_stored(spec_a: str, spec_b: str) -> None:
    """Print the paired difference of two stored per-image columns, B - A."""
    summary = stored_difference(spec_a, spec_b)
    print(
        f"{summary['kind']}, {summary['images']}: A ({spec_a}) {summary['ssim_a']:.4f}, "
        f"B ({spec_b}) {summary['ssim_b']:.4f}; B - A = {summary['b_minus_a']:+.4f} ± "
        f"{summary['paired_sem']:.4f} (paired sem); B better on {summary['b_better_on']:.2f} "
        "of images"
    )


if __name__ == "__main__":
    try:
        main()
    except LvmError as err:
        raise SystemExit(f"error: {err}") from None
