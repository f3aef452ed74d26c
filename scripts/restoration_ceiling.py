"""What SSIM can a restoration of binarised digits reach? Two references, no model.

`lvm evaluate inpaint|denoise` scores restorations against *binarised* test digits: one
Bernoulli draw per pixel from the grey digit, with a fixed seed. That draw is noise no
restoration can recover, so SSIM has a ceiling well below 1. This script measures two
references on the same digits:

- the grey original itself: what the posterior mean would be if the grey digit were known
  exactly (E[x] of each pixel's Bernoulli draw);
- another binarisation of the grey original (a second seed): what a perfect posterior
  *sample* would score.

Usage:
    python scripts/restoration_ceiling.py --data-dir ../shared/data/mnist --num-images 1000
"""

from __future__ import annotations

import argparse

import torch

from lvmtoolkit.data import binarize_fixed
from lvmtoolkit.plugins import get_dataset
from lvmtoolkit.tasks.evaluation import ssim_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7, help="seed of the second binarisation")
    args = parser.parse_args()

    grey = get_dataset(args.dataset)(args.data_dir).load(args.split).images[: args.num_images]
    clean = binarize_fixed(grey)
    other = torch.bernoulli(grey, generator=torch.Generator().manual_seed(args.seed))
    rows = {
        "grey original (the exact posterior mean, if it were known)": ssim_row(grey, clean),
        "another binarisation (a perfect posterior sample)": ssim_row(other, clean),
    }
    print(f"first {grey.shape[0]} images of {args.dataset}/{args.split}; SSIM against the")
    print("binarised digits that the evaluation scores against:")
    # Scored as `lvm evaluate` scores its rows.
    for name, row in rows.items():
        print(f"  {name:60s} {row['ssim']:.3f} ± {row['ssim_sem']:.3f}")


if __name__ == "__main__":
    main()
