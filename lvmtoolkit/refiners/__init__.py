"""Built-in refiners; this module is a default plugin of the core."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lvmtoolkit.hookspecs import hookimpl
from lvmtoolkit.refiners.amortized import AmortizedRefiner
from lvmtoolkit.refiners.svi import PaperSVIOptions, PaperSVIRefiner, SVIOptions, SVIRefiner

__all__ = [
    "AmortizedRefiner",
    "PaperSVIOptions",
    "PaperSVIRefiner",
    "SVIOptions",
    "SVIRefiner",
]


@hookimpl
def register_refiners(register: Callable[[Any], None]) -> None:
    register(AmortizedRefiner)
    register(SVIRefiner)
    register(PaperSVIRefiner)
