"""``lvm inpaint`` and ``lvm denoise``: restore image files by inference on what was observed."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from lvmtoolkit.cli.common import (
    backend_option,
    checkpoint_option,
    count_option,
    dump_json,
    parse_key_values,
    runtime_options,
    seed_option,
    stderr,
)
from lvmtoolkit.tasks import METHODS

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

_METHOD_LINES = "\n".join(f"  {name}: {text}" for name, text in METHODS.items())

_METHODS_HELP = f"""\
\b
Methods (--method):
{_METHOD_LINES}

The default, conditional with the svi refiner (300 steps at learning rate 0.2),
was chosen by measurement on held-out digits (docs/results/restoration.md)."""

_NOISE_HELP = """\
\b
Noise models (--noise NAME[:KEY=VALUE,...]; `lvm plugins` lists installed ones):
  missing                       the mask's pixels are unknown, the others exact
  gaussian:variance=0.5         y = clip(x + N(0, variance), 0, 1), clipping
                                treated exactly (censoring); clip=false: none
  salt-pepper:rate=0.2          a pixel set to 0 or 1 with probability rate
  bit-flip:rate=0.1             a binary pixel flipped with probability rate
salt-pepper and bit-flip observe black-and-white images: with a model of
binary pixels, grey inputs are thresholded at 0.5 first."""

_INPAINT_HELP = f"""Fill the masked region of IMAGE (a file or a folder of images).

Infers the missing pixels from the observed ones: refines q(z | y) with
--refiner under the likelihood of the observed pixels only (the missing ones
start at 0 for the encoder), then writes the posterior mean E[x | y]. Known
pixels are written back from the input file unchanged. With --noise the known
pixels are noisy observations instead (and are denoised too).

{_METHODS_HELP}

{_FILE_RULES}

\b
Examples:
  lvm inpaint digit.png --mask hole.png -o filled.png
  lvm inpaint digit.png --mask hole.png -o filled.png --method mwg --grid grid.png
  lvm inpaint digit.png --mask hole.png -o sample.png --result sample --seed 3
  lvm inpaint digits/ --mask masks/ -o filled/ -O steps=1000
  lvm inpaint digit.png --mask hole.png -o filled.png --method pseudo-gibbs
"""

_DENOISE_HELP = f"""Denoise IMAGE (a file or a folder of images) under a noise model.

