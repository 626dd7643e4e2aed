"""Writing and committing artifacts: one ``data-<txid>`` folder per write, the manifest last.

A write goes to a fresh ``data-<txid>`` folder, which the writer holds by a lease
(``storage.lease``) so that ``clean`` leaves it alone. At commit the writer checks that what it
wrote is still there, lists every file of the folder with its size and CRC-32, records the
content digests of the input artifacts, and then writes the manifest atomically; it checks the
files once more (and takes the manifest back if they changed), and only after that is the
folder an older manifest named removed. A writer that raises (or is killed) leaves the
committed artifact as it was.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from storage import integrity
from storage.artifact import Artifact, zarr_store
from storage.errors import CorruptArtifact, IncompleteArtifact
from storage.layout import DATA_DIR, LEASE, MANIFEST, SHARD_PLAN, check_name
from storage.lease import Lease
from storage.manifest import Manifest, atomic_write_text, new_txid, utcnow
from storage.root import Root


class ArtifactWriter:
    """Writes one artifact (or shard) into a fresh ``data-<txid>`` folder.

    Use through ``write`` (``ArtifactStore.writer`` / ``ShardedWriter.shard``) as a context
    manager: the manifest is written when the block exits normally (``commit``), and nothing is
    committed if it raises (``abort``).
    Record extra facts with ``info[...] = ...`` and durations with ``timings[...] = seconds``.
    """

    def __init__(self, root: Root, path: str, manifest: Manifest) -> None:
        self.root = root
        self.path = path
        self.txid = new_txid()
        self.data_path = f"{path}/data-{self.txid}"
        self._manifest = manifest
        self._manifest.data_dir = f"data-{self.txid}"
        self.info = manifest.info
        self.timings = manifest.timings
        self._arrays: dict[str, zarr.Array] = {}
        self._t0 = time.perf_counter()
        self._manifest.writer["started"] = time.time()
        root.check_not_linked(self.data_path)
        root.ensure_marker()
        root.fs.makedirs(self.data_path, exist_ok=True)
        self.lease = Lease(root.fs, self.data_path)

    def create_array(
        self,
        name: str,
        shape: Sequence[int],
        dtype: Any,
        chunks: Sequence[int] | None = None,
    ) -> zarr.Array:
        """An empty Zarr array to fill chunk by chunk (for streaming writes)."""
        check_name("array", name)
        if name in self._arrays:
            raise ValueError(f"array {name!r} was already written in this artifact")
        store = zarr_store(self.root.fs, f"{self.data_path}/{name}.zarr", read_only=False)
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
        check_name("table", name)
        if name in self._manifest.tables:
            raise ValueError(f"table {name!r} was already written in this artifact")
        if isinstance(table, pd.DataFrame):
            table = pa.Table.from_pandas(table, preserve_index=False)
        with self.root.fs.open(f"{self.data_path}/{name}.parquet", "wb") as handle:
            pq.write_table(table, handle)
        self._manifest.tables[name] = {"rows": table.num_rows, "columns": table.column_names}

    def write_file(self, name: str, data: bytes) -> None:
        """Write an opaque file (a figure, a report) into the artifact."""
        check_name("file", name)
        self.root.fs.pipe_file(f"{self.data_path}/{name}", data)
        self._manifest.files[name] = {"bytes": len(data)}

    def abort(self) -> None:
        """The block raised: nothing is committed; the folder is left for ``clean``."""
        self.lease.release()

    def _own_files_problems(self) -> list[str]:
        """What is missing of what this writer wrote (checked before the commit): each
        array's metadata, each table, each file."""
        found = integrity.file_sizes(self.root.fs, self.data_path)
        expected = [f"{name}.zarr/zarr.json" for name in self._arrays]
        expected += [f"{name}.parquet" for name in self._manifest.tables]
        expected += list(self._manifest.files)
        return [f"{rel}: missing" for rel in expected if rel not in found]

    def commit(self) -> Manifest:
        """Check the written files, record them, write the manifest, check again.

        ``CorruptArtifact`` (and nothing committed) when the data folder was changed by
        something else while it was written or committed. When an intact artifact with the same
        content was committed by another writer meanwhile (two runs of one config), that one
        is kept and this writer's folder removed, so a reader of the other run never finds
        its data folder gone."""
        for name, arr in self._arrays.items():
            self._manifest.arrays[name] = {
                "shape": list(arr.shape), "dtype": str(arr.dtype), "chunks": list(arr.chunks),
            }
        self.timings.setdefault("write_s", round(time.perf_counter() - self._t0, 4))
        fs = self.root.fs
        self.lease.check()
        missing = self._own_files_problems()
        if missing:
            self._fail(f"{len(missing)} of its files vanished before the commit "
                       f"({self.data_path}/{missing[0]})")
        t0 = time.perf_counter()
        self._manifest.content = integrity.record(fs, self.data_path)
        self._manifest.digest = integrity.digest(self._manifest.content)
        self.timings["checksum_s"] = round(time.perf_counter() - t0, 4)
        self._manifest.input_digests = self.root.input_digests(self._manifest.inputs)
        self._manifest.created = utcnow()
        self._manifest.writer["committed"] = time.time()
        manifest_path = f"{self.path}/{MANIFEST}"
        try:
            previous_bytes: bytes | None = bytes(fs.cat_file(manifest_path))
        except FileNotFoundError:
            previous_bytes = None
        previous = self.root.read_manifest(self.path, missing_ok=True, corrupt_ok=True)
        if previous is not None and previous.digest == self._manifest.digest \
                and self.root.valid(self.path):
            self.lease.stop()
            fs.rm(self.data_path, recursive=True)
            return previous  # the same bytes, committed by another writer: keep theirs
        self.lease.check()
        self.lease.stop()
        atomic_write_text(fs, manifest_path, self._manifest.to_json())
        changed = integrity.size_problems(self._manifest.content,
                                          integrity.file_sizes(fs, self.data_path))
        if changed or not fs.exists(self.lease.path):
            # something removed or changed files between the check and the manifest: put the
            # previous manifest back (or none), so the artifact never reads complete
            if previous_bytes is not None:
                atomic_write_text(fs, manifest_path, previous_bytes)
            else:
                fs.rm_file(manifest_path)
            self._fail(f"its files changed while it was committed "
                       f"({self.data_path}/{changed[0] if changed else LEASE + ': missing'})")
        self.lease.remove()
        # The committed folder replaced an older one: that one is no longer reachable. Its name
        # was checked when its manifest was read (a data-<txid> folder inside this one), so
        # nothing else is ever removed. Another writer of the same key may be removing it too.
        old_dir = previous.data_dir if previous is not None else None
        if old_dir and old_dir != self._manifest.data_dir and DATA_DIR.match(old_dir):
            try:
                fs.rm(f"{self.path}/{old_dir}", recursive=True)
            except FileNotFoundError:
                pass
        return self._manifest

    def _fail(self, problem: str) -> NoReturn:
        self.lease.release()
        raise CorruptArtifact(
            f"{self._manifest.stage}/{self._manifest.key} was not committed: {problem}; was "
            "the folder cleaned or changed while the run wrote it? Rerun to write it again")


