"""Metrics of posteriors and models, and the reports that carry their protocol."""

from lvmtoolkit.metrics.ais import AISSchedule, ais_log_px, bdmc
from lvmtoolkit.metrics.gaps import ConvergenceRule, gap_report, gaps_report
from lvmtoolkit.metrics.iwae import iwae_bound
from lvmtoolkit.metrics.nelbo import nelbo
from lvmtoolkit.metrics.refinement import nelbo_after_steps, refinement_report
from lvmtoolkit.metrics.report import Report

__all__ = [
    "AISSchedule",
    "ConvergenceRule",
    "Report",
    "ais_log_px",
    "bdmc",
    "gap_report",
    "gaps_report",
    "iwae_bound",
    "nelbo",
    "nelbo_after_steps",
    "refinement_report",
]
