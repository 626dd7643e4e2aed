"""The store's errors. Each explains a problem the user can fix, so the command line prints it
as one message (``linkstyle: error: ...``, exit code 2) without a traceback."""

from __future__ import annotations


class CorruptArtifact(RuntimeError):
    """A manifest or the data it names cannot be read as written."""


class ArtifactNotFound(LookupError):
    """No committed artifact (no manifest) exists for this stage and key."""


class IncompleteArtifact(RuntimeError):
    """A sharded artifact was finalised while some of its shards are missing."""


class NotAnArtifactRoot(RuntimeError):
    """A folder that ``clean`` cannot prove to be an artifact root (no root marker)."""
