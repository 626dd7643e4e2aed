"""Content-addressed artifact store on any fsspec URI (DESIGN.md, "Artifacts and caching").

The façade over the storage package: ``ArtifactStore`` is a ``storage.root.Root`` (the on-disk
format: layout, manifests, validity) with the API the tasks and commands use. The layout under
the root is described in ``storage.layout``. Reading lives in ``storage.artifact``, writing and
commit in ``storage.writer``, listing and clean-up in ``storage.listing``, the file checks in
``storage.integrity``; none of them imports this module.

An artifact exists (``exists``) only when its manifest is readable, its data folder holds
exactly the files the manifest lists with their sizes and checksums, and every input artifact
it was built from still has the content digest it had then (else it is stale and rebuilt).
Sizes are checked on every call; checksums once per process and data folder.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import fsspec

from storage import listing
from storage.artifact import Artifact, open_artifact
from storage.errors import ArtifactNotFound, CorruptArtifact, IncompleteArtifact, NotAnArtifactRoot
from storage.layout import check_name
from storage.listing import ArtifactInfo
from storage.manifest import Manifest
from storage.root import Problem, Root
from storage.writer import ArtifactWriter, ShardedWriter, write

__all__ = ["Artifact", "ArtifactInfo", "ArtifactNotFound", "ArtifactStore", "ArtifactWriter",
           "CorruptArtifact", "IncompleteArtifact", "NotAnArtifactRoot", "Problem",
           "ShardedWriter"]


class ArtifactStore(Root):
    """Stage outputs under ``<root>/<stage>/<key>/`` on any fsspec URI.

    root: a local path (default), ``file://``, ``memory://``, ``s3://bucket/prefix``, ...
    storage_options: passed to fsspec (credentials, endpoint, ``auto_mkdir``...).
    checksums: whether ``exists`` reads every file once per process to compare checksums
    (True, the default) or only compares sizes.
    """

    def __init__(self, root: str, storage_options: Mapping[str, Any] | None = None,
                 checksums: bool = True) -> None:
        options = dict(storage_options or {})
        if fsspec.utils.get_protocol(str(root)) not in ("file", "local", "memory"):
            # an object store's listings may change under us (other workers write there): a
            # cached listing could hide a folder committed since, so list afresh every time
            options.setdefault("use_listings_cache", False)
        fs, path = fsspec.core.url_to_fs(str(root), **options)
        super().__init__(fs, path.rstrip("/") or "/", str(root), checksums)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root_uri!r})"

    # -- public API ------------------------------------------------------------------------
    def exists(self, stage: str, key: str) -> bool:
        """True when a committed, intact, up-to-date artifact exists (the source of truth for
        caching): damaged files or a changed input make it False, so a run rebuilds it."""
        return self.valid(self.artifact_path(stage, key))

    def shard_exists(self, stage: str, key: str, shard_id: str) -> bool:
        """True when that shard of a sharded artifact is committed, intact and up to date."""
        check_name("shard", shard_id)
        return self.valid(f"{self.artifact_path(stage, key)}/shards/{shard_id}")

    def verify(self, stage: str, key: str) -> list[Problem]:
        """Every problem of one artifact, reading every file to compare checksums (no cache);
        ``[]`` when it is intact and up to date."""
        return self.problems(self.artifact_path(stage, key), checksums=True, cached=False)

    def open(self, stage: str, key: str) -> Artifact:
        """The committed artifact; ``ArtifactNotFound`` if there is none, ``CorruptArtifact``
        if its files are not those its manifest lists."""
        path = self.artifact_path(stage, key)
        if self.read_manifest(path, missing_ok=True) is None:
            raise ArtifactNotFound(
                f"no committed {stage!r} artifact with key {key} under {self.root_uri}; "
                "run the stage that produces it (e.g. `linkstyle run`)"
            )
        return open_artifact(self, path)

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
        with write(self, self.artifact_path(stage, key), manifest) as writer:
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

    # -- listing and clean-up (storage.listing) --------------------------------------------
    def list_artifacts(self, stage: str | None = None, verify: bool = False) -> list[ArtifactInfo]:
        """Every artifact folder of the known stages, with status, size and creation time;
        ``verify`` also compares every file's checksum."""
        return listing.list_artifacts(self, stage, verify)

    def cleanup(
        self, older_than_s: float = 0.0, dry_run: bool = False, corrupt: bool = False
    ) -> list[str]:
        """Remove uncommitted leftovers older than ``older_than_s`` (see
        ``storage.listing.cleanup``); returns the removed (or removable) paths."""
        return listing.cleanup(self, older_than_s, dry_run, corrupt)