@contextmanager
def write(root: Root, path: str, manifest: Manifest) -> Iterator[ArtifactWriter]:
    """Write the artifact (or shard) ``manifest`` describes at ``path``: committed when the
    block exits without an error, nothing committed when it raises."""
    writer = ArtifactWriter(root, path, manifest)
    try:
        yield writer
    except BaseException:  # propagates: no manifest, nothing committed
        writer.abort()
        raise
    writer.commit()


class ShardedWriter:
    """Writes a sharded artifact: every shard commits on its own, then ``finalize``.

    shards: the plan, shard ids in order (e.g. ``["units-0000-0063", ...]``).
    """

    def __init__(
        self, root: Root, stage: str, key: str, shards: Sequence[str],
        params: Mapping[str, Any], inputs: Mapping[str, str], code_version: str,
    ) -> None:
        if not shards:
            raise ValueError("a sharded artifact needs at least one shard")
        if len(set(shards)) != len(shards):
            raise ValueError("shard ids must be unique")
        for shard_id in shards:
            check_name("shard", shard_id)
        self.root, self.stage, self.key = root, stage, key
        self.plan = list(shards)
        self.params, self.inputs, self.code_version = dict(params), dict(inputs), str(code_version)
        self.path = root.artifact_path(stage, key)
        root.check_not_linked(f"{self.path}/{SHARD_PLAN}")
        plan_text = Manifest(
            stage=stage, key=key, code_version=self.code_version, params=self.params,
            inputs=self.inputs, data_dir=None, shards=self.plan,
        ).to_json()
        existing = root.read_plan(self.path)
        if existing != self.plan:
            root.ensure_marker()
            atomic_write_text(root.fs, f"{self.path}/{SHARD_PLAN}", plan_text)

    def committed(self) -> list[str]:
        """Shard ids of the plan whose shard is committed and intact, in plan order."""
        return [s for s in self.plan if self.root.valid(f"{self.path}/shards/{s}")]

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
        with write(self.root, f"{self.path}/shards/{shard_id}", manifest) as writer:
            yield writer

    def finalize(self, info: Mapping[str, Any] | None = None) -> Artifact:
        """Write the whole-artifact manifest; ``IncompleteArtifact`` if shards are missing."""
        missing = self.missing()
        if missing:
            raise IncompleteArtifact(
                f"{self.stage}/{self.key}: {len(missing)} of {len(self.plan)} shards missing "
                f"(first: {missing[:3]}); write them before finalising"
            )
        shard_digests = {}
        for shard_id in self.plan:
            shard = self.root.read_manifest(f"{self.path}/shards/{shard_id}")
            assert shard is not None
            shard_digests[shard_id] = str(shard.digest)
        self.root.ensure_marker()
        manifest = Manifest(
            stage=self.stage, key=self.key, code_version=self.code_version, params=self.params,
            inputs=self.inputs, data_dir=None, shards=self.plan, info=dict(info or {}),
            shard_digests=shard_digests, digest=integrity.digest(shard_digests),
            input_digests=self.root.input_digests(self.inputs),
        )
        atomic_write_text(self.root.fs, f"{self.path}/{MANIFEST}", manifest.to_json())
        return Artifact(self.root, self.path, manifest)
