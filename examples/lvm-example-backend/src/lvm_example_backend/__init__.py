"""lvm-example-backend: an lvmtoolkit plugin that implements every hook.

lvmtoolkit imports this module through the ``lvmtoolkit`` entry point and calls the
functions marked ``@hookimpl``. Heavy modules (torch, the model) are imported inside the
hooks, so ``lvm --help`` stays fast with the plugin installed.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from lvmtoolkit import hookimpl


# --8<-- [start:register_backends]
@hookimpl
def register_backends(register: Callable[[type], None]) -> None:
    from lvm_example_backend.model import ConvVAE

    register(ConvVAE)


# --8<-- [end:register_backends]


# --8<-- [start:register_datasets]
@hookimpl
def register_datasets(register: Callable[[type], None]) -> None:
    from lvm_example_backend.data import Shapes

    register(Shapes)


# --8<-- [end:register_datasets]


# --8<-- [start:register_refiners]
@hookimpl
def register_refiners(register: Callable[[type], None]) -> None:
    from lvm_example_backend.refiner import ImportanceRefiner

    register(ImportanceRefiner)


# --8<-- [end:register_refiners]


# --8<-- [start:register_observations]
@hookimpl
def register_observations(register: Callable[[type], None]) -> None:
    from lvm_example_backend.observation import Occlusion

    register(Occlusion)


# --8<-- [end:register_observations]


# --8<-- [start:register_commands]
@hookimpl
def register_commands(cli: click.Group) -> None:
    from lvm_example_backend.commands import sample_grid

    cli.add_command(sample_grid)


# --8<-- [end:register_commands]
