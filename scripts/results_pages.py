"""Generate the results pages' tables and the data index from the stored runs' JSON.

Every table of docs/results/*.md whose numbers live in docs/results/data/*.json sits
between two markers, ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``, and is rewritten
from the data, so no stored number is typed by hand. The script also writes the data
index: docs/results/data/index.json (per file: title, command, commit, digest, model hash,
checkpoints) and its readable form in docs/results/index.md. Titles and commands come
from ``scripts/results_catalogue.py``; a file without an entry there is refused, and so
is a command that disagrees with what its run recorded.

Restoration rows (``data/restoration-*.json``, written by ``lvm evaluate inpaint|denoise
--json``): two runs that score the same backend, kind, method and refiner on the same
number of images are refused (which one the page shows would depend on file order); on
different numbers of images both rows are shown, the larger run first. A run of a
checkpoint other than the backend's bundled one (told by its weights' digest where the run
recorded it) is labelled with the checkpoint's folder; a run with other refiner options or
sample counts than the defaults is refused (keep it under another name, e.g.
``longer-training-*.json``).

Usage:
    python scripts/results_pages.py [--check] [--results DIR]

With ``--check`` nothing is written; the script exits 1 and names each page and section
(or index file) that differs from what the data gives.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from paired_refiner_difference import stored_difference
from results_catalogue import RUNS, Run

from lvmtoolkit.errors import UnknownNameError
from lvmtoolkit.jobs import parameters_sha256
from lvmtoolkit.plugins import get_backend, load_backend_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
INDEX_JSON = "index.json"  # in the data folder, beside the runs it describes
INDEX_PAGE = "index.md"
SCRIPT = "scripts/results_pages.py"
NOT_RECORDED = "not recorded"
UNCOMMITTED = "uncommitted"  # a file's commit until git holds its content
BACKENDS = ["vae", "gmvae", "nvae", "nvae-flow"]  # the bundled backends, in the pages' order

# The pages of the index, in the site's order, with their titles in the nav.
PAGES = {
    "paper-tables.md": "Paper tables 1-2",
    "gaps.md": "Inference gaps",
    "recipes.md": "Refinement recipes",
    "restoration.md": "Restoration (Table 3)",
    "inpainting.md": "Inpainting and denoising: the pseudo-Gibbs baseline",
}


class DataError(Exception):
    """The stored data cannot give a page: a run is missing, doubled or off its record."""


# --------------------------------------------------------------------------- the data


class Runs:
    """The stored runs' JSON in one folder, each file read once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._loaded: dict[str, dict] = {}

    def __getitem__(self, name: str) -> dict:
        if name not in self._loaded:
            path = self.folder / name
            if not path.is_file():
                raise DataError(f"{path} is missing")
            self._loaded[name] = json.loads(path.read_text())
        return self._loaded[name]

    def names(self, pattern: str = "*.json") -> list[str]:
        """The runs' file names matching ``pattern``, sorted; the index is no run."""
        return sorted(p.name for p in self.folder.glob(pattern) if p.name != INDEX_JSON)

    @functools.cached_property
    def restoration(self) -> Restoration:
        """The rows of every ``restoration-*.json`` run (several sections use them)."""
        return collect_restoration(self)


# ----------------------------------------------------------------------- formatting


def table(header: list[str], align: str, rows: list[list[str]]) -> str:
    """A Markdown table; ``align`` has a letter a column: ``l`` left, ``r`` right."""
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    return "\n".join([_row(header), rule, *(_row(r) for r in rows)])


def _row(cells: list[str]) -> str:
    # An empty cell is written "| |", as the pages have always had it.
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


def number(value: float | None, digits: int) -> str:
    """``value`` to ``digits`` decimals; empty where the run has none."""
    return "" if value is None else f"{value:.{digits}f}"


def pm(scores: dict | None, key: str, digits: int) -> str:
    """``mean ± sem`` of ``scores[key]`` and ``scores[key + '_sem']``; empty if absent."""
    if not scores or scores.get(key) is None:
        return ""
    return f"{scores[key]:.{digits}f} ± {scores[key + '_sem']:.{digits}f}"


def bold(text: str) -> str:
    return f"**{text}**" if text else text


def images_of(run: dict) -> int:
    """The number of images of an ``lvm evaluate`` run ("first 200 of the split")."""
    return int(run["protocol"]["images"].split()[1])


# ------------------------------------------------------------------------ paper tables


