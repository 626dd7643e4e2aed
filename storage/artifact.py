"""Reading a committed artifact (or shard): lazy Zarr arrays, numpy arrays, Parquet tables.

Every read first checks that the files it is about to read have the sizes the manifest lists,
so a deleted Zarr chunk raises ``CorruptArtifact`` instead of reading back as the fill value.
"""

from __future__ import annotations

import json
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import zarr
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from storage.errors import CorruptArtifact
from storage.integrity import file_sizes, size_problems
from storage.layout import MANIFEST
from storage.manifest import FORMAT_VERSION, Manifest
from storage.root import Root


def zarr_store(fs: AbstractFileSystem, path: str, read_only: bool) -> Any:
    """A Zarr v3 store for ``path`` on ``fs`` (a local store for local folders)."""
    if isinstance(fs, LocalFileSystem):
        return zarr.storage.LocalStore(path, read_only=read_only)
    if fs.async_impl and not fs.asynchronous:
        # s3fs, gcsfs...: Zarr drives its own event loop and needs an instance made for it
        spec = json.loads(fs.to_json())
        fs = fsspec.AbstractFileSystem.from_json(json.dumps({**spec, "asynchronous": True}))
    elif not fs.async_impl:
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

        fs = AsyncFileSystemWrapper(fs, asynchronous=True)
    return zarr.storage.FsspecStore(fs=fs, path=path, read_only=read_only)


class Artifact:
    """A committed artifact (or shard): read its arrays and tables.

    ``array(name)`` is a lazy Zarr array; ``load(name)`` a numpy array; ``table(name)`` a
    pandas DataFrame. For a sharded artifact, ``load``/``table`` concatenate the shards along
    the first axis in plan order and ``shard(id)`` opens one shard.
    """

    def __init__(self, root: Root, path: str, manifest: Manifest) -> None:
        self.root = root
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
        return open_artifact(self.root, f"{self.path}/shards/{shard_id}")

    def _refresh(self) -> bool:
        """Follow a newer commit of this artifact (another run of the same config committed
        it anew since it was opened, and removed the data folder it named): True if the
        manifest now names another data folder, which is read from then on."""
        try:
            current = self.root.read_manifest(self.path, missing_ok=True)
        except CorruptArtifact:
            return False
        if current is None or current.data_dir in (None, self.manifest.data_dir):
            return False
        self.manifest = current
        return True

    def check_sizes(self, prefix: str) -> None:
        """``CorruptArtifact`` naming the file if the files under ``prefix`` of the data folder
        are not exactly those the manifest lists, with their sizes."""
        def check() -> list[str]:
            return size_problems(self.manifest.content, file_sizes(
                self.root.fs, f"{self.path}/{self.manifest.data_dir}", prefix), prefix)

        problems = check()
        if problems and self._refresh():
            problems = check()
        data = f"{self.path}/{self.manifest.data_dir}"
        if problems:
            raise CorruptArtifact(
                f"{self.stage}/{self.key} is damaged: {data}/{problems[0]}"
                f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}; "
                "rerun to rebuild it (`linkstyle status --verify` lists the damage)"
            )

    def data_path(self, name: str, kind: str) -> str:
        """Where array (``kind`` "zarr") or table ("parquet") ``name`` lives (``KeyError``
        naming what there is if the artifact has none)."""
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
        path = self.data_path(name, "zarr")
        if not self.root.fs.exists(path) and self._refresh():
            path = self.data_path(name, "zarr")
        if not self.root.fs.exists(path):
            raise CorruptArtifact(
                f"array {name!r} of {self.stage}/{self.key} is missing at {path}; "
                "rerun to rebuild it"
            )
        self.check_sizes(f"{name}.zarr/")
        path = self.data_path(name, "zarr")
        try:
            arr = zarr.open_array(zarr_store(self.root.fs, path, read_only=True), mode="r")
        except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
            raise CorruptArtifact(
                f"array {name!r} of {self.stage}/{self.key} is missing at {path}; "
                "rerun to rebuild it"
            ) from exc
        expected = tuple(self.manifest.arrays[name]["shape"])
        if tuple(arr.shape) != expected:
            raise CorruptArtifact(
                f"array {name!r} of {self.stage}/{self.key} has shape {tuple(arr.shape)}, "
                f"the manifest says {expected}; rerun to rebuild it"
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
        self.data_path(name, "parquet")
        self.check_sizes(f"{name}.parquet")
        path = self.data_path(name, "parquet")
        try:
            with self.root.fs.open(path, "rb") as handle:
                return pq.read_table(handle).to_pandas()
        except FileNotFoundError as exc:
            raise CorruptArtifact(
                f"table {name!r} of {self.stage}/{self.key} is missing at {path}; "
                "rerun to rebuild it"
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
        self.file_path(name)
        self.check_sizes(name)
        path = self.file_path(name)
        return bytes(self.root.fs.cat_file(path))

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


def open_artifact(root: Root, path: str) -> Artifact:
    """The committed artifact (or shard) at ``path`` under ``root``, after checking that its
    files have the listed sizes and a sharded one's shards are those it was finalised with."""
    manifest = root.read_manifest(path)
    assert manifest is not None
    art = Artifact(root, path, manifest)
    if manifest.format < FORMAT_VERSION:
        raise CorruptArtifact(f"{path}/{MANIFEST} has format {manifest.format}, written by "
                              "an older linkstyle without file checksums; rerun to rebuild it")
    if manifest.data_dir is not None:
        art.check_sizes("")
        return art
    for shard_id in manifest.shards or []:
        shard = root.read_manifest(f"{path}/shards/{shard_id}", missing_ok=True)
        if shard is None or shard.digest != manifest.shard_digests.get(shard_id):
            raise CorruptArtifact(
                f"shard {shard_id} of {manifest.stage}/{manifest.key} is missing or was "
                f"rewritten after the artifact was finalised ({path}/shards/{shard_id}); "
                "rerun to rebuild it"
            )
    return art
