"""``lvm gaps``: the approximation / amortization gap decomposition per split."""

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
from lvmtoolkit.cli.jobs import command_inputs, input_options


def register(cli: click.Group) -> None:
    cli.add_command(gaps)


@click.command()
@backend_option
@checkpoint_option
@refiner_options(
    "Refiner that finds q* (it must take a 'steps' option).",
    "Refiner option, repeatable (see `lvm refiners show NAME`).",
)
@steps_option(
    "1,10,100,1000",
    "Step counts at which to report the fraction of the amortization gap closed.",
)
@data_options
@splits_option("test")
@count_option("--num-images", default=200, help="Images per split: the first N of the split.")
@count_option("--iwae-samples", default=1000, help="k of the IWAE-k bound used as log p̂(x).")
@click.option(
    "--log-px",
    "log_px",
    type=click.Choice(["iwae", "ais"]),
    default="iwae",
    show_default=True,
    help="Estimate of log p(x) the gaps use: IWAE-k, or annealed importance sampling from "
    "q* (reported beside IWAE-k; tighter where q* is far from the posterior).",
)
@count_option(
    "--ais-steps", default=100, help="AIS: intermediate distributions between q* and the posterior."
)
@count_option("--ais-leapfrog", default=5, help="AIS: leapfrog steps per HMC transition.")
@count_option(
    "--ais-chains",
    default=8,
    help="AIS: chains per image (their spread gives each estimate's standard error).",
)
@count_option(
    "--bdmc-datapoints",
    default=100,
    minimum=0,
    help="With --log-px ais: simulate this many datapoints from the model and run AIS "
    "forward and in reverse on them (BDMC); the sandwich width says how far this schedule "
    "can be from log p(x). It costs about twice the AIS of as many images, plus finding "
    "their q*. 0: skip it.",
)
@count_option("--eval-samples", default=100, help="Posterior samples per image in each ELBO.")
@count_option("--round-steps", default=500, help="Stopping rule for q*: steps per round...")
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=0.02,
    show_default=True,
    help="...stop when a round gains less than this many nats...",
)
@count_option("--max-steps", default=10000, help="...or after this many steps in all.")
@seed_option("--seed", help="Seed of the evaluation noise.")
@input_options
@runtime_options
@json_option
def gaps(
    backend: str,
    checkpoint: str | None,
    refiner: str,
    options: tuple[str, ...],
    steps: list[int],
    dataset: str,
    data_dir: str | None,
    splits: list[str],
    num_images: int,
    iwae_samples: int,
    log_px: str,
    ais_steps: int,
    ais_leapfrog: int,
    ais_chains: int,
    bdmc_datapoints: int,
    eval_samples: int,
    round_steps: int,
    tolerance: float,
    max_steps: int,
    seed: int,
    data: tuple[str, ...],
    model_spec: str | None,
    device: str,
    threads: int | None,
    as_json: bool,
) -> None:
    """Split the inference gap into approximation and amortization gaps.

    For each split reports log p̂(x) (IWAE-k with the optimised posterior q* as proposal),
    L[q] (ELBO of the encoder's posterior), L[q*] (ELBO after per-datapoint optimisation
    run until the stopping rule holds), the approximation gap log p̂(x) - L[q*], the
    amortization gap L[q*] - L[q], and how much of the amortization gap each number of
    refiner steps closes (Cremer, Li & Duvenaud, ICML 2018). Values are means over images,
    in nats, with the standard error of each mean over images.

    IWAE-k is a lower bound on log p(x), so it understates the approximation gap by its
    own slack. With --log-px ais the gaps use annealed importance sampling from q*
    instead (IWAE-k stays beside it), and BDMC on data simulated from the model bounds
    the schedule's slack from both sides (Wu et al., ICLR 2017).

    \b
    Examples:
      lvm gaps
      lvm gaps --backend gmvae --split train,test --num-images 100 --json
      lvm gaps --dataset mnist --data-dir ../shared/data/mnist --iwae-samples 5000
      lvm gaps --log-px ais --ais-steps 300 --num-images 500
      lvm gaps --model my_vae.py:build --data pngs/ --num-images 50
    """
    from lvmtoolkit.core.runtime import resolve_device, set_threads
    from lvmtoolkit.errors import OptionError
    from lvmtoolkit.metrics.ais import AISSchedule
    from lvmtoolkit.metrics.gaps import ConvergenceRule, gaps_report
    from lvmtoolkit.plugins import get_refiner

    set_threads(threads)
    torch_device = resolve_device(device)
    values = parse_key_values(options, "--option")
    if "steps" in values:
        raise OptionError("steps are set by --steps and the stopping rule, not -o steps=...")
    refiner_obj = get_refiner(refiner)(**values)  # validates the options before the long run
    if not refiner_obj.iterative:
        raise OptionError(f"refiner {refiner!r} takes no steps; q* needs an iterative refiner")
    if log_px != "ais":
        source = click.get_current_context().get_parameter_source
        for name in ("ais_steps", "ais_leapfrog", "ais_chains", "bdmc_datapoints"):
            if source(name) is not click.core.ParameterSource.DEFAULT:
                flag = "--" + name.replace("_", "-")
                raise OptionError(f"{flag} applies only with --log-px ais")
    rule = ConvergenceRule(round_steps, tolerance, max_steps)
    schedule = AISSchedule(num_steps=ais_steps, leapfrog_steps=ais_leapfrog, num_chains=ais_chains)
    inputs = command_inputs(click.get_current_context().params, torch_device)
    model, backend, checkpoint = inputs.model, inputs.backend, inputs.checkpoint
    dataset, split_images, splits = inputs.dataset, inputs.split_images, list(inputs.split_images)

    with stderr.status(f"gaps on {num_images} images per split"):
        report = gaps_report(
            model,
            refiner_obj,
            split_images,
            steps=steps,
            rule=rule,
            iwae_samples=iwae_samples,
            eval_samples=eval_samples,
            log_px=log_px,
            ais=schedule,
            bdmc_datapoints=bdmc_datapoints if log_px == "ais" else 0,
            seed=seed,
            images=f"first {num_images} of each split",
            log=lambda split, line: stderr.print(f"[dim]{split}: {line}[/dim]"),
        )
    rendered = {
        "backend": backend,
        "checkpoint": checkpoint,
        "dataset": dataset,
        "refiner": refiner,
        "options": values,
        "binarization": report.protocol["binarization"],
        "protocol": report.protocol,
        "results": report.results,
    }
    if as_json:
        click.echo(dump_json(rendered))
        return
    _print(rendered, splits)


