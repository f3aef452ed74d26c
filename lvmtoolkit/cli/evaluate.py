"""``lvm evaluate inpaint|denoise``: SSIM and FID over a test set (the paper's Table 3);
``lvm evaluate train-classifier``: the feature extractor of the offline FID."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lvmtoolkit.cli.common import data_options, parse_key_values, runtime_options, stderr
from lvmtoolkit.tasks.kinds import MASK_KINDS, NOISE_KINDS


def register(cli: click.Group) -> None:
    cli.add_command(evaluate)


@click.group()
def evaluate() -> None:
    """Score inpainting and denoising with SSIM and FID over a test set."""


def _names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise click.BadParameter("give at least one name")
    return list(dict.fromkeys(names))


def _task_command(task: str, kinds: dict[str, str], kinds_flag: str) -> click.Command:
    kind_lines = "\n".join(f"  {name}: {text}" for name, text in kinds.items())
    what = "masks" if task == "inpaint" else "noise"
    noun = "inpainting" if task == "inpaint" else "denoising"

    @click.command(
        name=task,
        help=f"""SSIM and FID of Gibbs {noun} for every backend x refiner.

Takes the first --num-images images of the split (binarised with the fixed evaluation
seed for models of binary data), corrupts them ({what} seeded with 2024, the same for
every model and refiner), restores them with the Gibbs chain (--iterations, seed --seed)
and reports, per corruption kind, the mean SSIM against the clean images and the FID of
the restored set against the clean set, in the form of Table 3 of "Improving Inference in
Latent Variable Models". The corrupted inputs are scored too.

SSIM: pytorch_msssim.ssim, single scale, data_range 1. FID: pytorch-fid's Fréchet
distance on --fid-features: 'mnist-classifier' (offline, shipped; reported as "FID
(MNIST-classifier features)") or 'inception' (needs pytorch-fid's weights: its cache or
--fid-weights). FID values are comparable only at the same --num-images.

\b
Kinds ({kinds_flag}):
{kind_lines}

\b
Examples:
  lvm evaluate {task} --num-images 100 --threads 1
  lvm evaluate {task} --backend vae --refiner amortized,svi --grid {task}.png
  lvm evaluate {task} --fid-features inception --fid-weights pt_inception.pth --json
