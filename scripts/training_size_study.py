"""How denoising quality grows with the data the model was trained on.

Trains a backend's default architecture (``--backend``, the VAE by default: 784-300-300,
z = 10; 100 epochs, batch 100, Adam 1e-3) on the first N digits of the mnist-5k training
split, for several N, and scores conditional svi denoising (Gaussian noise of variance
0.5, clipped) on the first ``--num-images`` official MNIST test digits: SSIM of the
posterior mean, as on docs/results/restoration.md. It asks whether the restoration bar is
limited by the models this machine can train (on at most 4,000 digits offline) rather
than by inference.

Usage:
    python scripts/training_size_study.py --data-dir ../shared/data/mnist [--sizes 1000,2000,4000]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lvmtoolkit.core.training import train
from lvmtoolkit.plugins import get_backend, get_dataset
from lvmtoolkit.tasks.evaluation import evaluate_restoration, restoration_refiners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder with the MNIST test IDX files")
    parser.add_argument("--sizes", default="1000,2000,4000", help="training-set sizes")
    parser.add_argument("--num-images", type=int, default=200, help="test digits to denoise")
    parser.add_argument("--backend", default="vae", help="backend whose architecture is trained")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    training = get_dataset("mnist-5k")().load("train").images
    test = get_dataset("mnist")(args.data_dir).load("test").images[: args.num_images]
    backend = get_backend(args.backend)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        if size > training.shape[0]:
            raise SystemExit(f"--sizes: {size} > the {training.shape[0]} training digits")
        torch.manual_seed(0)
        model = backend()
        start = time.perf_counter()
        summary = train(model, training[:size], epochs=args.epochs, seed=0)
        trained = time.perf_counter() - start
        model.eval()
        report = evaluate_restoration(
            "denoise",
            {args.backend: model},
            restoration_refiners(["svi"]),
            test,
            ["gaussian:variance=0.5"],
        )
        kind = report.results[args.backend]["gaussian:variance=0.5"]
        scores = kind["methods"]["conditional"]["svi"]
        row = {
            "training_digits": size,
            "train_nelbo": round(summary["final_train_nelbo"], 2),
            "ssim": scores["ssim"],
            "ssim_sem": scores["ssim_sem"],
            "nll": scores["nll"],
            "train_seconds": round(trained, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {"backend": args.backend, "test_digits": args.num_images, "epochs": args.epochs}
    print(json.dumps({**summary, "rows": rows}))


if __name__ == "__main__":
    main()
