"""Options and helpers shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

stderr = Console(stderr=True)

SEED = click.IntRange(0, 2**63 - 1)
"""Click type of every seed option: an integer torch accepts (0..2**63-1)."""


def seed_option(*decls: str, help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A seed option (default 0; `SEED` refuses what torch would not take)."""
    return click.option(*decls, type=SEED, default=0, show_default=True, help=help)


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


def parse_int_list(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> list[int] | None:
    if value is None:
        return None
    try:
        numbers = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of integers, e.g. 1,10,100"
        ) from None
    if not numbers or numbers[0] < 1:
        raise click.BadParameter(f"{value!r}: give one or more step counts, each at least 1")
    return numbers


def parse_splits(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    splits = [part.strip() for part in value.split(",") if part.strip()]
    if not splits:
        raise click.BadParameter("give at least one split, e.g. train,test")
    return list(dict.fromkeys(splits))


def refiner_options(refiner_help: str, option_help: str) -> Callable[..., Any]:
    """``--refiner NAME`` (default svi) and repeatable ``-o KEY=VALUE`` refiner options."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option(
            "-o", "--option", "options", multiple=True, metavar="KEY=VALUE", help=option_help
        )(f)
        return click.option("--refiner", default="svi", show_default=True, help=refiner_help)(f)

    return decorate


def steps_option(default: str | None, help: str) -> Callable[..., Any]:
    """``--steps 1,10,100``: step counts, parsed to a sorted list of distinct integers >= 1."""
    return click.option(
        "--steps", default=default, show_default=default is not None, callback=parse_int_list,
        help=help,
    )  # fmt: skip


def splits_option(default: str) -> Callable[..., Any]:
    """``--split train,test``: dataset splits, comma-separated, duplicates dropped."""
    return click.option(
        "--split", "splits", default=default, show_default=True, callback=parse_splits,
        help="Comma-separated dataset splits.",
    )  # fmt: skip


def count_option(
    *decls: str, default: int | None, help: str, minimum: int = 1
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An integer option of at least ``minimum`` (a count: steps, images, samples, chains).

    Click refuses a smaller value with a message naming the option, before any work; a
    default is shown in ``--help`` unless it is None (then the help says what None means).
    """
    return click.option(
        *decls,
        type=click.IntRange(min=minimum),
        default=default,
        show_default=default is not None,
        help=help,
    )


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--json", "as_json", is_flag=True, help="Write the results as JSON to stdout."
    )(f)


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
