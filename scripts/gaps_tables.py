"""Regenerate the AIS tables of docs/results/gaps.md from the runs' JSON beside it.

Each ``docs/results/gaps-ais-*.json`` is the output of one ``lvm gaps --log-px ais --json``
run; the page's table (between the ``<!-- ais-table:start -->`` and
``<!-- ais-table:end -->`` markers) is generated from them, so no number is typed by hand.

Usage:
    python scripts/gaps_tables.py [--check]

With ``--check`` the page is not written; the script fails if it is out of date.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from page_section import write_section

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
PAGE = RESULTS / "gaps.md"
START, END = "<!-- ais-table:start -->", "<!-- ais-table:end -->"
ORDER = ["vae", "gmvae", "nvae", "nvae-flow"]

ROWS = [
    ("log p̂(x), IWAE-5000", "log_px_iwae"),
    ("log p̂(x), AIS", "log_px_ais"),
    ("AIS − IWAE (paired)", "ais_minus_iwae"),
    ("L[q\\*]", "elbo_optimal"),
    ("L[q] (amortized)", "elbo_amortized"),
    ("approximation gap, IWAE", "approximation_gap_iwae"),
    ("approximation gap, AIS", "approximation_gap_ais"),
    ("amortization gap", "amortization_gap"),
]


def load_runs() -> list[dict]:
    runs = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("gaps-ais-*.json"))]
    for run in runs:
        if run["protocol"].get("ais") is None or "bdmc" not in run["protocol"]:
            sys.exit(f"a gaps-ais run of {run['backend']} has no AIS schedule or BDMC record")
    return sorted(runs, key=lambda run: ORDER.index(run["backend"]))


def cell(numbers: dict, key: str) -> str:
    value, error = numbers.get(key), numbers.get("stderr", {}).get(key)
    if value is None:
        return "—"
    return f"{value:.2f}" + (f" ± {error:.2f}" if error is not None else "")


def row(label: str, cells: list[str]) -> str:
    return f"| {label} | " + " | ".join(cells) + " |"


def render(runs: list[dict]) -> str:
    tests = [run["results"]["test"] for run in runs]
    bdmc = [run["protocol"]["bdmc"] for run in runs]
    closed = [
        " / ".join(f"{100 * v:.0f}%" for v in t["fraction_closed_at_step"].values()) for t in tests
    ]
    lines = [
        "| | " + " | ".join(f"`{run['backend']}`" for run in runs) + " |",
        "|---|" + "---:|" * len(runs),
        row("test digits", [f"{t['num_images']:,}" for t in tests]),
        row("svi steps to q\\*", [f"{t['optimal_steps']:,}" for t in tests]),
        *(row(label, [cell(t, key) for t in tests]) for label, key in ROWS),
        row("amortization gap closed after 1 / 10 / 100 / 1000 steps", closed),
        row("BDMC: simulated datapoints", [str(b["num_datapoints"]) for b in bdmc]),
        row("BDMC: lower / upper", [f"{b['lower']:.2f} / {b['upper']:.2f}" for b in bdmc]),
        row(
            "**BDMC sandwich width**",
            [f"**{b['width']:.2f} ± {b['width_stderr']:.2f}**" for b in bdmc],
        ),
        row("AIS acceptance", [f"{t['ais_acceptance']:.2f}" for t in tests]),
        row("AIS model passes per image", [f"{t['passes_per_datapoint']['ais']:,}" for t in tests]),
        row("AIS seconds (2 threads)", [f"{t['ais_seconds']:.0f}" for t in tests]),
    ]
    schedules = {run["protocol"]["ais"]["description"] for run in runs}
    notes = [f"AIS schedule: {s}." for s in sorted(schedules)]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the page is out of date")
    args = parser.parse_args()
    write_section(
        PAGE, START, END, render(load_runs()), check=args.check, script="scripts/gaps_tables.py"
    )


if __name__ == "__main__":
    main()
