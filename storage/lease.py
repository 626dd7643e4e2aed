"""A writer's lease on its data folder, so that ``clean`` never removes what a live run holds.

Every ``data-<txid>`` folder being written holds ``_lease.json``: who writes it (host, boot id,
process id), when the write started and when the lease was last renewed. A background thread
renews it every ``RENEW_S`` seconds while the writer is open; the commit stops the renewal and
removes the file after the manifest is in place; a writer that raises marks it ``released``.

``clean`` (``storage.listing``) asks ``activity`` whether a folder is live:

- released: not live (the writer gave up), idle since it was released;
- written by a process of this machine (same host name and boot id) that no longer runs: not
  live, idle since its last renewal (a SIGKILL'd run's leftovers are removable at once);
- otherwise live while its last renewal is younger than ``TTL_S`` (a writer on another machine,
  or one whose process runs, renews well within it); after that, idle since that renewal;
- no lease file: an empty folder was just created (its writer is about to write the lease, its
  first file) and counts as live for ``TTL_S`` after the time in its name; one that holds files
  was committed and then replaced by another writer's commit (or written by a linkstyle before
  leases), and nobody writes there any more.

A folder's age alone was not enough: ``clean --older-than 0`` during a write removed files the
commit still needed. The lease also lets the commit notice a folder that was taken from under
it (``Lease.check``) and refuse to commit it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from functools import cache

from fsspec import AbstractFileSystem

from storage.errors import CorruptArtifact
from storage.layout import LEASE, STARTED
from storage.manifest import read_text

TTL_S = 300.0  # a lease not renewed for this long has no live writer
RENEW_S = 30.0  # how often a writer renews its lease


@cache
def boot_id() -> str:
    """This machine's boot id (Linux), so that a host name shared by two machines is not
    mistaken for this one; '' where the system has none."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # exists but is not ours to signal, or cannot be asked: assume live
    return True


class Lease:
    """The lease of one writer on the data folder ``folder`` (created already)."""

    def __init__(self, fs: AbstractFileSystem, folder: str) -> None:
        self.fs = fs
        self.path = f"{folder}/{LEASE}"
        self.started = time.time()
        self.lost: str | None = None
        self._stop = threading.Event()
        self._write()
        self._thread = threading.Thread(target=self._renew, name="linkstyle-lease", daemon=True)
        self._thread.start()

    def _write(self, **extra: float) -> None:
        payload = {"host": socket.gethostname(), "boot_id": boot_id(), "pid": os.getpid(),
                   "started": self.started, "renewed": time.time(), "ttl": TTL_S, **extra}
        self.fs.pipe_file(self.path, json.dumps(payload).encode())

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                if not self.fs.exists(self.path):
                    self.lost = f"{self.path} was removed while the write ran"
                    return
                self._write()
            except OSError as exc:  # the folder is gone, or the store is unreachable
                self.lost = f"{self.path} could not be renewed ({exc})"
                return

    def check(self) -> None:
        """``CorruptArtifact`` if the lease was lost: something removed the folder (or the
        lease) while the write ran, so what it holds cannot be trusted."""
        if self.lost is None and not self.fs.exists(self.path):
            self.lost = f"{self.path} was removed while the write ran"
        if self.lost is not None:
            raise CorruptArtifact(
                f"{self.lost}: the data folder was changed by something else (a `linkstyle "
                "clean` of an older version, or a person); nothing was committed, rerun to "
                "write it again")

    def stop(self) -> None:
        """Stop renewing (the commit is about to write the manifest)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def remove(self) -> None:
        """After the commit: the folder is the artifact's now, the lease has no use."""
        self.stop()
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        """After a failed write: mark the folder abandoned, so ``clean`` may remove it."""
        self.stop()
        try:
            if self.fs.exists(self.path):
                self._write(released=time.time())
        except OSError:
            pass


@dataclass(frozen=True)
class Activity:
    """What ``clean`` knows of a data folder's writer: ``live`` (spare it whatever its age)
    and ``last`` (when its writer was last seen, epoch seconds; None if unknown)."""

    live: bool
    last: float | None


def activity(fs: AbstractFileSystem, folder: str, name_time: float | None,
             now: float | None = None) -> Activity:
    """The ``Activity`` of the data folder ``folder``, whose name says its write started at
    ``name_time`` (see the module docstring for the rules)."""
    now = time.time() if now is None else now
    lease = _read(fs, f"{folder}/{LEASE}")
    if lease is None:
        legacy = _read(fs, f"{folder}/{STARTED}")  # written by linkstyle before leases
        started = _number(legacy, "started") if legacy is not None else None
        last = started if started is not None else name_time
        if legacy is not None or _holds_files(fs, folder):
            # written by an older linkstyle, or committed and then replaced by another writer
            # (whose commit removes its lease): nobody writes here any more
            return Activity(live=False, last=last)
        # empty: a writer has just created it and is about to write its lease
        return Activity(live=last is not None and now - last < TTL_S, last=last)
    released = _number(lease, "released")
    renewed = _number(lease, "renewed")
    if released is not None:
        return Activity(live=False, last=released)
    if renewed is None:
        return Activity(live=name_time is not None and now - name_time < TTL_S, last=name_time)
    this_machine = (lease.get("host") == socket.gethostname()
                    and lease.get("boot_id") == boot_id())
    pid = lease.get("pid")
    if this_machine and isinstance(pid, int) and not _running(pid):
        return Activity(live=False, last=renewed)
    ttl = _number(lease, "ttl") or TTL_S
    return Activity(live=now - renewed < max(ttl, TTL_S), last=renewed)


def _holds_files(fs: AbstractFileSystem, folder: str) -> bool:
    try:
        return bool(fs.ls(folder, detail=False))
    except (FileNotFoundError, NotADirectoryError):
        return False


def _read(fs: AbstractFileSystem, path: str) -> dict | None:
    try:
        text = read_text(fs, path)
        value = json.loads(text) if text is not None else None
    except (CorruptArtifact, ValueError):
        return {}  # unreadable: no facts, treated like a lease without a renewal time
    return value if isinstance(value, dict) else ({} if value is not None else None)


def _number(mapping: dict, name: str) -> float | None:
    value = mapping.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
