"""``lvm refine``: NELBO after each number of refinement steps (the paper's Tables 1-2)."""

from __future__ import annotations

from typing import Any

import click

from lvmtoolkit.cli.common import (
    backend_option,
    checkpoint_option,
    count_option,
    data_options,
    dump_json,
    json_option,
    parse_key_values,
    refiner_options,
    runtime_options,
    seed_option,
    splits_option,
    stderr,
    steps_option,
)
from lvmtoolkit.cli.jobs import input_options, is_job, output_options
from lvmtoolkit.cli.jobs import run_refine as run_job


def register(cli: click.Group) -> None:
    cli.add_command(refine)


@click.command()
@backend_option
@checkpoint_option
@refiner_options(
    "Refiner (see `lvm refiners list`).",
    "Refiner option, repeatable, e.g. -o lr=0.01 -o optimizer=sgd (see `lvm refiners show NAME`).",
)
@steps_option(
    None,
    "Step counts at which to report the NELBO; the refiner runs to the largest. "
    "Default: the backend's (1,10,100,1000; nvae and nvae-flow: 1,10,100).",
)
@data_options
@splits_option("train,test")
@count_option(
    "--num-images",
    default=None,
    help="Images per split: the first N of the split. Default: the backend's (1000; nvae "
    "and nvae-flow: 100, whose steps cost ~70x the VAE's); with --data, all of it.",
)
@count_option(
    "--eval-samples", default=100, help="Posterior samples per image in each reported NELBO."
)
@seed_option("--eval-seed", help="Seed of the evaluation noise (the same for every row).")
@input_options
@output_options
@runtime_options
@json_option
def refine(
    backend: str,
    checkpoint: str | None,
    refiner: str,
    options: tuple[str, ...],
    steps: list[int] | None,
    dataset: str,
    data_dir: str | None,
    splits: list[str],
    num_images: int | None,
    eval_samples: int,
    eval_seed: int,
    data: tuple[str, ...],
    model_spec: str | None,
    output: str | None,
    overwrite: bool,
    shard_size: int,
    iwae_samples: int,
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

    With --data, --model or --output it runs as a job over all the data, in shards: your
    own images or arrays (--data), your own model (--model my_vae.py:build), every
    datapoint's refined posterior and NELBOs written to --output DIR (read them with
    lvmtoolkit.load_results), resumed by running the same command again, and split
    across processes by torchrun. See docs/jobs.md.

    \b
    Job examples:
      lvm refine --model my_vae.py:build --data pngs/ --output out/
      lvm refine --data digits.npy --steps 10,100 --output out/ --iwae-samples 1000
      torchrun --nproc-per-node 4 -m lvmtoolkit refine --data big.npy --output out/
    """
    steps, num_images = _backend_defaults(backend, model_spec, steps, num_images)
    if is_job(output, data, model_spec):
        params = click.get_current_context().params
        return run_job({**params, "steps": steps, "num_images": num_images})
    from lvmtoolkit.core.provenance import refuse_held_out_overlap
    from lvmtoolkit.core.runtime import resolve_device, set_threads
    from lvmtoolkit.errors import OptionError
    from lvmtoolkit.metrics import refinement_report
    from lvmtoolkit.plugins import get_dataset, get_refiner, load_backend_model

    set_threads(threads)
    torch_device = resolve_device(device)
    values = parse_key_values(options, "--option")
    if "steps" in values:
        raise OptionError("set the number of steps with --steps, not -o steps=...")
    refiner_obj = get_refiner(refiner)(**values)
    data_source = get_dataset(dataset)(data_dir)
    model, checkpoint = load_backend_model(backend, checkpoint, torch_device)
    split_images = {split: data_source.load(split).images[:num_images] for split in splits}
    refuse_held_out_overlap(
        getattr(model, "checkpoint_info", None), dataset, splits, num_images, checkpoint
    )

    with stderr.status(f"{refiner} on {num_images} images per split"):
        report = refinement_report(
            model,
            refiner_obj,
            split_images,
            steps,
            eval_samples=eval_samples,
            eval_seed=eval_seed,
            images=f"first {num_images} of each split",
            log=lambda split, line: stderr.print(f"[dim]{split}: {line}[/dim]"),
        )
    rendered = {
        "backend": backend,
        "checkpoint": checkpoint,
        "refiner": refiner,
        "options": report.refiners[refiner],
        "dataset": dataset,
        "protocol": report.protocol,
        "results": report.results,
    }
    if as_json:
        click.echo(dump_json(rendered))
    else:
        _print_table(rendered, splits)


def _backend_defaults(
    backend: str, model_spec: str | None, steps: list[int] | None, num_images: int | None
) -> tuple[list[int], int]:
    """``--steps`` and ``--num-images`` as given, else the backend's declared defaults."""
    from lvmtoolkit.core.model import Model
    from lvmtoolkit.plugins import get_backend

    model_class = Model if model_spec is not None else get_backend(backend)
    return (
        steps if steps is not None else list(model_class.refine_steps),
        num_images if num_images is not None else model_class.refine_num_images,
    )


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
