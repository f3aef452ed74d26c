"""Options and helpers shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

stderr = Console(stderr=True)

SEED = click.IntRange(0, 2**63 - 1)
"""Click type of every seed option: an integer torch accepts (0..2**63-1)."""


def dump_json(data: Any) -> str:
    """``data`` as JSON for stdout; NaN and infinities become ``null``.

    ``json.dumps`` would write ``NaN``, which is not JSON: a diverged NELBO must not make
    a report unreadable. ``null`` says "no finite value" in every JSON reader.
    """
    import json
    import math

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item) for item in value]
        return value

    return json.dumps(clean(data), indent=2, allow_nan=False, default=str)


def backend_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--backend",
        default="vae",
        show_default=True,
        help="Model backend (see `lvm plugins`).",
    )(f)


def checkpoint_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--checkpoint",
        type=click.Path(path_type=str),
        default=None,
        help="Checkpoint folder or .safetensors file. Default: the backend's bundled one.",
    )(f)


def data_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--data-dir",
        type=click.Path(path_type=str),
        default=None,
        help="Folder with the dataset's files (for mnist/fashion-mnist: the IDX .gz files). "
        "Default: download (mnist, fashion-mnist) or the bundled file (mnist-5k).",
    )(f)
    return click.option(
        "--dataset",
        default="mnist-5k",
        show_default=True,
        help="Dataset name (see `lvm datasets`).",
    )(f)


def runtime_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--threads",
        type=int,
        default=None,
        help="Torch CPU threads. Default: torch's choice (one per core).",
    )(f)
    return click.option(
        "--device",
        default="cpu",
        show_default=True,
        help="Torch device: cpu, cuda, cuda:1.",
    )(f)


def parse_key_values(pairs: tuple[str, ...], what: str) -> dict[str, str]:
    """``("lr=0.01", "steps=5")`` -> ``{"lr": "0.01", "steps": "5"}``."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=what)
        values[key.strip()] = value.strip()
    return values