Refines q(z | y) with --refiner under p(y | z), the likelihood of the noisy image
given the latents (from the model's pixel likelihood and --noise), and writes
the posterior mean E[x | y]. The noise model it assumes is printed; give the
right one with --noise.

{_METHODS_HELP}

{_NOISE_HELP}

{_FILE_RULES}

\b
Examples:
  lvm denoise noisy.png -o clean.png --noise gaussian:variance=0.5
  lvm denoise noisy.png -o clean.png --noise salt-pepper:rate=0.2 --method importance
  lvm denoise noisy/ -o clean/ --noise gaussian:variance=0.1 --json
"""


def register(cli: click.Group) -> None:
    cli.add_command(inpaint)
    cli.add_command(denoise)


def _options(f: Callable[..., Any]) -> Callable[..., Any]:
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
            "--method",
            type=click.Choice(list(METHODS)),
            default="conditional",
            show_default=True,
            help="How p(x | y) is inferred (see Methods above).",
        ),
        click.option(
            "--refiner",
            default="svi",
            show_default=True,
            help="Refiner of q(z | y) (see `lvm refiners list`); for pseudo-gibbs, the "
            "refiner run in every iteration.",
        ),
        click.option(
            "-O",
            "--option",
            "options",
            multiple=True,
            metavar="KEY=VALUE",
            help="Refiner option, repeatable (see `lvm refiners show NAME`). Unless given, "
            "refiners that have them run steps=300, lr=0.2, lr_scaling=none, "
            "hierarchical_flow_lr=0.0075 (pseudo-gibbs: steps=10 and select_samples=2 per "
            "iteration).",
        ),
        count_option(
            "--iterations",
            default=None,
            help="Chain length of mwg (default 300) and pseudo-gibbs (default 100).",
        ),
        count_option(
            "--samples",
            default=None,
            help="Draws of z averaged for the mean (conditional, default 32) or importance "
            "samples (importance, default 256).",
        ),
        seed_option("--seed", help="Seed of the noise."),
        click.option(
            "--result",
            "result_kind",
            type=click.Choice(["mean", "sample"]),
            default="mean",
            show_default=True,
            help="Write the posterior mean E[x | y], or one posterior sample.",
        ),
        click.option(
            "--grid",
            type=click.Path(path_type=Path),
            default=None,
            help="Also write a PNG grid: input, mask, result, uncertainty (posterior "
            "standard deviation, white = 0.5) and posterior samples (first 16 images).",
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
@click.option(
    "--noise",
    default="missing",
    show_default=True,
    metavar="NAME[:KEY=VALUE,...]",
    help="Observation model of the known pixels: missing (exact), or a noise model such as "
    "gaussian:variance=0.1 (see `lvm denoise --help`).",
)
@_options
def inpaint(image: Path, mask: Path, white_is_known: bool, **kwargs: Any) -> None:
    """Fill the masked region of IMAGE (help: ``_INPAINT_HELP``)."""
    _run("inpaint", image, mask, not white_is_known, **kwargs)


@click.command(help=_DENOISE_HELP)
@click.argument("image", type=click.Path(path_type=Path))
@click.option(
    "--noise",
    default="gaussian:variance=0.5",
    show_default=True,
    metavar="NAME[:KEY=VALUE,...]",
    help="The noise model the image was corrupted by (see Noise models above).",
)
@_options
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
    method: str,
    noise: str,
    refiner: str,
    options: tuple[str, ...],
    iterations: int | None,
    samples: int | None,
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
    from lvmtoolkit.plugins import load_backend_model
    from lvmtoolkit.tasks.gibbs import gibbs_refiner
    from lvmtoolkit.tasks.observations import parse_observation
    from lvmtoolkit.tasks.observed_model import ObservedModel
    from lvmtoolkit.tasks.restoration import METHOD_DEFAULTS, restoration_refiner, restore

    set_threads(threads)
    torch_device = resolve_device(device)
    # Everything that can fail on bad input fails before anything is computed or written.
    observation = parse_observation(noise)
    if task == "denoise" and observation.keeps_observed:
        raise click.BadParameter(
            f"{observation.name} is not a noise model; to fill missing pixels use "
            "`lvm inpaint --mask`",
            param_hint="--noise",
        )
    inputs, outputs = _plan_outputs(image, output)
    if grid is not None:
        check_writable(grid)
        if grid.resolve() in {path.resolve() for path in outputs}:
            raise ImageError(f"--grid {grid} is also an output (-o); give the grid another name")
    masks = _mask_files(mask, inputs) if mask is not None else None
    make_refiner = gibbs_refiner if method == "pseudo-gibbs" else restoration_refiner
    refiner_obj = make_refiner(refiner, **parse_key_values(options, "--option"))
    model, checkpoint = load_backend_model(backend, checkpoint, torch_device)
    ObservedModel(model, observation)  # refuses a noise model that does not fit, now
    batch = load_batch(inputs, model.data_shape, masks, white_is_missing=white_is_missing)
    x, observed = batch.x.to(torch_device), batch.observed.to(torch_device)
    if not observation.keeps_observed:
        for file in batch.files:
            file.observed = None  # noisy known pixels are restored too, not copied back
    notes = _notes(method, iterations, samples)
    if observation.binary_observations and model.binary_data:
        grey = bool(((x > 0) & (x < 1)).any())
        x = (x > 0.5).to(x.dtype)
        if grey:
            notes.append(f"{observation.name} observes black and white: input thresholded at 0.5")
    if task == "denoise":
        stderr.print(f"denoise: assuming noise {observation.describe()}", markup=False)
    for note in notes:
        stderr.print(f"note: {note}", markup=False)

    defaults = METHOD_DEFAULTS[method]
    iterations = iterations or defaults.get("iterations")
    samples = samples or defaults.get("num_samples")
    keep = 3 if grid is not None and method != "pseudo-gibbs" else 0
    with stderr.status(f"{task}: {len(inputs)} image(s), {method}, {refiner}"):
        restored = restore(
            model,
            x,
            observation,
            mask=observed if task == "inpaint" else None,
            method=method,
            refiner=refiner_obj,
            num_samples=samples,
            keep=keep,
            iterations=iterations,
            seed=seed,
            result=result_kind,  # type: ignore[arg-type]
        )

    created = image.is_dir() and not output.exists()
    if image.is_dir():
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ImageError(f"cannot create output folder {output}: {err.strerror}") from None
    writes = [
        (path, image_writer(path, pixels))
        for path, pixels in zip(outputs, batch.restore(restored.images), strict=True)
    ]
    if grid is not None:
        start = torch.where(observed, x, torch.zeros_like(x)) if task == "inpaint" else x
        columns = [("input", start.cpu())]
        if task == "inpaint":
            columns.append(("mask", (~observed).float().cpu()))
        columns.append(("result", restored.images.cpu()))
        columns.append(("uncertainty", (2 * restored.std).clamp(0, 1).cpu()))
        columns += [(f"sample {i + 1}", s.cpu()) for i, s in enumerate(restored.samples)]
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

    unknown = ~observed if task == "inpaint" else torch.ones_like(observed)
    report = {
        "task": task,
        "backend": backend,
        "checkpoint": checkpoint,
        "method": method,
        "noise": observation.spec,
        "refiner": refiner,
        "options": {k: str(v) for k, v in vars(refiner_obj.options).items()},
        "iterations": iterations if method in ("mwg", "pseudo-gibbs") else None,
        "samples": samples if method in ("conditional", "importance") else None,
        "seed": seed,
        "result": result_kind,
        "seconds": round(restored.seconds, 2),
        "files": [
            {
                "input": str(src),
                "output": str(dst),
                "mean_std": round(_mean_over(restored.std[i], unknown[i]), 4),
            }
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
            f"({method}, {refiner}, {restored.seconds:.1f} s)"
            + (f"; grid {grid}" if grid is not None else ""),
            markup=False,  # paths may hold [brackets]
        )


def _notes(method: str, iterations: int | None, samples: int | None) -> list[str]:
    """Options given that the method does not use (said, not silently dropped)."""
    notes = []
    if iterations is not None and method not in ("mwg", "pseudo-gibbs"):
        notes.append(f"--iterations applies to mwg and pseudo-gibbs; {method} does not use it")
    if samples is not None and method not in ("conditional", "importance"):
        notes.append(f"--samples applies to conditional and importance; {method} does not use it")
    return notes


def _mean_over(values: Any, where: Any) -> float:
    """Mean of ``values`` over the pixels ``where`` (0 if there are none)."""
    chosen = values[where]
    return float(chosen.mean()) if chosen.numel() else 0.0
