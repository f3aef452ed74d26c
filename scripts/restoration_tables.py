"""Rewrite the tables of docs/results/restoration.md from the run JSONs beside it.

Every ``docs/results/restoration-*.json`` written by ``lvm evaluate inpaint|denoise --json``
contributes its rows; the page's tables (between the ``<!-- tables:start -->`` and
``<!-- tables:end -->`` markers) are regenerated from them, so no number is typed by hand.
Two runs that score the same backend, kind, method and refiner on the same number of
images are refused: which one the page shows would otherwise depend on file order (on
different numbers of images both rows are shown, the larger run first). A run of a
checkpoint other than the backend's bundled one (told by its weights' digest where the run
recorded it) is labelled with the checkpoint's folder; a run with other refiner options or
sample counts than the defaults is refused (keep such runs under another name, e.g.
``longer-training-*.json``).

Usage:
    python scripts/restoration_tables.py [--check]

With ``--check`` the page is not written; the script fails if it is out of date.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from page_section import write_section

from lvmtoolkit.errors import UnknownNameError
from lvmtoolkit.jobs import parameters_sha256
from lvmtoolkit.plugins import get_backend, load_backend_model

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
PAGE = RESULTS / "restoration.md"
START, END = "<!-- tables:start -->", "<!-- tables:end -->"

SECTIONS = [
    ("denoise", "gaussian:variance=0.5", "Denoising, Gaussian noise of variance 0.5, clipped"),
    ("denoise", "salt-pepper:rate=0.2", "Denoising, salt-and-pepper 20%"),
    ("inpaint", "centre", "Inpainting, the centre 14x14 square missing"),
    ("inpaint", "half", "Inpainting, the bottom half missing"),
]
FLAGS = {
    "gaussian:variance=0.5": "--noise gaussian:variance=0.5",
    "salt-pepper:rate=0.2": "--noise salt-pepper:rate=0.2",
    "centre": "--masks centre",
    "half": "--masks half",
}
BACKENDS = ["vae", "gmvae", "nvae", "nvae-flow"]
METHODS = ["conditional", "importance", "mwg", "pseudo-gibbs"]
REFINERS = ["amortized", "svi", "svi-flow"]


def canonical_kind(run: dict, kind: str) -> str:
    """``gaussian`` and ``gaussian:variance=0.5`` name one noise model: use the spec as run."""
    if run["task"] == "inpaint":
        return kind
    spec = run["kinds"][kind].split(" ")[0]  # e.g. "gaussian:variance=0.5,clip=true (...)"
    name, _, params = spec.partition(":")
    kept = [p for p in params.split(",") if p and p != "clip=true"]
    return f"{name}:{','.join(kept)}" if kept else name


def backend_label(backend: str, checkpoint: str, digest: str | None = None) -> str:
    """The backend's name for its bundled checkpoint; otherwise the name and the checkpoint
    folder's, e.g. ``nvae-flow (nvae-flow-150-epochs)``, so a row from another model is
    never shown as the bundled one's.

    A run that recorded its weights' digest (``parameters_sha256``) is the bundled model's
    only if the digests agree; older runs recorded only the path, and are judged by its
    folder name."""
    if digest is not None:
        same = digest == bundled_digest(backend)
    else:
        default = bundled_checkpoint(backend)
        same = not checkpoint or (default is not None and Path(checkpoint).name == default.name)
    return backend if same else f"{backend} ({Path(checkpoint).name})"


def bundled_checkpoint(backend: str) -> Path | None:
    """The backend's bundled checkpoint; None if it ships none or is no registered backend
    (a ``--model`` run names its model after the user's file, not a backend)."""
    try:
        return get_backend(backend).default_checkpoint()
    except UnknownNameError:
        return None


@functools.cache
def bundled_digest(backend: str) -> str | None:
    """``parameters_sha256`` of the backend's bundled model (None if it ships none)."""
    if bundled_checkpoint(backend) is None:
        return None
    return parameters_sha256(load_backend_model(backend)[0])


def ordered_labels(corrupted: dict, task: str, kind: str) -> list[str]:
    """Each backend of `BACKENDS`, followed by its rows from other checkpoints."""
    present = {label for t, k, label in corrupted if (t, k) == (task, kind)}
    labels = []
    for backend in BACKENDS:
        labels += [backend] if backend in present else []
        labels += sorted(label for label in present if label.startswith(f"{backend} ("))
    # Any other model's rows (a third-party backend, a --model run) come last, never dropped.
    return labels + sorted(present - set(labels))


def off_defaults(run: dict) -> list[str]:
    """What a run changed from the defaults it recorded: refiner options (``-o``) and the
    methods' sample or iteration counts. The table's rows are the defaults' rows."""
    changed = []
    protocol = run["protocol"]
    for refiners, defaults, where in (
        (run["refiners"], protocol.get("restoration_refiner_defaults", {}), ""),
        (protocol.get("chain_refiners", {}), protocol.get("chain_refiner_defaults", {}), "chain "),
    ):
        for refiner, options in refiners.items():
            for key, default in defaults.items():
                if key in options and not _same(options[key], default):
                    changed.append(f"{where}{refiner}.{key}={options[key]} (default {default})")
    for key in ("num_samples", "iterations"):
        if protocol.get(key) is not None:
            changed.append(f"{key}={protocol[key]}")
    return changed


def _same(value: object, default: object) -> bool:
    try:
        return float(value) == float(default)  # options are recorded as text
    except (TypeError, ValueError):
        return str(value) == str(default)


def collect(paths: list[Path]) -> tuple[dict, dict]:
    # Rows and the corrupted input's scores by number of images: rows of one backend may
    # come from runs of different sizes.
    rows: dict[tuple, dict[int, tuple[dict, str]]] = {}
    corrupted: dict[tuple, dict[int, dict]] = {}
    for path in paths:
        run = json.loads(path.read_text())
        if "task" not in run:
            continue  # not an `lvm evaluate` run (e.g. the defaults benchmark)
        changed = off_defaults(run)
        if changed:
            sys.exit(f"{path.name} was not run with the defaults ({', '.join(changed)})")
        images = int(run["protocol"]["images"].split()[1])
        for backend, kinds in run["results"].items():
            label = backend_label(
                backend,
                run["backends"].get(backend, ""),
                run.get("parameters_sha256", {}).get(backend),
            )
            for kind, result in kinds.items():
                key = (run["task"], canonical_kind(run, kind), label)
                corrupted.setdefault(key, {}).setdefault(images, result["corrupted"])
                for method, refiners in result["methods"].items():
                    for refiner, scores in refiners.items():
                        sizes = rows.setdefault((*key, method, refiner), {})
                        if images in sizes:
                            sys.exit(
                                f"{path.name} and {sizes[images][1]} both score "
                                f"{(*key, method, refiner)} on {images} images"
                            )
                        sizes[images] = (scores, path.name)
    return rows, corrupted


def number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table(task: str, kind: str, rows: dict, corrupted: dict) -> list[str]:
    lines = [
        "| backend | images | method | refiner | SSIM ↑ | NLL ↓ | FID ↓ | s / image |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for backend in ordered_labels(corrupted, task, kind):
        for images, scores in sorted(corrupted[(task, kind, backend)].items(), reverse=True):
            lines.append(
                f"| {backend} | {images} | *(corrupted input)* | | {scores['ssim']:.3f} ± "
                f"{scores['ssim_sem']:.3f} | | {number(scores.get('fid'), 1)} | |"
            )
        for method in METHODS:
            for refiner in REFINERS:
                sizes = rows.get((task, kind, backend, method, refiner), {})
                for images, (s, _) in sorted(sizes.items(), reverse=True):
                    nll = f"{s['nll']:.1f} ± {s['nll_sem']:.1f}" if s.get("nll") is not None else ""
                    lines.append(
                        f"| {backend} | {images} | {method} | {refiner} | {s['ssim']:.3f} ± "
                        f"{s['ssim_sem']:.3f} | {nll} | {number(s.get('fid'), 1)} | "
                        f"{s['seconds_per_image']:.3f} |"
                    )
    return lines


def render(rows: dict, corrupted: dict) -> str:
    out: list[str] = []
    for task, kind, title in SECTIONS:
        out += [f"## {title} (`{FLAGS[kind]}`)", ""]
        out += table(task, kind, rows, corrupted)
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the page is out of date")
    args = parser.parse_args()
    rows, corrupted = collect(sorted(RESULTS.glob("restoration-*.json")))
    write_section(
        PAGE,
        START,
        END,
        render(rows, corrupted),
        check=args.check,
        script="scripts/restoration_tables.py",
    )


if __name__ == "__main__":
    main()
