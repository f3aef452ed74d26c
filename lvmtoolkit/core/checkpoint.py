"""Checkpoints: safetensors weights plus a JSON description; loading never unpickles.

A checkpoint is a folder holding ``model.safetensors`` and ``config.json``. The same JSON is
also stored in the safetensors header, so the ``.safetensors`` file alone is a complete
checkpoint too. The JSON names the backend, its version and config, the data it was
trained on and a training summary; the model is rebuilt from the registered backend class.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lvmtoolkit.core.model import Model
from lvmtoolkit.errors import CheckpointError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
_METADATA_KEY = "lvmtoolkit"


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


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        # mkstemp (and safetensors, which recreates the file) make 0600: use the usual mode
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    model: Model,
    directory: str | Path,
    *,
    data: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``directory`` (created if needed); each file is written atomically.

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
            directory / WEIGHTS_FILE,
            lambda tmp: save_file(tensors, tmp, metadata={_METADATA_KEY: text}),
        )
        _atomic_write(directory / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text + "\n"))
    except OSError as err:
        raise CheckpointError(f"cannot write checkpoint to {directory}: {err.strerror}") from None
    return directory


def _read_info(path: Path) -> tuple[dict[str, Any], Path]:
    if path.is_dir():
        config_path, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
        for required in (config_path, weights):
            if not required.is_file():
                raise CheckpointError(f"checkpoint {path} has no {required.name}")
        try:
            return json.loads(config_path.read_text()), weights
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{config_path} is not valid JSON: {err}") from None
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a safetensors file: {err}") from None
    if _METADATA_KEY not in metadata:
        raise CheckpointError(f"{path} has no lvmtoolkit description in its header")
    try:
        return json.loads(metadata[_METADATA_KEY]), path
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: header description is not valid JSON: {err}") from None


def read_checkpoint_info(path: str | Path) -> dict[str, Any]:
    """The JSON description of the checkpoint at ``path`` (folder or .safetensors file)."""
    info, _ = _read_info(Path(path))
    return info


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", backend: str | None = None
) -> Model:
    """Rebuild a model from a checkpoint folder or ``.safetensors`` file.

    Args:
        path: Checkpoint folder or file.
        device: Where to put the weights.
        backend: If given, the checkpoint must belong to this backend.

    Returns:
        The model in eval mode.

    Raises:
        CheckpointError: Missing files, corrupt content, unknown keys, or a backend mismatch.
    """
    from lvmtoolkit.plugins import get_backend

    path = Path(path)
    info, weights = _read_info(path)
    if not isinstance(info, dict) or "backend" not in info or "config" not in info:
        raise CheckpointError(f"{path}: description lacks 'backend' or 'config'")
    if backend is not None and info["backend"] != backend:
        raise CheckpointError(f"{path} is a {info['backend']!r} checkpoint, not a {backend!r} one")
    model_class = get_backend(info["backend"])
    model = model_class.from_config(info["config"])
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {err}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not match the {info['backend']} config: missing "
            f"{missing[:5] or 'none'}, unexpected {unexpected[:5] or 'none'}"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{weights}: {key} has shape {tuple(tensor.shape)}, the config expects "
                f"{tuple(expected[key].shape)}"
            )
    model.load_state_dict(state)
    model.checkpoint_info = info
    return model.to(device).eval()
