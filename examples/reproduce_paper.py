"""Reproduce Tables 1 and 2 and Figure 5 of "Improving Inference in Latent Variable Models".

NELBO on train and test data after 1, 10, 100 and 1000 SVI steps (Adam, lr 1e-3: the
paper's recipe: the ``svi-paper`` refiner) for every installed backend that ships a
checkpoint (VAE, GMVAE), printed next to the paper's numbers, plus the same with the
toolkit's default ``svi`` recipe, and a figure of NELBO against steps.

Train data: the mnist-5k train split the checkpoints were trained on. Test data: the
official MNIST test set when ``--data-dir`` points at its IDX files, else the mnist-5k
test split.

Usage:
    python examples/reproduce_paper.py --data-dir ../shared/data/mnist \\
        --out docs/results/paper-tables
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lvmtoolkit.data import EVAL_BINARIZATION_SEED, binarize_fixed
from lvmtoolkit.metrics import nelbo_after_steps
from lvmtoolkit.plugins import backends, get_dataset, get_refiner, load_checkpoint

PAPER = {  # Tables 1 and 2 of the paper: steps -> (train, test)
    "vae": {1: (99.86, 101.34), 10: (99.71, 101.16), 100: (99.07, 100.23), 1000: (96.67, 98.9)},
    "gmvae": {1: (98.43, 98.43), 10: (96.72, 98.27), 100: (95.34, 97.12), 1000: (92.2, 95.64)},
}
STEPS = (1, 10, 100, 1000)


def load_splits(data_dir: str | None, num_train: int, num_test: int):
    train = get_dataset("mnist-5k")().load("train").images[:num_train]
    if data_dir:
        test, test_name = get_dataset("mnist")(data_dir).load("test").images, "MNIST test set"
    else:
        test, test_name = get_dataset("mnist-5k")().load("test").images, "mnist-5k test split"
    return {"train": binarize_fixed(train), "test": binarize_fixed(test[:num_test])}, test_name


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=False)
    for ax, split in zip(axes, ("train", "test"), strict=True):
        for backend, runs in results.items():
            for recipe, style in (("paper", "-o"), ("default", "--s")):
                run = runs[recipe][split]
                xs = [0.5, *[int(k) for k in run["steps"]]]
                ys = [run["amortized"], *[v["nelbo"] for v in run["steps"].values()]]
                ax.plot(xs, ys, style, label=f"{backend}, {recipe} recipe", markersize=4)
        ax.set_xscale("log")
        ax.set_xticks([0.5, 1, 10, 100, 1000], ["amort.", "1", "10", "100", "1000"])
        ax.set_xlabel("SVI steps")
        ax.set_ylabel("NELBO (nats)")
        ax.set_title(f"{split} data")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder with MNIST's t10k IDX files")
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--num-test", type=int, default=10000)
    parser.add_argument("--eval-samples", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--out",
        default="docs/results/paper-tables",
        help="output prefix: writes PREFIX.json and PREFIX.png",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data, test_name = load_splits(args.data_dir, args.num_train, args.num_test)
    refiners = {"paper": get_refiner("svi-paper"), "default": get_refiner("svi")}
    results: dict = {}
    for name, reg in sorted(backends().items()):
        checkpoint = reg.obj.default_checkpoint()
        if checkpoint is None or name not in PAPER:
            continue
        model = load_checkpoint(checkpoint)
        results[name] = {}
        for recipe, refiner_class in refiners.items():
            results[name][recipe] = {}
            for split, x in data.items():
                refiner = refiner_class(steps=max(STEPS))
                results[name][recipe][split] = nelbo_after_steps(
                    model,
                    refiner,
                    x,
                    STEPS,
                    eval_samples=args.eval_samples,
                    log=lambda line, n=name, r=recipe, s=split: print(
                        f"{n} {r} {s}: {line}", flush=True
                    ),
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "protocol": {
            "train": f"mnist-5k train split, first {data['train'].shape[0]} images",
            "test": f"{test_name}, {data['test'].shape[0]} images",
            "samples_per_nelbo": args.eval_samples,
            "binarization": f"fixed, seed {EVAL_BINARIZATION_SEED}",
            "recipes": {
                recipe: {
                    k: v
                    for k, v in vars(refiner_class().options).items()
                    if k in ("optimizer", "lr", "schedule", "gradient")
                }
                for recipe, refiner_class in refiners.items()
            },
        },
        "paper": {b: {str(k): v for k, v in rows.items()} for b, rows in PAPER.items()},
        "results": results,
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot(results, out.with_suffix(".png"))
    for name, runs in results.items():
        print(
            f"\n{name}: steps | paper train / test | ours (paper recipe) train / test | "
            "ours (default recipe) train / test"
        )
        for step in ("amortized", *map(str, STEPS)):
            cells = []
            for recipe in ("paper", "default"):
                for split in ("train", "test"):
                    run = runs[recipe][split]
                    value = run["amortized"] if step == "amortized" else run["steps"][step]["nelbo"]
                    cells.append(f"{value:.2f}")
            paper = PAPER[name].get(int(step)) if step != "amortized" else None
            paper_cells = f"{paper[0]:.2f} / {paper[1]:.2f}" if paper else "- / -"
            print(f"{step:>9} | {paper_cells} | {cells[0]} / {cells[1]} | {cells[2]} / {cells[3]}")


if __name__ == "__main__":
    main()
