"""Data for jobs: image folders, arrays, tensor files and registered datasets, read by rows.

A `DataSource` is a fixed, ordered list of datapoints of the model's shape that is
read one row range at a time, so a job holds one shard of images in memory however large
the data is:

- **image folder**: every file in the folder (not its subfolders; names starting with a
  dot are skipped), sorted by name. Each must be an image Pillow reads, all of one size;
  they are converted and resized to the model's input as ``lvm inpaint`` does
  (`lvmtoolkit.images.load_batch`). Headers are checked when the source is opened,
  pixels are decoded per shard.
- **.npy**: memory-mapped. **.npz**: one array (or the one named ``images``), read by
  row range from the zip member, never whole.
- **.safetensors**: one tensor (or the one named ``images``), read by row range.
- **IDX** (``*-ubyte`` or ``*-ubyte.gz``, as MNIST and Fashion-MNIST ship): read by row
  range, decompressing as it goes.

Arrays are ``(N, *data_shape)``, or ``(N, H, W)`` for a one-channel model. ``uint8``
values are divided by 255; floating-point values must lie in [0, 1]. Several sources
(``--data a --data b``) are read one after the other (`ConcatSource`).

Every source has a `DataSource.fingerprint`: the SHA-256 of its files' bytes (or, for
a registered dataset, of the selected images), which a job's manifest records so that a
rerun on changed data is not mistaken for a resume.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from lvmtoolkit.errors import DataError

__all__ = [
    "ArraySource",
    "ConcatSource",
    "DataSource",
    "DatasetSource",
    "ImageFolderSource",
    "open_data",
    "open_source",
    "open_source_from_manifest",
]

_CHUNK = 1 << 20
_IDX_DTYPES = {0x08: np.dtype(np.uint8)}


def sha256_files(paths: Sequence[Path]) -> str:
    """SHA-256 over the names and bytes of ``paths``, in order (streamed)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
    return digest.hexdigest()


