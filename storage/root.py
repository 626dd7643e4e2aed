"""The on-disk format of one artifact root: where an artifact lives, what makes it committed.

A ``Root`` knows the layout (``storage.layout``), reads manifests and shard plans
(``storage.manifest``), checks files against them (``storage.integrity``) and refuses links
(``storage.links``). It is the one place that says when an artifact exists: its manifest is
readable and belongs where it lies, its data folder holds exactly the files the manifest lists
with their sizes and checksums, and every input it was built from still has the content
digest it had then (else it is stale). Reading (``storage.artifact``), writing
(``storage.writer``) and listing (``storage.listing``) build on it; ``storage.store`` is the
façade over all of them. Nothing here imports those modules.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping

from fsspec import AbstractFileSystem

from storage import integrity
from storage.errors import ArtifactNotFound, CorruptArtifact, NotAnArtifactRoot
from storage.layout import (
    KEY,
    MANIFEST,
    ROOT_FORMAT,
    ROOT_MARKER,
    SHARD_PLAN,
    SHARDS,
    STAGE_NAMES,
    check_key,
    check_stage,
)
from storage.links import link_below_root, link_message
from storage.manifest import FORMAT_VERSION, Manifest, atomic_write_text, read_text, utcnow

#: (what is wrong: "missing", "corrupt" or "stale", a message naming the file or input)
Problem = tuple[str, str]

# Data folders whose checksums matched in this process: (filesystem, folder, digest). A data
# folder is never rewritten in place (a rebuild writes a new data-<txid>), so one check per
# process suffices; sizes are still checked on every call.
_VERIFIED: set[tuple[str, str, str]] = set()
_VERIFIED_LOCK = threading.Lock()


class Root:
    """The artifact root ``root`` (a path on ``fs``; ``root_uri`` as the user gave it).

    checksums: whether ``valid`` reads every file once per process to compare checksums (True)
    or only compares sizes.
    """

    def __init__(self, fs: AbstractFileSystem, root: str, root_uri: str,
                 checksums: bool = True) -> None:
        self.fs = fs
        self.root = root
        self.root_uri = root_uri
        self.checksums = checksums
        self.marked = False

    def artifact_path(self, stage: str, key: str) -> str:
        check_stage(stage)
        check_key(key)
        return f"{self.root}/{stage}/{key}"

    @property
    def marker_path(self) -> str:
        return f"{self.root}/{ROOT_MARKER}"

    def ensure_marker(self) -> None:
        """Mark the root as an artifact root (once; before the first write under it)."""
        if self.marked:
            return
        if not self.fs.exists(self.marker_path):
            self.fs.makedirs(self.root, exist_ok=True)
            atomic_write_text(self.fs, self.marker_path, json.dumps(
                {"linkstyle_root": ROOT_FORMAT, "created": utcnow(),
                 "note": "an artifact root of linkstyle; `linkstyle clean` works only in "
                         "folders that carry this file"}, indent=2))
        self.marked = True

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

    def identity(self, path: str) -> tuple[str, str, str | None]:
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
        manifest.check_identity(*self.identity(path), where=f"{path}/{name}")
        return manifest

    def read_manifest(
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

    def read_plan(self, path: str) -> list[str] | None:
        try:
            plan = self._read_json(path, SHARD_PLAN)
            return list(plan.shards or []) if plan is not None else None
        except CorruptArtifact:
            return None

    # -- integrity -------------------------------------------------------------------------
    def problems(self, path: str, checksums: bool, cached: bool = True) -> list[Problem]:
        """What keeps the artifact (or shard) at ``path`` from counting as committed: nothing
        (``[]``), ("missing", ...), ("corrupt", file and what is wrong) or ("stale", which
        input changed). A folder reached through a symbolic link is corrupt
        (``storage.links``)."""
        link = self.linked(path)
        if link is not None:
            return [("corrupt", link_message(link))]
        try:
            manifest = self.read_manifest(path, missing_ok=True)
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
                found = self.problems(shard_path, checksums, cached)
                if found:
                    out += [("corrupt" if kind == "missing" else kind, msg)
                            for kind, msg in found]
                    continue
                shard = self.read_manifest(shard_path, missing_ok=True, corrupt_ok=True)
                if shard is None or shard.digest != manifest.shard_digests.get(shard_id):
                    out.append(("stale", f"{shard_path} was rewritten with other content after "
                                         "the artifact was finalised"))
        else:
            out += [("corrupt", msg) for msg in self._file_problems(path, manifest, checksums,
                                                                    cached)]
        for key, source in sorted(manifest.input_digests.items()):
            input_path = f"{self.root}/{source.get('stage')}/{key}"
            current = self.read_manifest(input_path, missing_ok=True, corrupt_ok=True)
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

    def valid(self, path: str) -> bool:
        """Committed, intact (sizes; checksums once per process) and not stale."""
        return not self.problems(path, self.checksums)

    def input_digests(self, inputs: Mapping[str, str]) -> dict[str, dict[str, str]]:
        """key -> {"stage", "digest"} of each input that is an artifact under this root (the
        other inputs, e.g. model keys, have no artifact)."""
        found: dict[str, dict[str, str]] = {}
        for key in inputs.values():
            if not KEY.match(str(key)):
                continue
            for stage in STAGE_NAMES:
                manifest = self.read_manifest(f"{self.root}/{stage}/{key}", missing_ok=True,
                                               corrupt_ok=True)
                if manifest is not None and manifest.digest is not None:
                    found[str(key)] = {"stage": stage, "digest": manifest.digest}
                    break
        return found
