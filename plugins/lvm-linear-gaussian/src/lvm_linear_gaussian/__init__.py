"""lvm-linear-gaussian: a VAE whose log p(x) and posterior are known exactly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lvmtoolkit import hookimpl


@hookimpl
def register_backends(register: Callable[[Any], None]) -> None:
    from lvm_linear_gaussian.model import LinearGaussian

    register(LinearGaussian)
