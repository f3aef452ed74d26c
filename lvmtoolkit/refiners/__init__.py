"""Built-in refiners; this module is a default plugin of the core."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lvmtoolkit.hookspecs import hookimpl
from lvmtoolkit.refiners.amortized import AmortizedRefiner
from lvmtoolkit.refiners.local import (
    LocalFlowPosterior,
    make_local_posterior,
)
from lvmtoolkit.refiners.natural import (
    GaussianNaturalGradient,
    NaturalSVIOptions,
    NaturalSVIRefiner,
)
from lvmtoolkit.refiners.svi import PaperSVIOptions, PaperSVIRefiner, SVIOptions, SVIRefiner
from lvmtoolkit.refiners.svi_flow import SVIFlowOptions, SVIFlowRefiner

__all__ = [
    "AmortizedRefiner",
    "GaussianNaturalGradient",
    "LocalFlowPosterior",
    "NaturalSVIOptions",
    "NaturalSVIRefiner",
    "PaperSVIOptions",
    "PaperSVIRefiner",
    "SVIFlowOptions",
    "SVIFlowRefiner",
    "SVIOptions",
    "SVIRefiner",
    "make_local_posterior",
]


@hookimpl
def register_refiners(register: Callable[[Any], None]) -> None:
    register(AmortizedRefiner)
    register(SVIRefiner)
    register(PaperSVIRefiner)
    register(NaturalSVIRefiner)
    register(SVIFlowRefiner)
