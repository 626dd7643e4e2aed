"""Content-addressed artifact store on any fsspec URI (DESIGN.md, "Artifacts and caching").

Layout under the root (a local folder, ``memory://...``, ``s3://...``, ``gs://...``)::

    <root>/<stage>/<key>/manifest.json             commits the artifact (written last)
    <root>/<stage>/<key>/data-<txid>/<name>.zarr    arrays of the committed write
    <root>/<stage>/<key>/data-<txid>/<name>.parquet tables of the committed write
    <root>/<stage>/<key>/shards.json                the shard plan of a sharded artifact
    <root>/<stage>/<key>/shards/<id>/manifest.json  commits one shard (same layout inside)

Every write goes to a fresh ``data-<txid>`` folder. Only the folder named by the manifest is
part of the artifact, so a writer that raises (or is killed) leaves the committed artifact as it
was, and its own half-written folder invisible until ``cleanup`` removes it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from storage.manifest import (
    MANIFEST,
    SHARD_PLAN,
    STARTED,
    CorruptArtifact,
    Manifest,
    atomic_write_text,
    new_txid,
    read_text,
    utcnow,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ArtifactNotFound(LookupError):
    """No committed artifact (no manifest) exists for this stage and key."""


class IncompleteArtifact(RuntimeError):
    """A sharded artifact was finalised while some of its shards are missing."""


def _check_name(kind: str, name: str) -> str:
    if not _NAME.match(name) or name.endswith((".zarr", ".parquet")):
        raise ValueError(
            f"{kind} name {name!r} is not allowed: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit, without a .zarr/.parquet suffix"
        )
    return name


def _zarr_store(fs: AbstractFileSystem, path: str, read_only: bool) -> Any:
    if isinstance(fs, LocalFileSystem):
        return zarr.storage.LocalStore(path, read_only=read_only)
    if not fs.async_impl:
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

        fs = AsyncFileSystemWrapper(fs, asynchronous=True)
    return zarr.storage.FsspecStore(fs=fs, path=path, read_only=read_only)


class Artifact:
    """A committed artifact (or shard): read its arrays and tables.

    ``array(name)`` is a lazy Zarr array; ``load(name)`` a numpy array; ``table(name)`` a
    pandas DataFrame. For a sharded artifact, ``load``/``table`` concatenate the shards along
    the first axis in plan order and ``shard(id)`` opens one shard.
    """

    def __init__(self, store: ArtifactStore, path: str, manifest: Manifest) -> None:
        self.store = store
        self.path = path
        self.manifest = manifest

    @property
    def stage(self) -> str:
        return self.manifest.stage

    @property
    def key(self) -> str:
        return self.manifest.key

    @property
    def info(self) -> dict[str, Any]:
        return self.manifest.info

    @property
    def shards(self) -> list[str]:
        return list(self.manifest.shards or [])

    def shard(self, shard_id: str) -> Artifact:
        if shard_id not in self.shards:
            raise KeyError(
                f"{self.stage}/{self.key} has no shard {shard_id!r}; it has {self.shards}"
            )
        return self.store._open_path(f"{self.path}/shards/{shard_id}")

    def _data_path(self, name: str, kind: str) -> str:
        listing = self.manifest.arrays if kind == "zarr" else self.manifest.tables
        if name not in listing:
            raise KeyError(
                f"{self.stage}/{self.key} has no {'array' if kind == 'zarr' else 'table'} "
                f"{name!r}; it has {sorted(listing)}"
            )
        return f"{self.path}/{self.manifest.data_dir}/{name}.{kind}"

    def array(self, name: str) -> zarr.Array:
        if self.manifest.shards is not None:
            raise TypeError("a sharded artifact has no single array; use load() or shard(id)")
        path = self._data_path(name, "zarr")
        try:
            arr = zarr.open_array(_zarr_store(self.store.fs, path, read_only=True), mode="r")
        except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
            raise CorruptArtifact(
                f"array {name!r} of {self.stage}/{self.key} is missing at {path}; "
                "delete the artifact folder and rerun to rebuild it"
            ) from exc
        expected = tuple(self.manifest.arrays[name]["shape"])
        if tuple(arr.shape) != expected:
            raise CorruptArtifact(
                f"array {name!r} of {self.stage}/{self.key} has shape {tuple(arr.shape)}, "
                f"the manifest says {expected}; delete the artifact folder and rerun"
            )
        return arr

    def load(self, name: str) -> np.ndarray:
        if self.manifest.shards is not None:
            parts = [self.shard(s).load(name) for s in self.shards]
            return np.concatenate(parts, axis=0)
        return np.asarray(self.array(name)[...])

    def table(self, name: str) -> pd.DataFrame:
        if self.manifest.shards is not None:
            frames = [self.shard(s).table(name) for s in self.shards]
            return pd.concat(frames, ignore_index=True)
        path = self._data_path(name, "parquet")
        try:
            with self.store.fs.open(path, "rb") as handle:
                return pq.read_table(handle).to_pandas()
        except FileNotFoundError as exc:
            raise CorruptArtifact(
                f"table {name!r} of {self.stage}/{self.key} is missing at {path}; "
                "delete the artifact folder and rerun to rebuild it"
            ) from exc

    def locate(self, index: str, value: Any) -> tuple[Artifact, np.ndarray]:
        """(the shard, or this artifact, holding the rows whose entry in the 1-d array
        ``index`` equals ``value``; those rows' positions in it). Raises ``KeyError`` if no row
        matches."""
        pieces = [self] if self.manifest.shards is None else [self.shard(s) for s in self.shards]
        for piece in pieces:
            hits = np.flatnonzero(piece.load(index) == value)
            if len(hits):
                return piece, hits
        raise KeyError(f"{self.stage}/{self.key} has no row with {index} == {value!r}")

    def select(self, name: str, index: str, value: Any) -> np.ndarray:
        """The rows of array ``name`` whose entry in ``index`` equals ``value`` (e.g. one
        unit's images: ``select("images", "unit", 92)``), read from whichever shard holds
        them; only those rows are read."""
        piece, rows = self.locate(index, value)
        arr = piece.array(name)
        return np.stack([np.asarray(arr[int(i)]) for i in rows])

    def load_common(self, name: str) -> np.ndarray:
        """An array that every shard of a sharded artifact holds alike (e.g. the samples all
        shards were tuned on), read once."""
        return self.shard(self.shards[0]).load(name) if self.shards else self.load(name)

    def file_path(self, name: str) -> str:
        """Where a file written with ``write_file`` lives (a path or URI under the root)."""
        if name not in self.manifest.files:
            raise KeyError(f"{self.stage}/{self.key} has no file {name!r}; it has "
                           f"{sorted(self.manifest.files)}")
        return f"{self.path}/{self.manifest.data_dir}/{name}"

    def read_file(self, name: str) -> bytes:
        """The bytes of a file written with ``write_file``."""
        return bytes(self.store.fs.cat_file(self.file_path(name)))

    @property
    def array_names(self) -> list[str]:
        if self.manifest.shards is not None and self.shards:
            return sorted(self.shard(self.shards[0]).manifest.arrays)
        return sorted(self.manifest.arrays)

    @property
    def table_names(self) -> list[str]:
        if self.manifest.shards is not None and self.shards:
            return sorted(self.shard(self.shards[0]).manifest.tables)
        return sorted(self.manifest.tables)


class ArtifactWriter:
    """Writes one artifact (or shard) into a fresh ``data-<txid>`` folder.

    Use through ``ArtifactStore.writer`` / ``ShardedWriter.shard`` as a context manager: the
    manifest is written when the block exits normally, and nothing is committed if it raises.
    Record extra facts with ``info[...] = ...`` and durations with ``timings[...] = seconds``.
    """

    def __init__(self, store: ArtifactStore, path: str, manifest: Manifest) -> None:
        self.store = store
        self.path = path
        self.txid = new_txid()
        self.data_path = f"{path}/data-{self.txid}"
        self._manifest = manifest
        self._manifest.data_dir = f"data-{self.txid}"
        self.info = manifest.info
        self.timings = manifest.timings
        self._arrays: dict[str, zarr.Array] = {}
        self._t0 = time.perf_counter()
        fs = store.fs
        fs.makedirs(self.data_path, exist_ok=True)
        fs.pipe_file(f"{self.data_path}/{STARTED}", json.dumps({"started": time.time()}).encode())

    def create_array(
        self,
        name: str,
        shape: Sequence[int],
        dtype: Any,
        chunks: Sequence[int] | None = None,
    ) -> zarr.Array:
        """An empty Zarr array to fill chunk by chunk (for streaming writes)."""
        _check_name("array", name)
        if name in self._arrays:
            raise ValueError(f"array {name!r} was already written in this artifact")
        store = _zarr_store(self.store.fs, f"{self.data_path}/{name}.zarr", read_only=False)
        arr = zarr.create_array(
            store, shape=tuple(shape), dtype=np.dtype(dtype),
            chunks=tuple(chunks) if chunks is not None else "auto",
        )
        self._arrays[name] = arr
        return arr

    def write_array(self, name: str, data: Any, chunks: Sequence[int] | None = None) -> None:
        """Write a whole array (numpy, or anything ``np.asarray`` takes)."""
        data = np.asarray(data)
        arr = self.create_array(name, data.shape, data.dtype, chunks)
        if data.size:
            arr[...] = data

    def write_table(self, name: str, table: pd.DataFrame | pa.Table) -> None:
        """Write a table as Parquet."""
        _check_name("table", name)
        if name in self._manifest.tables:
            raise ValueError(f"table {name!r} was already written in this artifact")
        if isinstance(table, pd.DataFrame):
            table = pa.Table.from_pandas(table, preserve_index=False)
        with self.store.fs.open(f"{self.data_path}/{name}.parquet", "wb") as handle:
            pq.write_table(table, handle)
        self._manifest.tables[name] = {"rows": table.num_rows, "columns": table.column_names}

    def write_file(self, name: str, data: bytes) -> None:
        """Write an opaque file (a figure, a report) into the artifact."""
        _check_name("file", name)
        self.store.fs.pipe_file(f"{self.data_path}/{name}", data)
        self._manifest.files[name] = {"bytes": len(data)}

    def _commit(self) -> Manifest:
        for name, arr in self._arrays.items():
            self._manifest.arrays[name] = {
                "shape": list(arr.shape), "dtype": str(arr.dtype), "chunks": list(arr.chunks),
            }
        self.timings.setdefault("write_s", round(time.perf_counter() - self._t0, 4))
        self._manifest.created = utcnow()
        fs = self.store.fs
        manifest_path = f"{self.path}/{MANIFEST}"
        previous = self.store._read_manifest(self.path, missing_ok=True, corrupt_ok=True)
        atomic_write_text(fs, manifest_path, self._manifest.to_json())
        fs.rm_file(f"{self.data_path}/{STARTED}")
        # The committed folder replaced an older one: that one is no longer reachable.
        old_dir = previous.data_dir if previous is not None else None
        if old_dir and old_dir != self._manifest.data_dir:
            old = f"{self.path}/{old_dir}"
            if fs.exists(old):
                fs.rm(old, recursive=True)
        return self._manifest


class ShardedWriter:
    """Writes a sharded artifact: every shard commits on its own, then ``finalize``.

    shards: the plan, shard ids in order (e.g. ``["units-0000-0063", ...]``).
    """

    def __init__(
        self, store: ArtifactStore, stage: str, key: str, shards: Sequence[str],
        params: Mapping[str, Any], inputs: Mapping[str, str], code_version: str,
    ) -> None:
        if not shards:
            raise ValueError("a sharded artifact needs at least one shard")
        if len(set(shards)) != len(shards):
            raise ValueError("shard ids must be unique")
        for shard_id in shards:
            _check_name("shard", shard_id)
        self.store, self.stage, self.key = store, stage, key
        self.plan = list(shards)
        self.params, self.inputs, self.code_version = dict(params), dict(inputs), str(code_version)
        self.path = store.artifact_path(stage, key)
        plan_text = Manifest(
            stage=stage, key=key, code_version=self.code_version, params=self.params,
            inputs=self.inputs, data_dir=None, shards=self.plan,
        ).to_json()
        existing = store._read_plan(self.path)
        if existing != self.plan:
            atomic_write_text(store.fs, f"{self.path}/{SHARD_PLAN}", plan_text)

    def committed(self) -> list[str]:
        """Shard ids of the plan whose shard manifest exists, in plan order."""
        return [s for s in self.plan if self.store._valid(f"{self.path}/shards/{s}")]

    def missing(self) -> list[str]:
        """Shard ids of the plan that still have to be written, in plan order."""
        done = set(self.committed())
        return [s for s in self.plan if s not in done]

    @contextmanager
    def shard(self, shard_id: str) -> Iterator[ArtifactWriter]:
        if shard_id not in self.plan:
            raise KeyError(f"shard {shard_id!r} is not in the plan of {self.stage}/{self.key}")
        manifest = Manifest(
            stage=self.stage, key=self.key, code_version=self.code_version, params=self.params,
            inputs=self.inputs, data_dir=None, shard=shard_id,
        )
        with self.store._write(f"{self.path}/shards/{shard_id}", manifest) as writer:
            yield writer

    def finalize(self, info: Mapping[str, Any] | None = None) -> Artifact:
        """Write the whole-artifact manifest; ``IncompleteArtifact`` if shards are missing."""
        missing = self.missing()
        if missing:
            raise IncompleteArtifact(
                f"{self.stage}/{self.key}: {len(missing)} of {len(self.plan)} shards missing "
                f"(first: {missing[:3]}); write them before finalising"
            )
        manifest = Manifest(
            stage=self.stage, key=self.key, code_version=self.code_version, params=self.params,
            inputs=self.inputs, data_dir=None, shards=self.plan, info=dict(info or {}),
        )
        atomic_write_text(self.store.fs, f"{self.path}/{MANIFEST}", manifest.to_json())
        return Artifact(self.store, self.path, manifest)


@dataclass(frozen=True)
class ArtifactInfo:
    """One line of ``linkstyle status``."""

    stage: str
    key: str
    status: str  # "complete" | "partial" | "uncommitted" | "corrupt"
    size_bytes: int
    created: str | None
    shards_done: int | None = None
    shards_total: int | None = None


class ArtifactStore:
    """Stage outputs under ``<root>/<stage>/<key>/`` on any fsspec URI.

    root: a local path (default), ``file://``, ``memory://``, ``s3://bucket/prefix``, ...
    storage_options: passed to fsspec (credentials, endpoint, ``auto_mkdir``...).
    """

    def __init__(self, root: str, storage_options: Mapping[str, Any] | None = None) -> None:
        options = dict(storage_options or {})
        fs, path = fsspec.core.url_to_fs(str(root), **options)
        self.fs: AbstractFileSystem = fs
        self.root_uri = str(root)
        self.root = path.rstrip("/") or "/"

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root_uri!r})"

    # -- paths and manifests ---------------------------------------------------------------
    def artifact_path(self, stage: str, key: str) -> str:
        _check_name("stage", stage)
        _check_name("key", key)
        return f"{self.root}/{stage}/{key}"

    def _read_manifest(
        self, path: str, missing_ok: bool = False, corrupt_ok: bool = False
    ) -> Manifest | None:
        text = read_text(self.fs, f"{path}/{MANIFEST}")
        if text is None:
            if missing_ok:
                return None
            raise ArtifactNotFound(f"no committed artifact at {path} (no {MANIFEST})")
        try:
            return Manifest.from_json(text, f"{path}/{MANIFEST}")
        except CorruptArtifact:
            if corrupt_ok:
                return None
            raise

    def _read_plan(self, path: str) -> list[str] | None:
        text = read_text(self.fs, f"{path}/{SHARD_PLAN}")
        if text is None:
            return None
        try:
            return list(Manifest.from_json(text, f"{path}/{SHARD_PLAN}").shards or [])
        except CorruptArtifact:
            return None

    def _valid(self, path: str) -> bool:
        """A readable manifest whose data folder (if any) is present."""
        manifest = self._read_manifest(path, missing_ok=True, corrupt_ok=True)
        if manifest is None:
            return False
        if manifest.data_dir is None:
            return all(self._valid(f"{path}/shards/{s}") for s in manifest.shards or [])
        return bool(self.fs.exists(f"{path}/{manifest.data_dir}"))

    def _open_path(self, path: str) -> Artifact:
        manifest = self._read_manifest(path)
        assert manifest is not None
        return Artifact(self, path, manifest)

    # -- public API ------------------------------------------------------------------------
    def exists(self, stage: str, key: str) -> bool:
        """True when a committed, readable artifact exists (the source of truth for caching)."""
        return self._valid(self.artifact_path(stage, key))

    def shard_exists(self, stage: str, key: str, shard_id: str) -> bool:
        """True when that shard of a sharded artifact is committed and readable."""
        _check_name("shard", shard_id)
        return self._valid(f"{self.artifact_path(stage, key)}/shards/{shard_id}")

    def open(self, stage: str, key: str) -> Artifact:
        """The committed artifact; ``ArtifactNotFound`` if there is none."""
        path = self.artifact_path(stage, key)
        manifest = self._read_manifest(path, missing_ok=True)
        if manifest is None:
            raise ArtifactNotFound(
                f"no committed {stage!r} artifact with key {key} under {self.root_uri}; "
                "run the stage that produces it (e.g. `linkstyle run`)"
            )
        return Artifact(self, path, manifest)

    @contextmanager
    def _write(self, path: str, manifest: Manifest) -> Iterator[ArtifactWriter]:
        writer = ArtifactWriter(self, path, manifest)
        yield writer  # an exception here propagates: no manifest, nothing committed
        writer._commit()

    @contextmanager
    def writer(
        self,
        stage: str,
        key: str,
        *,
        params: Mapping[str, Any] | None = None,
        inputs: Mapping[str, str] | None = None,
        code_version: str | int = "1",
    ) -> Iterator[ArtifactWriter]:
        """Write an artifact; it is committed when the ``with`` block exits without error."""
        manifest = Manifest(
            stage=stage, key=key, code_version=str(code_version), params=dict(params or {}),
            inputs={k: str(v) for k, v in (inputs or {}).items()}, data_dir=None,
        )
        with self._write(self.artifact_path(stage, key), manifest) as writer:
            yield writer

    def sharded(
        self,
        stage: str,
        key: str,
        shards: Sequence[str],
        *,
        params: Mapping[str, Any] | None = None,
        inputs: Mapping[str, str] | None = None,
        code_version: str | int = "1",
    ) -> ShardedWriter:
        """A writer for an artifact made of shards that commit one by one."""
        return ShardedWriter(
            self, stage, key, shards, params or {},
            {k: str(v) for k, v in (inputs or {}).items()}, str(code_version),
        )

    def delete(self, stage: str, key: str) -> None:
        """Remove an artifact (committed or not) and everything under its folder."""
        path = self.artifact_path(stage, key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    # -- listing and clean-up --------------------------------------------------------------
    def _dirs(self, path: str) -> list[str]:
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries
                      if e["type"] == "directory")

    def _size(self, path: str) -> int:
        try:
            return int(self.fs.du(path, total=True))
        except FileNotFoundError:
            return 0

    def list_artifacts(self, stage: str | None = None) -> list[ArtifactInfo]:
        """Every artifact folder under the root, with its status, size and creation time."""
        stages = [stage] if stage else self._dirs(self.root)
        out = []
        for st in stages:
            for key in self._dirs(f"{self.root}/{st}"):
                path = f"{self.root}/{st}/{key}"
                manifest = None
                status = "uncommitted"
                try:
                    manifest = self._read_manifest(path, missing_ok=True)
                except CorruptArtifact:
                    status = "corrupt"
                done = total = None
                plan = self._read_plan(path)
                if plan is not None:
                    total = len(plan)
                    done = sum(self._valid(f"{path}/shards/{s}") for s in plan)
                if manifest is not None:
                    status = "complete" if self._valid(path) else "corrupt"
                elif status != "corrupt" and done:
                    status = "partial"
                out.append(ArtifactInfo(
                    stage=st, key=key, status=status, size_bytes=self._size(path),
                    created=manifest.created if manifest else None,
                    shards_done=done, shards_total=total,
                ))
        return out

    def _stale_data_dirs(self, path: str, keep: str | None, older_than_s: float) -> list[str]:
        """``data-*`` folders under ``path`` other than ``keep`` that are old enough to remove."""
        stale = []
        now = time.time()
        for name in self._dirs(path):
            if not name.startswith("data-") or name == keep:
                continue
            started = read_text(self.fs, f"{path}/{name}/{STARTED}")
            try:
                t0 = float(json.loads(started)["started"]) if started else 0.0
            except (ValueError, KeyError, TypeError):
                t0 = 0.0  # an unreadable marker cannot protect a live writer
            if now - t0 >= older_than_s:
                stale.append(f"{path}/{name}")
        return stale

    def _leftovers(self, path: str, older_than_s: float) -> tuple[list[str], bool]:
        """Stale data folders of one artifact or shard folder, and whether nothing committed or
        still being written remains in it."""
        manifest = self._read_manifest(path, missing_ok=True, corrupt_ok=True)
        stale = self._stale_data_dirs(path, manifest.data_dir if manifest else None, older_than_s)
        data_dirs = [d for d in self._dirs(path) if d.startswith("data-")]
        return stale, manifest is None and len(stale) == len(data_dirs)

    def cleanup(
        self, older_than_s: float = 0.0, dry_run: bool = False, corrupt: bool = False
    ) -> list[str]:
        """Remove uncommitted leftovers: data folders no manifest names, and artifact or shard
        folders without any committed content. Committed artifacts and committed shards are
        never touched; ``corrupt=True`` also removes artifacts whose manifest is unreadable.

        older_than_s: spare leftovers younger than this (a writer may still be running).
        Returns the removed (or, with ``dry_run``, the removable) paths.
        """
        removed: list[str] = []
        for info in self.list_artifacts():
            path = f"{self.root}/{info.stage}/{info.key}"
            if info.status == "corrupt":
                if corrupt:
                    removed.append(path)
                continue
            stale, empty = self._leftovers(path, older_than_s)
            for shard_id in self._dirs(f"{path}/shards"):
                shard_path = f"{path}/shards/{shard_id}"
                shard_stale, shard_empty = self._leftovers(shard_path, older_than_s)
                if shard_empty:
                    stale.append(shard_path)
                else:
                    stale += shard_stale
                    empty = False
            removed += [path] if empty else stale
        if not dry_run:
            for p in removed:
                if self.fs.exists(p):
                    self.fs.rm(p, recursive=True)
        return removed