def paper_table(runs: Runs, backend: str) -> str:
    """Table 1 (vae) or 2 (gmvae): the paper's NELBOs beside ours for both recipes."""
    run = runs["paper-tables.json"]
    ours = run["results"][backend]
    paper = run["paper"][backend]

    def cells(steps: str | None) -> list[str]:
        row = []
        for recipe in ("paper", "default"):
            for split in ("train", "test"):
                result = ours[recipe][split]
                value = result["amortized"] if steps is None else result["steps"][steps]["nelbo"]
                row.append(f"{value:.2f}")
        return row

    rows = [["amortized", "", "", *cells(None)]]
    rows += [[s, *(f"{v:.2f}" for v in paper[s]), *cells(s)] for s in paper]
    header = [
        "steps",
        "paper train",
        "paper test",
        "ours, paper recipe, train",
        "test",
        "ours, default recipe, train",
        "test",
    ]
    return table(header, "r" * 7, rows)


# ------------------------------------------------------------------------------- gaps

GAPS_ROWS = [
    ("log p̂(x), IWAE-5000", "log_px_iwae"),
    ("log p̂(x), AIS", "log_px_ais"),
    ("AIS − IWAE (paired)", "ais_minus_iwae"),
    ("L[q\\*]", "elbo_optimal"),
    ("L[q] (amortized)", "elbo_amortized"),
    ("approximation gap, IWAE", "approximation_gap_iwae"),
    ("approximation gap, AIS", "approximation_gap_ais"),
    ("amortization gap", "amortization_gap"),
]


def gaps_table(runs: Runs) -> str:
    """The AIS table of gaps.md, a column per ``data/gaps-ais-*.json``."""
    loaded = [runs[name] for name in runs.names("gaps-ais-*.json")]
    for run in loaded:
        if run["protocol"].get("ais") is None or "bdmc" not in run["protocol"]:
            raise DataError(f"a gaps-ais run of {run['backend']} has no AIS schedule or BDMC")
    loaded.sort(key=lambda run: BACKENDS.index(run["backend"]))
    tests = [run["results"]["test"] for run in loaded]
    bdmc = [run["protocol"]["bdmc"] for run in loaded]

    def gap(numbers: dict, key: str) -> str:
        value, error = numbers.get(key), numbers.get("stderr", {}).get(key)
        if value is None:
            return "—"
        return f"{value:.2f}" + (f" ± {error:.2f}" if error is not None else "")

    closed = [
        " / ".join(f"{100 * v:.0f}%" for v in t["fraction_closed_at_step"].values()) for t in tests
    ]
    rows = [
        ["test digits", *(f"{t['num_images']:,}" for t in tests)],
        ["svi steps to q\\*", *(f"{t['optimal_steps']:,}" for t in tests)],
        *([label, *(gap(t, key) for t in tests)] for label, key in GAPS_ROWS),
        ["amortization gap closed after 1 / 10 / 100 / 1000 steps", *closed],
        ["BDMC: simulated datapoints", *(str(b["num_datapoints"]) for b in bdmc)],
        ["BDMC: lower / upper", *(f"{b['lower']:.2f} / {b['upper']:.2f}" for b in bdmc)],
        [
            "**BDMC sandwich width**",
            *(bold(f"{b['width']:.2f} ± {b['width_stderr']:.2f}") for b in bdmc),
        ],
        ["AIS acceptance", *(f"{t['ais_acceptance']:.2f}" for t in tests)],
        ["AIS model passes per image", *(f"{t['passes_per_datapoint']['ais']:,}" for t in tests)],
        ["AIS seconds (2 threads)", *(f"{t['ais_seconds']:.0f}" for t in tests)],
    ]
    header = ["", *(f"`{run['backend']}`" for run in loaded)]
    schedules = sorted({run["protocol"]["ais"]["description"] for run in loaded})
    notes = "\n".join(f"AIS schedule: {s}." for s in schedules)
    return f"{table(header, 'l' + 'r' * len(loaded), rows)}\n\n{notes}\n"


def natural_table(runs: Runs) -> str:
    """The recipes page's table of ``data/natural-gradient.json``: the fraction of the
    amortization gap closed at each number of model passes, per backend and recipe."""
    run = runs["natural-gradient.json"]
    blocks = []
    for backend in [b for b in BACKENDS if b in run["backends"]]:
        rows = [row for row in run["rows"] if row["backend"] == backend]
        if not rows:
            raise DataError(f"natural-gradient.json has no rows of {backend}")
        steps = rows[0]["steps"]
        best = [max(row["fraction_closed"][i] for row in rows) for i in range(len(steps))]
        body = [
            [
                row["recipe"],
                *(
                    bold(f"{100 * value:.1f}%") if value == best[i] else f"{100 * value:.1f}%"
                    for i, value in enumerate(row["fraction_closed"])
                ),
            ]
            for row in rows
        ]
        header = ["recipe", *(f"{k} pass{'es' if k > 1 else ''}" for k in steps)]
        gap = rows[0]["gap"]
        blocks.append(
            f"**`{backend}`** (amortization gap {gap:.2f} nats on {rows[0]['num']:,} digits)"
            f"\n\n{table(header, 'l' + 'r' * len(steps), body)}"
        )
    return "\n\n".join(blocks) + "\n"


