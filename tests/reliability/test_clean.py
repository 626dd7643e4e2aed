"""Misuse of ``clean`` and ``status`` removes nothing, ``clean`` removes only its own old
leftovers, and the store's checks hold at the storage level: staleness, deleted chunks,
checksums, concurrent writers, a live writer, a failed commit.

Each command-line case runs ``flows.cli.main`` in-process and asserts its exit code, a message
naming the file or folder, and that the folder it was pointed at did not change (relative
paths, sizes and sha256 of every file, before and after).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.cli import main
from storage import ROOT_MARKER, ArtifactStore, CorruptArtifact, content_key
from tests.fixtures.snapshot import snapshot


def _write(store: ArtifactStore, stage: str, key: str, value: float,
           inputs: dict[str, str] | None = None) -> None:
    with store.writer(stage, key, inputs=inputs) as w:
        w.write_array("w", np.full((6, 4), value, dtype="float32"), chunks=(3, 4))
        w.write_table("rates", pd.DataFrame({"cls": [0, 1], "rate": [value, value / 2]}))


def _age(path: Path, seconds: float) -> None:
    """Make every file and folder under ``path`` (and every write started there) look
    ``seconds`` old."""
    then = time.time() - seconds
    for lease in path.rglob("_lease.json"):
        held = json.loads(lease.read_text())
        lease.write_text(json.dumps({**held, **{k: then for k in ("started", "renewed",
                                                                   "released") if k in held}}))
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            os.utime(os.path.join(dirpath, name), (then, then))
    os.utime(path, (then, then))


KEY_A = content_key("paired", 1, {"case": "a"})
KEY_B = content_key("link", 1, {"case": "b"})


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """An artifact root (a committed artifact, an old leftover) beside a user's folders."""
    root = tmp_path / "project" / "artifacts"
    store = ArtifactStore(str(root))
    _write(store, "paired", KEY_A, 1.0)
    with pytest.raises(RuntimeError):
        with store.writer("link", KEY_B) as w:
            w.write_array("coef", np.zeros(2))
            raise RuntimeError("killed")
    _age(root / "link", 7200)
    for rel in ("project/src/main.py", "project/src/pkg/util.py", "photos/2024/img_0001.jpg",
                "photos/2024/img_0002.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode() * 7)
    (tmp_path / "photos" / "2024" / "empty-album").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("do not delete\n")
    # a user's folder that looks like a root's insides, without the marker
    lookalike = tmp_path / "lookalike" / "paired" / ("0" * 20)
    (lookalike / "data-20200101T000000-0000abcd").mkdir(parents=True)
    (lookalike / "data-20200101T000000-0000abcd" / "x.bin").write_bytes(b"mine")
    _age(tmp_path / "lookalike", 10 * 86400)
    _age(tmp_path / "photos", 10 * 86400)
    return {"tmp": tmp_path, "root": root}


# -- clean and status pointed at the wrong thing: exit 2, a message, nothing changed ------------
CLEAN_MISUSE = [
    # (case, argv after the command, folder that must not change, words the message must hold)
    ("parent-of-root", ["clean", "--root", "{tmp}/project", "--older-than", "0"],
     "{tmp}/project", ["project", "not a linkstyle artifact root", ROOT_MARKER]),
    ("grandparent-of-root", ["clean", "--root", "{tmp}", "--older-than", "0", "--corrupt"],
     "{tmp}", ["not a linkstyle artifact root"]),
    ("stage-folder", ["clean", "--root", "{root}/paired", "--older-than", "0"],
     "{tmp}", ["artifacts/paired", "not a linkstyle artifact root"]),
    ("key-folder", ["clean", "--root", "{root}/paired/" + KEY_A, "--older-than", "0"],
     "{tmp}", [KEY_A, "not a linkstyle artifact root"]),
    ("leftover-stage-folder", ["clean", "--root", "{root}/link", "--older-than", "0"],
     "{tmp}", ["artifacts/link", "not a linkstyle artifact root"]),
    ("user-src", ["clean", "--root", "{tmp}/project/src", "--older-than", "0"],
     "{tmp}", ["project/src", "not a linkstyle artifact root"]),
    ("user-photos", ["clean", "--root", "{tmp}/photos", "--older-than", "0"],
     "{tmp}", ["photos", "not a linkstyle artifact root"]),
    ("user-photos-2024", ["clean", "--root", "{tmp}/photos/2024", "--older-than", "0"],
     "{tmp}", ["photos/2024", "not a linkstyle artifact root"]),
    ("lookalike-without-marker", ["clean", "--root", "{tmp}/lookalike", "--older-than", "0"],
     "{tmp}", ["lookalike", "not a linkstyle artifact root"]),
    ("a-file", ["clean", "--root", "{tmp}/project/notes.txt", "--older-than", "0"],
     "{tmp}", ["notes.txt", "is a file"]),
    ("nonexistent", ["clean", "--root", "{tmp}/no/such/folder", "--older-than", "0"],
     "{tmp}", ["no/such/folder", "does not exist"]),
    ("negative-older-than", ["clean", "--root", "{root}", "--older-than", "-100"],
     "{tmp}", ["--older-than", "-100", ">= 0"]),
    ("nan-older-than", ["clean", "--root", "{root}", "--older-than", "nan"],
     "{tmp}", ["--older-than", "nan"]),
    ("status-stage-dotdot", ["status", "--root", "{root}", "--stage", ".."],
     "{tmp}", ["--stage '..'", "not a stage"]),
    ("status-stage-path", ["status", "--root", "{root}", "--stage", "paired/../.."],
     "{tmp}", ["paired/../..", "not a stage"]),
    ("status-stage-user-folder", ["status", "--root", "{tmp}/project", "--stage", "src"],
     "{tmp}", ["'src'", "paired, link"]),
]


@pytest.mark.parametrize("case,argv,folder,words", CLEAN_MISUSE, ids=[c[0] for c in CLEAN_MISUSE])
def test_misuse_is_refused_and_changes_nothing(world, capsys, case, argv, folder, words) -> None:
    fill = {"tmp": str(world["tmp"]), "root": str(world["root"])}
    argv = [a.format(**fill) for a in argv]
    watched = Path(folder.format(**fill))
    before = snapshot(watched)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("linkstyle: error: ") and "Traceback" not in err
    for word in words:
        assert word in err
    assert snapshot(watched) == before


def test_every_stage_the_tasks_write_is_a_known_stage_name() -> None:
    """clean looks only into STAGE_NAMES: a stage missing there would never be cleaned, and
    the store refuses to write it."""
    import tasks.counterfactual
    import tasks.directions
    import tasks.link
    import tasks.paired
    import tasks.score
    import tasks.validate
    from storage import STAGE_NAMES

    modules = [tasks.paired, tasks.link, tasks.score, tasks.validate, tasks.counterfactual]
    written = ({m.STAGE for m in modules} | set(tasks.directions.VERSIONS)
               | {"segmenter", "tune", "null", tasks.validate.GROUND_TRUTH_STAGE})
    assert written == set(STAGE_NAMES)
    with pytest.raises(ValueError, match="stage name 'src' is not allowed"):
        ArtifactStore("memory://x").artifact_path("src", KEY_A)


def test_marker_from_a_newer_linkstyle_is_refused(world, capsys) -> None:
    (world["root"] / ROOT_MARKER).write_text(json.dumps({"linkstyle_root": 99}))
    before = snapshot(world["tmp"])
    assert main(["clean", "--root", str(world["root"]), "--older-than", "0"]) == 2
    assert "newer linkstyle" in capsys.readouterr().err
    assert snapshot(world["tmp"]) == before


def test_clean_in_a_real_root_removes_only_its_own_old_leftovers(world, capsys) -> None:
    """Unknown folders and files inside the root, a stage folder or a key folder stay; a young
    empty key folder stays until it is older than --older-than."""
    root, tmp = world["root"], world["tmp"]
    strangers = [root / "src" / "main.py", root / "paired" / "notes" / "a.txt",
                 root / "paired" / "NOT-A-KEY" / "data-20200101T000000-0000abcd" / "x",
                 root / "link" / KEY_B / "README.txt"]
    for p in strangers:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("user data")
    young_empty = root / "paired" / ("e" * 20)
    young_empty.mkdir()
    _age(root / "src", 7200)
    outside = snapshot(tmp / "photos") | snapshot(tmp / "project" / "src")
    leftover = next((root / "link" / KEY_B).glob("data-*"))

    assert main(["clean", "--root", str(root)]) == 0  # default: older than an hour
    out = capsys.readouterr().out
    assert f"removed {leftover}" in out and "removed 1 uncommitted" in out
    assert not leftover.exists()
    assert young_empty.is_dir()  # younger than an hour
    assert all(p.exists() for p in strangers)  # the key folder holds a stranger: kept
    assert main(["clean", "--root", str(root), "--older-than", "0"]) == 0
    assert not young_empty.exists()
    assert all(p.exists() for p in strangers)
    assert ArtifactStore(str(root)).exists("paired", KEY_A)
    assert snapshot(tmp / "photos") | snapshot(tmp / "project" / "src") == outside


# -- downstream staleness and reads of damaged arrays (storage level) ----------------------------
def test_changed_input_makes_downstream_stale_and_identical_rebuild_keeps_it(tmp_path) -> None:
    store = ArtifactStore(str(tmp_path / "root"))
    _write(store, "paired", KEY_A, 1.0)
    _write(store, "link", KEY_B, 5.0, inputs={"train": KEY_A, "generator": "f" * 20})
    recorded = store.open("link", KEY_B).manifest.input_digests
    assert list(recorded) == [KEY_A] and recorded[KEY_A]["stage"] == "paired"
    _write(store, "paired", KEY_A, 1.0)  # a deterministic rebuild: the same bytes
    assert store.exists("link", KEY_B)
    _write(store, "paired", KEY_A, 2.0)  # a rebuild that produced other data
    assert not store.exists("link", KEY_B)
    assert "changed since this artifact was built" in store.verify("link", KEY_B)[0][1]
    [info] = store.list_artifacts("link")
    assert info.status == "stale"


def test_a_deleted_chunk_never_reads_as_fill_values(tmp_path) -> None:
    store = ArtifactStore(str(tmp_path / "root"))
    _write(store, "paired", KEY_A, 3.0)
    art = store.open("paired", KEY_A)
    chunk = sorted(Path(art.path, art.manifest.data_dir, "w.zarr").rglob("c/*/*"))[-1]
    chunk.unlink()
    with pytest.raises(CorruptArtifact, match="w.zarr/c/1/0: missing"):
        art.load("w")
    with pytest.raises(CorruptArtifact, match="w.zarr/c/1/0: missing"):
        store.open("paired", KEY_A)
    assert not store.exists("paired", KEY_A)


def test_checksums_are_verified_once_per_process_and_sizes_every_time(tmp_path) -> None:
    store = ArtifactStore(str(tmp_path / "root"))
    _write(store, "paired", KEY_A, 3.0)
    assert store.exists("paired", KEY_A)
    art = store.open("paired", KEY_A)
    table = Path(art.path, art.manifest.data_dir, "rates.parquet")
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 0xFF
    table.write_bytes(bytes(data))  # same size, other bytes
    assert store.exists("paired", KEY_A)  # checked once in this process: sizes only now
    assert "rates.parquet: checksum" in store.verify("paired", KEY_A)[0][1]
    table.write_bytes(bytes(data[:-3]))
    assert not store.exists("paired", KEY_A)


def test_concurrent_writers_of_one_artifact_leave_one_intact_commit(tmp_path) -> None:
    """Two runs at once write the same key: whichever commits last wins, the manifest always
    names an intact data folder, and clean later removes the loser's folder."""
    from concurrent.futures import ThreadPoolExecutor

    store = ArtifactStore(str(tmp_path / "root"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda _: _write(store, "paired", KEY_A, 4.0), range(8)))
    assert store.exists("paired", KEY_A) and store.verify("paired", KEY_A) == []
    np.testing.assert_array_equal(store.open("paired", KEY_A).load("w"), np.full((6, 4), 4.0))
    store.cleanup(older_than_s=0)
    assert len(list(Path(store.artifact_path("paired", KEY_A)).glob("data-*"))) == 1
    assert store.verify("paired", KEY_A) == []


def test_clean_spares_a_live_writer_and_the_commit_succeeds(tmp_path, capsys) -> None:
    """``clean --older-than 0`` while a writer is inside its block, even with every file of
    its folder made to look hours old: the writer's lease keeps the folder, and the commit
    afterwards is intact."""
    store = ArtifactStore(str(tmp_path / "root"))
    _write(store, "paired", KEY_A, 1.0)  # the root exists and holds a committed artifact
    with store.writer("link", KEY_B) as w:
        w.write_array("w", np.full((6, 4), 2.0, dtype="float32"), chunks=(3, 4))
        folder = Path(w.data_path)
        then = time.time() - 7200
        for path in [folder, *folder.rglob("*")]:
            if path.name != "_lease.json":
                os.utime(path, (then, then))
        assert main(["clean", "--root", str(store.root), "--older-than", "0"]) == 0
        assert "removed 0 uncommitted" in capsys.readouterr().out
        assert (folder / "w.zarr" / "zarr.json").exists()
        w.write_table("rates", pd.DataFrame({"cls": [0], "rate": [1.0]}))
    assert store.verify("link", KEY_B) == []
    np.testing.assert_array_equal(store.open("link", KEY_B).load("w"), np.full((6, 4), 2.0))


def test_a_commit_checks_its_files_and_never_reads_complete_after_a_failure(tmp_path,
                                                                            monkeypatch) -> None:
    """Files of a write removed before the commit: refused before the manifest. Removed while
    the manifest is written: the manifest is taken back (the previous one restored), so the
    artifact never reads complete with missing data."""
    import storage.writer

    store = ArtifactStore(str(tmp_path / "root"))
    with pytest.raises(CorruptArtifact, match="vanished before the commit"):
        with store.writer("link", KEY_B) as w:
            w.write_array("w", np.zeros(4))
            shutil.rmtree(Path(w.data_path) / "w.zarr")
    assert not (Path(store.artifact_path("link", KEY_B)) / "manifest.json").exists()

    _write(store, "paired", KEY_A, 1.0)
    committed = (Path(store.artifact_path("paired", KEY_A)) / "manifest.json").read_bytes()
    real = storage.writer.atomic_write_text

    def write_then_lose_a_file(fs, path, text):  # something removes data meanwhile
        real(fs, path, text)
        if path.endswith("/manifest.json") and isinstance(text, str) and '"value": 9' in text:
            data = Path(path).parent / json.loads(text)["data_dir"]
            next(data.glob("*.parquet")).unlink()

    monkeypatch.setattr(storage.writer, "atomic_write_text", write_then_lose_a_file)
    with pytest.raises(CorruptArtifact, match="changed while it was committed"):
        with store.writer("paired", KEY_A, params={"value": 9}) as w:
            w.write_array("w", np.full((6, 4), 9.0, dtype="float32"))
            w.write_table("rates", pd.DataFrame({"cls": [0], "rate": [9.0]}))
    assert (Path(store.artifact_path("paired", KEY_A)) / "manifest.json").read_bytes() \
        == committed
    assert store.verify("paired", KEY_A) == []
    np.testing.assert_array_equal(store.open("paired", KEY_A).load("w"), np.ones((6, 4)))


def test_a_reader_follows_a_concurrent_commit_of_the_same_key(tmp_path) -> None:
    """Two runs at once: the second commit of identical bytes keeps the first (its readers
    are not disturbed); a commit of other bytes replaces it, and a reader that opened the
    first follows the new manifest instead of reporting damage."""
    store = ArtifactStore(str(tmp_path / "root"))
    _write(store, "paired", KEY_A, 1.0)
    reader = store.open("paired", KEY_A)
    first = reader.manifest.data_dir
    _write(store, "paired", KEY_A, 1.0)
    assert store.open("paired", KEY_A).manifest.data_dir == first
    assert len(list(Path(reader.path).glob("data-*"))) == 1
    _write(store, "paired", KEY_A, 3.0)  # e.g. a GPU run, not bit-identical
    assert not (Path(reader.path) / first).exists()
    np.testing.assert_array_equal(reader.load("w"), np.full((6, 4), 3.0))
    assert reader.table("rates")["rate"].tolist() == [3.0, 1.5]


def test_clean_removes_stale_temporary_files_and_spares_fresh_ones(world, capsys) -> None:
    root = world["root"]
    key = root / "paired" / KEY_A
    stale = [key / f".manifest.json.{'a' * 32}.tmp", root / f".linkstyle-root.json.{'b' * 32}.tmp",
             root / "catalog" / "run-20260101T000000.000+0000-0123456789ab.parquet.cafe0123.tmp"]
    fresh = key / f".manifest.json.{'c' * 32}.tmp"  # a commit may be writing it right now
    for path in [*stale, fresh]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{")
    then = time.time() - 7200
    for path in stale:
        os.utime(path, (then, then))
    assert main(["clean", "--root", str(root), "--older-than", "0"]) == 0
    out = capsys.readouterr().out
    assert all(f"removed {p}" in out for p in stale) and not any(p.exists() for p in stale)
    assert fresh.exists() and str(fresh) not in out
    assert ArtifactStore(str(root)).exists("paired", KEY_A)
