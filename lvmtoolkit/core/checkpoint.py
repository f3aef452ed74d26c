"""Checkpoints: safetensors weights plus a JSON description; loading never unpickles.

A checkpoint is a folder holding ``model.safetensors`` and ``config.json``. The same JSON is
also stored in the safetensors header, so the ``.safetensors`` file alone is a complete
checkpoint too. The JSON names the backend, its version and config, the data it was
trained on and a training summary; the model is rebuilt from the registered backend class.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode

from lvmtoolkit.core.model import Model
from lvmtoolkit.core.runtime import signals_deferred
from lvmtoolkit.errors import CheckpointError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
_METADATA_KEY = "lvmtoolkit"
# Bounds on what a checkpoint file can make the loader read before its content is checked.
MAX_CONFIG_BYTES = 1 << 20
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def checkpoint_info(
    model: Model, data: dict[str, Any] | None = None, training: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON description of a checkpoint of ``model``."""
    return {
        "format": FORMAT_VERSION,
        "backend": model.name,
        "backend_version": model.version,
        "config": dataclasses.asdict(model.config),
        "data": data or {},
        "training": training or {},
    }


def _atomic_write(writes: list[tuple[Path, Callable[[str], None]]]) -> None:
    """Write every file to a temporary name, then rename them all: an interrupt or a
    failure before the renames leaves the old checkpoint untouched and no temporary file
    behind (the renames themselves take microseconds)."""
    temporary: list[tuple[str, Path]] = []
    try:
        umask = os.umask(0)
        os.umask(umask)
        for path, write in writes:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temporary.append((tmp, path))
            os.close(fd)
            write(tmp)
            # mkstemp (and safetensors, which recreates the file) make 0600: use the usual mode
            os.chmod(tmp, 0o666 & ~umask)
        with signals_deferred():
            for tmp, path in temporary:
                os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temporary:
            Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    model: Model,
    directory: str | Path,
    *,
    data: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``directory`` (created if needed), atomically.

    Both files are written to temporary names first and renamed only when both are
    complete, so an interrupted save leaves the previous checkpoint (if any) intact.

    Args:
        model: The model to save.
        directory: Destination folder.
        data: Description of the training data (name, split, size, binarisation).
        training: Training summary (epochs, final loss, seconds, ...).

    Returns:
        The checkpoint folder.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(
            f"cannot create checkpoint folder {directory}: {err.strerror}"
        ) from None
    info = checkpoint_info(model, data, training)
    text = json.dumps(info, indent=2, sort_keys=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    try:
        _atomic_write(
            [
                (
                    directory / WEIGHTS_FILE,
                    lambda tmp: save_file(tensors, tmp, metadata={_METADATA_KEY: text}),
                ),
                (directory / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text + "\n")),
            ]
        )
    except OSError as err:
        raise CheckpointError(f"cannot write checkpoint to {directory}: {err.strerror}") from None
    return directory


def _regular_file(path: Path, what: str) -> int:
    """Size of ``path``; a FIFO, device or socket is refused without opening it (a FIFO
    would block forever)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} does not exist") from None
    except OSError as err:
        raise CheckpointError(f"cannot read {what} {path}: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{what} {path} is not a regular file")
    return info.st_size


def _parse_json(text: bytes | str, where: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{where} is not valid JSON: {err}") from None
    except RecursionError:
        raise CheckpointError(f"{where} is nested too deeply to be a checkpoint") from None


def _read_header(path: Path) -> dict[str, Any]:
    """The safetensors header of ``path`` (tensor names, dtypes, shapes, offsets), read
    and checked against the file's size before any tensor is."""
    size = _regular_file(path, "weights file")
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (too short)")
        length = int.from_bytes(prefix, "little")
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(
                f"{path} is not a safetensors file: its header claims {length} bytes"
            )
        header = _parse_json(handle.read(length), f"{path} is not a safetensors file: its header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file: its header is not an object")
    data_bytes = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = (
            isinstance(entry, dict)
            and entry.get("dtype") in _DTYPES
            and isinstance(entry.get("shape"), list)
            and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
            and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2
            and all(isinstance(o, int) for o in entry["data_offsets"])
        )
        if not ok:
            raise CheckpointError(f"{path}: the header entry of {name!r} is malformed")
        begin, stop = entry["data_offsets"]
        numel = math.prod(entry["shape"])
        if (
            not 0 <= begin <= stop <= data_bytes
            or stop - begin != numel * _DTYPES[entry["dtype"]].itemsize
        ):
            raise CheckpointError(f"{path}: {name!r} does not fit in the file (truncated?)")
    return header


