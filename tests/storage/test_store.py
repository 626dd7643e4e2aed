"""Artifact store guarantees: commit by manifest, atomic failure, shard resume, listing, clean-up.

Each test runs on a local folder and on ``memory://``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

import storage.writer as writer_module
from storage import (
    ArtifactNotFound,
    ArtifactStore,
    CorruptArtifact,
    IncompleteArtifact,
    content_key,
)


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[ArtifactStore]:
    if request.param == "local":
        yield ArtifactStore(str(tmp_path / "artifacts"))
    else:
        root = f"memory://test-{uuid.uuid4().hex}"
        s = ArtifactStore(root)
        yield s
        if s.fs.exists(s.root):
            s.fs.rm(s.root, recursive=True)


def _write(store: ArtifactStore, key: str, value: float, stage: str = "paired") -> None:
    with store.writer(stage, key, params={"value": value}, inputs={"up": "k0"}) as w:
        w.write_array("w", np.full((6, 4), value, dtype="float32"), chunks=(3, 4))
        w.write_table("rates", pd.DataFrame({"cls": [0, 1], "rate": [value, value / 2]}))
        w.info["note"] = "hello"
        w.timings["compute_s"] = 0.5


def test_round_trip_and_manifest_contents(store: ArtifactStore) -> None:
    key = content_key("paired", 1, {"value": 2.0})
    _write(store, key, 2.0)
    art = store.open("paired", key)
    np.testing.assert_array_equal(art.load("w"), np.full((6, 4), 2.0, dtype="float32"))
    assert art.array("w").chunks == (3, 4)
    assert art.table("rates")["rate"].tolist() == [2.0, 1.0]
    m = art.manifest
    assert m.arrays["w"] == {"shape": [6, 4], "dtype": "float32", "chunks": [3, 4]}
    assert m.tables["rates"] == {"rows": 2, "columns": ["cls", "rate"]}
    assert m.params == {"value": 2.0} and m.inputs == {"up": "k0"}
    assert m.info == {"note": "hello"}
    assert m.timings["compute_s"] == 0.5 and m.timings["write_s"] >= 0
    assert {"python", "numpy", "zarr", "pyarrow"} <= set(m.versions)
    assert art.array_names == ["w"] and art.table_names == ["rates"]
    with pytest.raises(KeyError, match="has no array 'x'; it has \\['w'\\]"):
        art.load("x")


def test_no_manifest_means_no_artifact(store: ArtifactStore) -> None:
    key = "0f" * 10
    assert not store.exists("paired", key)
    with pytest.raises(ArtifactNotFound, match="no committed 'paired' artifact"):
        store.open("paired", key)
    _write(store, key, 1.0)
    assert store.exists("paired", key)
    store.fs.rm_file(f"{store.artifact_path('paired', key)}/manifest.json")
    assert not store.exists("paired", key)  # data without a manifest does not count


def test_writer_that_raises_commits_nothing(store: ArtifactStore) -> None:
    key = "f0e50000000000000000"
    with pytest.raises(RuntimeError, match="boom"):
        with store.writer("paired", key) as w:
            w.write_array("w", np.ones((4, 2)))
            raise RuntimeError("boom")
    assert not store.exists("paired", key)
    [info] = store.list_artifacts("paired")
    assert info.status == "uncommitted"


def test_failed_rewrite_leaves_the_committed_artifact_untouched(store: ArtifactStore) -> None:
    key = "5ab1e000000000000000"
    _write(store, key, 1.0)
    before = store.open("paired", key).manifest.to_json()
    with pytest.raises(RuntimeError, match="mid-write"):
        with store.writer("paired", key, params={"value": 9.0}) as w:
            w.write_array("w", np.full((6, 4), 9.0, dtype="float32"))
            raise RuntimeError("mid-write")
    art = store.open("paired", key)
    assert art.manifest.to_json() == before
    np.testing.assert_array_equal(art.load("w"), np.full((6, 4), 1.0, dtype="float32"))
    assert art.table("rates")["rate"].tolist() == [1.0, 0.5]


def test_failure_while_writing_the_manifest_keeps_the_old_one(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "3a1f0000000000000000"
    _write(store, key, 1.0)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(writer_module, "atomic_write_text", broken)
    with pytest.raises(OSError, match="disk full"):
        _write(store, key, 5.0)
    monkeypatch.undo()
    np.testing.assert_array_equal(store.open("paired", key).load("w"), np.ones((6, 4)))


def test_local_manifest_replace_is_atomic(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(str(tmp_path))
    key = "a70b1c00000000000000"
    _write(store, key, 1.0)
    manifest_path = os.path.join(store.artifact_path("paired", key), "manifest.json")
    good = open(manifest_path).read()

    def crash(src, dst):
        raise OSError("killed during rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        _write(store, key, 3.0)
    monkeypatch.undo()
    assert open(manifest_path).read() == good  # never a half-written manifest
    json.loads(good)


def test_successful_rewrite_replaces_data_and_drops_the_old_folder(store: ArtifactStore) -> None:
    key = "2e0217e0000000000000"
    _write(store, key, 1.0)
    old_dir = store.open("paired", key).manifest.data_dir
    _write(store, key, 2.0)
    art = store.open("paired", key)
    assert art.manifest.data_dir != old_dir
    assert art.load("w")[0, 0] == 2.0
    assert not store.fs.exists(f"{store.artifact_path('paired', key)}/{old_dir}")


def test_corrupt_manifest_is_reported_and_not_counted(store: ArtifactStore) -> None:
    key = "c0220b70000000000000"
    _write(store, key, 1.0)
    store.fs.pipe_file(f"{store.artifact_path('paired', key)}/manifest.json", b"{not json")
    assert not store.exists("paired", key)
    with pytest.raises(CorruptArtifact, match="cannot be read.*linkstyle clean --corrupt"):
        store.open("paired", key)
    assert [i.status for i in store.list_artifacts()] == ["corrupt"]
    assert store.cleanup() == []  # only with corrupt=True
    assert len(store.cleanup(corrupt=True)) == 1
    assert store.list_artifacts() == []


def test_missing_data_under_a_manifest_is_corrupt(store: ArtifactStore) -> None:
    key = "1057da7a000000000000"
    _write(store, key, 1.0)
    art = store.open("paired", key)
    store.fs.rm(f"{art.path}/{art.manifest.data_dir}/w.zarr", recursive=True)
    with pytest.raises(CorruptArtifact, match="array 'w' .* is missing"):
        art.load("w")


def test_sharded_artifact_resumes_and_reports_missing_shards(store: ArtifactStore) -> None:
    plan = ["units-000-063", "units-064-127", "units-128-191", "units-192-255"]
    writer = store.sharded("tune", "5ba2dcee000000000000", plan, params={"steps": 3})
    for i, shard in enumerate(plan[:2]):
        with writer.shard(shard) as w:
            w.write_array("v", np.full((2, 3), i))
            w.write_table("t", pd.DataFrame({"unit": [i]}))
    with pytest.raises(ValueError, match="killed"):
        with writer.shard(plan[2]) as w:
            w.write_array("v", np.full((2, 3), 99))
            raise ValueError("killed")
    # a new run (a fresh writer object) sees exactly what committed
    resumed = store.sharded("tune", "5ba2dcee000000000000", plan, params={"steps": 3})
    assert resumed.committed() == plan[:2]
    assert resumed.missing() == plan[2:]
    [info] = store.list_artifacts("tune")
    assert (info.status, info.shards_done, info.shards_total) == ("partial", 2, 4)
    with pytest.raises(IncompleteArtifact, match="2 of 4 shards missing"):
        resumed.finalize()
    assert not store.exists("tune", "5ba2dcee000000000000")
    for i, shard in enumerate(plan[2:], start=2):
        with resumed.shard(shard) as w:
            w.write_array("v", np.full((2, 3), i))
            w.write_table("t", pd.DataFrame({"unit": [i]}))
    resumed.finalize(info={"units": 256})
    art = store.open("tune", "5ba2dcee000000000000")
    assert art.shards == plan and art.info == {"units": 256}
    assert art.load("v")[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # plan order
    assert art.table("t")["unit"].tolist() == [0, 1, 2, 3]
    assert store.list_artifacts("tune")[0].status == "complete"
    with pytest.raises(KeyError, match="not in the plan"):
        with resumed.shard("units-999") as w:
            pass


def test_listing_reports_stage_key_size_and_creation(store: ArtifactStore) -> None:
    _write(store, "a" * 20, 1.0, stage="paired")
    _write(store, "b" * 20, 1.0, stage="link")
    infos = {(i.stage, i.key): i for i in store.list_artifacts()}
    assert set(infos) == {("paired", "a" * 20), ("link", "b" * 20)}
    for info in infos.values():
        assert info.status == "complete"
        assert info.size_bytes > 500  # arrays + table + manifest
        assert info.created is not None and info.created.startswith("20")
    assert [i.stage for i in store.list_artifacts("link")] == ["link"]


def test_cleanup_removes_only_uncommitted_leftovers(store: ArtifactStore) -> None:
    _write(store, "cee90000000000000000", 1.0)
    for key in ("cee90000000000000000", "0b9ba000000000000000"):
        with pytest.raises(RuntimeError):
            with store.writer("paired", key) as w:
                w.write_array("w", np.zeros(3))
                raise RuntimeError("killed")
    plan = ["s0", "s1"]
    sharded = store.sharded("tune", "ba270000000000000000", plan)
    with sharded.shard("s0") as w:
        w.write_array("v", np.arange(3))
    with pytest.raises(RuntimeError):
        with sharded.shard("s1") as w:
            w.write_array("v", np.arange(3))
            raise RuntimeError("killed")

    # a leftover that is younger than older_than_s may belong to a live run: spared
    assert store.cleanup(older_than_s=3600) == []
    removable = store.cleanup(dry_run=True)
    assert len(removable) == 3
    assert store.cleanup(dry_run=True) == removable  # dry run removed nothing
    removed = store.cleanup()
    assert sorted(removed) == sorted(removable)
    assert any(p.endswith("/0b9ba000000000000000") for p in removed)
    assert any(p.endswith("/shards/s1") for p in removed)
    statuses = {(i.stage, i.key): i.status for i in store.list_artifacts()}
    assert statuses == {("paired", "cee90000000000000000"): "complete",
                        ("tune", "ba270000000000000000"): "partial"}
    np.testing.assert_array_equal(store.open("paired", "cee90000000000000000").load("w"),
                                  np.ones((6, 4)))
    assert sharded.committed() == ["s0"]
    assert store.cleanup() == []


def test_bad_names_are_refused(store: ArtifactStore) -> None:
    with pytest.raises(ValueError, match="stage name '../x' is not allowed"):
        store.artifact_path("../x", "k")
    with pytest.raises(ValueError, match="array name 'a/b' is not allowed"):
        with store.writer("paired", "0f" * 10) as w:
            w.write_array("a/b", np.zeros(1))
