"""Image files in and out of models: reading, masks, resizing to the model and back, grids.

Rules (the same for every command that reads or writes image files):

- **Colour.** Images are read with Pillow and converted to the model's channels: grey
  (Pillow's ``convert("L")``, ITU-R 601-2 luma) for one-channel models, RGB for
  three-channel ones. Transparent pixels are flattened onto black. 16-bit greys are scaled
  to [0, 1] like 8-bit ones.
- **Size.** An image must be at least the model's size (28x28 for the MNIST models). One of
  another aspect ratio is first padded evenly on its short side with the median of its
  border pixels (the background), then scaled down with a box filter: each model pixel is
  the mean of the image pixels it covers. Results are scaled back up with a bicubic
  filter and the padding is cropped, so outputs have the input's size.
- **Masks** are PNG files of the image's size whose pixels are black (0) or white (maximum)
  only. White marks the region to fill (the convention of common inpainting tools);
  ``white_is_missing=False`` reads white as known instead. A model pixel is known only if
  every image pixel it covers is known. In the written output, known pixels are copied
  from the input file, so they are unchanged exactly.
- **Bounds.** An image may have at most ``MAX_IMAGE_PIXELS`` pixels, and so may the canvas
  it is padded to (so a 28x16000 strip is refused, not padded to 16000x16000); the
  pixel count is read from the file's header before anything is decoded, so a
  decompression bomb costs nothing.
- **Writing** goes to a temporary file in the destination folder, renamed over the target
  only when complete (``os.replace``), so no half-written file is ever left behind. For
  several outputs, all are written to temporary files first and renamed only when every
  one succeeded (`atomic_write_all`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from lvmtoolkit.core.runtime import signals_deferred
from lvmtoolkit.errors import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""File suffixes read as images when a folder is given (lower or upper case)."""

_EIGHT_BIT_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}

MAX_IMAGE_PIXELS = 1 << 25
"""Most pixels an input image, or the canvas it is padded to, may have (about 33.5
million: 5792x5792). Each pixel costs a few float32 copies, so this bounds the memory
one image can take to a few hundred MB."""


# --- reading ------------------------------------------------------------------------------


def _open(path: Path, what: str) -> Image.Image:
    if not path.exists():
        raise ImageError(f"{what} {path} does not exist")
    if path.is_dir():
        raise ImageError(f"{what} {path} is a folder, not an image file")
    if not path.is_file():  # a FIFO would block, a device never end
        raise ImageError(f"{what} {path} is not a regular file")
    try:
        with Image.open(path) as handle:
            width, height = handle.size  # from the header: nothing decoded yet
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageError(
                    f"{what} {path} is {width}x{height} pixels, more than the "
                    f"{MAX_IMAGE_PIXELS:,} allowed; scale it down first"
                )
            handle.load()  # decode now: a truncated file fails here, not later
            return handle.copy()
    except UnidentifiedImageError:
        raise ImageError(f"{what} {path} is not an image file Pillow can read") from None
    except Image.DecompressionBombError as err:
        raise ImageError(
            f"{what} {path} is too large to decode safely: {_first_line(err)}"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as err:
        raise ImageError(f"{what} {path} cannot be decoded: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _to_array(image: Image.Image, channels: int, path: Path) -> np.ndarray:
    """``(channels, H, W)`` float32 in [0, 1]."""
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.float32) / 65535.0
        array = grey[None].repeat(channels, axis=0)
        return array
    if image.mode not in _EIGHT_BIT_MODES:
        raise ImageError(f"{path}: unsupported image mode {image.mode!r}")
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    if channels == 1:
        array = np.asarray(image.convert("L"), dtype=np.float32)[None]
    elif channels == 3:
        array = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
    else:
        raise ImageError(f"models with {channels} channels cannot read image files")
    return array / 255.0


def read_image(path: str | Path, channels: int = 1) -> np.ndarray:
    """Read an image file as ``(channels, H, W)`` float32 values in [0, 1].

    Raises:
        ImageError: Missing, unreadable or unsupported file.
    """
    path = Path(path)
    return _to_array(_open(path, "image"), channels, path)


def read_mask(
    path: str | Path, size: tuple[int, int] | None = None, *, white_is_missing: bool = True
) -> np.ndarray:
    """Read a black-and-white mask as an ``(H, W)`` boolean array, True = known pixel.

    Args:
        path: Mask file (PNG; lossy formats such as JPEG blur the two levels).
        size: Expected ``(height, width)`` (the image's), checked if given.
        white_is_missing: White marks the pixels to fill (default); False: white is known.

    Raises:
        ImageError: Missing or unreadable file, wrong size, or levels other than black and
            white.
    """
    path = Path(path)
    image = _open(path, "mask")
    levels = _to_array(image, 1, path)[0]
    if size is not None and levels.shape != tuple(size):
        raise ImageError(
            f"mask {path} is {levels.shape[1]}x{levels.shape[0]} pixels, the image is "
            f"{size[1]}x{size[0]}; they must match"
        )
    grey = (levels > 0) & (levels < 1)
    if grey.any():
        raise ImageError(
            f"mask {path} is not binary: {int(grey.sum())} pixels are neither black nor white "
            "(threshold it, and save masks as PNG, not JPEG)"
        )
    white = levels == 1
    return ~white if white_is_missing else white


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder (not its subfolders), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder} is not a folder")
    paths = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not paths:
        raise ImageError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return paths


