"""The measurement behind the restoration defaults (method, svi steps), on held-out digits.

Restores the first ``--num`` digits of the mnist-5k *test* split (not the official MNIST
test set, on which Table 3 is reported; mnist-5k digits come from MNIST's training set and
the bundled models were trained on the 4,000 of its train split) under each corruption,
with

* ``conditional`` and the ``amortized`` refiner, and with ``svi`` under each option set of
  ``--variants`` (``;``-separated, each ``KEY=VALUE,...``, given over `restoration_refiner`'s
  defaults),
* ``importance`` and ``mwg`` with the ``svi`` posterior of the defaults,
* the paper's ``pseudo-gibbs`` chain with ``svi`` (its per-iteration defaults),

and prints SSIM, the conditional NLL and seconds per image (restoration only) for each, as
a Markdown table per corruption. `lvmtoolkit.tasks.evaluation.evaluate_restoration` does
the work; refiners are given as labelled variants of ``svi``.

Usage:
    python benchmarks/restoration_defaults.py [--backend vae] [--num 200] [--threads 1]
    python benchmarks/restoration_defaults.py --backend nvae --num 30 --kinds gaussian \
        --variants "lr=0.05,lr_scaling=dimension;lr=0.05;lr=0.2;steps=1000" --samplers none
    python benchmarks/restoration_defaults.py --num 8 --variants "steps=10" --kinds gaussian
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lvmtoolkit.plugins import get_backend, get_dataset, load_checkpoint
from lvmtoolkit.tasks import restoration_refiner
from lvmtoolkit.tasks.evaluation import evaluate_restoration
from lvmtoolkit.tasks.gibbs import gibbs_refiner

KINDS = {
    "centre": "inpaint",
    "half": "inpaint",
    "gaussian": "denoise",
    "salt-pepper": "denoise",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="vae")
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument(
        "--variants",
        default="steps=100;steps=300,lr=0.05;steps=300;steps=1000",
        help="svi option sets to compare, ';'-separated",
    )
    parser.add_argument(
        "--samplers", default="importance,mwg,pseudo-gibbs", help="'none' for conditional only"
    )
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--nll-samples", type=int, default=256)
    parser.add_argument("--chain-iterations", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the reports to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_checkpoint(get_backend(args.backend).default_checkpoint(), backend=args.backend)
    images = get_dataset("mnist-5k")().load("test").images[: args.num]
    variants_text = [v.strip() for v in args.variants.split(";") if v.strip()]
    samplers = [] if args.samplers == "none" else args.samplers.split(",")
    reports = {}
    for kind in args.kinds.split(","):
        task = KINDS[kind]
        common = {
            "images_label": f"first {args.num} of the mnist-5k test split",
            "nll_samples": args.nll_samples,
        }
        variants = {"amortized": restoration_refiner("amortized")}
        for text in variants_text:
            options = dict(pair.split("=", 1) for pair in text.split(","))
            variants[f"svi, {text}"] = restoration_refiner("svi", **options)
        runs = [
            evaluate_restoration(task, {args.backend: model}, variants, images, [kind], **common)
        ]
        chosen = {"svi (defaults)": restoration_refiner("svi")}
        methods = [m for m in samplers if m != "pseudo-gibbs"]
        if methods:
            runs.append(
                evaluate_restoration(
                    task,
                    {args.backend: model},
                    chosen,
                    images,
                    [kind],
                    methods=methods,
                    **common,
                )
            )
        if "pseudo-gibbs" in samplers:
            runs.append(
                evaluate_restoration(
                    task,
                    {args.backend: model},
                    {"svi": restoration_refiner("svi")},
                    images,
                    [kind],
                    methods=["pseudo-gibbs"],
                    chain_refiners={"svi": gibbs_refiner("svi")},
                    iterations=args.chain_iterations,
                    **common,
                )
            )
        rows = []
        for report in runs:
            entry = report.results[args.backend][kind]
            for method, by_refiner in entry["methods"].items():
                for label, row in by_refiner.items():
                    rows.append((method, label, row))
        corrupted = runs[0].results[args.backend][kind]["corrupted"]
        reports[kind] = {"corrupted": corrupted, "rows": rows}
        print(f"\n**{kind}** ({args.backend}, {args.num} digits; input SSIM "
              f"{corrupted['ssim']:.4f})\n")  # fmt: skip
        print("| method | refiner | SSIM | NLL | s / image |")
        print("|---|---|---:|---:|---:|")
        for method, label, row in rows:
            print(
                f"| {method} | {label} | {row['ssim']:.4f} ± {row['ssim_sem']:.4f} | "
                f"{row['nll']:.2f} | {row['seconds_per_image']:.4f} |",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
