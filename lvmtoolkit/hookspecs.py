"""Hook specifications of the ``lvmtoolkit`` plugin system.

Plugins implement these with ``@lvmtoolkit.hookimpl`` and are found through the
``lvmtoolkit`` entry-point group. Each hook receives a ``register`` callback rather than
returning values, so the host records which plugin registered what.
"""

from __future__ import annotations

from collections.abc import Callable

import click
import pluggy

hookspec = pluggy.HookspecMarker("lvmtoolkit")
hookimpl = pluggy.HookimplMarker("lvmtoolkit")


@hookspec
def register_backends(register: Callable[[type], None]) -> None:
    """Register model backends: ``register(ModelSubclass)``; the class's ``name`` is its key.

    Args:
        register: Call it once per :class:`~lvmtoolkit.core.model.Model` subclass.
    """


@hookspec
def register_refiners(register: Callable[[type], None]) -> None:
    """Register refiners: ``register(RefinerSubclass)``; the class's ``name`` is its key.

    Args:
        register: Call it once per :class:`~lvmtoolkit.core.refiner.Refiner` subclass.
    """


@hookspec
def register_datasets(register: Callable[[type], None]) -> None:
    """Register datasets: ``register(DatasetSubclass)``; the class's ``name`` is its key.

    Args:
        register: Call it once per :class:`~lvmtoolkit.data.Dataset` subclass.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``lvm`` Click group: ``@cli.command() def mycommand(): ...``.

    Args:
        cli: The ``lvm`` group; ``cli.add_command(command)`` adds a ready-made command.
    """
