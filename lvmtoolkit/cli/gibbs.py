"""``lvm inpaint`` and ``lvm denoise``: the Gibbs chain on image files."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from lvmtoolkit.cli.common import (
    SEED,
    backend_option,
    checkpoint_option,
    dump_json,
    load_model,
    parse_key_values,
    runtime_options,
    stderr,
)

_FILE_RULES = """\
\b
Images: PNG or JPEG, grey or RGB, at least the model's size (28x28 for the
MNIST models). One of another aspect ratio is padded on its short side with
the median of its border pixels, then scaled to the model's size with a box
filter; the result is scaled back with a bicubic filter and the padding
cropped, so each output has its input's size (8-bit, in the model's channels).
Images over 33.5 million pixels, or so far from the model's aspect ratio that
the padded canvas would be, are refused. Outputs are written atomically, all
of them only once every one succeeded: no half-written file, and no partial
set of outputs, is ever left (also on Ctrl-C or SIGTERM)."""

_INPAINT_HELP = f"""Fill the masked region of IMAGE (a file or a folder of images).

Runs the Gibbs chain of "Improving Inference in Latent Variable Models": each
iteration refines q(z | x') with --refiner (warm-started from the previous
iteration), draws z, draws x ~ p(x | z) and copies x into the masked pixels only.
Known pixels are written back from the input file unchanged.

{_FILE_RULES}

\b
Examples:
  lvm inpaint digit.png --mask hole.png -o filled.png
  lvm inpaint digit.png --mask hole.png -o filled.png --refiner svi --grid grid.png
  lvm inpaint digits/ --mask masks/ -o filled/ --refiner svi -O steps=20
"""

_DENOISE_HELP = f"""Denoise IMAGE (a file or a folder of images) with the Gibbs chain.

