"""File sizes and checksums of an artifact's data folder: recorded at commit, checked on read.

A committed data folder must hold exactly the files its manifest lists, with the listed sizes
and CRC-32 checksums. A missing file (a deleted Zarr chunk would otherwise read back as the fill
value), an extra one, a truncated one or one with flipped bytes makes the artifact corrupt.

CRC-32 (``zlib.crc32``) was chosen for speed: 2.8 GB/s on one core of the development machine,
against 1.4 GB/s for sha256 and 0.7 GB/s for blake2b (docs/reliability.md). It detects every
burst error up to 32 bits and random damage with probability 1 - 2**-32; it is not meant to
resist deliberate tampering.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Mapping

from fsspec import AbstractFileSystem

from storage.layout import LEASE, STARTED

_BLOCK = 8 << 20


def _relative(base: str, name: str) -> str:
    return name[len(base):].lstrip("/")


def file_sizes(fs: AbstractFileSystem, data_path: str, prefix: str = "") -> dict[str, int]:
    """Relative path -> size of every file under ``data_path/prefix`` (the writer's own
    ``_lease.json``, and ``_started.json`` of older versions, excluded)."""
    base = data_path.rstrip("/")
    where = f"{base}/{prefix}" if prefix else base
    try:
        found = fs.find(where, detail=True)
    except FileNotFoundError:
        return {}
    sizes: dict[str, int] = {}
    for name, entry in found.items():
        if entry.get("type") == "directory":
            continue
        rel = _relative(base, name.rstrip("/"))
        if rel and rel not in (LEASE, STARTED):
            sizes[rel] = int(entry.get("size") or 0)
    return sizes


def crc32_of(fs: AbstractFileSystem, path: str) -> tuple[int, int]:
    """(size, CRC-32) of one file, read in 8 MiB blocks."""
    crc, size = 0, 0
    with fs.open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            crc = zlib.crc32(block, crc)
            size += len(block)
    return size, crc


def record(fs: AbstractFileSystem, data_path: str) -> dict[str, list[int]]:
    """The ``content`` entry of a manifest: relative path -> [size, crc32], sorted."""
    return {rel: list(crc32_of(fs, f"{data_path}/{rel}"))
            for rel in sorted(file_sizes(fs, data_path))}


def digest(content: Mapping[str, list[int]] | Mapping[str, str]) -> str:
    """A hash over a file list (or over shard digests): equal for equal bytes, whichever
    ``data-<txid>`` folder holds them."""
    text = json.dumps(dict(content), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def size_problems(expected: Mapping[str, list[int]], found: Mapping[str, int],
                  prefix: str = "") -> list[str]:
    """What differs between the manifest's file list (restricted to ``prefix``: a folder when
    it ends with '/', else one file) and the files found: missing, extra and wrong-size files,
    each named relative to the data folder."""
    listed = {rel: entry for rel, entry in expected.items()
              if not prefix or rel == prefix or (prefix.endswith("/") and rel.startswith(prefix))}
    problems = [f"{rel}: missing (the manifest lists {listed[rel][0]} bytes)"
                for rel in sorted(set(listed) - set(found))]
    problems += [f"{rel}: {found[rel]} bytes, the manifest lists {listed[rel][0]}"
                 for rel in sorted(set(listed) & set(found)) if found[rel] != listed[rel][0]]
    problems += [f"{rel}: a file the manifest does not list"
                 for rel in sorted(set(found) - set(listed))]
    return problems


def checksum_problems(fs: AbstractFileSystem, data_path: str,
                      expected: Mapping[str, list[int]]) -> list[str]:
    """Files whose CRC-32 (or size, read in full) differs from the manifest's."""
    problems = []
    for rel, (size, crc) in sorted(expected.items()):
        try:
            got_size, got_crc = crc32_of(fs, f"{data_path}/{rel}")
        except FileNotFoundError:
            problems.append(f"{rel}: missing")
            continue
        if (got_size, got_crc) != (size, crc):
            problems.append(f"{rel}: checksum {got_crc:08x}, the manifest lists {crc:08x}")
    return problems
