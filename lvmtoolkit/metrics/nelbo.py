"""``nelbo`` lives in the core, beside the per-datapoint ELBO it averages; re-exported here
because it is the metric every report prints."""

from lvmtoolkit.core.nelbo import nelbo

__all__ = ["nelbo"]
