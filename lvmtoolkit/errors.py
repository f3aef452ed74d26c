"""Exceptions with messages a user can act on.

Every error the toolkit raises on bad input derives from `LvmError`; the CLI turns
these into one-line messages and a non-zero exit status instead of a traceback.
"""

from __future__ import annotations


class LvmError(Exception):
    """Base class of all errors the toolkit raises on bad input or missing resources."""


class UnknownNameError(LvmError, KeyError):
    """A backend, refiner or dataset name that no installed plugin registered."""

    def __init__(self, kind: str, name: str, available: list[str], *, hint: str = ""):
        """``hint`` is appended to the message, e.g. which plugins failed to load."""
        self.kind = kind
        self.name = name
        self.available = sorted(available)
        listed = ", ".join(self.available) if self.available else "none"
        super().__init__(f"unknown {kind} {name!r}; installed {kind}s: {listed}{hint}")

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return self.args[0]


class OptionError(LvmError, ValueError):
    """An option value that fails validation (wrong type, out of range, unknown name)."""


class CheckpointError(LvmError):
    """A checkpoint that is missing, corrupt, or does not match its backend."""


class DataError(LvmError):
    """A dataset that cannot be found or read, or data of the wrong shape or range."""


class ImageError(LvmError):
    """An image or mask file that is missing, unreadable, of the wrong size, or not writable."""


class MetricError(LvmError):
    """A metric that cannot be computed: missing feature-extractor weights, too few images."""


class RefinerMismatch(LvmError):
    """A refiner that does not apply to a model's posterior family (the message says which)."""
