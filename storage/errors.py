"""The store's errors. Each explains a problem the user can fix, so the command line prints it
as one message (``linkstyle: error: ...``, exit code 2) without a traceback."""

from __future__ import annotations

import errno

# errno values of an OSError that the user has to fix (permissions, a read-only or full disk, a
# path that is not a folder): the command line shows them as a message, and no retry helps
USER_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                         errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG})


class CorruptArtifact(RuntimeError):
    """A manifest or the data it names cannot be read as written."""


class ArtifactNotFound(LookupError):
    """No committed artifact (no manifest) exists for this stage and key."""


class IncompleteArtifact(RuntimeError):
    """A sharded artifact was finalised while some of its shards are missing."""


class NotAnArtifactRoot(RuntimeError):
    """A folder that ``clean`` cannot prove to be an artifact root (no root marker)."""


class StoreWarning(UserWarning):
    """Something under the root cannot be used, but the command can go on without it (a
    damaged catalog file, a run's artifact that is gone); the message names it and the fix.
    The command line prints it as one ``linkstyle: warning: ...`` line."""
