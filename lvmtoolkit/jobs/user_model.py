"""``--model``: a user's own model from ``file.py:function`` or ``module:function``.

The function is called without arguments and must return a
`Model` (for example a `TorchVAE`
or `PyroVAE` wrapping plain networks), so a VAE needs no plugin
to be refined from the command line. Loading a ``.py`` file runs it, as ``python file.py``
would: only point ``--model`` at code you trust.

A model's identity, which a job's manifest records, is where it came from (the backend and
the SHA-256 of its checkpoint files, or the file and function and the file's SHA-256) and
the SHA-256 of its parameters, so a rerun with other weights is not taken for a resume.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch

from lvmtoolkit.core.model import Model
from lvmtoolkit.errors import LvmError

__all__ = ["load_model_spec", "load_user_model", "parameters_sha256", "resolve_model"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def parameters_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state (names, shapes, dtypes and values of every tensor)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\0".encode())
        digest.update(
            tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        )
    return digest.hexdigest()


def _split(spec: str) -> tuple[str, str]:
    target, sep, function = spec.rpartition(":")
    if not sep or not target or not function.isidentifier():
        raise LvmError(
            f"--model {spec!r}: give path/to/file.py:function or package.module:function"
        )
    return target, function


def load_user_model(spec: str, device: str | torch.device = "cpu") -> tuple[Model, dict[str, Any]]:
    """Import ``file.py:function`` or ``module:function``, call it, check what it returns.

    Args:
        spec: ``path/to/file.py:function`` (the file is imported by path) or
            ``package.module:function`` (imported by name).
        device: Where to move the model.

    Returns:
        The model in eval mode, and its identity for the manifest.

    Raises:
        LvmError: The file or module cannot be found or fails to import, it has no such
            function, or the function does not return a Model.
    """
    target, function = _split(spec)
    path = Path(target)
    if target.endswith(".py"):
        if not path.is_file():
            raise LvmError(f"--model {spec!r}: file {target} does not exist")
        name = f"lvm_user_model_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise LvmError(f"--model {spec!r}: cannot import {target}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up by name
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[name]
            raise LvmError(
                f"--model {spec!r}: importing {target} failed: {type(err).__name__}: {err}"
            ) from None
        identity: dict[str, Any] = {
            "kind": "file",
            "path": str(path.resolve()),
            "function": function,
            "file_sha256": _sha256(path),
        }
    else:
        try:
            module = importlib.import_module(target)
        except Exception as err:
            raise LvmError(
                f"--model {spec!r}: cannot import module {target}: {type(err).__name__}: {err}"
            ) from None
        identity = {"kind": "module", "module": target, "function": function}
        module_file = getattr(module, "__file__", None)
        if module_file:
            identity["file_sha256"] = _sha256(Path(module_file))
    build = getattr(module, function, None)
    if build is None:
        raise LvmError(f"--model {spec!r}: {target} defines no {function!r}")
    if not callable(build):
        raise LvmError(f"--model {spec!r}: {function!r} in {target} is not a function")
    try:
        model = build()
    except Exception as err:
        raise LvmError(
            f"--model {spec!r}: {function}() raised {type(err).__name__}: {err}"
        ) from None
    if not isinstance(model, Model):
        raise LvmError(
            f"--model {spec!r}: {function}() returned {type(model).__name__}, not a lvmtoolkit "
            "Model; wrap your networks with lvmtoolkit.TorchVAE or lvmtoolkit.PyroVAE"
        )
    model = model.to(device).eval()
    identity["parameters_sha256"] = parameters_sha256(model)
    return model, identity


def _checkpoint_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    siblings = [path.with_suffix(".json")] if path.with_suffix(".json").is_file() else []
    return [path, *siblings] if path.is_file() else []


def load_model_spec(
    backend: str, checkpoint: str | None, device: str | torch.device
) -> tuple[Model, dict[str, Any]]:
    """A backend's model from ``checkpoint`` (its bundled one by default), with its identity."""
    from lvmtoolkit.plugins import load_backend_model

    model, checkpoint_path = load_backend_model(backend, checkpoint, device)
    path = Path(checkpoint_path)
    digest = hashlib.sha256()
    for file in _checkpoint_files(path):
        digest.update(file.name.encode() + b"\0" + _sha256(file).encode())
    identity = {
        "kind": "backend",
        "backend": backend,
        "checkpoint": str(path.resolve()),
        "checkpoint_sha256": digest.hexdigest(),
        "parameters_sha256": parameters_sha256(model),
    }
    return model, identity


def resolve_model(
    model_spec: str | None, backend: str, checkpoint: str | None, device: str | torch.device
) -> tuple[Model, dict[str, Any]]:
    """The model of a command: ``--model`` if given, else ``--backend`` / ``--checkpoint``."""
    if model_spec is not None:
        return load_user_model(model_spec, device)
    return load_model_spec(backend, checkpoint, device)


def rebuild_model(identity: dict[str, Any], device: str | torch.device = "cpu") -> Model:
    """The model a manifest's ``model`` entry describes, checked against its parameters."""
    if identity["kind"] == "backend":
        model, now = load_model_spec(identity["backend"], identity["checkpoint"], device)
    elif identity["kind"] == "file":
        model, now = load_user_model(f"{identity['path']}:{identity['function']}", device)
    else:
        model, now = load_user_model(f"{identity['module']}:{identity['function']}", device)
    if now["parameters_sha256"] != identity["parameters_sha256"]:
        raise LvmError(
            "the model found from the manifest has other parameters than the one the results "
            "were computed with; pass the right model to load_results(model=...)"
        )
    return model
