"""Datasets: the bundled ``mnist-5k`` and the full ``mnist`` / ``fashion-mnist``.

This module is a default plugin of the core: it registers the built-in datasets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lvmtoolkit.data.base import (
    EVAL_BINARIZATION_SEED,
    Dataset,
    ImageData,
    binarize_dynamic,
    binarize_fixed,
)
from lvmtoolkit.data.idx import FashionMnist, Mnist, read_idx
from lvmtoolkit.data.mnist5k import Mnist5k
from lvmtoolkit.hookspecs import hookimpl

__all__ = [
    "EVAL_BINARIZATION_SEED",
    "Dataset",
    "FashionMnist",
    "ImageData",
    "Mnist",
    "Mnist5k",
    "binarize_dynamic",
    "binarize_fixed",
    "read_idx",
]


@hookimpl
def register_datasets(register: Callable[[Any], None]) -> None:
    register(Mnist5k)
    register(Mnist)
    register(FashionMnist)
