"""``lvm evaluate inpaint|denoise``: the paper's Table 3 (SSIM, conditional NLL, FID) over
a test set; ``lvm evaluate train-classifier``: the feature extractor of the offline FID.

A thin shell: the evaluation is `lvmtoolkit.tasks.evaluation.evaluate_restoration`; this
module parses options and renders its report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lvmtoolkit.cli.common import (
    count_option,
    data_options,
    json_option,
    parse_key_values,
    runtime_options,
    seed_option,
    stderr,
)
from lvmtoolkit.cli.jobs import data_images, input_options, user_models
from lvmtoolkit.tasks import MASK_KINDS, METHODS, NOISE_KINDS


def register(cli: click.Group) -> None:
    cli.add_command(evaluate)


@click.group()
def evaluate() -> None:
    """Score inpainting and denoising (SSIM, conditional NLL, FID) over a test set."""


def _names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise click.BadParameter("give at least one name")
    return list(dict.fromkeys(names))


def _specs(value: str) -> list[str]:
    """Comma-separated noise models; a piece with '=' and no ':' is an option of the one before
    (``gaussian:variance=0.5,clip=false,salt-pepper`` is two models)."""
    specs: list[str] = []
    for piece in (p.strip() for p in value.split(",")):
        if not piece:
            continue
        if "=" in piece and ":" not in piece and specs:
            specs[-1] += f",{piece}"
        else:
            specs.append(piece)
    if not specs:
        raise click.BadParameter("give at least one noise model", param_hint="--noise")
    return list(dict.fromkeys(specs))


def _task_command(task: str, kinds: dict[str, str], kinds_flag: str) -> click.Command:
    kind_lines = "\n".join(f"  {name}: {text}" for name, text in kinds.items())
    method_lines = "\n".join(f"  {name}: {text}" for name, text in METHODS.items())
    what = "masks" if task == "inpaint" else "noise models"
    noun = "inpainting" if task == "inpaint" else "denoising"
    kinds_help = (
        "Comma-separated mask kinds."
        if task == "inpaint"
        else "Comma-separated noise models NAME[:KEY=VALUE,...], e.g. "
        "gaussian:variance=0.5,salt-pepper:rate=0.2 (see `lvm denoise --help`)."
    )
    default_kinds = ",".join(kinds) if task == "inpaint" else "gaussian,salt-pepper"

    @click.command(
        name=task,
        help=f"""SSIM, conditional NLL and FID of {noun} for backends x methods x refiners.

Takes the first --num-images images of the split (binarised with the fixed evaluation
seed for models of binary data), corrupts them ({what} seeded with 2024, the same for
every row), restores them with every --method and --refiner, and reports, per kind, the
mean SSIM (± its standard error) against the clean images, the conditional negative
log-likelihood -log p(x | y) in nats per image (inpainting: -log p(x_miss | x_obs);
importance-weighted with each method's posterior, --nll-samples draws) and the FID of
the restored set against the clean set: the paper's Table 3, completed. The corrupted
inputs are scored too. Library: lvmtoolkit.tasks.evaluation.evaluate_restoration.
A checkpoint that records training on any of the scored images (`lvm train` records its
train split) is refused: those rows would measure memory, not restoration.

SSIM: pytorch_msssim.ssim, single scale, data_range 1. FID: pytorch-fid's Fréchet
distance on --fid-features: 'mnist-classifier' (offline, shipped; reported as "FID
(MNIST-classifier features)") or 'inception' (needs pytorch-fid's weights: its cache or
--fid-weights). FID values are comparable only at the same --num-images.

\b
Kinds ({kinds_flag}):
{kind_lines}

\b
Methods (--method):
{method_lines}

\b
Examples:
  lvm evaluate {task} --backend vae --num-images 100 --threads 1
  lvm evaluate {task} --method conditional,pseudo-gibbs --refiner amortized,svi --grid {task}.png
  lvm evaluate {task} --dataset mnist --data-dir DIR --num-images 1000 --json
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
        "--method",
        "methods",
        default="conditional",
        show_default=True,
        help=f"Comma-separated methods: {', '.join(METHODS)}.",
    )
    @click.option(
        "--refiner",
        "refiners",
        default="amortized,svi",
        show_default=True,
        help="Comma-separated refiners of q(z | y) (for pseudo-gibbs: run in every iteration).",
    )
    @click.option(
        "-o",
        "--option",
        "options",
        multiple=True,
        metavar="[REFINER.]KEY=VALUE",
        help="Refiner option, repeatable: svi.lr=0.03 for one refiner, steps=20 for every "
        "refiner that has it. Defaults: steps=300, lr=0.2, lr_scaling=none, "
        "hierarchical_flow_lr=0.0075 (pseudo-gibbs: steps=10 and select_samples=2 per "
        "iteration).",
    )
    @click.option(
        f"--{kinds_flag}",
        "kinds",
        default=default_kinds,
        show_default=True,
        help=kinds_help,
    )
    @data_options
    @click.option("--split", default="test", show_default=True, help="Dataset split.")
    @count_option("--num-images", default=200, minimum=2, help="Images: the first N of the split.")
    @count_option(
        "--batch-size", default=1000, help="Images restored together (memory; same results)."
    )
    @count_option(
        "--iterations",
        default=None,
        help="Chain length of mwg (default 300) and pseudo-gibbs (default 100).",
    )
    @count_option(
        "--samples",
        default=None,
        help="Draws of z for the mean (conditional, default 32); importance samples "
        "(importance, default 256).",
    )
    @count_option(
        "--nll-samples", default=256, help="Importance samples of the conditional NLL estimate."
    )
    @seed_option("--seed", help="Seed of the noise.")
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
        "--grid",
        type=click.Path(path_type=Path),
        default=None,
        help="Write a PNG grid like the paper's Figures 6-7: for each kind, the first "
        "--grid-rows images: original, input, and every backend x refiner x method's result.",
    )
    @count_option("--grid-rows", default=4, help="Images per kind in the grid.")
    @input_options
    @runtime_options
    @json_option
    @click.option(
        "--markdown", is_flag=True, help="Write the tables as Markdown to stdout (for docs)."
    )
    def command(**kwargs: Any) -> None:
        _evaluate(task, **kwargs)

    return command