def _print(report: dict[str, Any], splits: list[str]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=f"Inference gaps: {report['backend']} on {report['dataset']} (nats, mean per image)"
    )
    table.add_column("")
    for split in splits:
        table.add_column(split, justify="right")
    results = report["results"]
    ais = "log_px_ais" in results[splits[0]]
    rows = [("log p̂(x) IWAE", "log_px_iwae")]
    if ais:
        rows += [("log p̂(x) AIS", "log_px_ais"), ("AIS - IWAE (paired)", "ais_minus_iwae")]
    rows += [
        ("L[q*] optimised", "elbo_optimal"),
        ("L[q] amortized", "elbo_amortized"),
        ("approximation gap (IWAE)", "approximation_gap_iwae"),
    ]
    if ais:
        rows.append(("approximation gap (AIS)", "approximation_gap_ais"))
    rows += [("amortization gap", "amortization_gap"), ("inference gap", "inference_gap")]
    for label, key in rows:
        table.add_row(escape(label), *[_with_error(results[s], key) for s in splits])
    steps = sorted({int(k) for s in splits for k in results[s]["fraction_closed_at_step"]})
    for step in steps:
        table.add_row(
            f"closed after {step} steps",
            *[
                f"{100 * results[s]['fraction_closed_at_step'].get(str(step), 0):.1f}%"
                for s in splits
            ],
        )
    table.add_row("steps to q*", *[str(results[s]["optimal_steps"]) for s in splits])
    stderr.print(table)
    first = results[splits[0]]
    passes = ", ".join(f"{k} {v}" for k, v in first["passes_per_datapoint"].items())
    stderr.print(
        f"[dim]q*: {report['refiner']} {report['options'] or ''}, stopped: "
        f"{first['stop_reason']}; IWAE-{first['iwae_samples']}; "
        f"{first['eval_samples']} samples per ELBO; binarisation: "
        f"{report['binarization']}; ± is the standard error over images; model passes "
        f"per image: {passes}.[/dim]"
    )
    protocol = report["protocol"]
    if "ais" in protocol:
        stderr.print(f"[dim]AIS: {protocol['ais']['description']}.[/dim]")
    if "bdmc" in protocol:
        b = protocol["bdmc"]
        stderr.print(
            f"BDMC on {b['num_datapoints']} simulated datapoints: log p(x) between "
            f"{b['lower']:.3f} and {b['upper']:.3f}, sandwich width {b['width']:.3f} nats."
        )


def _with_error(numbers: dict[str, Any], key: str) -> str:
    error = numbers.get("stderr", {}).get(key)
    return f"{numbers[key]:.3f}" + (f" ± {error:.3f}" if error is not None else "")
