"""Listing artifacts (``linkstyle status``) and removing leftovers (``linkstyle clean``).

``cleanup`` removes only what it can prove is its own: it refuses a root without the root
marker, looks only into the known stage folders (``STAGE_NAMES``) and key folders named like a
content key, and removes only the root's own names there (``data-<txid>`` folders no manifest
names, ``shards/<shard>`` folders without a committed shard, key folders holding nothing
else), and only those whose last write is older than ``older_than_s``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from storage.layout import (
    CATALOG,
    CATALOG_TMP,
    DATA_DIR,
    KEY,
    NAME,
    ROOT_TMP,
    SHARDS,
    STAGE_NAMES,
    TMP,
    check_stage,
    is_owned_entry,
    txid_time,
)
from storage.lease import TTL_S, activity
from storage.root import Root
from storage.runfiles import unreadable_run_files


@dataclass(frozen=True)
class ArtifactInfo:
    """One line of ``linkstyle status``.

    status: "complete" | "partial" | "uncommitted" | "corrupt" | "stale"; problem: for corrupt
    and stale, what is wrong (the first file or input, and how many more).
    """

    stage: str
    key: str
    status: str
    size_bytes: int
    created: str | None
    shards_done: int | None = None
    shards_total: int | None = None
    problem: str | None = None


def _entries(root: Root, path: str) -> dict[str, dict]:
    try:
        found = root.fs.ls(path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {e["name"].rstrip("/").rsplit("/", 1)[-1]: e for e in found}


def _dirs(root: Root, path: str) -> list[str]:
    """The folders in ``path``, and the symbolic links there (``storage.links``: listed, so
    that ``status`` shows them as corrupt, never followed for a write or a removal)."""
    return sorted(n for n, e in _entries(root, path).items()
                  if e["type"] == "directory" or e.get("islink"))


def _size(root: Root, path: str) -> int:
    try:
        return int(root.fs.du(path, total=True))
    except FileNotFoundError:
        return 0


def list_artifacts(root: Root, stage: str | None = None,
                   verify: bool = False) -> list[ArtifactInfo]:
    """Every key folder of the known stages (or of ``stage``, which must be one) with its
    status; sizes are always checked, checksums with ``verify``."""
    stages = [check_stage(stage)] if stage is not None else list(STAGE_NAMES)
    out = []
    for st in stages:
        for key in _dirs(root, f"{root.root}/{st}"):
            if not KEY.match(key):
                continue
            path = f"{root.root}/{st}/{key}"
            problems = root.problems(path, checksums=verify, cached=False)
            manifest = root.read_manifest(path, missing_ok=True, corrupt_ok=True)
            done = total = None
            plan = root.read_plan(path)
            if plan is not None:
                total = len(plan)
                done = sum(not root.problems(f"{path}/shards/{s}", checksums=verify,
                                               cached=False) for s in plan)
            kinds = {kind for kind, _ in problems}
            if not problems:
                status = "complete"
            elif kinds == {"missing"}:
                status = "partial" if done else "uncommitted"
            elif "corrupt" in kinds:
                status = "corrupt"
            else:
                status = "stale"
            problem = None
            if status in ("corrupt", "stale"):
                first = next(msg for kind, msg in problems if kind == status)
                more = len(problems) - 1
                problem = first + (f" (and {more} more)" if more else "")
            out.append(ArtifactInfo(
                stage=st, key=key, status=status, size_bytes=_size(root, path),
                created=manifest.created if manifest else None,
                shards_done=done, shards_total=total, problem=problem,
            ))
    return out


def _time(entry: dict) -> float | None:
    """Last modification (or creation) time of an ``fs.ls`` entry, if the filesystem says."""
    for field in ("mtime", "LastModified", "updated", "created"):
        value = entry.get(field)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
    return None


def _leftovers(root: Root, path: str, older_than_s: float,
               now: float) -> tuple[list[str], bool]:
    """(the removable leftovers inside the artifact or shard folder ``path``; whether the
    whole folder is a removable leftover). Whole: it holds only the root's own names, no
    manifest, nothing younger than ``older_than_s``, no live writer and no committed shard.

    A data folder no manifest names is removable once its writer is gone (``storage.lease``)
    and was last seen ``older_than_s`` ago; a temporary manifest file once it is older than
    both ``older_than_s`` and the lease time (it lives for milliseconds while a writer
    commits)."""
    entries = _entries(root, path)
    owned = all(is_owned_entry(name) for name in entries)
    manifest = root.read_manifest(path, missing_ok=True, corrupt_ok=True)
    keep = manifest.data_dir if manifest is not None else None
    times = [t for name, e in entries.items() if e["type"] != "directory"
             if (t := _time(e)) is not None]
    try:  # the folder's own time: an empty key folder is as young as its creation
        own = _time(root.fs.info(path))
    except FileNotFoundError:
        own = None
    if own is not None:
        times.append(own)
    stale, alive = [], False
    for name, entry in entries.items():
        if entry["type"] == "directory" and DATA_DIR.match(name) and name != keep:
            state = activity(root.fs, f"{path}/{name}", txid_time(name), now)
            if state.last is not None:
                times.append(state.last)
            if state.live or state.last is None or now - state.last < older_than_s:
                alive = True
            else:
                stale.append(f"{path}/{name}")
        elif entry["type"] == "directory" and DATA_DIR.match(name):
            alive = True  # the committed data folder
        elif entry["type"] != "directory" and TMP.match(name):
            t = _time(entry)
            if t is not None and now - t >= max(older_than_s, TTL_S):
                stale.append(f"{path}/{name}")
    if SHARDS in entries:
        for shard_id, entry in _entries(root, f"{path}/{SHARDS}").items():
            shard_path = f"{path}/{SHARDS}/{shard_id}"
            if entry["type"] != "directory" or not NAME.match(shard_id):
                alive = True  # not ours: never removed, and keeps the folder
                continue
            shard_stale, shard_whole = _leftovers(root, shard_path, older_than_s, now)
            if shard_whole:
                stale.append(shard_path)
            else:
                stale += shard_stale
                alive = True
    newest = max(times, default=None)
    whole = (owned and manifest is None and not alive and newest is not None
             and now - newest >= older_than_s)
    return stale, whole


def _root_leftovers(root: Root, older_than_s: float, now: float,
                    corrupt: bool) -> list[str]:
    """Leftovers outside the stage folders: temporary files of the root marker and of the
    catalog older than ``older_than_s`` and the lease time, and (``corrupt``) catalog files
    that cannot be read as a run's row."""
    found = []
    places = [(root.root, ROOT_TMP), (f"{root.root}/{CATALOG}", CATALOG_TMP)]
    for folder, pattern in places:
        for name, entry in _entries(root, folder).items():
            t = _time(entry)
            if entry["type"] != "directory" and pattern.match(name) and t is not None \
                    and now - t >= max(older_than_s, TTL_S):
                found.append(f"{folder}/{name}")
    if corrupt:
        found += unreadable_run_files(root)
    return found


