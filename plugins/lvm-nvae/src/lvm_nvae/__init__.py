"""lvm-nvae: the NVAE backends of lvmtoolkit, registered through the ``lvmtoolkit`` entry point.

Two backends: ``nvae`` (Gaussian residual posterior) and ``nvae-flow`` (the same model with
inverse autoregressive flows in the posterior), each with its own bundled checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lvmtoolkit import hookimpl


@hookimpl
def register_backends(register: Callable[[Any], None]) -> None:
    from lvm_nvae.model import NVAE, NVAEFlow

    register(NVAE)
    register(NVAEFlow)
