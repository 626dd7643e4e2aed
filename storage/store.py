"""Content-addressed artifact store on any fsspec URI (DESIGN.md, "Artifacts and caching").

The layout under the root is described in ``storage.layout``. Reading lives in
``storage.artifact``, writing and commit in ``storage.writer``, listing and clean-up in
``storage.listing``, the file checks in ``storage.integrity``; ``ArtifactStore`` ties them to
one root.

An artifact exists (``exists``) only when its manifest is readable, its data folder holds
exactly the files the manifest lists with their sizes and checksums, and every input artifact
it was built from still has the content digest it had then (else it is stale and rebuilt).
Sizes are checked on every call; checksums once per process and data folder.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from storage import integrity, listing
from storage.artifact import Artifact
from storage.errors import ArtifactNotFound, CorruptArtifact, IncompleteArtifact, NotAnArtifactRoot
from storage.layout import (
    KEY,
    MANIFEST,
    ROOT_FORMAT,
    ROOT_MARKER,
    SHARD_PLAN,
    SHARDS,
    STAGE_NAMES,
    check_key,
    check_name,
    check_stage,
)
from storage.links import link_below_root, link_message
from storage.listing import ArtifactInfo
from storage.manifest import FORMAT_VERSION, Manifest, atomic_write_text, read_text, utcnow
from storage.writer import ArtifactWriter, ShardedWriter

__all__ = ["Artifact", "ArtifactInfo", "ArtifactNotFound", "ArtifactStore", "ArtifactWriter",
           "CorruptArtifact", "IncompleteArtifact", "NotAnArtifactRoot", "Problem",
           "ShardedWriter"]

#: (what is wrong: "corrupt" or "stale", a message naming the file or input)
Problem = tuple[str, str]

# Data folders whose checksums matched in this process: (filesystem, folder, digest). A data
# folder is never rewritten in place (a rebuild writes a new data-<txid>), so one check per
# process suffices; sizes are still checked on every call.
_VERIFIED: set[tuple[str, str, str]] = set()
_VERIFIED_LOCK = threading.Lock()


class ArtifactStore:
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
        self.fs: AbstractFileSystem = fs
        self.root_uri = str(root)
        self.root = path.rstrip("/") or "/"
        self.checksums = checksums
        self._marked = False

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root_uri!r})"

    # -- paths, the root marker and manifests ----------------------------------------------
    def artifact_path(self, stage: str, key: str) -> str:
        check_stage(stage)
        check_key(key)
        return f"{self.root}/{stage}/{key}"

    @property
    def marker_path(self) -> str:
        return f"{self.root}/{ROOT_MARKER}"

    def _ensure_marker(self) -> None:
        """Mark the root as an artifact root (once; before the first write under it)."""
        if self._marked:
            return
        if not self.fs.exists(self.marker_path):
            self.fs.makedirs(self.root, exist_ok=True)
            atomic_write_text(self.fs, self.marker_path, json.dumps(
                {"linkstyle_root": ROOT_FORMAT, "created": utcnow(),
                 "note": "an artifact root of linkstyle; `linkstyle clean` works only in "
                         "folders that carry this file"}, indent=2))
        self._marked = True

    def check_root(self) -> None:
        """``NotAnArtifactRoot`` unless the root is a folder carrying the root marker."""
        where = self.root_uri
        if not self.fs.exists(self.root):
            raise NotAnArtifactRoot(f"{where} does not exist; check --root or the config's "
                                    "artifact_root")
        if not self.fs.isdir(self.root):
            raise NotAnArtifactRoot(f"{where} is a file, not an artifact root folder")
        try:
            text = read_text(self.fs, self.marker_path)
            marker = json.loads(text) if text is not None else None
        except (CorruptArtifact, ValueError):
            marker = {}
        if marker is None:
            raise NotAnArtifactRoot(
                f"{where} is not a linkstyle artifact root (it has no {ROOT_MARKER}); clean "
                "removes only what it can prove is its own. Point --root at the folder that "
                f"holds the stage folders ({', '.join(STAGE_NAMES[:3])}, ...); a root written "
                "before the marker existed gets it on its next `linkstyle run`"
            )
        version = marker.get("linkstyle_root") if isinstance(marker, dict) else None
        if not isinstance(version, int) or isinstance(version, bool) or version > ROOT_FORMAT:
            raise NotAnArtifactRoot(
                f"{self.marker_path} is unreadable or from a newer linkstyle "
                f"(root format {version!r}, this one knows {ROOT_FORMAT}); clean refuses to "
                "touch it"
            )

    def linked(self, path: str) -> str | None:
        """The symbolic link on the way from the root down to ``path``, if there is one."""
        return link_below_root(self.fs, self.root, path)

    def check_not_linked(self, path: str) -> None:
        """``CorruptArtifact`` if ``path`` is (or lies inside) a symbolic link under the root:
        nothing is ever written through one."""
        link = self.linked(path)
        if link is not None:
            raise CorruptArtifact(link_message(link))

    def _identity(self, path: str) -> tuple[str, str, str | None]:
        """(stage, key, shard or None) of an artifact or shard folder under the root."""
        parts = path[len(self.root):].strip("/").split("/")
        if len(parts) == 2:
            return parts[0], parts[1], None
        if len(parts) == 4 and parts[2] == SHARDS:
            return parts[0], parts[1], parts[3]
        raise ValueError(f"{path} is not an artifact or shard folder under {self.root}")

    def _read_json(self, path: str, name: str) -> Manifest | None:
        """The manifest (or shard plan) ``name`` of the folder ``path``, checked to belong
        there (``Manifest.check_identity``); None if there is none."""
        text = read_text(self.fs, f"{path}/{name}")
        if text is None:
            return None
        manifest = Manifest.from_json(text, f"{path}/{name}")
        manifest.check_identity(*self._identity(path), where=f"{path}/{name}")
        return manifest

    def _read_manifest(
        self, path: str, missing_ok: bool = False, corrupt_ok: bool = False
    ) -> Manifest | None:
        try:
            manifest = self._read_json(path, MANIFEST)
            if manifest is None and not missing_ok:
                raise ArtifactNotFound(f"no committed artifact at {path} (no {MANIFEST})")
            return manifest
        except CorruptArtifact:
            if corrupt_ok:
                return None
            raise

    def _read_plan(self, path: str) -> list[str] | None:
        try:
            plan = self._read_json(path, SHARD_PLAN)
            return list(plan.shards or []) if plan is not None else None
        except CorruptArtifact:
            return None

    # -- integrity -------------------------------------------------------------------------
    def _problems(self, path: str, checksums: bool, cached: bool = True) -> list[Problem]:
        """What keeps the artifact (or shard) at ``path`` from counting as committed: nothing
        (``[]``), ("missing", ...), ("corrupt", file and what is wrong) or ("stale", which
        input changed). A folder reached through a symbolic link is corrupt
        (``storage.links``)."""
        link = self.linked(path)
        if link is not None:
            return [("corrupt", link_message(link))]
        try:
            manifest = self._read_manifest(path, missing_ok=True)
        except CorruptArtifact as exc:
            return [("corrupt", str(exc))]
        if manifest is None:
            return [("missing", f"{path}: no {MANIFEST}")]
        if manifest.format < FORMAT_VERSION:
            return [("stale", f"{path}/{MANIFEST} has format {manifest.format}, written by an "
                              "older linkstyle without file checksums; rerun to rebuild it")]
        out: list[Problem] = []
        if manifest.data_dir is None:
            for shard_id in manifest.shards or []:
                shard_path = f"{path}/shards/{shard_id}"
                found = self._problems(shard_path, checksums, cached)
                if found:
                    out += [("corrupt" if kind == "missing" else kind, msg)
                            for kind, msg in found]
                    continue
                shard = self._read_manifest(shard_path, missing_ok=True, corrupt_ok=True)
                if shard is None or shard.digest != manifest.shard_digests.get(shard_id):
                    out.append(("stale", f"{shard_path} was rewritten with other content after "
                                         "the artifact was finalised"))
        else:
            out += [("corrupt", msg) for msg in self._file_problems(path, manifest, checksums,
                                                                    cached)]
        for key, source in sorted(manifest.input_digests.items()):
            input_path = f"{self.root}/{source.get('stage')}/{key}"
            current = self._read_manifest(input_path, missing_ok=True, corrupt_ok=True)
            if current is None:
                out.append(("stale", f"input {input_path} is missing or unreadable"))
            elif current.digest != source.get("digest"):
                out.append(("stale", f"input {input_path} changed since this artifact was "
                                     "built (its content digest differs)"))
        return out

    def _file_problems(self, path: str, manifest: Manifest, checksums: bool,
                       cached: bool) -> list[str]:
        data = f"{path}/{manifest.data_dir}"
        if not self.fs.isdir(data):
            return [f"{data}: the data folder is missing"]
        wrong = integrity.size_problems(manifest.content, integrity.file_sizes(self.fs, data))
        if wrong or not checksums:
            return [f"{data}/{msg}" for msg in wrong]
        token = (type(self.fs).__name__, data, str(manifest.digest))
        if cached and token in _VERIFIED:
            return []
        wrong = integrity.checksum_problems(self.fs, data, manifest.content)
        if not wrong:
            with _VERIFIED_LOCK:
                _VERIFIED.add(token)
        return [f"{data}/{msg}" for msg in wrong]

    def _valid(self, path: str) -> bool:
        """Committed, intact (sizes; checksums once per process) and not stale."""
        return not self._problems(path, self.checksums)

    def _input_digests(self, inputs: Mapping[str, str]) -> dict[str, dict[str, str]]:
        """key -> {"stage", "digest"} of each input that is an artifact under this root (the
        other inputs, e.g. model keys, have no artifact)."""
        found: dict[str, dict[str, str]] = {}
        for key in inputs.values():
            if not KEY.match(str(key)):
                continue
            for stage in STAGE_NAMES:
                manifest = self._read_manifest(f"{self.root}/{stage}/{key}", missing_ok=True,
                                               corrupt_ok=True)
                if manifest is not None and manifest.digest is not None:
                    found[str(key)] = {"stage": stage, "digest": manifest.digest}
                    break
        return found

    def _open_path(self, path: str) -> Artifact:
        """The artifact at ``path`` after checking that its files have the listed sizes."""
        manifest = self._read_manifest(path)
        assert manifest is not None
        art = Artifact(self, path, manifest)
        if manifest.format < FORMAT_VERSION:
            raise CorruptArtifact(f"{path}/{MANIFEST} has format {manifest.format}, written by "
                                  "an older linkstyle without file checksums; rerun to rebuild "
                                  "it")
        if manifest.data_dir is not None:
            art._check_sizes("")
            return art
        for shard_id in manifest.shards or []:
            shard = self._read_manifest(f"{path}/shards/{shard_id}", missing_ok=True)
            if shard is None or shard.digest != manifest.shard_digests.get(shard_id):
                raise CorruptArtifact(
                    f"shard {shard_id} of {manifest.stage}/{manifest.key} is missing or was "
                    f"rewritten after the artifact was finalised ({path}/shards/{shard_id}); "
                    "rerun to rebuild it"
                )
        return art

    # -- public API ------------------------------------------------------------------------
    def exists(self, stage: str, key: str) -> bool:
        """True when a committed, intact, up-to-date artifact exists (the source of truth for
        caching): damaged files or a changed input make it False, so a run rebuilds it."""
        return self._valid(self.artifact_path(stage, key))

    def shard_exists(self, stage: str, key: str, shard_id: str) -> bool:
        """True when that shard of a sharded artifact is committed, intact and up to date."""
        check_name("shard", shard_id)
        return self._valid(f"{self.artifact_path(stage, key)}/shards/{shard_id}")

    def verify(self, stage: str, key: str) -> list[Problem]:
        """Every problem of one artifact, reading every file to compare checksums (no cache);
        ``[]`` when it is intact and up to date."""
        return self._problems(self.artifact_path(stage, key), checksums=True, cached=False)

    def open(self, stage: str, key: str) -> Artifact:
        """The committed artifact; ``ArtifactNotFound`` if there is none, ``CorruptArtifact``
        if its files are not those its manifest lists."""
        path = self.artifact_path(stage, key)
        if self._read_manifest(path, missing_ok=True) is None:
            raise ArtifactNotFound(
                f"no committed {stage!r} artifact with key {key} under {self.root_uri}; "
                "run the stage that produces it (e.g. `linkstyle run`)"
            )
        return self._open_path(path)

    @contextmanager
    def _write(self, path: str, manifest: Manifest) -> Iterator[ArtifactWriter]:
        writer = ArtifactWriter(self, path, manifest)
        try:
            yield writer
        except BaseException:  # propagates: no manifest, nothing committed
            writer._abort()
            raise
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