# -------------------------------------------------------- the pseudo-Gibbs chain pages


def chain_table(runs: Runs, name: str, *, best: bool) -> str:
    """A table of the first evaluation's chain runs: FID and SSIM per kind, per backend x
    refiner; with ``best``, each backend's best value per column in bold."""
    run = runs[name]
    kinds = list(run["kinds"])
    header = ["backend", "refiner"]
    for kind in kinds:
        header += [f"{kind}: FID ↓", f"{kind}: SSIM ↑"]
    rows = []
    for backend in sorted(run["results"]):
        by_kind = run["results"][backend]
        refiners = sorted(r for r in by_kind[kinds[0]] if r != "corrupted")
        winners = {}
        for kind in kinds:
            scores = [by_kind[kind][r] for r in refiners]
            winners[kind] = (min(s["fid"] for s in scores), max(s["ssim"] for s in scores))
        for refiner in ["corrupted", *refiners]:
            row = [backend, "(corrupted input)" if refiner == "corrupted" else refiner]
            for kind in kinds:
                s = by_kind[kind][refiner]
                fid, ssim = f"{s['fid']:.2f}", pm(s, "ssim", 4)
                if best and refiner != "corrupted":
                    fid = bold(fid) if s["fid"] == winners[kind][0] else fid
                    ssim = bold(ssim) if s["ssim"] == winners[kind][1] else ssim
                row += [fid, ssim]
            rows.append(row)
    return table(header, "ll" + "r" * 2 * len(kinds), rows)


# ------------------------------------------------------------------------ restoration

