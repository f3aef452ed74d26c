"""NELBO and IWAE-k of every installed backend's bundled checkpoint on the same test images.

Usage:
    python examples/compare_likelihoods.py --data-dir ../shared/data/mnist \\
        --backends vae,gmvae,nvae --num-nelbo 1000 --num-iwae 100 --iwae-samples 1000
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lvmtoolkit.metrics import iwae_bound, nelbo
from lvmtoolkit.plugins import get_backend, get_dataset, load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="vae,gmvae")
    parser.add_argument("--data-dir", default=None, help="MNIST IDX folder (else mnist-5k)")
    parser.add_argument("--num-nelbo", type=int, default=1000)
    parser.add_argument("--nelbo-samples", type=int, default=16)
    parser.add_argument("--num-iwae", type=int, default=100)
    parser.add_argument("--iwae-samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.data_dir:
        images = get_dataset("mnist")(args.data_dir).load("test").images
        source = "official MNIST test set"
    else:
        images, source = get_dataset("mnist-5k")().load("test").images, "mnist-5k test split"
    rows = {}
    for name in args.backends.split(","):
        model = load_checkpoint(get_backend(name).default_checkpoint())
        start = time.perf_counter()
        x = model.evaluation_data(images[: max(args.num_nelbo, args.num_iwae)])
        q = model.amortized_posterior()
        value = nelbo(model, q, x[: args.num_nelbo], num_samples=args.nelbo_samples, seed=0)
        iwae = -iwae_bound(model, q, x[: args.num_iwae], num_samples=args.iwae_samples, seed=1)
        rows[name] = {
            "nelbo": value.mean().item(),
            "nelbo_on_iwae_images": value[: args.num_iwae].mean().item(),
            "neg_iwae": iwae.mean().item(),
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(name, rows[name], flush=True)
    report = {
        "data": source,
        "nelbo": f"first {args.num_nelbo} images, {args.nelbo_samples} samples, amortized",
        "iwae": f"first {args.num_iwae} images, IWAE-{args.iwae_samples}, amortized proposal",
        "binarization": "fixed, seed 1234",
        "results": rows,
    }
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
