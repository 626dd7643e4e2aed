"""The manifest: the one small JSON object whose presence commits an artifact.

An artifact directory may hold any number of ``data-<txid>/`` folders; only the one named by
``manifest.json`` is part of the artifact. A manifest is written last and atomically, so a
reader either sees a complete artifact or none. It lists every file of its data folder with
size and CRC-32 (``content``), a digest over that list (``digest``, the artifact's content
identity) and the digests of the input artifacts it was built from (``input_digests``).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from storage.errors import CorruptArtifact
from storage.layout import DATA_DIR, KEY, MANIFEST, NAME, SHARD_PLAN, STAGE_NAMES, STARTED

__all__ = ["FORMAT_VERSION", "MANIFEST", "SHARD_PLAN", "STARTED", "CorruptArtifact", "Manifest",
           "atomic_write_text", "new_txid", "package_versions", "read_text", "utcnow"]

FORMAT_VERSION = 2  # 2: content (file sizes and checksums), digest, input_digests

_VERSIONED_PACKAGES = (
    "linkstyle", "torch", "torchvision", "numpy", "zarr", "pyarrow", "pandas", "prefect", "fsspec",
)


def this_process() -> dict[str, Any]:
    """The host name and process id of the caller (a manifest's ``writer``)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_txid() -> str:
    """A sortable, unique name for one write attempt: ``<utc timestamp>-<random>``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages whose behaviour shapes stored results."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass
class Manifest:
    """What one committed artifact (or one committed shard) holds.

    arrays: name -> {"shape", "dtype", "chunks"}; tables: name -> {"rows", "columns"};
    data_dir: the ``data-<txid>`` folder (relative to the artifact) that holds them, or None
    for a sharded artifact's whole manifest, whose data lives in ``shards``.
    content: every file of the data folder, path relative to it -> ``[size, crc32]``.
    digest: hash over ``content`` (or, sharded, over the shards' digests in plan order): equal
    digests mean equal bytes, whichever write produced them.
    shard_digests: a sharded artifact's shard id -> that shard's digest when it was finalised.
    input_digests: input key -> ``{"stage", "digest"}`` of each input artifact at commit time.
    writer: the process that wrote it: ``host``, ``pid``, and for data (``data_dir`` set)
    ``started`` and ``committed`` (Unix times) - on a cluster, which worker wrote what, when.
    """

    stage: str
    key: str
    code_version: str
    params: dict[str, Any]
    inputs: dict[str, str]
    data_dir: str | None
    arrays: dict[str, dict[str, Any]] = field(default_factory=dict)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    shards: list[str] | None = None
    shard: str | None = None
    content: dict[str, list[int]] = field(default_factory=dict)
    digest: str | None = None
    shard_digests: dict[str, str] = field(default_factory=dict)
    input_digests: dict[str, dict[str, str]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=package_versions)
    created: str = field(default_factory=utcnow)
    writer: dict[str, Any] = field(default_factory=this_process)
    format: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True, default=str)

    def check_identity(self, stage: str, key: str, shard: str | None, where: str) -> None:
        """``CorruptArtifact`` unless this manifest belongs where it was found: the folder of
        ``stage``/``key`` (and ``shard``), with a ``data_dir`` that is a ``data-<txid>`` folder
        directly inside that folder (or none, for a sharded artifact's whole manifest, whose
        shards are plain names), and inputs that name artifacts of known stages.

        A manifest is never trusted further than this: a copied, moved or swapped folder, or
        a manifest pointing elsewhere (``../../x``, another artifact's data), would otherwise
        be read as this artifact's data, or its "old" data folder deleted after a rebuild."""
        def refuse(problem: str) -> None:
            raise CorruptArtifact(
                f"manifest {where} {problem}; it is not trusted (a copied, moved or edited "
                "folder?): rerun to rebuild the artifact, `linkstyle clean --corrupt` removes "
                "the damaged folder")

        found = (self.stage, self.key, self.shard)
        if found != (stage, key, shard):
            def name(s: object, k: object, sh: object) -> str:
                return f"{s}/{k}" + (f" shard {sh}" if sh is not None else "")
            refuse(f"belongs to {name(*found)}, but sits in the folder of "
                   f"{name(stage, key, shard)}")
        if self.data_dir is None:
            shards = self.shards
            if shard is not None or not isinstance(shards, list) or not shards:
                refuse("names no data folder and no shards")
            elif any(not isinstance(s, str) or not NAME.match(s) for s in shards) \
                    or len(set(shards)) != len(shards):
                refuse(f"lists shards that are not plain, unique folder names: {shards!r}")
        elif not isinstance(self.data_dir, str) or not DATA_DIR.match(self.data_dir):
            refuse(f"names the data folder {self.data_dir!r}, which is not a data-<txid> "
                   "folder inside its own artifact folder")
        sources = self.input_digests if isinstance(self.input_digests, dict) else None
        if sources is None or any(
                not isinstance(k, str) or not KEY.match(k) or not isinstance(v, dict)
                or v.get("stage") not in STAGE_NAMES for k, v in sources.items()):
            refuse("lists inputs that are not artifacts of known stages")

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise TypeError(f"expected a JSON object, got {type(raw).__name__}")
            return cls(**raw)
        except (ValueError, TypeError) as exc:  # ValueError covers JSONDecodeError
            raise CorruptArtifact(
                f"manifest {where} cannot be read ({exc}); remove the artifact with "
                "`linkstyle clean --corrupt` or delete that folder, then rerun to rebuild it"
            ) from exc


def atomic_write_text(fs: AbstractFileSystem, path: str, text: str | bytes) -> None:
    """Write ``text`` (or bytes) so that readers see either the old file or the whole new one.

    Local files: write a temporary sibling, then ``os.replace`` (atomic on POSIX).
    Object stores (s3, gcs) and memory: a single PUT of a small object is already atomic.
    """
    data = text.encode("utf-8") if isinstance(text, str) else text
    if isinstance(fs, LocalFileSystem):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def read_text(fs: AbstractFileSystem, path: str) -> str | None:
    """The file's text, or None if it does not exist; ``CorruptArtifact`` if it is not UTF-8
    (or is a folder)."""
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        return None
    except (IsADirectoryError, NotADirectoryError) as exc:
        raise CorruptArtifact(f"{path} cannot be read ({exc})") from exc
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptArtifact(
            f"{path} cannot be read (not UTF-8 text: {exc.reason} at byte {exc.start}); remove "
            "the artifact with `linkstyle clean --corrupt` or delete that folder, then rerun"
        ) from exc
