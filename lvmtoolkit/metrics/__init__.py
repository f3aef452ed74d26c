"""Metrics of posteriors and models."""

from lvmtoolkit.metrics.nelbo import nelbo
from lvmtoolkit.metrics.refinement import nelbo_after_steps

__all__ = ["nelbo", "nelbo_after_steps"]
