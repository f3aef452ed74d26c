"""lvm-gmvae: the GMVAE backend of lvmtoolkit, registered through the ``lvmtoolkit`` entry point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lvmtoolkit import hookimpl


@hookimpl
def register_backends(register: Callable[[Any], None]) -> None:
    from lvm_gmvae.model import GMVAE

    register(GMVAE)