def _read_info(path: Path) -> tuple[dict[str, Any], Path, dict[str, Any]]:
    """The description, the weights file and its header."""
    if path.is_dir():
        config_path, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
        for required in (config_path, weights):
            if not required.exists():
                raise CheckpointError(f"checkpoint {path} has no {required.name}")
        if _regular_file(config_path, "checkpoint description") > MAX_CONFIG_BYTES:
            raise CheckpointError(
                f"{config_path} is larger than {MAX_CONFIG_BYTES // 2**20} MiB; not a checkpoint"
            )
        info = _parse_json(config_path.read_bytes(), str(config_path))
        return info, weights, _read_header(weights)
    header = _read_header(path)
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not isinstance(metadata.get(_METADATA_KEY), str):
        raise CheckpointError(f"{path} has no lvmtoolkit description in its header")
    text = metadata[_METADATA_KEY]
    if len(text) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: the description in its header is too large")
    return _parse_json(text, f"the description in the header of {path}"), path, header


def read_checkpoint_info(path: str | Path) -> dict[str, Any]:
    """The JSON description of the checkpoint at ``path`` (folder or .safetensors file)."""
    info, _, _ = _read_info(Path(path))
    return info


def _check_config(config_class: type, config: Any, header: dict[str, Any], where: Path) -> None:
    """Types of the config's values, and list lengths bounded by the weights' tensor count.

    The model is built from the config, so a config is checked before anything is built:
    ``"latent_dim": 10.5`` or a list of a million layers is refused here.
    """
    from lvmtoolkit.core.options import type_problem

    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: config must be a JSON object")
    if not dataclasses.is_dataclass(config_class):
        return
    hints = typing.get_type_hints(config_class)
    tensors = sum(1 for name in header if name != "__metadata__")
    for key, value in config.items():
        if key in hints:
            problem = type_problem(value, hints[key])
            if problem is not None:
                raise CheckpointError(f"{where}: config {key!r}: {problem}")
        if _has_huge_int(value):
            raise CheckpointError(f"{where}: config {key!r} holds an integer beyond 64 bits")
        if isinstance(value, (list, tuple)) and len(value) > max(tensors, 8):
            raise CheckpointError(
                f"{where}: config {key!r} lists {len(value)} entries, more than the "
                f"{tensors} tensors of the weights"
            )


def _has_huge_int(value: Any) -> bool:
    if isinstance(value, int):
        return abs(value) >= 2**63
    if isinstance(value, (list, tuple)) and len(value) < 10_000:
        return any(_has_huge_int(item) for item in value)
    return False


class _LargeTensorsOnMeta(TorchFunctionMode):
    """Inside: factory calls for large tensors (parameters) land on the ``meta`` device.

    Shapes and dtypes are kept, no memory is allocated. Small tensors stay real, so a
    backend's ``__init__`` may still compute with them (``int(torch.tensor(shape).prod())``
    fails on meta tensors, which is why not everything goes to meta).
    """

    _FACTORIES = frozenset(
        {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn}
    )
    _LARGE = 1 << 20  # elements

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func in self._FACTORIES and kwargs.get("device") is None:
            sizes = args[0] if args and isinstance(args[0], (tuple, list, torch.Size)) else args
            if func is torch.full:
                sizes = args[0] if args else ()
            try:
                count = math.prod(int(v) for v in sizes)
            except (TypeError, ValueError):
                count = 0
            if count > self._LARGE:
                kwargs["device"] = "meta"
        return func(*args, **kwargs)


