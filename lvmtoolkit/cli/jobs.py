"""Options that make a command a job (``--data``, ``--model``, ``--output``), and the
``lvm refine`` job that runs when they are given (see ``docs/jobs.md``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from lvmtoolkit.cli.common import count_option, dump_json, parse_key_values, stderr


def input_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--data`` and ``--model``: your own data and your own model."""
    f = click.option(
        "--model",
        "model_spec",
        default=None,
        metavar="FILE.py:FUNCTION|MODULE:FUNCTION",
        help="Your own model instead of --backend/--checkpoint: a function, called without "
        "arguments, that returns a lvmtoolkit Model (e.g. lvmtoolkit.TorchVAE wrapping your "
        "encoder and decoder). A .py file is imported by path, which runs its code.",
    )(f)
    return click.option(
        "--data",
        "data",
        multiple=True,
        type=click.Path(path_type=str),
        metavar="PATH",
        help="Your own data instead of --dataset/--split: a folder of images (all files, "
        "sorted by name, one size; converted and resized as `lvm inpaint` does), a .npy, "
        ".npz or .safetensors array (N, C, H, W) or (N, H, W), uint8 or floats in [0, 1], "
        "or an IDX file (*-ubyte[.gz]). Repeat to read several, one after the other. "
        "All of it is used unless --num-images is given.",
    )(f)


