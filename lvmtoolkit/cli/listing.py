"""``lvm plugins``, ``lvm backends``, ``lvm refiners``, ``lvm datasets``: what is installed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from lvmtoolkit.cli.common import dump_json, stderr


def register(cli: click.Group) -> None:
    cli.add_command(plugins)
    cli.add_command(backends)
    cli.add_command(refiners)
    cli.add_command(datasets)


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    stderr.print(table)


def _show(
    rows: list[dict[str, Any]],
    as_json: bool,
    title: str,
    columns: list[str],
    cells: Callable[[dict[str, Any]], list[str]],
) -> None:
    """The rows as JSON on stdout, or as a table (a row's cells from ``cells``) on stderr."""
    if as_json:
        click.echo(dump_json(rows))
    else:
        _table(title, columns, [cells(row) for row in rows])


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Write the list as JSON to stdout.")
def plugins(as_json: bool) -> None:
    """List installed plugins: distribution, version, hooks, what each registers.

    A plugin that fails to load (import error, unknown hook, a hook that raises) is listed
    as broken with its error; other commands warn about it once and go on without it.
    Default plugins are part of the core; entry-point plugins are separate distributions
    found in the `lvmtoolkit` entry-point group. Set LVM_LOAD_PLUGINS=name1,name2 to load
    only some entry-point plugins (empty: none).

    \b
    Example:
      lvm plugins --json
    """
    from lvmtoolkit.plugins import plugin_info

    _show(
        plugin_info(),
        as_json,
        "Installed plugins",
        ["name", "kind", "distribution", "version", "registers"],
        lambda p: [
            p["name"],
            p["kind"],
            p["distribution"],
            p["version"],
            p["error"] or "; ".join(f"{k}: {', '.join(v)}" for k, v in p["registers"].items()),
        ],
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Write the list as JSON to stdout.")
def backends(as_json: bool) -> None:
    """List model backends and whether each ships a pretrained checkpoint.

    A backend is a model family registered by a plugin; pass its name to `--backend` of
    `lvm refine`, `lvm train` or `lvm inpaint`. Without a bundled checkpoint, train one
    with `lvm train` and pass it with `--checkpoint`.

    \b
    Examples:
      lvm backends
      lvm backends --json
    """
    from lvmtoolkit.plugins import backends as registered

    rows = []
    for name, reg in sorted(registered().items()):
        checkpoint = reg.obj.default_checkpoint()
        rows.append(
            {
                "name": name,
                "plugin": reg.plugin,
                "version": reg.obj.version,
                "bundled_checkpoint": str(checkpoint) if checkpoint else None,
                "description": (reg.obj.__doc__ or "").strip().splitlines()[0],
            }
        )
    _show(
        rows,
        as_json,
        "Backends",
        ["name", "plugin", "bundled checkpoint", "description"],
        lambda r: [
            r["name"],
            r["plugin"],
            "yes" if r["bundled_checkpoint"] else "no",
            r["description"],
        ],
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Write the list as JSON to stdout.")
def datasets(as_json: bool) -> None:
    """List datasets and their splits.

    Pass a name to `--dataset` of `lvm refine` or `lvm train`. `mnist-5k` is bundled and
    needs no network; the others download, or read their files from `--data-dir`.

    \b
    Examples:
      lvm datasets
      lvm refine --dataset mnist --data-dir ../shared/data/mnist --split test
    """
    from lvmtoolkit.plugins import datasets as registered

    rows = [
        {
            "name": name,
            "plugin": reg.plugin,
            "splits": list(reg.obj.splits),
            "description": reg.obj.description,
        }
        for name, reg in sorted(registered().items())
    ]
    _show(
        rows,
        as_json,
        "Datasets",
        ["name", "splits", "description"],
        lambda r: [r["name"], ",".join(r["splits"]), r["description"]],
    )


@click.group()
def refiners() -> None:
    """List refiners and show their options.

    A refiner improves the encoder's posterior of each datapoint (`lvm refine --refiner
    NAME`); its options are set with `-o KEY=VALUE`.

    \b
    Examples:
      lvm refiners list
      lvm refiners show svi
    """


@refiners.command("list")
@click.option("--json", "as_json", is_flag=True, help="Write the list as JSON to stdout.")
def refiners_list(as_json: bool) -> None:
    """List refiners with the plugin that registered each.

    \b
    Example:
      lvm refiners list --json
    """
    from lvmtoolkit.plugins import refiners as registered

    rows = [
        {"name": name, "plugin": reg.plugin, "description": reg.obj.description}
        for name, reg in sorted(registered().items())
    ]
    _show(
        rows,
        as_json,
        "Refiners",
        ["name", "plugin", "description"],
        lambda r: [r["name"], r["plugin"], r["description"]],
    )


@refiners.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Write the options as JSON to stdout.")
def refiners_show(name: str, as_json: bool) -> None:
    """Show a refiner's options: type, default, allowed values, meaning.

    \b
    Example:
      lvm refiners show svi
    """
    from lvmtoolkit.core.options import describe_options
    from lvmtoolkit.plugins import get_refiner

    refiner_class = get_refiner(name)
    rows = describe_options(refiner_class.options_class)
    if as_json:
        click.echo(
            dump_json({"name": name, "description": refiner_class.description, "options": rows})
        )
        return
    stderr.print(f"[bold]{name}[/bold]: {refiner_class.description}")
    _table(
        f"Options of {name} (set with -o KEY=VALUE)",
        ["option", "type", "default", "allowed", "meaning"],
        [
            [
                r["name"],
                r["type"],
                str(r["default"]),
                ", ".join(map(str, r["choices"]))
                if r["choices"]
                else (
                    f"{'>' if r['exclusive_minimum'] else '>='} {r['minimum']}"
                    if r["minimum"] is not None
                    else ""
                ),
                r["help"],
            ]
            for r in rows
        ],
    )