# --- resizing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """How one image maps onto the model's input: padding, then scaling.

    Attributes:
        size: ``(H, W)`` of the image.
        padded: ``(H, W)`` after padding to the model's aspect ratio.
        offset: ``(top, left)`` of the image inside the padded canvas.
        model_size: ``(h, w)`` of the model's input.
    """

    size: tuple[int, int]
    padded: tuple[int, int]
    offset: tuple[int, int]
    model_size: tuple[int, int]

    @classmethod
    def for_image(cls, size: tuple[int, int], model_size: tuple[int, int]) -> Fit:
        (height, width), (h, w) = size, model_size
        if height < h or width < w:
            raise ImageError(f"image is {width}x{height} pixels; the model needs at least {w}x{h}")
        # Smallest canvas of the model's aspect ratio that holds the image.
        padded_h, padded_w = max(height, -(-width * h // w)), max(width, -(-height * w // h))
        if padded_h * padded_w > MAX_IMAGE_PIXELS:
            raise ImageError(
                f"image is {width}x{height} pixels: padded to the model's aspect ratio "
                f"({w}x{h}) it would be {padded_w}x{padded_h}, more than the "
                f"{MAX_IMAGE_PIXELS:,} pixels allowed; crop it closer to that ratio"
            )
        return cls(
            size,
            (padded_h, padded_w),
            ((padded_h - height) // 2, (padded_w - width) // 2),
            model_size,
        )

    def _pad(self, plane: np.ndarray, value: float) -> np.ndarray:
        canvas = np.full(self.padded, value, dtype=np.float32)
        top, left = self.offset
        canvas[top : top + self.size[0], left : left + self.size[1]] = plane
        return canvas

    def to_model(self, pixels: np.ndarray) -> np.ndarray:
        """``(C, H, W)`` image -> ``(C, h, w)``: pad with the border median, box-filter down."""
        planes = []
        for plane in pixels:
            border = np.concatenate([plane[0], plane[-1], plane[:, 0], plane[:, -1]])
            planes.append(_resize(self._pad(plane, float(np.median(border))), self.model_size))
        return np.stack(planes)

    def mask_to_model(self, observed: np.ndarray) -> np.ndarray:
        """``(H, W)`` known-pixel mask -> ``(h, w)``: known only where all covered pixels are."""
        missing = self._pad((~observed).astype(np.float32), 0.0)
        return _resize(missing, self.model_size) <= 1e-6

    def from_model(self, pixels: np.ndarray) -> np.ndarray:
        """``(C, h, w)`` model output -> ``(C, H, W)``: bicubic up, crop the padding, clip."""
        top, left = self.offset
        planes = [
            _resize(plane, self.padded, Image.Resampling.BICUBIC)[
                top : top + self.size[0], left : left + self.size[1]
            ]
            for plane in pixels
        ]
        return np.clip(np.stack(planes), 0.0, 1.0)


def _resize(
    plane: np.ndarray,
    size: tuple[int, int],
    resample: Image.Resampling = Image.Resampling.BOX,
) -> np.ndarray:
    if plane.shape == tuple(size):
        return plane.astype(np.float32)
    image = Image.fromarray(plane.astype(np.float32))  # mode "F": no 8-bit rounding
    return np.asarray(image.resize((size[1], size[0]), resample), dtype=np.float32)


# --- a batch of files for a model ---------------------------------------------------------


@dataclass
class ImageFile:
    """One input file and what is needed to write its result back at its own size."""

    path: Path
    pixels: np.ndarray
    observed: np.ndarray | None
    fit: Fit


@dataclass
class ImageBatch:
    """Image files prepared for a model.

    Attributes:
        files: One entry per input file, in order.
        x: ``(N, C, h, w)`` model inputs in [0, 1].
        observed: ``(N, C, h, w)`` known-pixel mask at the model's size (all True without
            masks).
    """

    files: list[ImageFile]
    x: torch.Tensor
    observed: torch.Tensor

    def restore(self, images: torch.Tensor) -> list[np.ndarray]:
        """Model-size results -> one ``(C, H, W)`` uint8 array per file, at the file's size.

        Known pixels (where a mask was given) are the input file's own values.
        """
        results = []
        for file, image in zip(self.files, images.detach().cpu().numpy(), strict=True):
            restored = _to_uint8(file.fit.from_model(image))
            if file.observed is not None:
                restored = np.where(file.observed[None], _to_uint8(file.pixels), restored)
            results.append(restored)
        return results


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


def load_batch(
    paths: Sequence[str | Path],
    data_shape: Sequence[int],
    masks: Sequence[str | Path] | None = None,
    *,
    white_is_missing: bool = True,
) -> ImageBatch:
    """Read image files (and their masks) into one batch for a model of ``data_shape``.

    Args:
        paths: Image files.
        data_shape: The model's ``(C, h, w)``.
        masks: One mask file per image (the same file may repeat), or None.
        white_is_missing: See `read_mask`.

    Raises:
        ImageError: Any file missing, unreadable, too small, or a mask that does not fit.
    """
    channels, height, width = (int(v) for v in data_shape)
    if masks is not None and len(masks) != len(paths):
        raise ImageError(f"{len(masks)} masks for {len(paths)} images")
    files, inputs, known = [], [], []
    for i, path in enumerate(paths):
        path = Path(path)
        pixels = read_image(path, channels)
        # 8-bit inputs are kept as their exact 8-bit values (for copying known pixels back).
        pixels = _to_uint8(pixels).astype(np.float32) / 255.0
        size = (pixels.shape[1], pixels.shape[2])
        try:
            fit = Fit.for_image(size, (height, width))
        except ImageError as err:
            raise ImageError(f"{path}: {err}") from None
        observed = None
        small_known = np.ones((height, width), dtype=bool)
        if masks is not None:
            observed = read_mask(masks[i], size, white_is_missing=white_is_missing)
            small_known = fit.mask_to_model(observed)
        files.append(ImageFile(path, pixels, observed, fit))
        inputs.append(fit.to_model(pixels))
        known.append(np.broadcast_to(small_known, (channels, height, width)))
    x = torch.from_numpy(np.stack(inputs)).clamp(0.0, 1.0)
    observed_tensor = torch.from_numpy(np.stack(known).copy())
    return ImageBatch(files, x, observed_tensor)


# --- writing ------------------------------------------------------------------------------


def check_writable(path: str | Path) -> Path:
    """Fail early (before any computation) if ``path`` cannot be written as an image file."""
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"output {path} is a folder; give a file name such as out.png")
    if path.suffix.lower() not in Image.registered_extensions():
        raise ImageError(f"output {path}: unknown image suffix {path.suffix!r}; use .png")
    folder = path.parent
    if not folder.is_dir():
        raise ImageError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ImageError(f"cannot write {path}: folder {folder} is not writable")
    return path


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``.

    Raises:
        ImageError: The folder is not writable, or writing failed (nothing is left behind).
    """
    return atomic_write_all([(Path(path), write)])[0]