The inpainting chain with no known pixels: each iteration refines q(z | x'), draws z
and replaces the whole image by a draw from p(x | z). The result moves towards what
the model finds likely; few iterations stay closer to the input.

{_FILE_RULES}

\b
Examples:
  lvm denoise noisy.png -o clean.png
  lvm denoise noisy/ -o clean/ --refiner svi --iterations 10 --json
"""


def register(cli: click.Group) -> None:
    cli.add_command(inpaint)
    cli.add_command(denoise)


def _chain_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by both commands, in the order --help shows them."""
    decorators = [
        click.option(
            "-o",
            "--output",
            required=True,
            type=click.Path(path_type=Path),
            help="Output file (.png) for one image, or a folder (made if missing) for a "
            "folder of images; an existing folder for one image gets IMAGE's name as .png.",
        ),
        backend_option,
        checkpoint_option,
        click.option(
            "--refiner",
            default="amortized",
            show_default=True,
            help="Refiner run in every iteration (see `lvm refiners list`).",
        ),
        click.option(
            "-O",
            "--option",
            "options",
            multiple=True,
            metavar="KEY=VALUE",
            help="Refiner option, repeatable (see `lvm refiners show NAME`). Unless given, "
            "refiners that have them run with steps=10 and select_samples=2 per "
            "iteration.",
        ),
        click.option(
            "--iterations",
            type=click.IntRange(min=1),
            default=100,
            show_default=True,
            help="Gibbs iterations.",
        ),
        click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the chain."),
        click.option(
            "--result",
            "result_kind",
            type=click.Choice(["mean", "sample"]),
            default="mean",
            show_default=True,
            help="Fill with the likelihood mean at the last iteration, or the last sample.",
        ),
        click.option(
            "--grid",
            type=click.Path(path_type=Path),
            default=None,
            help="Also write a PNG grid: input, mask, iterations, result (first 16 images).",
        ),
        runtime_options,
        click.option("--json", "as_json", is_flag=True, help="Write a report as JSON to stdout."),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


@click.command(help=_INPAINT_HELP)
@click.argument("image", type=click.Path(path_type=Path))
@click.option(
    "--mask",
    required=True,
    type=click.Path(path_type=Path),
    help="Mask PNG of the image's size, black and white only: white marks the pixels to "
    "fill. For a folder of images: one mask for all, or a folder of masks named as the "
    "images (NAME.png).",
)
@click.option(
    "--white-is-known",
    is_flag=True,
    help="Read white in masks as the known pixels and black as the region to fill.",
)
@_chain_options
def inpaint(image: Path, mask: Path, white_is_known: bool, **kwargs: Any) -> None:
    """Fill the masked region of IMAGE (help: ``_INPAINT_HELP``)."""
    _run("inpaint", image, mask, not white_is_known, **kwargs)


@click.command(help=_DENOISE_HELP)
@click.argument("image", type=click.Path(path_type=Path))
@_chain_options
def denoise(image: Path, **kwargs: Any) -> None:
    """Denoise IMAGE (help: ``_DENOISE_HELP``)."""
    _run("denoise", image, None, True, **kwargs)


def _plan_outputs(image: Path, output: Path) -> tuple[list[Path], list[Path]]:
    """Input files and the output file of each."""
    from lvmtoolkit.errors import ImageError
    from lvmtoolkit.images import check_writable, list_images

    if not image.exists():
        raise ImageError(f"image {image} does not exist")
    if image.is_dir():
        inputs = list_images(image)
        if output.exists() and not output.is_dir():
            raise ImageError(f"output {output} is a file; for a folder of images give a folder")
        outputs = [output / f"{path.stem}.png" for path in inputs]
        names = [p.name for p in outputs]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise ImageError(f"several images would be written as {', '.join(clashes)}")
        _check_folder(output)
        return inputs, outputs
    target = output / f"{image.stem}.png" if output.is_dir() else output
    return [image], [check_writable(target)]


def _check_folder(folder: Path) -> None:
    """The output folder, or its nearest existing parent, must be a writable folder."""
    import os

    from lvmtoolkit.errors import ImageError

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ImageError(f"cannot write to {folder}: {existing} is not a writable folder")


def _mask_files(mask: Path, inputs: list[Path]) -> list[Path]:
    from lvmtoolkit.errors import ImageError

    if not mask.exists():
        raise ImageError(f"mask {mask} does not exist")
    if not mask.is_dir():
        return [mask] * len(inputs)
    files = []
    for path in inputs:
        candidate = mask / f"{path.stem}.png"
        if not candidate.is_file():
            raise ImageError(f"no mask for {path.name} in {mask} (expected {candidate.name})")
        files.append(candidate)
    return files


def _run(
    task: str,
    image: Path,
    mask: Path | None,
    white_is_missing: bool,
    *,
    output: Path,
    backend: str,
    checkpoint: str | None,
    refiner: str,
    options: tuple[str, ...],
    iterations: int,
    seed: int,
    result_kind: str,
    grid: Path | None,
    device: str,
    threads: int | None,
    as_json: bool,
) -> None:
    import torch

    from lvmtoolkit.core.runtime import resolve_device, set_threads
    from lvmtoolkit.errors import ImageError
    from lvmtoolkit.images import (
        atomic_write_all,
        check_writable,
        grid_writer,
        image_writer,
        load_batch,
    )
    from lvmtoolkit.tasks import denoise as run_denoise
    from lvmtoolkit.tasks import gibbs_refiner
    from lvmtoolkit.tasks import inpaint as run_inpaint

    set_threads(threads)
    torch_device = resolve_device(device)
    # Everything that can fail on bad input fails before the chain runs.
    inputs, outputs = _plan_outputs(image, output)
    if grid is not None:
        check_writable(grid)
        if grid.resolve() in {path.resolve() for path in outputs}:
            raise ImageError(f"--grid {grid} is also an output (-o); give the grid another name")
    masks = _mask_files(mask, inputs) if mask is not None else None
    refiner_obj = gibbs_refiner(refiner, **parse_key_values(options, "--option"))
    model, checkpoint = load_model(backend, checkpoint, torch_device)
    batch = load_batch(inputs, model.data_shape, masks, white_is_missing=white_is_missing)
    x, observed = batch.x.to(torch_device), batch.observed.to(torch_device)

    every = max(1, iterations // 4) if grid is not None else 0
    with stderr.status(f"{task}: {len(inputs)} image(s), {refiner}, {iterations} iterations"):
        if task == "inpaint":
            result = run_inpaint(
                model,
                x,
                observed,
                refiner_obj,
                iterations=iterations,
                seed=seed,
                output=result_kind,
                record_every=every,
            )
        else:
            result = run_denoise(
                model,
                x,
                refiner_obj,
                iterations=iterations,
                seed=seed,
                output=result_kind,
                record_every=every,
            )

    created = image.is_dir() and not output.exists()
    if image.is_dir():
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ImageError(f"cannot create output folder {output}: {err.strerror}") from None
    writes = [
        (path, image_writer(path, pixels))
        for path, pixels in zip(outputs, batch.restore(result.images), strict=True)
    ]
    if grid is not None:
        start = torch.where(observed, x, torch.zeros_like(x)) if task == "inpaint" else x
        columns = [("input", start.cpu())]
        if task == "inpaint":
            columns.append(("mask", (~observed).float().cpu()))
        columns += [
            (f"t={t}", image.cpu())
            for t, image in zip(result.recorded_at, result.trajectory, strict=True)
            if t != iterations
        ]
        columns.append(("result", result.images.cpu()))
        missing = ~observed.cpu() if task == "inpaint" else None
        writes.append((grid, grid_writer(grid, columns, missing=missing)))
    # All outputs (and the grid) or none: a failure or an interrupt leaves no partial set.
    try:
        atomic_write_all(writes)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                output.rmdir()  # only if still empty
        raise

    report = {
        "task": task,
        "backend": backend,
        "checkpoint": checkpoint,
        "refiner": refiner,
        "options": {k: str(v) for k, v in vars(refiner_obj.options).items()},
        "iterations": iterations,
        "seed": seed,
        "result": result_kind,
        "seconds": round(result.seconds, 2),
        "files": [
            {"input": str(src), "output": str(dst)}
            | ({"mask": str(masks[i])} if masks is not None else {})
            for i, (src, dst) in enumerate(zip(inputs, outputs, strict=True))
        ],
        "grid": str(grid) if grid is not None else None,
    }
    if as_json:
        click.echo(dump_json(report))
    else:
        where = outputs[0] if len(outputs) == 1 else outputs[0].parent
        stderr.print(
            f"{task}: wrote {len(outputs)} image(s) to {where} "
            f"({refiner}, {iterations} iterations, {result.seconds:.1f} s)"
            + (f"; grid {grid}" if grid is not None else ""),
            markup=False,  # paths may hold [brackets]
        )
