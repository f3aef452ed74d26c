"""Hook specifications of the ``lvmtoolkit`` plugin system.

Plugins implement these with ``@lvmtoolkit.hookimpl`` and are found through the
``lvmtoolkit`` entry-point group. Each hook receives a ``register`` callback rather than
returning values, so the host records which plugin registered what.

The registration hooks run every time the host reads a registry (each ``get_backend``,
``lvm backends``, ``lvm plugins``...), so they run many times per process: keep them
cheap (import heavy libraries inside the registered classes' methods, not at module
level) and idempotent (register the same objects every call, change no state). A hook
that raises, an implementation of a hook that does not exist (``register_backend``) or
one with other argument names makes its plugin *broken*: it is left out, ``lvm plugins``
shows the error, and other commands warn about it once on stderr.
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

    Called whenever the backend registry is read (loading a checkpoint, ``--backend``,
    ``lvm backends``), possibly many times per process: must be idempotent and cheap.

    Args:
        register: Call it once per `Model` subclass.
    """


@hookspec
def register_refiners(register: Callable[[type], None]) -> None:
    """Register refiners: ``register(RefinerSubclass)``; the class's ``name`` is its key.

    Called whenever the refiner registry is read (``--refiner``, ``get_refiner``,
    ``lvm refiners``), possibly many times per process: must be idempotent and cheap.

    Args:
        register: Call it once per `Refiner` subclass.
    """


@hookspec
def register_datasets(register: Callable[[type], None]) -> None:
    """Register datasets: ``register(DatasetSubclass)``; the class's ``name`` is its key.

    Called whenever the dataset registry is read (``--dataset``, ``get_dataset``,
    ``lvm datasets``), possibly many times per process: must be idempotent and cheap.

    Args:
        register: Call it once per `Dataset` subclass.
    """


@hookspec
def register_observations(register: Callable[[type], None]) -> None:
    """Register observation models: ``register(ObservationModelSubclass)``; ``name`` is its key.

    An observation model says how observed data y arise from clean data x, pixel by pixel
    (``lvmtoolkit.ObservationModel``); ``lvm denoise --noise NAME`` and
    ``lvmtoolkit.restore`` use it. Called whenever the observation-model registry is read
    (``--noise``, ``get_observation``, ``lvm plugins``), possibly many times per process:
    must be idempotent and cheap.

    Args:
        register: Call it once per `ObservationModel` subclass.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``lvm`` Click group: ``@cli.command() def mycommand(): ...``.

    Called once per ``lvm`` process, the first time the command line looks up or lists
    its commands (never when ``lvmtoolkit.cli`` is imported). If it raises, the commands
    it added are removed and the plugin is reported as broken.

    Args:
        cli: The ``lvm`` group; ``cli.add_command(command)`` adds a ready-made command.
    """