def cleanup(root: Root, older_than_s: float = 0.0, dry_run: bool = False,
            corrupt: bool = False) -> list[str]:
    """Remove uncommitted leftovers: data folders no manifest names, and artifact or shard
    folders without any committed content, older than ``older_than_s`` seconds (a writer may
    still be running). Committed artifacts and shards are never touched; ``corrupt=True`` also
    removes artifacts whose manifest or files are damaged.

    Raises ``ValueError`` for a negative ``older_than_s`` and ``NotAnArtifactRoot`` for a root
    without the root marker. Returns the removed (or, with ``dry_run``, removable) paths.
    """
    if not older_than_s >= 0:  # also refuses NaN
        raise ValueError(f"older_than_s must be a number of seconds >= 0, got {older_than_s}")
    root.check_root()
    now = time.time()
    removed: list[str] = []
    for info in list_artifacts(root):
        path = f"{root.root}/{info.stage}/{info.key}"
        if root.linked(path) is not None:
            continue  # not ours to remove: the user moves or removes the link (status says)
        if info.status == "corrupt":
            if corrupt and all(is_owned_entry(n) for n in _entries(root, path)):
                removed.append(path)
            continue
        stale, whole = _leftovers(root, path, older_than_s, now)
        removed += [path] if whole else stale
    removed += _root_leftovers(root, older_than_s, now, corrupt)
    if not dry_run:
        for p in removed:
            if root.fs.exists(p):
                root.fs.rm(p, recursive=True)
    return removed