def _check_against_header(
    model_class: type[Model], config: dict[str, Any], header: dict[str, Any], where: Path
) -> None:
    """Compare the model the config describes with the weights' header, before building it.

    The model is first built with its large tensors on PyTorch's ``meta`` device (shapes,
    no memory), so a config that asks for a 3 TB layer is refused from the header before
    any of it is allocated.
    """
    try:
        with _LargeTensorsOnMeta():
            skeleton = model_class.from_config(config)
        expected = {k: (tuple(v.shape), v.dtype) for k, v in skeleton.state_dict().items()}
    except CheckpointError:
        raise
    except Exception:
        # A backend that cannot be built so is compared after building (below).
        return
    _compare(expected, {k: v for k, v in header.items() if k != "__metadata__"}, where)


def _compare(expected: dict[str, Any], header: dict[str, Any], where: Path) -> None:
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{where} does not match its config: missing {missing[:5] or 'none'}, "
            f"unexpected {unexpected[:5] or 'none'}"
        )
    for key, (shape, dtype) in expected.items():
        entry = header[key]
        stored_shape = tuple(entry["shape"])
        stored_dtype = _DTYPES[entry["dtype"]]
        if stored_shape != shape:
            raise CheckpointError(
                f"{where}: {key} has shape {stored_shape}, the config expects {shape}"
            )
        # float32 <-> float64 is a change of precision; int64 weights for a float layer
        # are not weights at all, and casting them gives nonsense numbers.
        if stored_dtype.is_floating_point != dtype.is_floating_point or (
            not dtype.is_floating_point and stored_dtype != dtype
        ):
            raise CheckpointError(
                f"{where}: {key} is stored as {entry['dtype']}, the model needs {dtype}"
            )


def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    backend: str | None = None,
    *,
    lookup: Callable[[str], type[Model]],
) -> Model:
    """Rebuild a model from a checkpoint folder or ``.safetensors`` file.

    This is the core's loader; it finds the model class through ``lookup``, so the core
    depends on no registry. `lvmtoolkit.load_checkpoint` is
    this function with the plugin registry as ``lookup``.

    Nothing is trusted before it is checked: only regular files are opened (a FIFO would
    block), the description is size- and depth-limited JSON, config values must have
    their declared types, the model the config describes is compared with the tensor
    shapes and dtypes in the weights' header before it is built, and weights must be
    finite floating-point numbers (never cast from integers).

    Args:
        path: Checkpoint folder or file.
        device: Where to put the weights.
        backend: If given, the checkpoint must belong to this backend.
        lookup: Backend name -> Model subclass (e.g. ``lvmtoolkit.get_backend``).

    Returns:
        The model in eval mode.

    Raises:
        CheckpointError: Missing files, corrupt content, unknown keys, or a backend mismatch.
    """
    from lvmtoolkit.core.runtime import resolve_device

    if backend is not None and not isinstance(backend, str):
        raise CheckpointError(f"backend must be a name (a string), got {type(backend).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"path must be a string or a Path, got {type(path).__name__}")
    device = resolve_device(str(device)) if isinstance(device, str) else device
    path = Path(path)
    info, weights, header = _read_info(path)
    if not isinstance(info, dict) or "backend" not in info or "config" not in info:
        raise CheckpointError(f"{path}: description lacks 'backend' or 'config'")
    if not isinstance(info["backend"], str):
        raise CheckpointError(f"{path}: the backend name in its description is not a string")
    if backend is not None and info["backend"] != backend:
        raise CheckpointError(f"{path} is a {info['backend']!r} checkpoint, not a {backend!r} one")
    model_class = lookup(info["backend"])
    _check_config(model_class.config_class, info["config"], header, weights)
    _check_against_header(model_class, info["config"], header, weights)
    try:
        model = model_class.from_config(info["config"])
    except CheckpointError:
        raise
    except (TypeError, ValueError, OverflowError, RuntimeError) as err:
        raise CheckpointError(
            f"{path}: its config does not build a {info['backend']} model: {err}"
        ) from None
    _compare(
        {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()},
        {k: v for k, v in header.items() if k != "__metadata__"},
        weights,
    )
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {err}") from None
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{weights}: {key} holds NaN or infinite values")
    model.load_state_dict(state)
    model.checkpoint_info = info
    return model.to(device).eval()
