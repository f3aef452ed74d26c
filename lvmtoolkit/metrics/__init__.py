"""Metrics of posteriors and models."""

from lvmtoolkit.metrics.gaps import ConvergenceRule, gap_report
from lvmtoolkit.metrics.iwae import iwae_bound
from lvmtoolkit.metrics.nelbo import nelbo
from lvmtoolkit.metrics.refinement import nelbo_after_steps

__all__ = ["ConvergenceRule", "gap_report", "iwae_bound", "nelbo", "nelbo_after_steps"]
