"""The models' error, below every loader (``registry`` imports the loaders, the loaders raise
it)."""

from __future__ import annotations


class ModelError(ValueError):
    """A model that cannot be loaded or does not fit the protocol; the message says the fix."""
