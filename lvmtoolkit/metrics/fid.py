"""Fréchet distance between sets of images, on Inception or MNIST-classifier features.

Two feature extractors:

- ``inception``: pytorch-fid's Inception v3 (the network of the original TensorFlow FID,
  2048 features of the last pooling layer). Its weights are read from pytorch-fid's cache
  (``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth``, where pytorch-fid
  downloads them) or from a file given as ``weights``; they are never downloaded here, and
  are loaded with ``torch.load(weights_only=True)``. Grey images are repeated over three
  channels; pytorch-fid's network resizes them to 299x299.
- ``mnist-classifier``: 64 features of a small MNIST classifier shipped with the package
  (see `lvmtoolkit.metrics.classifier`); works offline. Its values are reported as
  "FID (MNIST-classifier features)" and are not comparable with Inception FIDs.

The distance itself is pytorch-fid's ``calculate_frechet_distance``. FID is biased upwards
for small sets, so values are comparable only between sets of the same size.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lvmtoolkit.errors import MetricError

INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    + INCEPTION_WEIGHTS_FILE
)


def inception_cache_path() -> Path:
    """Where pytorch-fid keeps its Inception weights (``torch.hub``'s checkpoint folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


class FeatureExtractor(nn.Module):
    """Maps ``(N, C, H, W)`` images in [0, 1] to ``(N, D)`` features.

    Attributes:
        name: Key used on the command line (``--fid-features``).
        label: How the resulting metric is reported, e.g. ``"FID (Inception)"``.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""


# The four blocks of pytorch_fid.inception.InceptionV3 (layers of torchvision's Inception).
_INCEPTION_BLOCKS = (
    ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool"),
    ("Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool"),
    (
        "Mixed_5b",
        "Mixed_5c",
        "Mixed_5d",
        "Mixed_6a",
        "Mixed_6b",
        "Mixed_6c",
        "Mixed_6d",
        "Mixed_6e",
    ),
    ("Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"),
)


class InceptionFeatures(FeatureExtractor):
    """pytorch-fid's FID Inception v3 up to one of its pooling layers.

    Args:
        weights: A ``.pth`` state dict of pytorch-fid's FID Inception; default: pytorch-fid's
            cache (`inception_cache_path`).
        dims: Features as pytorch-fid's ``--dims``: 2048 (last pooling layer, the standard
            FID), or 64, 192, 768 (earlier layers, averaged over space; for sets of fewer
            than 2048 images; not comparable with the standard FID).

    Raises:
        MetricError: The weights are missing, unreadable or of another network.
    """

    name = "inception"
    label = "FID (Inception)"
    BLOCK_OF_DIMS: ClassVar[dict[int, int]] = {64: 0, 192: 1, 768: 2, 2048: 3}

    def __init__(self, weights: str | Path | None = None, dims: int = 2048):
        super().__init__()
        if dims not in self.BLOCK_OF_DIMS:
            raise MetricError(
                f"Inception features have dims {', '.join(map(str, self.BLOCK_OF_DIMS))}, "
                f"not {dims}"
            )
        if dims != 2048:
            self.label = f"FID (Inception, {dims} features)"
        path = Path(weights) if weights is not None else inception_cache_path()
        if not path.is_file():
            raise MetricError(
                f"FID (Inception) needs pytorch-fid's Inception weights, not found at {path}; "
                f"download {INCEPTION_WEIGHTS_URL} where there is network and pass "
                "--fid-weights PATH (or copy it there), or use --fid-features mnist-classifier"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch.load raises many types on corrupt or unsafe files
            raise MetricError(f"{path} is not a readable weights file: {err}") from None
        network = fid_inception_network()
        try:
            network.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError):
            raise MetricError(
                f"{path} does not hold the weights of pytorch-fid's FID Inception "
                f"({INCEPTION_WEIGHTS_FILE})"
            ) from None
        layers: list[nn.Module] = []
        for block in _INCEPTION_BLOCKS[: self.BLOCK_OF_DIMS[dims] + 1]:
            for name in block:
                if name == "maxpool":
                    layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
                elif name == "avgpool":
                    layers.append(nn.AdaptiveAvgPool2d(output_size=(1, 1)))
                else:
                    layers.append(getattr(network, name))
        self.blocks = nn.Sequential(*layers)
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        # As pytorch_fid.inception.InceptionV3(resize_input=True, normalize_input=True).
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        # Earlier blocks are averaged over space, as pytorch-fid's get_activations does.
        return F.adaptive_avg_pool2d(self.blocks(2 * x - 1), (1, 1)).flatten(1)


def fid_inception_network() -> nn.Module:
    """pytorch-fid's FID Inception v3 architecture, uninitialised, without downloading.

    The same construction as ``pytorch_fid.inception.fid_inception_v3`` (torchvision's
    Inception v3 with 1008 classes and the FID-specific blocks of pytorch-fid), minus its
    download of the weights.
    """
    import torchvision
    from pytorch_fid import inception as pf

    net = torchvision.models.inception_v3(
        num_classes=1008, aux_logits=False, weights=None, init_weights=False
    )
    net.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pf.FIDInceptionE_1(1280)
    net.Mixed_7c = pf.FIDInceptionE_2(2048)
    return net


class MnistClassifierFeatures(FeatureExtractor):
    """The 64 penultimate features of the shipped MNIST classifier (offline).

    Args:
        weights: A classifier ``.safetensors`` file; default: the one shipped.
    """

    name = "mnist-classifier"
    label = "FID (MNIST-classifier features)"

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        from lvmtoolkit.metrics.classifier import load_classifier

        self.classifier, self.info = load_classifier(weights)
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[1:]) != (1, 28, 28):
            raise MetricError(
                f"the MNIST classifier takes (N, 1, 28, 28) images, got {tuple(images.shape)}"
            )
        return self.classifier.features(images)


FEATURE_EXTRACTORS: dict[str, type[FeatureExtractor]] = {
    InceptionFeatures.name: InceptionFeatures,
    MnistClassifierFeatures.name: MnistClassifierFeatures,
}


def feature_extractor(
    name: str, weights: str | Path | None = None, dims: int | None = None
) -> FeatureExtractor:
    """The feature extractor ``name`` (``inception`` or ``mnist-classifier``), ready to use.

    Args:
        name: Extractor name.
        weights: Its weights file (default: pytorch-fid's cache / the shipped classifier).
        dims: Inception feature layer (see `InceptionFeatures`); default 2048.
    """
    if name not in FEATURE_EXTRACTORS:
        raise MetricError(
            f"unknown FID features {name!r}; choose one of {', '.join(FEATURE_EXTRACTORS)}"
        )
    if name == InceptionFeatures.name:
        return InceptionFeatures(weights, dims if dims is not None else 2048)
    if dims is not None:
        raise MetricError(f"--fid-dims applies to inception features only, not {name}")
    return FEATURE_EXTRACTORS[name](weights)


@torch.no_grad()
def features_of(
    extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 50
) -> np.ndarray:
    """``(N, D)`` float64 features of ``images``, computed ``batch_size`` at a time."""
    device = next(extractor.parameters()).device
    parts = [
        extractor(part.to(device=device, dtype=torch.float32)).double().cpu()
        for part in images.detach().split(batch_size)
    ]
    return torch.cat(parts).numpy()


def frechet_distance(features: np.ndarray, reference: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two ``(N, D)`` feature sets.

    References:
        Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
        Nash Equilibrium", NeurIPS 2017.
    """
    from pytorch_fid.fid_score import calculate_frechet_distance
    from scipy.linalg import LinAlgWarning

    if features.shape[0] < 2 or reference.shape[0] < 2:
        raise MetricError("FID needs at least 2 images in each set")
    statistics = [(f.mean(axis=0), np.cov(f, rowvar=False)) for f in (features, reference)]
    # Covariances of fewer images than features (or of ReLU features that are always 0) are
    # singular; pytorch-fid then adds 1e-6 to their diagonals and prints a notice, which must
    # not reach stdout (it carries --json). SciPy's warnings about it are expected too.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", LinAlgWarning)
        try:
            value = float(calculate_frechet_distance(*statistics[0], *statistics[1]))
        except ValueError as err:
            raise MetricError(f"FID could not be computed: {err}") from None
    if not np.isfinite(value):
        raise MetricError("FID could not be computed: the result is not finite")
    return value


def fid(
    images: torch.Tensor,
    reference: torch.Tensor,
    features: FeatureExtractor | str = "mnist-classifier",
    *,
    weights: str | Path | None = None,
    batch_size: int = 50,
) -> float:
    """FID between ``images`` and ``reference`` (both ``(N, C, H, W)`` in [0, 1]).

    Args:
        images: Restored images.
        reference: Original images (any number, at least 2).
        features: A `FeatureExtractor` or its name.
        weights: Weights file for an extractor given by name.
        batch_size: Images per forward pass of the extractor.

    Returns:
        The distance (lower is better); report it under ``extractor.label``.
    """
    extractor = feature_extractor(features, weights) if isinstance(features, str) else features
    return frechet_distance(
        features_of(extractor, images, batch_size), features_of(extractor, reference, batch_size)
    )
