"""``lvm train``: train a backend's model on a dataset and write a checkpoint."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import click

from lvmtoolkit.cli.common import (
    backend_option,
    count_option,
    data_options,
    parse_key_values,
    runtime_options,
    seed_option,
    stderr,
)


def register(cli: click.Group) -> None:
    cli.add_command(train)


@click.command()
@backend_option
@data_options
@click.option(
    "-c",
    "--config",
    "config_values",
    multiple=True,
    metavar="KEY=VALUE",
    help="Architecture setting, repeatable, JSON values: -c latent_dim=16 -c 'hidden=[500,500]'.",
)
@count_option("--epochs", default=100, help="Passes over the training split.")
@count_option("--batch-size", default=100, help="Images per gradient step.")
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-3,
    show_default=True,
    help="Adam learning rate.",
)
@seed_option("--seed", help="Seed of initialisation, shuffling and binarisation.")
@click.option(
    "--eval-split",
    default="test",
    show_default=True,
    help="Split on which to report the final NELBO ('' to skip).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=str),
    help="Checkpoint folder to write (model.safetensors + config.json).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the checkpoint already in --output (refused without this flag).",
)
@runtime_options
def train(
    backend: str,
    dataset: str,
    data_dir: str | None,
    config_values: tuple[str, ...],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    eval_split: str,
    output: str,
    overwrite: bool,
    device: str,
    threads: int | None,
) -> None:
    """Train a model on the train split and write a checkpoint.

    Trains encoder and decoder jointly on the NELBO with Adam, then writes a safetensors
    checkpoint with a JSON description (backend, config, data, training summary). For a
    backend with a Bernoulli likelihood every batch is binarised afresh (dynamic
    binarisation) and the held-out NELBO is on the fixed binarisation; a backend with
    another likelihood (binary_data = False) trains and is scored on the grey levels.
    An existing checkpoint in --output is kept unless --overwrite is given; the new one
    is written atomically, so an interrupted run leaves the old one intact. The bundled
    VAE checkpoint was made with this command (see the README).

    \b
    Examples:
      lvm train --backend vae --epochs 20 -o runs/vae-quick
      lvm train --backend vae -c latent_dim=32 --dataset mnist --data-dir DIR -o runs/vae32
    """
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from lvmtoolkit.core.checkpoint import save_checkpoint
    from lvmtoolkit.core.model import config_from_dict
    from lvmtoolkit.core.options import type_problem
    from lvmtoolkit.core.provenance import TRAINED_ON, image_range
    from lvmtoolkit.core.runtime import resolve_device, set_threads
    from lvmtoolkit.core.training import held_out_nelbo
    from lvmtoolkit.core.training import train as train_model
    from lvmtoolkit.errors import LvmError
    from lvmtoolkit.plugins import get_backend, get_dataset

    set_threads(threads)
    torch_device = resolve_device(device)
    _check_output(Path(output), overwrite)
    model_class = get_backend(backend)
    overrides = {}
    for key, text in parse_key_values(config_values, "--config").items():
        try:
            overrides[key] = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            overrides[key] = text
    hints = typing.get_type_hints(model_class.config_class)
    for key, value in overrides.items():
        problem = type_problem(value, hints[key]) if key in hints else None
        if problem is not None:
            raise LvmError(f"--config {key}: {problem}")

    defaults = dataclasses.asdict(model_class.config_class())
    config = config_from_dict(model_class.config_class, {**defaults, **overrides})
    data_source = get_dataset(dataset)(data_dir)
    data = data_source.load("train")
    torch.manual_seed(seed)
    model = model_class(config).to(torch_device)
    if tuple(data.images.shape[1:]) != tuple(model.data_shape):
        raise LvmError(
            f"{dataset} images have shape {tuple(data.images.shape[1:])}, the "
            f"{backend} config expects {tuple(model.data_shape)}"
        )

    with Progress(
        TextColumn("[bold]train[/bold] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} epochs"),
        TextColumn("NELBO {task.fields[loss]:.2f}"),
        TimeRemainingColumn(),
        console=stderr,
    ) as progress:
        task = progress.add_task(f"{backend} on {dataset}", total=epochs, loss=float("nan"))
        summary = train_model(
            model,
            data.images,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            progress=lambda epoch, total, loss: progress.update(task, completed=epoch, loss=loss),
        )
    if eval_split:
        scored = held_out_nelbo(model, data_source.load(eval_split).images)
        summary[f"{eval_split}_nelbo"] = scored["nelbo"]
        summary["eval_protocol"] = scored["eval_protocol"]
    _check_output(Path(output), overwrite)  # it may have appeared while training
    description = {
        **data.description,
        "binarization": summary["binarization"],
        TRAINED_ON: [image_range(dataset, "train", 0, data.images.shape[0])],
    }
    description.pop("source", None)
    path = save_checkpoint(model, output, data=description, training=summary)
    stderr.print(
        f"wrote {path} "
        + ", ".join(f"{k}={v}" for k, v in summary.items() if k.endswith("nelbo") or k == "seconds")
    )


def _check_output(output: Path, overwrite: bool) -> None:
    """Refuse to replace a checkpoint (or write into a file) unless asked to."""
    from lvmtoolkit.core.checkpoint import CONFIG_FILE, WEIGHTS_FILE
    from lvmtoolkit.errors import CheckpointError

    if output.exists() and not output.is_dir():
        raise CheckpointError(f"--output {output} is a file; give a folder")
    existing = [name for name in (WEIGHTS_FILE, CONFIG_FILE) if (output / name).exists()]
    if existing and not overwrite:
        raise CheckpointError(
            f"{output} already holds a checkpoint ({', '.join(existing)}); pass --overwrite "
            "to replace it, or choose another --output"
        )
