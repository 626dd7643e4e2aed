"""Symbolic links inside an artifact root: seen, reported, never followed for a write.

The store never makes a link. A stage, key, shard or data folder that is a link points out of
the store's reach: a rebuild through it would commit into the link's target and remove the
target's old ``data-<txid>`` folder, outside the root. So a folder under the root that is (or
lies inside) a link reads as corrupt in ``status`` (with where it points), no run writes
through it, and ``clean`` leaves it alone; the user decides (move the target into the root, or
remove the link). The root itself may be a link: that is where the user chose to keep it.

Only local filesystems have links; on object stores these checks find nothing.
"""

from __future__ import annotations

import os

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem


def link_below_root(fs: AbstractFileSystem, root: str, path: str) -> str | None:
    """The first symbolic link on the way from ``root`` (not included) down to ``path``
    (included), or None (always None off a local filesystem)."""
    if not isinstance(fs, LocalFileSystem) or not path.startswith(root):
        return None
    current = root.rstrip("/")
    for name in path[len(root):].strip("/").split("/"):
        if not name:
            continue
        current = f"{current}/{name}"
        if os.path.islink(current):
            return current
    return None


def link_message(link: str) -> str:
    """What is wrong with a linked folder under the root, and the fix."""
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    return (f"{link} is a symbolic link (to {target}); linkstyle reads and writes artifacts "
            "only in real folders of its root and never writes through a link: move the "
            f"linked folder into the root in place of the link (rm {link} && mv TARGET "
            f"{link}), or remove the link and rerun to rebuild it")