""",
    )
    @click.option(
        "--backend",
        "backends",
        default=None,
        help="Comma-separated backends. Default: every installed backend that ships a "
        "checkpoint or has one in --checkpoint.",
    )
    @click.option(
        "--checkpoint",
        "checkpoints",
        multiple=True,
        metavar="BACKEND=PATH",
        help="Checkpoint of a backend, repeatable. Default: the backend's bundled one.",
    )
    @click.option(
        "--refiner",
        "refiners",
        default=None,
        help="Comma-separated refiners. Default: every installed refiner.",
    )
    @click.option(
        "-o",
        "--option",
        "options",
        multiple=True,
        metavar="[REFINER.]KEY=VALUE",
        help="Refiner option, repeatable: svi.lr=0.03 for one refiner, steps=20 for every "
        "refiner that has it. Per-iteration defaults: steps=10, select_samples=2.",
    )
    @click.option(
        f"--{kinds_flag}",
        "kinds",
        default=",".join(kinds),
        show_default=True,
        help=f"Comma-separated {what} kinds.",
    )
    @data_options
    @click.option("--split", default="test", show_default=True, help="Dataset split.")
    @click.option(
        "--num-images",
        type=click.IntRange(min=2),
        default=200,
        show_default=True,
        help="Images: the first N of the split.",
    )
    @click.option(
        "--iterations",
        type=click.IntRange(min=1),
        default=100,
        show_default=True,
        help="Gibbs iterations.",
    )
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of the chains.")
    @click.option(
        "--fid-features",
        type=click.Choice(["mnist-classifier", "inception", "none"]),
        default="mnist-classifier",
        show_default=True,
        help="Feature extractor of the FID ('none' skips FID).",
    )
    @click.option(
        "--fid-weights",
        type=click.Path(path_type=Path),
        default=None,
        help="Weights file of the extractor (inception: pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth). Default: pytorch-fid's cache / the shipped "
        "classifier.",
    )
    @click.option(
        "--fid-dims",
        type=click.Choice(["64", "192", "768", "2048"]),
        default=None,
        help="Inception feature layer, as pytorch-fid's --dims. Default: 2048 (the standard "
        "FID; fewer images than features give a singular covariance).",
    )
    @click.option(
        "--record-every",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="Also report SSIM every N iterations (0: only the last).",
    )
    @click.option(
        "--grid",
        type=click.Path(path_type=Path),
        default=None,
        help="Write a PNG grid like the paper's Figures 6-7: for each kind, the first "
        "--grid-rows images: original, input, and every backend x refiner's result.",
    )
    @click.option(
        "--grid-rows",
        type=click.IntRange(min=1),
        default=4,
        show_default=True,
        help="Images per kind in the grid.",
    )
    @runtime_options
    @click.option("--json", "as_json", is_flag=True, help="Write the results as JSON to stdout.")
    @click.option(
        "--markdown", is_flag=True, help="Write the table as Markdown to stdout (for docs)."
    )
    def command(**kwargs: Any) -> None:
        _evaluate(task, **kwargs)

    return command


def _select_models(
    backends: list[str] | None, checkpoints: dict[str, str], device: Any
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    from lvmtoolkit.cli.common import load_model
    from lvmtoolkit.errors import OptionError
    from lvmtoolkit.plugins import backends as installed_backends
    from lvmtoolkit.plugins import get_backend

    unknown = sorted(set(checkpoints) - set(backends or installed_backends()))
    if unknown:
        raise OptionError(f"--checkpoint for {', '.join(unknown)}, which is not evaluated")
    models, used, skipped = {}, {}, []
    names = backends if backends is not None else sorted(installed_backends())
    for name in names:
        model_class = get_backend(name)
        if name not in checkpoints and model_class.default_checkpoint() is None:
            if backends is not None:
                raise OptionError(
                    f"backend {name!r} ships no checkpoint; pass --checkpoint {name}=PATH"
                )
            skipped.append(name)
            continue
        models[name], used[name] = load_model(name, checkpoints.get(name), device)
    if not models:
        raise OptionError("no backend with a checkpoint to evaluate; pass --checkpoint NAME=PATH")
    return models, used, skipped


def _evaluate(
    task: str,
    *,
    backends: str | None,
    checkpoints: tuple[str, ...],
    refiners: str | None,
    options: tuple[str, ...],
    kinds: str,
    dataset: str,
    data_dir: str | None,
    split: str,
    num_images: int,
    iterations: int,
    seed: int,
    fid_features: str,
    fid_weights: Path | None,
    fid_dims: str | None,
    record_every: int,
    grid: Path | None,
    grid_rows: int,
    device: str,
    threads: int | None,
    as_json: bool,
    markdown: bool,
) -> None:
    from rich.markup import escape

    from lvmtoolkit.core.runtime import resolve_device, set_threads
    from lvmtoolkit.errors import OptionError
    from lvmtoolkit.images import check_writable, save_grid
    from lvmtoolkit.metrics.fid import feature_extractor
    from lvmtoolkit.plugins import get_dataset
    from lvmtoolkit.tasks.evaluation import evaluate_task, gibbs_refiners, grid_columns, kinds_of

    if as_json and markdown:
        raise OptionError("choose one of --json and --markdown")
    set_threads(threads)
    torch_device = resolve_device(device)
    kind_list = _names(kinds) or []
    unknown = [k for k in kind_list if k not in kinds_of(task)]
    if unknown:
        raise OptionError(f"unknown kind {', '.join(unknown)}; kinds: {', '.join(kinds_of(task))}")
    if grid is not None:
        check_writable(grid)
    refiner_objs = gibbs_refiners(_names(refiners), parse_key_values(options, "--option"))
    extractor = None
    if fid_features != "none":
        dims = int(fid_dims) if fid_dims is not None else None
        extractor = feature_extractor(fid_features, fid_weights, dims).to(torch_device)
    checkpoint_paths = parse_key_values(checkpoints, "--checkpoint")
    models, used, skipped = _select_models(_names(backends), checkpoint_paths, torch_device)
    images = get_dataset(dataset)(data_dir).load(split).images[:num_images]

    def log(line: str) -> None:
        stderr.print(f"[dim]{escape(line)}[/dim]")

    with stderr.status(f"evaluate {task}: {len(models)} backend(s) x {len(refiner_objs)} refiners"):
        outcome = evaluate_task(
            task,  # type: ignore[arg-type]
            models,
            refiner_objs,
            images.to(torch_device),
            kind_list,
            iterations=iterations,
            seed=seed,
            extractor=extractor,
            record_every=record_every,
            grid_rows=grid_rows if grid is not None else 0,
            images_label=f"first {images.shape[0]} of the split",
            log=log,
        )
    if grid is not None:
        columns, missing = grid_columns(outcome.extras["grid"])
        save_grid(grid, columns, missing=missing, missing_column=1, max_rows=len(columns[0][1]))

    report = {
        "task": task,
        "backends": used,
        "skipped_backends": skipped,
        "refiners": {
            name: {k: str(v) for k, v in options.items()}
            for name, options in outcome.refiners.items()
        },
        "kinds": outcome.protocol["kinds"],
        "protocol": {"dataset": dataset, "split": split, **outcome.protocol},
        "results": outcome.results,
        "grid": str(grid) if grid is not None else None,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif markdown:
        click.echo(_markdown(report))
    else:
        _print_table(report)


def _table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    kinds = list(report["kinds"])
    fid_label = report["protocol"]["fid"]
    header = ["backend", "refiner"]
    for kind in kinds:
        if fid_label:
            header.append(f"{kind}: FID ↓")
        header.append(f"{kind}: SSIM ↑")
    rows = []
    for backend, by_kind in report["results"].items():
        methods = list(by_kind[kinds[0]]) if kinds else []
        for method in methods:
            cells = [backend, "(corrupted input)" if method == "corrupted" else method]
            for kind in kinds:
                row = by_kind[kind].get(method, {})
                if "error" in row:
                    cells += ["failed"] * (2 if fid_label else 1)
                    continue
                if fid_label:
                    cells.append(f"{row['fid']:.2f}")
                cells.append(f"{row['ssim']:.4f} ± {row['ssim_sem']:.4f}")
            rows.append(cells)
    return header, rows


def _print_table(report: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    header, rows = _table_rows(report)
    fid = report["protocol"]["fid"]
    table = Table(title=f"{report['task']}: SSIM" + (f" and {fid}" if fid else ""))
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < 2 else "right", no_wrap=i >= 2)
    for row in rows:
        table.add_row(*row)
    stderr.print(table)
    protocol = report["protocol"]
    stderr.print(
        f"[dim]{protocol['dataset']} {protocol['split']}, {protocol['images']}; "
        f"{protocol['iterations']} Gibbs iterations; {protocol['ssim']}; FID reference: "
        f"{protocol['fid_reference']}."
        + (
            f" Skipped (no checkpoint): {', '.join(report['skipped_backends'])}."
            if report["skipped_backends"]
            else ""
        )
        + "[/dim]"
    )
    for backend, by_kind in report["results"].items():
        for kind, rows_by_method in by_kind.items():
            for method, row in rows_by_method.items():
                if "error" in row:
                    message = escape(f"{backend} {method} {kind}: {row['error']}")
                    stderr.print(f"[red]{message}[/red]")


def _markdown(report: dict[str, Any]) -> str:
    header, rows = _table_rows(report)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@evaluate.command(name="train-classifier")
@data_options
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True, help="Passes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of everything.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Weights file to write (.safetensors).",
)
@runtime_options
def train_classifier(
    dataset: str,
    data_dir: str | None,
    epochs: int,
    seed: int,
    output: Path,
    device: str,
    threads: int | None,
) -> None:
    """Train the MNIST classifier whose features give "FID (MNIST-classifier features)".

    Trains on the train split (shifts of up to 2 pixels, half the images binarised, as the
    models' inputs and outputs are), reports accuracy on the test split, and writes the
    weights with the training summary in the safetensors header. The shipped weights
    (lvmtoolkit/metrics/weights/mnist-classifier.safetensors) were made with the first
    example (defaults: mnist-5k, 20 epochs, seed 0) on 1 CPU thread.

    \b
    Examples:
      lvm evaluate train-classifier --threads 1 -o mnist-classifier.safetensors
      lvm evaluate train-classifier --epochs 2 -o /tmp/classifier.safetensors
    """
    from lvmtoolkit.core.runtime import resolve_device, set_threads
    from lvmtoolkit.metrics.classifier import accuracy, save_classifier
    from lvmtoolkit.metrics.classifier import train_classifier as train
    from lvmtoolkit.plugins import get_dataset

    set_threads(threads)
    resolve_device(device)  # validated; the classifier is small enough for the CPU
    if output.suffix != ".safetensors":
        raise click.BadParameter("the weights file must end in .safetensors", param_hint="-o")
    source = get_dataset(dataset)(data_dir)
    data = source.load("train")
    with stderr.status(f"training the classifier on {len(data)} {dataset} digits"):
        model, summary = train(
            data.images,
            data.labels,
            epochs=epochs,
            seed=seed,
            progress=lambda e, n, loss: stderr.print(f"[dim]epoch {e}/{n}: loss {loss:.4f}[/dim]"),
        )
    test = source.load("test")
    summary["data"] = {"dataset": dataset, "train": "train split", "test": "test split"}
    summary["test_accuracy"] = round(accuracy(model, test.images, test.labels), 4)
    summary["test_accuracy_binarised"] = round(
        accuracy(model, _binarised(test.images), test.labels), 4
    )
    save_classifier(model, output, summary)
    stderr.print(
        f"wrote {output}: test accuracy {summary['test_accuracy']:.4f} "
        f"(binarised {summary['test_accuracy_binarised']:.4f}), {summary['seconds']} s",
        markup=False,  # paths may hold [brackets]
    )


def _binarised(images: Any) -> Any:
    from lvmtoolkit.data import binarize_fixed

    return binarize_fixed(images)


evaluate.add_command(_task_command("inpaint", MASK_KINDS, "masks"))
evaluate.add_command(_task_command("denoise", NOISE_KINDS, "noise"))
