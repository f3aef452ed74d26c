"""The ``lvm`` command line. Each command group lives in its own module; heavy libraries
(torch, Pyro) are imported inside commands so ``lvm --help`` stays fast.

Errors end as one ``Error: ...`` line on stderr and a non-zero exit status: the toolkit's
own errors (`LvmError`) with their message, anything unexpected
with its type and message and a hint to rerun with ``--debug`` for the traceback.
SIGTERM is handled like Ctrl-C (SIGINT): the command stops where it is, and files being
written are removed, so no half-written output is left.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import click

from lvmtoolkit import __version__
from lvmtoolkit.errors import LvmError

_BUILTIN_MODULES = ("evaluate", "gaps", "gibbs", "listing", "refine", "train")


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so cleanup runs as it does for Ctrl-C."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _debug_requested(args: Any) -> bool:
    words = sys.argv[1:] if args is None else list(args)
    return "--debug" in words or os.environ.get("LVM_DEBUG", "") not in ("", "0")


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


class LvmGroup(click.Group):
    """A Click group whose errors are one line on stderr and a non-zero exit, no traceback.

    Commands of plugins (the ``register_commands`` hook) are added on first use, not at
    import, and each plugin's hook runs on its own: one that fails is reported and left
    out, so ``lvm --help`` and ``lvm plugins`` work whatever is installed.
    """

    _plugin_commands_added = False

    def _add_plugin_commands(self, warn: bool) -> None:
        from lvmtoolkit import plugins

        if warn and plugins.on_broken is None:
            warned: set[str] = set()

            def warning(name: str, error: str) -> None:
                if name not in warned:
                    warned.add(name)
                    click.echo(f"Warning: plugin {name!r} skipped: {_one_line(error)}", err=True)

            plugins.on_broken = warning
            plugins.load_plugins()
            for name, error in plugins.broken_plugins().items():
                warning(name, error)
        if LvmGroup._plugin_commands_added:
            return
        LvmGroup._plugin_commands_added = True
        plugins.load_plugins()
        for impl in plugins.pm.hook.register_commands.get_hookimpls():
            name = plugins.pm.get_name(impl.plugin) or repr(impl.plugin)
            before = dict(self.commands)
            try:
                impl.function(cli=self)
            except KeyboardInterrupt:
                raise
            except Exception as err:
                self.commands = before  # drop what it added before failing
                plugins._mark_broken(name, f"register_commands raised {plugins._describe(err)}")

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands(warn=False)
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        # `lvm plugins` lists broken plugins itself; every other command warns about them.
        self._add_plugin_commands(warn=cmd_name != "plugins" and not ctx.resilient_parsing)
        return super().get_command(ctx, cmd_name)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        debug = _debug_requested(args[0] if args else kwargs.get("args"))
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as err:
            click.echo(f"Error: {err.format_message()}", err=True)
            sys.exit(err.exit_code)
        except (click.Abort, KeyboardInterrupt) as err:
            # Click turns KeyboardInterrupt (and so our Terminated) into Abort.
            if isinstance(err, Terminated) or isinstance(err.__cause__, Terminated):
                click.echo("Terminated.", err=True)
                sys.exit(128 + signal.SIGTERM)
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except LvmError as err:
            if debug:
                raise
            click.echo(f"Error: {_one_line(str(err))}", err=True)
            sys.exit(1)
        except click.exceptions.Exit as err:
            sys.exit(err.exit_code)
        except SystemExit:
            raise
        except MemoryError:
            if debug:
                raise
            click.echo(
                "Error: out of memory; use fewer or smaller inputs "
                "(rerun with --debug for the traceback)",
                err=True,
            )
            sys.exit(1)
        except Exception as err:
            # The last net: a bug or an input no check foresaw still ends in one line.
            if debug:
                raise
            message = _one_line(str(err))
            click.echo(
                f"Error: unexpected {type(err).__name__}"
                + (f": {message}" if message else "")
                + " (rerun with --debug for the traceback)",
                err=True,
            )
            sys.exit(1)
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=LvmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lvmtoolkit")
@click.option(
    "--debug",
    is_flag=True,
    help="Show the full traceback of an error instead of one line (also: LVM_DEBUG=1).",
)
def cli(debug: bool) -> None:
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
    import importlib

    for name in _BUILTIN_MODULES:
        importlib.import_module(f"lvmtoolkit.cli.{name}").register(cli)


_register_commands()


def main() -> None:
    """Entry point of the ``lvm`` console script."""
    cli()
