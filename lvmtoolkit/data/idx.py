"""MNIST and Fashion-MNIST from the standard IDX files, or downloaded by torchvision.

With ``data_dir`` the loaders read ``train-images-idx3-ubyte[.gz]`` /
``t10k-images-idx3-ubyte[.gz]`` and the matching label files from that folder, as
distributed by the datasets' authors (and by Debian's ``dataset-fashion-mnist`` under
``/usr/share/datasets/fashion-mnist/``). Without it, torchvision downloads them into
``~/.cache/lvmtoolkit`` (needs network).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from lvmtoolkit.data.base import Dataset, ImageData
from lvmtoolkit.errors import DataError

_PREFIX = {"train": "train", "test": "t10k"}
_DTYPE_CODES = {0x08: np.uint8}


MAX_IDX_BYTES = 1 << 31
"""Largest IDX payload read (2 GiB; the full MNIST training images are 47 MB)."""


def read_idx(path: str | Path, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into an array.

    torchvision has a reader too, but it wants uncompressed files in its own folder layout;
    this reads the files users actually have. The header is read and checked first, then
    exactly the bytes it declares: a small gzip file that inflates to gigabytes (or a
    header that declares them) is refused without inflating more than the header says.

    Args:
        path: The file; ``.gz`` files are decompressed while reading.
        max_bytes: Refuse files whose header declares more payload bytes than this.

    Raises:
        DataError: Unreadable, not an unsigned-byte IDX file, too large, or a payload that
            does not match the header.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"cannot read {path}: not a regular file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            magic = handle.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _DTYPE_CODES:
                raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
            ndim = magic[3]
            dims = handle.read(4 * ndim)
            if ndim == 0 or len(dims) < 4 * ndim:
                raise DataError(f"{path} is truncated (IDX header)")
            shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
            count = math.prod(shape)
            if count > max_bytes:
                raise DataError(
                    f"{path}: its header declares {count:,} bytes of data, more than the "
                    f"{max_bytes:,} allowed"
                )
            raw = handle.read(count)
            if len(raw) != count or handle.read(1):
                raise DataError(
                    f"{path} holds {'fewer' if len(raw) != count else 'more'} bytes than its "
                    f"header says ({count:,})"
                )
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder} has no {stem}.gz (nor {stem})")


class IdxDataset(Dataset):
    """A 28x28 grey-level IDX dataset (MNIST layout)."""

    torchvision_class: ClassVar[str] = ""

    def load(self, split: str) -> ImageData:
        self.check_split(split)
        if self.data_dir is not None:
            if not self.data_dir.is_dir():
                raise DataError(f"--data-dir {self.data_dir} is not a folder")
            images_path = _find(self.data_dir, f"{_PREFIX[split]}-images-idx3-ubyte")
            labels_path = _find(self.data_dir, f"{_PREFIX[split]}-labels-idx1-ubyte")
            images, labels = read_idx(images_path), read_idx(labels_path)
            source = str(images_path)
        else:
            images, labels, source = self._download(split)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{source}: images have shape {images.shape}, expected (N, 28, 28)")
        if labels.shape != (images.shape[0],):
            raise DataError(f"{source}: {labels.shape[0]} labels for {images.shape[0]} images")
        tensor = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        return ImageData(
            tensor,
            torch.from_numpy(labels.astype(np.int64)),
            {"dataset": self.name, "split": split, "size": int(images.shape[0]), "source": source},
        )

    def _download(self, split: str) -> tuple[np.ndarray, np.ndarray, str]:
        import torchvision

        root = Path(os.environ.get("LVM_CACHE_DIR", Path.home() / ".cache" / "lvmtoolkit"))
        dataset_class = getattr(torchvision.datasets, self.torchvision_class)
        try:
            data = dataset_class(root=str(root), train=split == "train", download=True)
        except (OSError, RuntimeError) as err:
            raise DataError(
                f"could not download {self.name} into {root} ({err}); without network, pass "
                "--data-dir with the IDX .gz files"
            ) from None
        return data.data.numpy(), data.targets.numpy(), f"torchvision:{root}"


class Mnist(IdxDataset):
    """The full MNIST (60,000 train / 10,000 test)."""

    name = "mnist"
    description = "MNIST 60k/10k: torchvision download, or --data-dir with the IDX .gz files"
    torchvision_class = "MNIST"


class FashionMnist(IdxDataset):
    """The full Fashion-MNIST (60,000 train / 10,000 test)."""

    name = "fashion-mnist"
    description = (
        "Fashion-MNIST 60k/10k: torchvision download, or --data-dir "
        "(e.g. /usr/share/datasets/fashion-mnist)"
    )
    torchvision_class = "FashionMNIST"
