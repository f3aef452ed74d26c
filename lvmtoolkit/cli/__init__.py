"""The ``lvm`` command line. Each command group lives in its own module; heavy libraries
(torch, Pyro) are imported inside commands so ``lvm --help`` stays fast."""

from __future__ import annotations

import sys
from typing import Any

import click

from lvmtoolkit import __version__
from lvmtoolkit.errors import LvmError


class LvmGroup(click.Group):
    """A Click group whose errors are one line on stderr and a non-zero exit, no traceback."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as err:
            click.echo(f"Error: {err.format_message()}", err=True)
            sys.exit(err.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except LvmError as err:
            click.echo(f"Error: {err}", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=LvmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lvmtoolkit")
def cli() -> None:
    """Measure and improve inference in pretrained VAEs.

    Start with `lvm refine`: it loads the bundled VAE, refines the posterior of MNIST
    digits per datapoint with SVI and prints the NELBO after each number of steps.

    \b
    Examples:
      lvm refine                              # bundled VAE, svi, mnist-5k
      lvm refine --steps 1,10,100 --json      # same, as JSON on stdout
      lvm inpaint digit.png --mask hole.png -o filled.png --refiner svi
      lvm train --backend vae --epochs 20 -o runs/vae
      lvm plugins                             # what is installed

    Every command has --help with its defaults and examples. Documentation (the
    concepts, all commands, bringing your own VAE, writing plugins): `mkdocs serve` in
    the repository, or docs/ there.
    """


def _register_commands() -> None:
    from lvmtoolkit.cli import evaluate, gaps, gibbs, listing, refine, train
    from lvmtoolkit.plugins import load_plugins, pm

    for module in (evaluate, gaps, gibbs, listing, refine, train):
        module.register(cli)
    load_plugins()
    pm.hook.register_commands(cli=cli)


_register_commands()


def main() -> None:
    """Entry point of the ``lvm`` console script."""
    cli()