def output_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--output`` and what goes with it: per-datapoint results in resumable shards."""
    f = count_option(
        "--iwae-samples",
        default=0,
        minimum=0,
        help="Also record IWAE-k per datapoint with the amortized and the refined posterior "
        "as proposal (0: off).",
    )(f)
    f = count_option(
        "--shard-size",
        default=1000,
        help="Datapoints refined (and held in memory) at a time; each shard is written "
        "when done, so a rerun resumes after the last one.",
    )(f)
    f = click.option(
        "--overwrite",
        is_flag=True,
        help="Replace the results of another command in --output (the same command "
        "always resumes; delete the folder to start it afresh).",
    )(f)
    return click.option(
        "--output",
        type=click.Path(path_type=str, file_okay=False),
        default=None,
        metavar="DIR",
        help="Write every datapoint's refined posterior and NELBOs to DIR (safetensors + "
        "JSON lines + manifest.json); read them with lvmtoolkit.load_results(DIR). Run the "
        "same command again to resume an interrupted job; under torchrun the ranks share "
        "the shards.",
    )(f)


def is_job(output: str | None, data: tuple[str, ...], model_spec: str | None) -> bool:
    """Whether the job options were used (the command then runs as a job)."""
    return output is not None or bool(data) or model_spec is not None


def given(name: str) -> bool:
    """Whether the option ``name`` of the running command was given (not its default)."""
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source(name)
    return source not in (ParameterSource.DEFAULT, None)


def data_args(
    data: tuple[str, ...],
    dataset: str,
    data_dir: str | None,
    splits: list[str],
    num_images: int | None,
) -> dict[str, Any]:
    """How to open the command's data (see `lvmtoolkit.jobs.sources.open_source`).

    With ``--data``, ``--num-images`` limits the data only when given; with a registered
    dataset it is the number of images per split, as without a job.
    """
    from lvmtoolkit.errors import OptionError

    if data:
        if given("dataset") or given("splits"):
            raise OptionError("give --data or --dataset/--split, not both")
        limit = num_images if given("num_images") else None
        return {"paths": [str(Path(p).resolve()) for p in data], "num_images": limit}
    return {
        "dataset": dataset,
        "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
        "splits": list(splits),
        "num_images": num_images,
    }


def run_refine(params: Mapping[str, Any]) -> None:
    """``lvm refine`` as a job: see `lvmtoolkit.jobs.run_refine_job`.

    Args:
        params: Every parameter of ``lvm refine`` by name, as click parsed them (``steps``
            and ``num_images`` resolved to the backend's defaults where not given).
    """
    from lvmtoolkit.core.provenance import refuse_held_out_overlap
    from lvmtoolkit.core.runtime import resolve_device, set_threads
    from lvmtoolkit.jobs import RefineJob, join_world, open_source, resolve_model, run_refine_job

    p = params
    set_threads(p["threads"])
    args = data_args(p["data"], p["dataset"], p["data_dir"], p["splits"], p["num_images"])
    values = parse_key_values(p["options"], "--option")
    world = join_world(resolve_device(p["device"]))
    try:
        model, identity = resolve_model(
            p["model_spec"], p["backend"], p["checkpoint"], world.device
        )
        if "dataset" in args:
            refuse_held_out_overlap(
                getattr(model, "checkpoint_info", None),
                args["dataset"],
                args["splits"],
                args["num_images"],
                str(identity.get("checkpoint")),
            )
        job = RefineJob(
            model=model,
            model_identity=identity,
            refiner=p["refiner"],
            options=values,
            steps=p["steps"],
            source=open_source(args, model.data_shape),
            source_args=args,
            eval_samples=p["eval_samples"],
            eval_seed=p["eval_seed"],
            iwae_samples=p["iwae_samples"],
            shard_size=p["shard_size"],
        )
        report = run_refine_job(
            job,
            p["output"],
            world=world,
            overwrite=p["overwrite"],
            log=lambda line: stderr.print(f"[dim]{line}[/dim]"),
        )
    finally:
        world.close()
    if report is None:
        return
    if p["as_json"]:
        click.echo(dump_json(report))
    else:
        print_report(report)


def print_report(report: dict[str, Any]) -> None:
    """The job's summary as a table on stderr."""
    from rich.table import Table

    results = report["results"]
    model = report["model"]
    what = model.get("backend") or f"{model.get('path', model.get('module'))}:{model['function']}"
    table = Table(title=f"NELBO on {results['num_images']} datapoints: {what}, {report['refiner']}")
    table.add_column("steps", justify="right")
    table.add_column("NELBO", justify="right")
    table.add_column("improved", justify="right")
    table.add_row("amortized", f"{results['amortized']:.2f}", "")
    for step, row in results["steps"].items():
        table.add_row(
            step, f"{row['nelbo']:.2f}", f"{row['images_improved']}/{results['num_images']}"
        )
    stderr.print(table)
    if "iwae" in results:
        iwae = results["iwae"]
        stderr.print(
            f"IWAE-{report['protocol']['iwae_samples']}: amortized proposal "
            f"{iwae['amortized']:.2f}, refined proposal {iwae['refined']:.2f} (log p(x) bound)"
        )
    stderr.print(
        f"[dim]{report['protocol']['metric']}; {report['protocol']['samples_per_nelbo']} "
        f"posterior samples per NELBO; binarisation: {report['protocol']['binarization']}.[/dim]"
    )


@dataclass
class Inputs:
    """A command's model and images, from --backend/--dataset or --model/--data.

    Attributes:
        model: The model, on the device.
        backend: Its label: the backend name, or the ``--model`` spec.
        checkpoint: The checkpoint path (None for ``--model``).
        dataset: The data's label: the dataset name, or the ``--data`` paths.
        split_images: ``{split: images}``; with ``--data`` one entry, ``"data"``.
    """

    model: Any
    backend: str
    checkpoint: str | None
    dataset: str
    split_images: dict[str, Any]


def command_inputs(params: Mapping[str, Any], device: Any) -> Inputs:
    """The model and the first ``num_images`` images of each split (or of ``--data``), for
    commands that hold all their images in memory (``lvm gaps``).

    Args:
        params: The command's parameters (click's ``ctx.params``): ``backend``,
            ``checkpoint``, ``model_spec``, ``data``, ``dataset``, ``data_dir``, ``splits``
            and ``num_images``, as `input_options`, `data_options` and ``--split`` give them.
        device: Where the model goes.
    """
    from lvmtoolkit.jobs import open_data, resolve_model

    backend, checkpoint, model_spec = params["backend"], params["checkpoint"], params["model_spec"]
    data, dataset, splits, num_images = (
        params["data"], params["dataset"], params["splits"], params["num_images"]
    )  # fmt: skip
    model, identity = resolve_model(model_spec, backend, checkpoint, device)
    if data:
        if given("dataset") or given("splits"):
            from lvmtoolkit.errors import OptionError

            raise OptionError("give --data or --dataset/--split, not both")
        source = open_data(data, model.data_shape, num_images)
        split_images = {"data": source.read(0, len(source))}
        dataset = ", ".join(data)
    else:
        from lvmtoolkit.core.provenance import refuse_held_out_overlap
        from lvmtoolkit.plugins import get_dataset

        loader = get_dataset(dataset)(params["data_dir"])
        split_images = {split: loader.load(split).images[:num_images] for split in splits}
        refuse_held_out_overlap(
            getattr(model, "checkpoint_info", None),
            dataset,
            splits,
            num_images,
            str(identity.get("checkpoint")),
        )
    return Inputs(
        model,
        model_spec or backend,
        identity.get("checkpoint"),
        dataset,
        split_images,
    )


def user_models(
    model_spec: str, backends: str | None, checkpoints: dict[str, str], device: Any
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """``lvm evaluate --model``: the user's model as the one model evaluated."""
    from lvmtoolkit.errors import OptionError
    from lvmtoolkit.jobs import load_user_model

    if backends or checkpoints:
        raise OptionError("give --model or --backend/--checkpoint, not both")
    model, identity = load_user_model(model_spec, device)
    return {model_spec: model}, {model_spec: identity.get("path", model_spec)}, []


def data_images(data: tuple[str, ...], models: dict[str, Any], num_images: int) -> Any:
    """``lvm evaluate --data``: the first ``num_images`` datapoints, for every model."""
    from lvmtoolkit.errors import OptionError
    from lvmtoolkit.jobs import open_data

    if given("dataset") or given("split"):
        raise OptionError("give --data or --dataset/--split, not both")
    shapes = {tuple(model.data_shape) for model in models.values()}
    if len(shapes) != 1:
        raise OptionError("--data needs models of one datapoint shape; pick them with --backend")
    source = open_data(data, shapes.pop(), num_images)
    return source.read(0, len(source))
