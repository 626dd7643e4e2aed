"""A writer's lease on its data folder: renewed while it writes, and what ``clean`` concludes
from it (``storage.lease``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import storage.lease as lease_module
from storage import ArtifactStore, CorruptArtifact, content_key
from storage.lease import TTL_S, activity

KEY = content_key("paired", 1, {"lease": 1})


def _lease(folder: Path) -> dict:
    return json.loads((folder / "_lease.json").read_text())


def test_a_writer_holds_and_renews_its_lease_and_the_commit_removes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_module, "RENEW_S", 0.05)
    store = ArtifactStore(str(tmp_path / "root"))
    with store.writer("paired", KEY) as w:
        folder = Path(w.data_path)
        held = _lease(folder)
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        assert activity(store.fs, str(folder), None).live
        time.sleep(0.3)
        assert _lease(folder)["renewed"] > held["renewed"]  # renewed while the block runs
        w.write_array("w", np.arange(4))
    assert not (folder / "_lease.json").exists()
    assert store.exists("paired", KEY) and "_lease.json" not in store.open(
        "paired", KEY).manifest.content


def test_a_failed_write_releases_its_lease(tmp_path) -> None:
    store = ArtifactStore(str(tmp_path / "root"))
    with pytest.raises(RuntimeError):
        with store.writer("paired", KEY) as w:
            folder = Path(w.data_path)
            raise RuntimeError("killed")
    state = activity(store.fs, str(folder), None)
    assert not state.live and state.last is not None and "released" in _lease(folder)


def _write_lease(folder: Path, **fields: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_lease.json").write_text(json.dumps(fields))


def test_activity_rules(tmp_path) -> None:
    from storage.lease import boot_id

    fs = ArtifactStore(str(tmp_path)).fs
    now = time.time()
    here = {"host": socket.gethostname(), "boot_id": boot_id()}
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()

    def state(name: str, **fields: object) -> lease_module.Activity:
        folder = tmp_path / name
        if fields:
            _write_lease(folder, **fields)
        return activity(fs, str(folder), now - 5, now)

    # a live process of this machine, renewed recently
    assert state("mine", **here, pid=os.getpid(), renewed=now - 10).live
    # a process of this machine that is gone: removable at once, whatever the renewal
    gone = state("gone", **here, pid=int(dead), renewed=now - 1)
    assert not gone.live and gone.last == now - 1
    # another machine: live while renewed within the lease time, not after
    assert state("remote", host="elsewhere", boot_id="x", pid=1, renewed=now - 60).live
    assert not state("lost", host="elsewhere", boot_id="x", pid=1, renewed=now - TTL_S - 1).live
    # the same host name on another machine (another boot id) is not taken for this one
    assert state("twin", host=here["host"], boot_id="other", pid=int(dead),
                 renewed=now - 10).live
    # released by a writer that failed
    assert not state("released", **here, pid=os.getpid(), renewed=now, released=now).live
    # no lease: an empty folder was just created; one holding files was committed and replaced
    (tmp_path / "starting").mkdir()
    assert activity(fs, str(tmp_path / "starting"), now - 5, now).live
    assert not activity(fs, str(tmp_path / "starting"), now - TTL_S - 1, now).live
    (tmp_path / "replaced").mkdir()
    (tmp_path / "replaced" / "w.parquet").write_bytes(b"x")
    assert not activity(fs, str(tmp_path / "replaced"), now - 5, now).live


def test_a_commit_whose_lease_was_taken_refuses_to_commit(tmp_path) -> None:
    store = ArtifactStore(str(tmp_path / "root"))
    with pytest.raises(CorruptArtifact, match="was removed while the write ran"):
        with store.writer("paired", KEY) as w:
            w.write_array("w", np.arange(4))
            os.remove(Path(w.data_path) / "_lease.json")
    assert not store.exists("paired", KEY)
    assert not (tmp_path / "root" / "paired" / KEY / "manifest.json").exists()