def _select_models(
    backends: list[str] | None, checkpoints: dict[str, str], device: Any
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    from lvmtoolkit.errors import OptionError
    from lvmtoolkit.plugins import backends as installed_backends
    from lvmtoolkit.plugins import get_backend, load_backend_model

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
        models[name], used[name] = load_backend_model(name, checkpoints.get(name), device)
    if not models:
        raise OptionError("no backend with a checkpoint to evaluate; pass --checkpoint NAME=PATH")
    return models, used, skipped


def _evaluate(
    task: str,
    *,
    backends: str | None,
    checkpoints: tuple[str, ...],
    methods: str,
    refiners: str,
    options: tuple[str, ...],
    kinds: str,
    dataset: str,
    data_dir: str | None,
    split: str,
    num_images: int,
    batch_size: int,
    iterations: int | None,
    samples: int | None,
    nll_samples: int,
    seed: int,
    fid_features: str,
    fid_weights: Path | None,
    fid_dims: str | None,
    grid: Path | None,
    grid_rows: int,
    device: str,
    threads: int | None,
    as_json: bool,
    markdown: bool,
    data: tuple[str, ...] = (),
    model_spec: str | None = None,
) -> None:
    from rich.markup import escape

    from lvmtoolkit.core.provenance import refuse_scoring_training_images
    from lvmtoolkit.core.runtime import resolve_device, set_threads
    from lvmtoolkit.errors import OptionError
    from lvmtoolkit.images import check_writable, save_grid
    from lvmtoolkit.jobs import parameters_sha256
    from lvmtoolkit.metrics.fid import feature_extractor
    from lvmtoolkit.plugins import get_dataset
    from lvmtoolkit.tasks.evaluation import (
        evaluate_restoration,
        gibbs_refiners,
        grid_columns,
        observation_of,
        restoration_refiners,
    )

    if as_json and markdown:
        raise OptionError("choose one of --json and --markdown")
    set_threads(threads)
    torch_device = resolve_device(device)
    kind_list = (_names(kinds) or []) if task == "inpaint" else _specs(kinds)
    if task == "inpaint":
        unknown = [k for k in kind_list if k not in MASK_KINDS]
        if unknown:
            raise OptionError(f"unknown kind {', '.join(unknown)}; kinds: {', '.join(MASK_KINDS)}")
    for kind in kind_list:
        observation_of(task, kind)  # type: ignore[arg-type]  # unknown models fail here
    method_list = _names(methods) or []
    unknown = [m for m in method_list if m not in METHODS]
    if unknown:
        raise OptionError(f"unknown method {', '.join(unknown)}; methods: {', '.join(METHODS)}")
    if grid is not None:
        check_writable(grid)
    refiner_names = _names(refiners)
    refiner_options = parse_key_values(options, "--option")
    refiner_objs = restoration_refiners(refiner_names, refiner_options)
    chain_objs = (
        gibbs_refiners(refiner_names, refiner_options) if "pseudo-gibbs" in method_list else None
    )
    extractor = None
    if fid_features != "none":
        dims = int(fid_dims) if fid_dims is not None else None
        extractor = feature_extractor(fid_features, fid_weights, dims).to(torch_device)
    checkpoint_paths = parse_key_values(checkpoints, "--checkpoint")
    if model_spec is not None:
        models, used, skipped = user_models(model_spec, backends, checkpoint_paths, torch_device)
    else:
        models, used, skipped = _select_models(_names(backends), checkpoint_paths, torch_device)
    # Which weights made the rows, independent of the folder they were loaded from.
    digests = {name: parameters_sha256(model) for name, model in models.items()}
    if data:
        images, dataset = data_images(data, models, num_images), ", ".join(data)
    else:
        images = get_dataset(dataset)(data_dir).load(split).images[:num_images]
        for name, model in models.items():
            refuse_scoring_training_images(
                getattr(model, "checkpoint_info", None), dataset, split, images.shape[0], used[name]
            )

    def log(line: str) -> None:
        stderr.print(f"[dim]{escape(line)}[/dim]")

    with stderr.status(
        f"evaluate {task}: {len(models)} backend(s) x {len(method_list)} method(s) x "
        f"{len(refiner_objs)} refiner(s)"
    ):
        outcome = evaluate_restoration(
            task,  # type: ignore[arg-type]
            models,
            refiner_objs,
            images.to(torch_device),
            kind_list,
            methods=method_list,
            chain_refiners=chain_objs,
            num_samples=samples,
            iterations=iterations,
            nll_samples=nll_samples,
            seed=seed,
            extractor=extractor,
            batch_size=batch_size,
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
        "parameters_sha256": digests,
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
        _print_tables(report)


def _table_rows(report: dict[str, Any], kind: str) -> tuple[list[str], list[list[str]]]:
    """One table per kind: a row per backend x method x refiner, and the corrupted input."""
    fid = report["protocol"]["fid"]
    header = ["backend", "method", "refiner", "SSIM ↑", "NLL ↓"] + (["FID ↓"] if fid else [])
    header.append("s / image")
    rows = []
    for backend, by_kind in report["results"].items():
        entry = by_kind[kind]
        corrupted = entry["corrupted"]
        cells = [backend, "(corrupted input)", "", _ssim(corrupted), ""]
        rows.append(cells + ([f"{corrupted['fid']:.2f}"] if fid else []) + [""])
        for method, by_refiner in entry["methods"].items():
            for refiner, row in by_refiner.items():
                if "error" in row:
                    rows.append([backend, method, refiner] + ["failed"] * (len(header) - 3))
                    continue
                cells = [backend, method, refiner, _ssim(row), _nll(row)]
                if fid:
                    cells.append(f"{row['fid']:.2f}")
                cells.append(f"{row['seconds_per_image']:.3f}")
                rows.append(cells)
    return header, rows


def _ssim(row: dict[str, Any]) -> str:
    return f"{row['ssim']:.4f} ± {row['ssim_sem']:.4f}"


def _nll(row: dict[str, Any]) -> str:
    if "nll_sem" in row:
        return f"{row['nll']:.2f} ± {row['nll_sem']:.2f}"
    return f"{row['nll']:.2f}"


def _print_tables(report: dict[str, Any]) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    for kind, description in report["kinds"].items():
        header, rows = _table_rows(report, kind)
        table = Table(
            title=f"{report['task']} {kind}",
            caption=description,
            box=box.SIMPLE,
            pad_edge=False,
            collapse_padding=True,
        )
        # Compact cells, so that the table fits an 80-column terminal.
        cells = [
            ["input" if cell == "(corrupted input)" else cell.replace(" ± ", "±") for cell in row]
            for row in rows
        ]
        header = [name.replace("s / image", "s/img") for name in header]
        for i, name in enumerate(header):
            widest = max([len(name)] + [len(row[i]) for row in cells])
            table.add_column(
                name, justify="left" if i < 3 else "right", no_wrap=True, min_width=widest
            )
        for row in cells:
            table.add_row(*row)
        stderr.print(table)
    protocol = report["protocol"]
    stderr.print(
        f"[dim]{escape(protocol['dataset'])} {escape(protocol['split'])}, "
        f"{escape(protocol['images'])}; SSIM: {protocol['ssim']}; NLL: {escape(protocol['nll'])}; "
        f"FID reference: {protocol['fid_reference']}."
        + (
            f" Skipped (no checkpoint): {', '.join(report['skipped_backends'])}."
            if report["skipped_backends"]
            else ""
        )
        + "[/dim]"
    )
    for backend, by_kind in report["results"].items():
        for kind, entry in by_kind.items():
            for method, by_refiner in entry["methods"].items():
                for refiner, row in by_refiner.items():
                    if "error" in row:
                        message = escape(f"{backend} {kind} {method} {refiner}: {row['error']}")
                        stderr.print(f"[red]{message}[/red]")


def _markdown(report: dict[str, Any]) -> str:
    blocks = []
    for kind, description in report["kinds"].items():
        header, rows = _table_rows(report, kind)
        lines = [
            f"**{kind}**: {description}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


@evaluate.command(name="train-classifier")
@data_options
@count_option("--epochs", default=20, help="Passes.")
@seed_option("--seed", help="Seed of everything.")
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