def atomic_write_all(writes: Sequence[tuple[str | Path, Callable[[str], None]]]) -> list[Path]:
    """Write several files so that either all of them appear, or none does.

    Each ``write(tmp)`` fills a temporary file next to its target; only when every one has
    succeeded are they renamed over their targets. On any failure, or an interrupt
    (Ctrl-C, SIGTERM in the CLI), every temporary file is removed and no target changes.

    Args:
        writes: ``(target path, write function)`` pairs.

    Returns:
        The target paths.

    Raises:
        ImageError: A folder is not writable, or a write failed.
    """
    temporary: list[tuple[str, Path]] = []
    umask = os.umask(0)
    os.umask(umask)
    path = Path()
    try:
        for target, write in writes:
            path = Path(target)
            if path.is_dir():
                raise ImageError(f"cannot write {path}: it is a folder")
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temporary.append((tmp, path))
            os.close(fd)
            write(tmp)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        _replace_all(temporary)
    except OSError as err:
        _remove(temporary)
        raise ImageError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        _remove(temporary)
        raise
    return [target for _, target in temporary]


def _replace_all(temporary: list[tuple[str, Path]]) -> None:
    """Rename every temporary file over its target; if one rename fails, undo the others
    (the previous files are kept under a backup name until all renames succeeded)."""
    done: list[tuple[Path, str | None]] = []
    try:
        # Ctrl-C and SIGTERM wait until every rename is done; only a SIGKILL in these few
        # milliseconds can leave some outputs new and others old (each one whole).
        with signals_deferred():
            for tmp, target in temporary:
                backup = None
                if target.exists():
                    backup = f"{tmp}.old"
                    os.replace(target, backup)
                done.append((target, backup))
                os.replace(tmp, target)
    except BaseException:
        for target, backup in reversed(done):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, target)
                elif target.exists():
                    target.unlink()
        raise
    for _, backup in done:
        if backup is not None:
            Path(backup).unlink(missing_ok=True)


