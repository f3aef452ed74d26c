"""``lvm refine``: NELBO after each number of refinement steps (the paper's Tables 1-2)."""

from __future__ import annotations

import json
from typing import Any

import click

from lvmtoolkit.cli.common import (
    backend_option,
    checkpoint_option,
    data_options,
    load_model,
    parse_key_values,
    runtime_options,
    stderr,
)


def parse_int_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
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


def register(cli: click.Group) -> None:
    cli.add_command(refine)


@click.command()
@backend_option
@checkpoint_option
@click.option(
    "--refiner", default="svi", show_default=True, help="Refiner (see `lvm refiners list`)."
)
@click.option(
    "-o",
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Refiner option, repeatable, e.g. -o lr=0.01 -o optimizer=sgd "
    "(see `lvm refiners show NAME`).",
)
@click.option(
    "--steps",
    default="1,10,100,1000",
    show_default=True,
    callback=parse_int_list,
    help="Step counts at which to report the NELBO; the refiner runs to the largest.",
)
@data_options
@click.option(
    "--split",
    "splits",
    default="train,test",
    show_default=True,
    callback=parse_splits,
    help="Comma-separated dataset splits.",
)
@click.option(
    "--num-images",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Images per split: the first N of the split.",
)
@click.option(
    "--eval-samples",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Posterior samples per image in each reported NELBO.",
)
@click.option(
    "--eval-seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the evaluation noise (the same for every row).",
)
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="Write the results as JSON to stdout.")
def refine(
    backend: str,
    checkpoint: str | None,
    refiner: str,
    options: tuple[str, ...],
    steps: list[int],
    dataset: str,
    data_dir: str | None,
    splits: list[str],
    num_images: int,
    eval_samples: int,
    eval_seed: int,
    device: str,
    threads: int | None,
    as_json: bool,
) -> None:
    """Refine the posterior per datapoint and report NELBO after each step count.

    Loads a model (the backend's bundled checkpoint unless --checkpoint is given), takes
    the first --num-images images of each split, binarises them with a fixed seed, and
    reports the NELBO (nats per image) of the amortized posterior and of the refined one
    after each number of steps in --steps, in the form of Table 1 of "Improving Inference
    in Latent Variable Models". svi-style refiners keep each image's best posterior under
    their own selection estimate (its own noise); the table's evaluation draws other
    noise, so an image whose refinement gained little can score slightly worse there.

    \b
    Examples:
      lvm refine
      lvm refine --steps 1,10,100 --split test --num-images 200 --json
      lvm refine -o optimizer=sgd -o lr=0.5 -o momentum=0.9
      lvm refine --dataset mnist --data-dir ../shared/data/mnist --split test
    """
    from lvmtoolkit.core.runtime import resolve_device, set_threads
    from lvmtoolkit.data import EVAL_BINARIZATION_SEED
    from lvmtoolkit.errors import OptionError
    from lvmtoolkit.metrics import nelbo_after_steps
    from lvmtoolkit.plugins import get_dataset, get_refiner

    set_threads(threads)
    torch_device = resolve_device(device)
    refiner_class = get_refiner(refiner)
    values = parse_key_values(options, "--option")
    if "steps" in values:
        raise OptionError("set the number of steps with --steps, not -o steps=...")
    takes_steps = "steps" in refiner_class.option_names()
    if takes_steps:
        values["steps"] = str(max(steps))
    refiner_obj = refiner_class(**values)
    data_source = get_dataset(dataset)(data_dir)
    model, checkpoint = load_model(backend, checkpoint, torch_device)

    results: dict[str, Any] = {}
    for split in splits:
        data = data_source.load(split)
        images = data.images[:num_images]
        x = model.evaluation_data(images).to(torch_device)
        with stderr.status(f"{split}: {refiner} on {x.shape[0]} images"):
            results[split] = nelbo_after_steps(
                model,
                refiner_obj,
                x,
                steps if takes_steps else [],
                eval_samples=eval_samples,
                eval_seed=eval_seed,
                log=lambda line, split=split: stderr.print(f"[dim]{split}: {line}[/dim]"),
            )

    report = {
        "backend": backend,
        "checkpoint": checkpoint,
        "refiner": refiner,
        "options": _jsonable(vars(refiner_obj.options)),
        "dataset": dataset,
        "protocol": {
            "metric": "NELBO in nats per image, mean over images (lower is better)",
            "samples_per_nelbo": eval_samples,
            "kl": "closed form where the posterior/prior pair has one, else Monte Carlo",
            "binarization": (
                f"fixed Bernoulli draw, seed {EVAL_BINARIZATION_SEED}"
                if model.binary_data
                else "none (grey levels)"
            ),
            "images": f"first {num_images} of each split",
            "eval_seed": eval_seed,
        },
        "results": results,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_table(report, splits)


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
        for k, v in values.items()
    }


def _print_table(report: dict[str, Any], splits: list[str]) -> None:
    from rich.table import Table

    results = report["results"]
    table = Table(
        title=f"NELBO on {report['dataset']}: {report['backend']}, {report['refiner']} refiner"
    )
    table.add_column("steps", justify="right")
    for split in splits:
        table.add_column(f"NELBO {split}", justify="right")
        table.add_column("improved", justify="right")
    table.add_row("amortized", *[v for s in splits for v in (f"{results[s]['amortized']:.2f}", "")])
    all_steps = sorted({int(k) for s in splits for k in results[s]["steps"]})
    for step in all_steps:
        cells = []
        for split in splits:
            row = results[split]["steps"].get(str(step))
            cells += (
                [f"{row['nelbo']:.2f}", f"{row['images_improved']}/{results[split]['num_images']}"]
                if row
                else ["", ""]
            )
        table.add_row(str(step), *cells)
    console = stderr
    console.print(table)
    protocol = report["protocol"]
    console.print(
        f"[dim]{protocol['metric']}; {protocol['samples_per_nelbo']} posterior samples per "
        f"image; {protocol['binarization']}; {protocol['images']}; 'improved' counts images "
        f"whose NELBO is below the amortized one. Checkpoint: {report['checkpoint']}[/dim]"
    )