KINDS = [
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
METHODS = ["conditional", "importance", "mwg", "pseudo-gibbs"]
REFINERS = ["amortized", "svi", "svi-flow"]


def canonical_kind(run: dict, kind: str) -> str:
    """``gaussian`` and ``gaussian:variance=0.5`` name one noise model: use the spec as run."""
    if run["task"] == "inpaint":
        return kind
    return canonical_spec(run["kinds"][kind].split(" ")[0])  # "gaussian:...,clip=true (...)"


def canonical_spec(spec: str) -> str:
    """A noise spec without the default ``clip=true``: ``gaussian:variance=0.5``."""
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


def scored_rows(run: dict) -> Iterator[tuple[tuple[str, str, str], str, str, dict, dict]]:
    """Each row of an ``lvm evaluate`` run: ((task, kind, label), method, refiner, scores,
    the corrupted input's scores)."""
    for backend, kinds in run["results"].items():
        label = backend_label(
            backend, run["backends"].get(backend, ""), run.get("parameters_sha256", {}).get(backend)
        )
        for kind, result in kinds.items():
            key = (run["task"], canonical_kind(run, kind), label)
            for method, refiners in result["methods"].items():
                for refiner, scores in refiners.items():
                    yield key, method, refiner, scores, result["corrupted"]


@dataclass
class Restoration:
    """The restoration rows of every default run, by number of images.

    Attributes:
        rows: (task, kind, label, method, refiner) -> images -> (scores, file name).
        corrupted: (task, kind, label) -> images -> the corrupted input's scores.
    """

    rows: dict[tuple, dict[int, tuple[dict, str]]]
    corrupted: dict[tuple, dict[int, dict]]

    def scores(self, key: tuple, images: int) -> dict | None:
        entry = self.rows.get(key, {}).get(images)
        return entry[0] if entry else None


def collect_restoration(runs: Runs) -> Restoration:
    """Every default ``restoration-*.json`` run's rows, refusing doubled or off-default ones."""
    rows: dict[tuple, dict[int, tuple[dict, str]]] = {}
    corrupted: dict[tuple, dict[int, dict]] = {}
    for name in runs.names("restoration-*.json"):
        run = runs[name]
        if "task" not in run:
            continue  # not an `lvm evaluate` run (the defaults study)
        changed = off_defaults(run)
        if changed:
            raise DataError(f"{name} was not run with the defaults ({', '.join(changed)})")
        images = images_of(run)
        for key, method, refiner, scores, input_scores in scored_rows(run):
            corrupted.setdefault(key, {}).setdefault(images, input_scores)
            sizes = rows.setdefault((*key, method, refiner), {})
            if images in sizes:
                raise DataError(
                    f"{name} and {sizes[images][1]} both score "
                    f"{(*key, method, refiner)} on {images} images"
                )
            sizes[images] = (scores, name)
    return Restoration(rows, corrupted)


def models(data: Restoration, task: str, kind: str) -> Iterator[tuple[str, list[tuple]]]:
    """Each model scored on a kind, in the pages' order (`ordered_labels`), with its
    (images, the corrupted input's scores) per number of images, the larger run first."""
    for label in ordered_labels(data.corrupted, task, kind):
        yield label, sorted(data.corrupted[(task, kind, label)].items(), reverse=True)


# A model's rows under one kind: (data, task, kind, label, its inputs by size) -> rows.
RowsOf = Callable[[Restoration, str, str, str, list[tuple]], list[list[str]]]


def per_kind(runs: Runs, heading: str, header: list[str], align: str, rows_of: RowsOf) -> str:
    """A table per restoration kind, headed ``heading`` (with ``{title}`` and ``{flag}``),
    its rows the models' rows in the pages' order."""
    data = runs.restoration
    out: list[str] = []
    for task, kind, title in KINDS:
        rows = [
            row
            for label, inputs in models(data, task, kind)
            for row in rows_of(data, task, kind, label, inputs)
        ]
        out += [heading.format(title=title, flag=FLAGS[kind]), "", table(header, align, rows), ""]
    return "\n".join(out)


def restoration_tables(runs: Runs) -> str:
    """Every default row of Table 3, a table per kind, the larger run first."""
    header = ["backend", "images", "method", "refiner", "SSIM ↑", "NLL ↓", "FID ↓", "s / image"]
    return per_kind(runs, "### {title} (`{flag}`)", header, "lrllrrrr", _all_rows)


def _all_rows(data: Restoration, task: str, kind: str, label: str, inputs: list) -> list:
    rows = []
    for images, s in inputs:
        fid = number(s.get("fid"), 1)
        rows.append([label, str(images), "*(corrupted input)*", "", pm(s, "ssim", 3), "", fid, ""])
    for method in METHODS:
        for refiner in REFINERS:
            sizes = data.rows.get((task, kind, label, method, refiner), {})
            for images, (s, _) in sorted(sizes.items(), reverse=True):
                scored = [pm(s, "ssim", 3), pm(s, "nll", 1), number(s.get("fid"), 1)]
                rows.append([label, str(images), method, refiner, *scored])
                rows[-1].append(f"{s['seconds_per_image']:.3f}")
    return rows


# What the summary shows: (column, method, refiner).
SUMMARY_COLUMNS = [
    ("amortized", "conditional", "amortized"),
    ("svi", "conditional", "svi"),
    ("svi-flow", "conditional", "svi-flow"),
    ("importance (svi)", "importance", "svi"),
    ("MwG (svi)", "mwg", "svi"),
    ("the chain (svi)", "pseudo-gibbs", "svi"),
]


def restoration_summary(runs: Runs) -> str:
    """SSIM at a glance: a table per kind, a row per model and number of images."""
    header = ["model", "digits", "input", *(c for c, _, _ in SUMMARY_COLUMNS)]
    return per_kind(runs, "**{title}** (`{flag}`)", header, "lr" + "r" * 7, _summary_rows)


def _summary_rows(data: Restoration, task: str, kind: str, label: str, inputs: list) -> list:
    rows = []
    for images, s in inputs:
        row = [label, f"{images:,}", pm(s, "ssim", 3)]
        for _, method, refiner in SUMMARY_COLUMNS:
            scores = data.scores((task, kind, label, method, refiner), images)
            row.append(pm(scores, "ssim", 3))
        rows.append(row)
    return rows


def checkpoints_table(runs: Runs) -> str:
    """nvae-flow's checkpoints under Gaussian noise: the bundled one, longer training, more
    digits, and the one run with more steps and draws (off the defaults, kept apart)."""
    data = runs.restoration
    kind = ("denoise", "gaussian:variance=0.5")
    rows = []
    for label, images in ((m, i) for m, inputs in models(data, *kind) for i, _ in inputs):
        if label.split(" ")[0] != "nvae-flow":
            continue
        by_refiner = {r: data.scores((*kind, label, "conditional", r), images) for r in REFINERS}
        svi = by_refiner["svi"] or {}
        ssim = [pm(by_refiner[r], "ssim", 3) for r in REFINERS]
        rows.append([label, "defaults", f"{images:,}", *ssim])
        rows[-1] += [number(svi.get("nll"), 1), number(svi.get("fid"), 1)]
    for name in runs.names("longer-training-*.json"):
        run = runs[name]
        for (_, _, label), _, refiner, s, _ in scored_rows(run):
            steps, samples = run["refiners"][refiner]["steps"], run["protocol"]["num_samples"]
            ssim = [pm(s, "ssim", 3) if r == refiner else "" for r in REFINERS]
            settings = f"`-o steps={steps} --samples {samples}`"
            rows.append([label, settings, f"{images_of(run):,}", *ssim])
            rows[-1] += [number(s.get("nll"), 1), number(s.get("fid"), 1)]
    header = ["model", "settings", "digits", "amortized", "svi", "svi-flow", "svi NLL", "svi FID"]
    return table(header, "llrrrrrr", rows)


# Two paired runs whose B columns restore the same digits: nvae-flow 150 epochs and 13k.
PAIRED_FROM_STORED = ("longer-training", "more-digits-13k-vs-bundled")


def paired_table(runs: Runs) -> str:
    """The paired per-image differences: each ``paired-*.json`` run, and the 13,000-digit
    model against the 150-epoch one from the two stored runs' B columns."""
    catalogue = _catalogue()
    rows = []
    for name in runs.names("paired-*.json"):
        title = catalogue[name].title.removeprefix("Paired: ")
        rows.append([f"[{title}](data/{name})", *_paired_cells(runs[name])])
    longer, more = (runs.folder / f"paired-{n}-nvae-flow.json" for n in PAIRED_FROM_STORED)
    summary = stored_difference(f"{longer}:b", f"{more}:b")
    label = "nvae-flow trained on 13,000 digits minus 150 epochs, from the two runs' B columns"
    rows.append([label, *_paired_cells(summary)])
    header = ["B minus A", "images", "A", "B", "B − A (paired)", "B better on"]
    return table(header, "lrrrrr", rows)


def _paired_cells(run: dict) -> list[str]:
    return [
        run["images"],
        f"{run['ssim_a']:.4f}",
        f"{run['ssim_b']:.4f}",
        f"{run['b_minus_a']:+.4f} ± {run['paired_sem']:.4f}",
        f"{100 * run['b_better_on']:.1f}%",
    ]


def training_size_table(runs: Runs) -> str:
    """The training-size study: a row per model trained on the first N mnist-5k digits."""
    rows = []
    for name in runs.names("training-size-*.json"):
        run = runs[name]
        backend = run.get("backend", "vae")  # the VAE's run predates the field
        for r in run["rows"]:
            rows.append(
                [
                    backend,
                    f"{r['training_digits']:,}",
                    str(run["epochs"]),
                    f"{r['train_nelbo']:.2f}",
                    pm(r, "ssim", 3),
                    number(r["nll"], 1),
                ]
            )
    rows.sort(key=lambda row: (BACKENDS.index(row[0]), int(row[1].replace(",", ""))))
    header = ["backend", "training digits", "epochs", "train NELBO", "denoised SSIM", "NLL (nats)"]
    return table(header, "lrrrrr", rows)


DEFAULT_SETTING = "svi, steps=300"  # the study's name for the restoration default
DEFAULTS_KINDS = {
    "gaussian": "Gaussian noise of variance 0.5, clipped to [0, 1]",
    "salt-pepper": "Salt-and-pepper 20%",
    "centre": "The centre 14x14 square missing",
    "half": "The bottom half missing",
}


def defaults_tables(runs: Runs) -> str:
    """The defaults study on held-out digits: every setting tried, the default in bold."""
    study = runs["restoration-defaults-vae.json"]
    out: list[str] = []
    for kind, title in DEFAULTS_KINDS.items():
        rows = []
        for method, setting, s in study[kind]["rows"]:
            label, ssim = _setting(setting), pm(s, "ssim", 3)
            if setting == DEFAULT_SETTING:
                label, ssim = bold(label), bold(ssim)
            rows.append([method, label, ssim, number(s["nll"], 1), f"{s['seconds_per_image']:.3f}"])
        corrupted = pm(study[kind]["corrupted"], "ssim", 3)
        out += [
            f"**{title}** (the corrupted input scores SSIM {corrupted})",
            "",
            table(["method", "refiner", "SSIM", "NLL", "s/image"], "llrrr", rows),
            "",
        ]
    return "\n".join(out)


def _setting(setting: str) -> str:
    """``svi, steps=300,lr=0.05`` in words: ``svi, 300 steps, lr 0.05``."""
    if setting == DEFAULT_SETTING:
        return "svi, 300 steps (default)"
    if setting == "svi (defaults)":
        return "svi (default)"
    name, _, options = setting.partition(", ")
    words = []
    for pair in filter(None, options.split(",")):
        key, _, value = pair.partition("=")
        words.append(f"{value} steps" if key == "steps" else f"{key} {value}")
    return ", ".join([name, *words])


# ------------------------------------------------------------------------- the index


def _catalogue() -> dict[str, Run]:
    return {run.file: run for run in RUNS}


def index(runs: Runs, stored: dict) -> dict:
    """index.json: each run's catalogue entry, digest, commit, checkpoints and model hash.

    A commit found once is kept while the file's digest is the one it was found for, so
    moving or committing the file again does not change it; a new or changed file's
    commit is looked up in git (the first commit that holds its exact content)."""
    catalogue = _catalogue()
    names = runs.names()
    missing = [n for n in names if n not in catalogue]
    if missing:
        raise DataError(f"no entry in scripts/results_catalogue.py for {', '.join(missing)}")
    gone = [f for f in catalogue if f not in names]
    if gone:
        raise DataError(f"scripts/results_catalogue.py lists missing files: {', '.join(gone)}")
    known = {entry["file"]: entry for entry in stored.get("runs", [])}
    entries = []
    for entry in _in_page_order(RUNS):
        path = runs.folder / entry.file
        record = runs[entry.file]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        check_command(entry, record)
        old = known.get(entry.file, {})
        kept = old.get("sha256") == digest and old.get("commit") != UNCOMMITTED
        commit = old["commit"] if kept else first_commit(path)
        item = {
            "file": entry.file,
            "title": entry.title,
            "page": entry.page,
            "command": command_of(entry),
            "commit": commit,
            "sha256": digest,
            "checkpoints": checkpoints_of(record),
            "model_sha256": record.get("parameters_sha256", NOT_RECORDED),
        }
        entries.append(item | ({"note": entry.note} if entry.note else {}))
    return {
        "about": (
            f"Generated by {SCRIPT} from scripts/results_catalogue.py and the runs beside "
            "this file; do not edit. commit: the first commit holding the file's content "
            "(git log --follow finds it at its old path); sha256: the file's bytes; "
            "model_sha256: the evaluated weights' digest where the run recorded it."
        ),
        "runs": entries,
    }


def _in_page_order(catalogue: list[Run]) -> list[Run]:
    return sorted(catalogue, key=lambda run: list(PAGES).index(run.page))


def command_of(entry: Run) -> str:
    return entry.command.format(out=f"docs/results/data/{entry.file}")


def checkpoints_of(record: dict) -> dict | str:
    """The checkpoints a run recorded: per backend, or A's and B's of a paired run."""
    if record.get("backends"):
        return record["backends"]
    if "per_image_ssim" in record:
        return {"a": record["checkpoint"], "b": record.get("checkpoint_b", record["checkpoint"])}
    if "checkpoint" in record:
        return {record["backend"]: record["checkpoint"]}
    return NOT_RECORDED


def first_commit(path: Path) -> str:
    """The first commit of HEAD's history that holds ``path``'s exact content, at any path:
    the commit that last changed the file, which a move since does not change.
    `UNCOMMITTED` where there is none."""
    content = path.read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    try:
        found = subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "log",
                "--reverse",
                "--format=%h",
                f"--find-object={blob}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return UNCOMMITTED
    return found[0] if found else UNCOMMITTED


def index_page(index_data: dict) -> str:
    """The readable index: a table per page, then the commands that wrote its runs."""
    out: list[str] = []
    for page, title in PAGES.items():
        entries = [e for e in index_data["runs"] if e["page"] == page]
        out += [f"## [{title}]({page})", ""]
        rows = [
            [f"[{e['file']}](data/{e['file']})", e["title"], f"`{e['commit']}`", _model_cell(e)]
            for e in entries
        ]
        out += [table(["file", "run", "commit", "model"], "llll", rows), ""]
        lines = []
        for e in entries:
            note = textwrap.wrap(e.get("note", ""), 86, initial_indent="# ", subsequent_indent="# ")
            lines += [f"# {e['file']}", *note]
            lines += [wrap(e["command"])]
        out += ["```bash", "\n".join(lines), "```", ""]
    return "\n".join(out)


def _model_cell(entry: dict) -> str:
    """The model hash where recorded (first 12 hex digits), with the checkpoint's folder."""
    hashes, paths = entry["model_sha256"], entry["checkpoints"]
    folders = {} if paths == NOT_RECORDED else {k: Path(v).name for k, v in paths.items()}
    if hashes == NOT_RECORDED:
        where = ", ".join(f"`{f}`" for f in dict.fromkeys(folders.values()))
        return f"{NOT_RECORDED} ({where})" if where else NOT_RECORDED
    return "; ".join(f"`{v[:12]}…` (`{folders.get(k, k)}`)" for k, v in hashes.items())


def wrap(command: str, width: int = 88) -> str:
    """A shell command on lines of at most ``width`` characters where it can be, broken
    before an option (kept with its value), a pipe or a redirect; after ``&&`` the next
    command starts a line of its own."""
    pieces: list[str] = []
    for token in command.split(" "):
        starts = token.startswith("-") or token in ("|", ">", "&&")
        if pieces and not starts and pieces[-1] != "&&":
            pieces[-1] += f" {token}"
        else:
            pieces.append(token)
    lines = [pieces[0]]
    for piece in pieces[1:]:
        if lines[-1].endswith("&&"):
            lines.append(piece)
        elif len(lines[-1]) + len(piece) + 3 > width:
            lines[-1] += " \\"
            lines.append(f"    {piece}")
        else:
            lines[-1] += f" {piece}"
    return "\n".join(lines)


# ------------------------------------------------------- commands against their runs


def check_command(entry: Run, record: dict) -> None:
    """Refuse an ``lvm evaluate``, ``lvm gaps`` or paired command that disagrees with
    what its run recorded (the runs record their settings, not their command line)."""
    for part in command_of(entry).split(" && "):
        tokens = shlex.split(part.split(" > ")[0].split(" | ")[0])
        recorded = RECORDS.get(tuple(tokens[:2]))
        if recorded is None:
            continue  # a training or study script: its output records no settings to check
        flags = _flags(tokens)
        for flag, value in recorded(record, flags).items():
            given = flags.get(flag)
            if given is not None and _normal(flag, given) != value:
                raise DataError(
                    f"{entry.file}: the command gives {flag} {given!r}, the run recorded {value!r}"
                )


def _flags(tokens: list[str]) -> dict[str, str]:
    """Each option's value (``--checkpoint`` and ``-o`` repeat: their values joined)."""
    flags: dict[str, str] = {"subcommand": tokens[2] if len(tokens) > 2 else ""}
    for option, value in itertools.pairwise(tokens):
        if option.startswith("-") and not value.startswith("-"):
            flags[option] = f"{flags[option]} {value}" if option in flags else value
    return flags


def _normal(flag: str, value: str) -> object:
    """A flag's value in the form its run records it."""
    if flag in ("--backend", "--refiner", "--method", "--masks"):
        return set(value.split(","))
    if flag == "--noise":
        return {canonical_spec(spec) for spec in _noise_specs(value)}
    if flag in ("--checkpoint", "--checkpoint-b"):
        # BACKEND=PATH pairs (lvm evaluate) or one PATH (the paired script): folder names.
        pairs = (pair.rpartition("=") for pair in value.split())
        return {backend: Path(path).name for backend, _, path in pairs}
    return value


def _noise_specs(value: str) -> list[str]:
    # "gaussian:variance=0.5,salt-pepper:rate=0.2": a KEY=VALUE piece belongs to the spec
    # before it, a piece with a name starts a spec.
    specs: list[str] = []
    for piece in value.split(","):
        if specs and ":" not in piece and "=" in piece:
            specs[-1] += f",{piece}"
        else:
            specs.append(piece)
    return specs


def _evaluate_record(run: dict, flags: dict[str, str]) -> dict[str, object]:
    flags.setdefault("--checkpoint", "")  # none named: every backend's bundled checkpoint
    results = run["results"].values()
    methods = {
        m for kinds in results for result in kinds.values() for m in result.get("methods", {})
    }
    others = {
        backend: Path(path).name
        for backend, path in run["backends"].items()
        if backend_label(backend, path, run.get("parameters_sha256", {}).get(backend)) != backend
    }
    protocol = run["protocol"]
    return {
        "subcommand": run["task"],
        "--backend": set(run["backends"]),
        "--checkpoint": others,
        "--refiner": set(run["refiners"]),
        "--method": methods or None,  # runs from before the methods recorded none
        "--noise" if run["task"] == "denoise" else "--masks": {
            canonical_kind(run, kind) for kind in run["kinds"]
        },
        "--num-images": str(images_of(run)),
        "--dataset": protocol["dataset"],
        "--split": protocol["split"],
        "--grid": run.get("grid"),
        "--samples": str(protocol.get("num_samples")),
        "--iterations": str(protocol.get("iterations")),
    }


def _gaps_record(run: dict, flags: dict[str, str]) -> dict[str, object]:
    protocol, test = run["protocol"], run["results"]["test"]
    return {
        "--backend": {run["backend"]},
        "--dataset": run["dataset"],
        "--num-images": protocol["images"].split()[1],  # "first 50 of each split"
        "--max-steps": str(protocol["rule"]["max_steps"]),
        "--iwae-samples": str(test["iwae_samples"]),
        "--log-px": test["log_px_estimator"],
        "--bdmc-datapoints": str(protocol["bdmc"]["num_datapoints"]),
    }


def _paired_record(run: dict, flags: dict[str, str]) -> dict[str, object]:
    _, num, _, dataset, split = run["images"].split()  # "first 200 of mnist test"
    return {
        "--backend": {run["backend"]},
        "--checkpoint": {"": Path(run["checkpoint"]).name},
        "--checkpoint-b": {"": Path(run.get("checkpoint_b", run["checkpoint"])).name},
        "--num": num,
        "--dataset": dataset,
        "--split": split,
        "--kind": run["kind"],
        "--refiner": {run["refiner"]},
        "--a": run["a"],
        "--b": run["b"],
    }


# Which commands are checked against their runs, by their first two words.
RECORDS: dict[tuple[str, ...], Callable[[dict, dict[str, str]], dict[str, object]]] = {
    ("lvm", "evaluate"): _evaluate_record,
    ("lvm", "gaps"): _gaps_record,
    ("python", "scripts/paired_refiner_difference.py"): _paired_record,
}


# ------------------------------------------------------------- sections and the pages


@dataclass(frozen=True)
class Section:
    """A generated part of a page: between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``."""

    page: str
    name: str
    render: Callable[[Runs], str]


SECTIONS = [
    Section("paper-tables.md", "vae-table", lambda runs: paper_table(runs, "vae")),
    Section("paper-tables.md", "gmvae-table", lambda runs: paper_table(runs, "gmvae")),
    Section("gaps.md", "ais-table", gaps_table),
    Section("recipes.md", "natural-gradient", natural_table),
    Section("restoration.md", "summary", restoration_summary),
    Section("restoration.md", "tables", restoration_tables),
    Section("restoration.md", "checkpoints", checkpoints_table),
    Section("restoration.md", "paired", paired_table),
    Section("restoration.md", "training-size", training_size_table),
    Section("restoration.md", "defaults-study", defaults_tables),
    Section("inpainting.md", "inpainting", lambda r: chain_table(r, "inpainting.json", best=True)),
    Section("inpainting.md", "denoising", lambda r: chain_table(r, "denoising.json", best=False)),
    Section(
        "inpainting.md",
        "denoising-1-iteration",
        lambda runs: chain_table(runs, "denoising-1-iteration.json", best=False),
    ),
]


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the part between ``name``'s markers replaced by ``body``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if text.count(start) != 1 or text.count(end) != 1:
        raise DataError(f"needs one {start} and one {end} marker")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n\n{body.rstrip()}\n\n{end}{tail}"


def expected(results: Path) -> dict[Path, tuple[str, list[str]]]:
    """Each generated file's text as the data gives it, with the names of its sections."""
    runs = Runs(results / "data")
    index_path = runs.folder / INDEX_JSON
    stored = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index_data = index(runs, stored)
    files: dict[Path, tuple[str, list[str]]] = {
        index_path: (json.dumps(index_data, indent=1, ensure_ascii=False) + "\n", [])
    }
    bodies = [(s.page, s.name, s.render(runs)) for s in SECTIONS]
    bodies.append((INDEX_PAGE, "index", index_page(index_data)))
    for page, name, body in bodies:
        path = results / page
        text, names = files.get(path, (path.read_text(), []))
        try:
            files[path] = (replace_section(text, name, body), [*names, name])
        except DataError as err:
            raise DataError(f"{path}: {err}") from None
    return files


def drift(results: Path) -> list[str]:
    """What differs between the generated files and the data: a line per page section."""
    problems = []
    for path, (text, names) in expected(results).items():
        old = path.read_text() if path.is_file() else ""
        if old == text:
            continue
        if not names:
            problems.append(f"{path}: differs from the data")
        for name in names:
            if _section(old, name) != _section(text, name):
                problems.append(f"{path}, section '{name}': {_first_difference(old, text, name)}")
        if names and _outside(old, names) != _outside(text, names):
            problems.append(f"{path}: text outside the generated sections changed")
    return problems


def _section(text: str, name: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    return text.split(start, 1)[-1].split(end, 1)[0] if start in text else ""


def _outside(text: str, names: list[str]) -> str:
    for name in names:
        text = text.replace(_section(text, name), "")
    return text


def _first_difference(old: str, new: str, name: str) -> str:
    lines = zip(_section(old, name).splitlines(), _section(new, name).splitlines(), strict=False)
    for line_old, line_new in lines:
        if line_old != line_new:
            return f"the page has\n    {line_old}\nthe data gives\n    {line_new}"
    return "the page has other lines than the data gives"


def main(argv: list[str] | None = None) -> int:
    """Write every generated section and the index, or with ``--check`` report drift."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a page is out of date")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results folder")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = drift(args.results)
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                print(f"out of date: run python {SCRIPT}", file=sys.stderr)
            return 1 if problems else 0
        for path, (text, _) in expected(args.results).items():
            if not path.is_file() or path.read_text() != text:
                path.write_text(text)
                print(f"wrote {path}")
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