def _remove(temporary: list[tuple[str, Path]]) -> None:
    for tmp, _ in temporary:
        Path(tmp).unlink(missing_ok=True)


def image_writer(path: str | Path, pixels: np.ndarray | torch.Tensor) -> Callable[[str], None]:
    """A function writing ``(C, H, W)`` pixels to a file in the format ``path``'s suffix
    names (for `atomic_write_all`)."""
    path = Path(path)
    array = pixels.detach().cpu().numpy() if isinstance(pixels, torch.Tensor) else pixels
    if array.dtype != np.uint8:
        array = _to_uint8(array)
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise ImageError(f"cannot save an array of shape {array.shape} as an image")
    image = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ImageError(f"output {path}: unknown image suffix {path.suffix!r}; use .png")
    return lambda tmp: image.save(tmp, format=image_format)


def save_image(path: str | Path, pixels: np.ndarray | torch.Tensor) -> Path:
    """Write ``(C, H, W)`` pixels (uint8, or floats in [0, 1]) atomically; format by suffix."""
    return atomic_write(path, image_writer(path, pixels))


def save_grid(path: str | Path, columns: Sequence[tuple[str, torch.Tensor]], **layout: Any) -> Path:
    """Write a grid (PNG unless the suffix says otherwise): a column per ``(title, images)``.

    Args:
        path: Output file.
        columns: ``(title, (N, C, h, w) images in [0, 1])`` pairs, all with the same N.
        **layout: ``scale``, ``missing``, ``missing_column`` and ``max_rows``, as
            `grid_writer` takes them.

    Returns:
        The path written.
    """
    return atomic_write(path, grid_writer(path, columns, **layout))


def grid_writer(
    path: str | Path,
    columns: Sequence[tuple[str, torch.Tensor]],
    *,
    scale: int = 3,
    missing: torch.Tensor | None = None,
    missing_column: int = 0,
    max_rows: int = 16,
) -> Callable[[str], None]:
    """A function writing the grid of `save_grid` to a file
    (for `atomic_write_all`).

    Args:
        path: Output file (its suffix names the format).
        columns: ``(title, (N, C, h, w) images in [0, 1])`` pairs, all with the same N.
        scale: Each image pixel becomes ``scale x scale`` grid pixels.
        missing: Optional ``(N, C, h, w)`` boolean tensor; column ``missing_column`` shows
            these pixels in red (the region to fill).
        missing_column: Which column shows ``missing``.
        max_rows: Show at most this many images.

    Returns:
        ``write(tmp)``.
    """
    if not columns:
        raise ImageError("a grid needs at least one column")
    rows = min(int(columns[0][1].shape[0]), max_rows)
    height, width = (int(v) for v in columns[0][1].shape[-2:])
    cell_h, cell_w, gap, header = height * scale, width * scale, 4, 14
    font = ImageFont.load_default()
    # A column is as wide as its image or its title, whichever is wider.
    widths = [max(cell_w, int(font.getlength(title)) + 2) for title, _ in columns]
    canvas = Image.new(
        "RGB",
        (sum(widths) + gap * (len(columns) + 1), header + rows * (cell_h + gap) + gap),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(canvas)
    left = gap
    for col, (title, images) in enumerate(columns):
        draw.text((left, 1), title, fill=(0, 0, 0), font=font)
        for row in range(rows):
            rgb = _as_rgb(images[row])
            if col == missing_column and missing is not None:
                hole = missing[row].any(0).cpu().numpy()
                rgb[hole] = (200, 30, 30)
            cell = Image.fromarray(rgb).resize((cell_w, cell_h), Image.Resampling.NEAREST)
            canvas.paste(
                cell, (left + (widths[col] - cell_w) // 2, header + gap + row * (cell_h + gap))
            )
        left += widths[col] + gap
    image_format = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    return lambda tmp: canvas.save(tmp, format=image_format)


def _as_rgb(image: torch.Tensor) -> np.ndarray:
    array = _to_uint8(image.detach().cpu().float().numpy())
    if array.shape[0] == 1:
        array = array.repeat(3, axis=0)
    return np.ascontiguousarray(array[:3].transpose(1, 2, 0))