class DataSource:
    """An ordered set of datapoints for a model, read by row range.

    Attributes:
        kind: What the source is (``"images"``, ``"npy"``, ``"dataset"``, ...).
        data_shape: Shape of one datapoint as the model takes it, ``(C, H, W)``.
    """

    kind: str = ""

    def __init__(self, data_shape: Sequence[int]):
        self.data_shape = tuple(int(v) for v in data_shape)

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` as float32 images in [0, 1] of shape ``(n, *data_shape)``."""
        raise NotImplementedError

    def ids(self, start: int, stop: int) -> list[str]:
        """A name for each of the rows ``start:stop`` (a file name, ``"test/17"``, ``"42"``)."""
        return [str(i) for i in range(start, stop)]

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for the manifest (kind, paths, count, shape)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """SHA-256 identifying the data and its order."""
        raise NotImplementedError


# --- arrays -------------------------------------------------------------------------------


def _fit_shape(shape: tuple[int, ...], data_shape: tuple[int, ...], what: str) -> None:
    ok = tuple(shape[1:]) == data_shape or (
        len(data_shape) == 3 and data_shape[0] == 1 and tuple(shape[1:]) == data_shape[1:]
    )
    if len(shape) < 2 or not ok:
        hint = f"(N, {', '.join(map(str, data_shape))})"
        if len(data_shape) == 3 and data_shape[0] == 1:
            hint += f" or (N, {data_shape[1]}, {data_shape[2]})"
        raise DataError(
            f"{what} has shape {tuple(shape)}; the model takes datapoints of shape "
            f"{data_shape}, so give an array of shape {hint}"
        )


def _to_images(rows: np.ndarray, data_shape: tuple[int, ...], what: str) -> torch.Tensor:
    """Raw rows -> float32 images in [0, 1] of the model's shape."""
    if rows.dtype == np.uint8:
        values = rows.astype(np.float32) / 255.0
    elif rows.dtype.kind in "fiub":
        values = rows.astype(np.float32)
        if values.size and (not np.isfinite(values).all() or values.min() < 0 or values.max() > 1):
            raise DataError(
                f"{what}: values must lie in [0, 1] (or be uint8 in 0..255); found "
                f"{values.min():g}..{values.max():g}"
            )
    else:
        raise DataError(f"{what}: cannot read values of dtype {rows.dtype}")
    return torch.from_numpy(np.ascontiguousarray(values)).reshape(len(rows), *data_shape)


class _RowReader:
    """Rows of a C-ordered array stored at ``offset`` in a seekable binary stream."""

    def __init__(self, open_stream: Any, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self.open_stream, self.offset, self.shape, self.dtype = open_stream, offset, shape, dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._stream: BinaryIO | None = None

    def read(self, start: int, stop: int) -> np.ndarray:
        if self._stream is None:
            self._stream = self.open_stream()
        self._stream.seek(self.offset + start * self.row_bytes)
        raw = self._stream.read((stop - start) * self.row_bytes)
        if len(raw) != (stop - start) * self.row_bytes:
            raise DataError("the data file ends before its header says it does (truncated)")
        return np.frombuffer(raw, dtype=self.dtype).reshape(stop - start, *self.shape[1:])


class ArraySource(DataSource):
    """A ``.npy``, ``.npz``, ``.safetensors`` or IDX file, read by row range.

    Args:
        path: The file.
        data_shape: The model's datapoint shape.
    """

    def __init__(self, path: str | Path, data_shape: Sequence[int]):
        super().__init__(data_shape)
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"--data {self.path} does not exist")
        name = self.path.name.lower()
        self._key: str | None = None
        try:
            if name.endswith(".npy"):
                self.kind = "npy"
                self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
                self._read = lambda a, b: np.asarray(self._array[a:b])
                shape = tuple(self._array.shape)
            elif name.endswith(".npz"):
                self.kind = "npz"
                shape = self._open_npz()
            elif name.endswith(".safetensors"):
                self.kind = "safetensors"
                shape = self._open_safetensors()
            elif name.endswith(("-ubyte", "-ubyte.gz", ".idx", ".idx.gz")):
                self.kind = "idx"
                shape = self._open_idx()
            else:
                raise DataError(
                    f"--data {self.path}: unknown file type; give a folder of images, a .npy, "
                    ".npz or .safetensors file, or an IDX file (*-ubyte[.gz])"
                )
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(f"--data {self.path} cannot be read: {err}") from None
        _fit_shape(shape, self.data_shape, f"--data {self.path}")
        self.shape = shape

    def _open_npz(self) -> tuple[int, ...]:
        with zipfile.ZipFile(self.path) as archive:
            members = [m for m in archive.namelist() if m.endswith(".npy")]
        key = self._pick([m[: -len(".npy")] for m in members], "array")
        member = f"{key}.npy"
        with zipfile.ZipFile(self.path) as archive, archive.open(member) as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(handle)
            offset = handle.tell()
        if fortran or dtype.hasobject:
            raise DataError(f"--data {self.path}: array {key!r} must be C-ordered numbers")
        self._key = key

        def open_member() -> BinaryIO:
            return zipfile.ZipFile(self.path).open(member)

        reader = _RowReader(open_member, offset, tuple(shape), dtype)
        self._read = reader.read
        return tuple(shape)

    def _open_safetensors(self) -> tuple[int, ...]:
        from safetensors import safe_open

        handle = safe_open(str(self.path), framework="pt")
        key = self._pick(list(handle.keys()), "tensor")
        self._key = key
        view = handle.get_slice(key)

        def read(a: int, b: int) -> np.ndarray:
            rows = view[a:b]
            return (rows.float() if rows.is_floating_point() else rows).numpy()

        self._read = read
        return tuple(view.get_shape())

    def _open_idx(self) -> tuple[int, ...]:
        gz = self.path.name.lower().endswith(".gz")

        def open_stream() -> BinaryIO:
            return gzip.open(self.path, "rb") if gz else open(self.path, "rb")

        with open_stream() as handle:
            magic = handle.read(4)
            if len(magic) < 4 or magic[0] or magic[1] or magic[2] not in _IDX_DTYPES:
                raise DataError(f"--data {self.path} is not an unsigned-byte IDX file")
            ndim = magic[3]
            dims = handle.read(4 * ndim)
            if ndim == 0 or len(dims) != 4 * ndim:
                raise DataError(f"--data {self.path} is truncated (IDX header)")
        shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
        reader = _RowReader(open_stream, 4 + 4 * ndim, shape, _IDX_DTYPES[magic[2]])
        self._read = reader.read
        return shape

    def _pick(self, keys: list[str], what: str) -> str:
        if len(keys) == 1:
            return keys[0]
        if "images" in keys:
            return "images"
        listed = ", ".join(sorted(keys)) or "none"
        raise DataError(
            f"--data {self.path} holds {len(keys)} {what}s ({listed}); keep one, or name the "
            f"one to read 'images'"
        )

    def __len__(self) -> int:
        return int(self.shape[0])

    def read(self, start: int, stop: int) -> torch.Tensor:
        try:
            rows = self._read(start, stop)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
            raise DataError(f"--data {self.path} cannot be read: {err}") from None
        return _to_images(rows, self.data_shape, f"--data {self.path} rows {start}:{stop}")

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"kind": self.kind, "path": str(self.path.resolve())}
        if self._key is not None:
            info["key"] = self._key
        return {**info, "count": len(self), "shape": list(self.shape)}

    def fingerprint(self) -> str:
        return sha256_files([self.path])


# --- image folders ------------------------------------------------------------------------


class ImageFolderSource(DataSource):
    """Every file of a folder, sorted by name; each must be an image, all of one size.

    Args:
        folder: The folder.
        data_shape: The model's ``(C, H, W)``.
    """

    kind = "images"

    def __init__(self, folder: str | Path, data_shape: Sequence[int]):
        from PIL import Image, UnidentifiedImageError

        from lvmtoolkit.errors import ImageError
        from lvmtoolkit.images import Fit

        super().__init__(data_shape)
        if len(self.data_shape) != 3:
            raise DataError(
                f"a folder of images needs a model of (C, H, W) datapoints, not {self.data_shape}"
            )
        self.folder = Path(folder)
        self.paths = sorted(
            p for p in self.folder.iterdir() if not p.name.startswith(".") and not p.is_dir()
        )
        if not self.paths:
            raise DataError(f"--data {self.folder} holds no files")
        digest = hashlib.sha256()
        sizes: dict[tuple[int, int], Path] = {}
        for path in self.paths:
            raw = path.read_bytes()
            digest.update(path.name.encode() + b"\0" + raw)
            try:
                with Image.open(io.BytesIO(raw)) as image:
                    width, height = image.size
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
                raise DataError(
                    f"--data {self.folder}: {path.name} is not an image file Pillow can read "
                    "(the folder must hold images only)"
                ) from None
            sizes.setdefault((width, height), path)
            if len(sizes) > 1:
                (w0, h0), first = next(iter(sizes.items()))
                raise DataError(
                    f"--data {self.folder}: images differ in size ({first.name} is {w0}x{h0}, "
                    f"{path.name} is {width}x{height}); give a folder of images of one size"
                )
        (width, height) = next(iter(sizes))
        try:
            Fit.for_image((height, width), self.data_shape[1:])
        except ImageError as err:
            raise DataError(f"--data {self.folder}: {err}") from None
        self.image_size = (width, height)
        self._fingerprint = digest.hexdigest()

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, start: int, stop: int) -> torch.Tensor:
        from lvmtoolkit.errors import ImageError
        from lvmtoolkit.images import load_batch

        try:
            return load_batch(self.paths[start:stop], self.data_shape).x.float()
        except ImageError as err:
            raise DataError(f"--data {self.folder}: {err}") from None

    def ids(self, start: int, stop: int) -> list[str]:
        return [p.name for p in self.paths[start:stop]]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": str(self.folder.resolve()),
            "count": len(self),
            "image_size": list(self.image_size),
            "order": "file names, sorted",
        }

    def fingerprint(self) -> str:
        return self._fingerprint


# --- registered datasets ------------------------------------------------------------------


class DatasetSource(DataSource):
    """The first ``num_images`` of each split of a registered dataset, split after split.

    The dataset's loader reads each split whole (registered datasets are loaded by their
    plugin); for data larger than memory, pass files with ``--data``.

    Args:
        dataset: Registered name (``lvm datasets``).
        data_dir: The dataset's ``--data-dir``.
        splits: Splits in order.
        num_images: Images per split (None: all).
        data_shape: The model's datapoint shape.
    """

    kind = "dataset"

    def __init__(
        self,
        dataset: str,
        data_dir: str | None,
        splits: Sequence[str],
        num_images: int | None,
        data_shape: Sequence[int],
    ):
        from lvmtoolkit.plugins import get_dataset

        super().__init__(data_shape)
        self.dataset, self.data_dir, self.splits = dataset, data_dir, list(splits)
        loader = get_dataset(dataset)(data_dir)
        self._images = [loader.load(split).images[:num_images] for split in self.splits]
        for split, images in zip(self.splits, self._images, strict=True):
            _fit_shape(tuple(images.shape), self.data_shape, f"{dataset} split {split!r}")
        self._starts = np.cumsum([0] + [len(images) for images in self._images])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        parts = []
        for i in range(len(self._images)):
            a, b = max(start, int(self._starts[i])), min(stop, int(self._starts[i + 1]))
            if a < b:
                parts.append((i, a - int(self._starts[i]), b - int(self._starts[i])))
        return parts

    def read(self, start: int, stop: int) -> torch.Tensor:
        rows = [self._images[i][a:b] for i, a, b in self._locate(start, stop)]
        return torch.cat(rows).float().reshape(stop - start, *self.data_shape)

    def ids(self, start: int, stop: int) -> list[str]:
        return [
            f"{self.splits[i]}/{j}" for i, a, b in self._locate(start, stop) for j in range(a, b)
        ]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dataset": self.dataset,
            "data_dir": str(Path(self.data_dir).resolve()) if self.data_dir else None,
            "splits": {s: len(x) for s, x in zip(self.splits, self._images, strict=True)},
            "count": len(self),
            "order": "splits in the order given, first images of each",
        }

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for split, images in zip(self.splits, self._images, strict=True):
            digest.update(split.encode() + b"\0")
            digest.update(images.detach().cpu().float().contiguous().numpy().tobytes())
        return digest.hexdigest()


# --- several sources, one after the other -------------------------------------------------


class ConcatSource(DataSource):
    """Sources read one after the other (``--data a --data b``)."""

    kind = "concat"

    def __init__(self, sources: Sequence[DataSource]):
        super().__init__(sources[0].data_shape)
        self.sources = list(sources)
        self._starts = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, start: int, stop: int) -> list[tuple[DataSource, int, int]]:
        parts = []
        for i, source in enumerate(self.sources):
            a, b = max(start, int(self._starts[i])), min(stop, int(self._starts[i + 1]))
            if a < b:
                parts.append((source, a - int(self._starts[i]), b - int(self._starts[i])))
        return parts

    def read(self, start: int, stop: int) -> torch.Tensor:
        return torch.cat([s.read(a, b) for s, a, b in self._locate(start, stop)])

    def ids(self, start: int, stop: int) -> list[str]:
        return [name for s, a, b in self._locate(start, stop) for name in s.ids(a, b)]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "count": len(self),
            "parts": [s.describe() for s in self.sources],
        }

    def fingerprint(self) -> str:
        return hashlib.sha256("".join(s.fingerprint() for s in self.sources).encode()).hexdigest()


class LimitSource(DataSource):
    """The first ``count`` datapoints of another source (``--num-images`` with ``--data``)."""

    def __init__(self, source: DataSource, count: int):
        super().__init__(source.data_shape)
        self.source, self.count = source, min(int(count), len(source))
        self.kind = source.kind

    def __len__(self) -> int:
        return self.count

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self.source.read(start, stop)

    def ids(self, start: int, stop: int) -> list[str]:
        return self.source.ids(start, stop)

    def describe(self) -> dict[str, Any]:
        return {**self.source.describe(), "count": self.count, "first": self.count}

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.source.fingerprint()}:{self.count}".encode()).hexdigest()


def open_data(
    paths: Sequence[str | Path], data_shape: Sequence[int], num_images: int | None = None
) -> DataSource:
    """Open ``--data`` values (folders or files) as one source for a model.

    Args:
        paths: One or more folders of images or array files, read in order.
        data_shape: The model's datapoint shape (``model.data_shape``).
        num_images: Keep only the first this many datapoints (None: all).

    Raises:
        DataError: A path that does not exist, a file of another type, a folder holding a
            non-image file or images of different sizes, an array of the wrong shape.
    """
    sources: list[DataSource] = []
    for path in map(Path, paths):
        if path.is_dir():
            sources.append(ImageFolderSource(path, data_shape))
        elif path.exists():
            sources.append(ArraySource(path, data_shape))
        else:
            raise DataError(f"--data {path} does not exist")
    if not sources:
        raise DataError("give --data a folder of images or an array file")
    source = sources[0] if len(sources) == 1 else ConcatSource(sources)
    if len(source) == 0:
        raise DataError("--data holds no datapoints")
    return source if num_images is None else LimitSource(source, num_images)


def open_source(args: dict[str, Any], data_shape: Sequence[int]) -> DataSource:
    """Open data described as a job's manifest records it.

    Args:
        args: ``{"paths": [...], "num_images": n}`` for ``--data``, or ``{"dataset": name,
            "data_dir": dir, "splits": [...], "num_images": n}`` for a registered dataset.
        data_shape: The model's datapoint shape.
    """
    if "paths" in args:
        return open_data(args["paths"], data_shape, args.get("num_images"))
    return DatasetSource(
        args["dataset"], args.get("data_dir"), args["splits"], args.get("num_images"), data_shape
    )


def open_source_from_manifest(manifest: dict[str, Any], data_shape: Sequence[int]) -> DataSource:
    """The data a results folder's job read, opened again from its manifest.

    Args:
        manifest: The job's ``manifest.json``, as read.
        data_shape: The model's datapoint shape.
    """
    return open_source(manifest["data_source"]["open"], data_shape)
