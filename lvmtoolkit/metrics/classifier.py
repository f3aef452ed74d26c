"""A small MNIST classifier whose penultimate layer is an offline FID feature extractor.

FID with Inception features needs pytorch-fid's Inception weights (about 95 MB, fetched on
first use). Where they cannot be had, FID can be computed on the 64 features of this
classifier instead. Its values are *not* comparable with Inception FIDs, and are always
reported under their own name, "FID (MNIST-classifier features)".

The shipped weights (``weights/mnist-classifier.safetensors``, 0.46 MB) were trained with
``lvm evaluate train-classifier`` (see its help); the training summary, including test
accuracy, is stored in the file's header.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn
from torch.nn import functional as F

from lvmtoolkit.errors import MetricError

WEIGHTS = Path(__file__).parent / "weights" / "mnist-classifier.safetensors"
"""The classifier shipped with the package."""

FEATURES = 64
_METADATA_KEY = "lvmtoolkit-classifier"


class MnistClassifier(nn.Module):
    """conv(16, 5x5) - pool - conv(32, 5x5) - pool - linear(64) - linear(10), ReLU.

    `features` returns the 64 activations before the last layer (as FID uses
    Inception's last pooling layer).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)
        self.hidden = nn.Linear(32 * 7 * 7, FEATURES)
        self.out = nn.Linear(FEATURES, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 28, 28)`` images in [0, 1] -> ``(N, 64)`` features."""
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.hidden(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, ``(N, 10)``."""
        return self.out(self.features(x))


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels; half the images binarised, as models' inputs are."""
    n = images.shape[0]
    padded = F.pad(images, (2, 2, 2, 2))
    dy, dx = torch.randint(0, 5, (2, n), generator=generator)
    shifted = torch.stack([padded[i, :, dy[i] : dy[i] + 28, dx[i] : dx[i] + 28] for i in range(n)])
    binary = torch.bernoulli(shifted, generator=generator)
    pick = torch.rand(n, 1, 1, 1, generator=generator) < 0.5
    return torch.where(pick, binary, shifted)


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[MnistClassifier, dict[str, Any]]:
    """Train the classifier with Adam on cross-entropy, with shift and binarisation noise.

    Args:
        images: ``(N, 1, 28, 28)`` grey-level digits in [0, 1].
        labels: ``(N,)`` integer classes 0-9.
        epochs: Passes over the data.
        batch_size: Images per step.
        lr: Adam learning rate.
        seed: Seed of initialisation, shuffling and augmentation.
        progress: Called as ``progress(epoch, epochs, mean_loss)`` after each epoch.

    Returns:
        The trained classifier (eval mode) and a training summary.
    """
    if images.shape[1:] != (1, 28, 28) or labels.shape != images.shape[:1]:
        raise MetricError(
            f"the classifier trains on (N, 1, 28, 28) digits with N labels, got "
            f"{tuple(images.shape)} and {tuple(labels.shape)}"
        )
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = MnistClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    started = time.perf_counter()
    mean_loss = math.nan
    model.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(images.shape[0], generator=generator)
        total = 0.0
        for begin in range(0, images.shape[0], batch_size):
            index = order[begin : begin + batch_size]
            loss = F.cross_entropy(model(_augment(images[index], generator)), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * index.numel()
        mean_loss = total / images.shape[0]
        if progress is not None:
            progress(epoch, epochs, mean_loss)
    model.eval()
    summary = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "train_images": int(images.shape[0]),
        "final_train_loss": round(mean_loss, 4),
        "seconds": round(time.perf_counter() - started, 1),
        "augmentation": "shifts of up to 2 pixels; half the images binarised",
    }
    return model, summary


@torch.no_grad()
def accuracy(model: MnistClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` classified as ``labels``."""
    predictions = torch.cat([model(part).argmax(1) for part in images.split(1000)])
    return float((predictions == labels).float().mean())


def save_classifier(model: MnistClassifier, path: str | Path, info: dict[str, Any]) -> Path:
    """Write the weights as safetensors with ``info`` (JSON) in the header, atomically."""
    from safetensors.torch import save_file

    from lvmtoolkit.images import atomic_write

    path = Path(path)
    if not path.parent.is_dir():
        raise MetricError(f"cannot write {path}: folder {path.parent} does not exist")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {_METADATA_KEY: json.dumps(info, sort_keys=True)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_classifier(path: str | Path | None = None) -> tuple[MnistClassifier, dict[str, Any]]:
    """Load a classifier (the shipped one by default) and the summary in its header.

    Raises:
        MetricError: Missing or unreadable file, or weights of another architecture.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else WEIGHTS
    if not path.is_file():
        raise MetricError(
            f"MNIST-classifier weights {path} not found; train them with "
            "`lvm evaluate train-classifier -o PATH`"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise MetricError(f"{path} is not a readable safetensors file: {err}") from None
    model = MnistClassifier()
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise MetricError(f"{path} does not hold MnistClassifier weights") from None
    try:
        info = json.loads(header.get(_METADATA_KEY, "{}"))
    except json.JSONDecodeError:
        info = {}
    return model.eval(), info
