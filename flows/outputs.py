"""Where commands write for the user (``--out``): checked before any work, and never over a
person's files.

- A folder output (``report --out DIR``) is written only into a folder the command creates,
  or one it marked as its own before (``OWNER_FILE`` inside); an empty folder is taken and
  marked. A new folder is written beside its place and renamed into it, so a failed command
  leaves no half folder.
- A file output (``unit --out FILE.png``) replaces only a file the command wrote before (a PNG
  carrying ``PNG_KEY``); it is written to a temporary name and renamed.
- Neither ever goes into an artifact root (a folder holding ``storage.ROOT_MARKER``, or any
  folder below one): the root holds only what the store can prove is its own.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from storage import ROOT_MARKER

OWNER_FILE = ".linkstyle-output.json"
PNG_KEY = "linkstyle"  # the tEXt key of the PNG files linkstyle writes for a user
T = TypeVar("T")


class OutputError(ValueError):
    """An --out that would overwrite a person's files, or cannot be written; the message
    names the path and the fix."""


def artifact_root_of(path: Path) -> Path | None:
    """The artifact root that holds ``path`` (itself or one of its parents), if any."""
    for folder in (path, *path.parents):
        if (folder / ROOT_MARKER).is_file():
            return folder
    return None


def check_writable(path: str | Path, flag: str = "--out") -> None:
    """``OutputError`` unless the folder ``path`` (or, while it does not exist, the nearest
    existing folder above it) can be written."""
    path = Path(path).absolute()
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{flag} {path}: cannot write in it (permission denied); choose "
                              f"another {flag}")
        return
    _writable_ancestor(path, flag)


def _writable_ancestor(path: Path, flag: str) -> None:
    """``OutputError`` unless the nearest existing folder above ``path`` can be written."""
    ancestor = next(p for p in path.parents if p.exists())
    if not ancestor.is_dir():
        raise OutputError(f"{flag} {path}: {ancestor} is a file, not a folder; choose another "
                          f"{flag}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: cannot write in {ancestor} (permission denied); "
                          f"choose another {flag}")


def check_outside_roots(path: str | Path, flag: str = "--out",
                        roots: tuple[str, ...] = ()) -> None:
    """``OutputError`` if ``path`` lies in an artifact root: one that carries the root marker,
    or one of ``roots`` (a config's root, before a first run has marked it)."""
    path = Path(path).absolute().resolve()
    root = artifact_root_of(path)
    for configured in roots:
        if "://" not in configured or configured.startswith("file://"):
            folder = Path(configured.removeprefix("file://")).absolute().resolve()
            if path == folder or folder in path.parents:
                root = folder
    if root is not None:
        raise OutputError(f"{flag} {path} is inside the artifact root {root}, which holds only "
                          f"what linkstyle's store can prove is its own; choose a {flag} "
                          "outside it")


def check_out_folder(path: str | Path, kind: str, flag: str = "--out",
                     roots: tuple[str, ...] = ()) -> Path:
    """The absolute folder a command of ``kind`` (e.g. "report") may write, checked before any
    work: not inside an artifact root (a marked one, or one of ``roots``), not a file, and new,
    empty or marked as this kind's own; its nearest existing parent writable."""
    out = Path(path).absolute()
    check_outside_roots(out, flag, roots)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputError(f"{flag} {out} is {'a link' if out.is_symlink() else 'a file'}; "
                          f"give {flag} a new folder")
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        if entries and _owner(out) != kind:
            raise OutputError(
                f"{flag} {out} already holds {len(entries)} entries that linkstyle {kind} did "
                f"not write ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}); "
                "choose a new folder, or empty this one")
    check_writable(out, flag)
    return out


def _owner(folder: Path) -> str | None:
    try:
        return json.loads((folder / OWNER_FILE).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def write_folder(out: Path, kind: str, build: Callable[[Path], T]) -> T:
    """``build(folder)`` into the checked folder ``out`` (``check_out_folder``), marked as
    ``kind``'s own. A new folder is built beside its place and renamed into it when complete;
    an existing one (empty, or this kind's own) is written in place, file by file."""
    mark = json.dumps({"kind": kind, "note": f"written by linkstyle {kind}; it rewrites the "
                       "files it wrote here and touches nothing else"})
    if out.is_dir():
        (out / OWNER_FILE).write_text(mark)
        return build(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        (staging / OWNER_FILE).write_text(mark)
        result = build(staging)
        os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def check_out_file(path: str | Path, suffix: str, flag: str = "--out",
                   roots: tuple[str, ...] = ()) -> Path:
    """The absolute file a command may write, checked before any work: ending in ``suffix``,
    outside artifact roots, in a writable folder, and new or a PNG this project wrote."""
    out = Path(path).absolute()
    if out.suffix.lower() != suffix:
        raise OutputError(f"{flag} {out} must end in {suffix}")
    check_outside_roots(out, flag, roots)
    if out.is_symlink() or out.is_dir():
        raise OutputError(f"{flag} {out} is {'a link' if out.is_symlink() else 'a folder'}; "
                          f"give {flag} a new file name")
    if out.exists() and not _our_png(out):
        raise OutputError(f"{flag} {out} exists and linkstyle did not write it; choose another "
                          f"{flag}, or remove that file")
    _writable_ancestor(out, flag)
    if not out.parent.exists():
        raise OutputError(f"{flag} {out}: the folder {out.parent} does not exist; create it or "
                          f"choose another {flag}")
    return out


def check_out_weights(path: str | Path, flag: str = "--out") -> Path:
    """The absolute weight file a training command may write (replacing an earlier one is its
    purpose), checked before the training: not a folder or link, not inside an artifact root,
    in a folder that exists or can be made, and writable."""
    out = Path(path).absolute()
    check_outside_roots(out, flag)
    if out.is_symlink() or out.is_dir():
        raise OutputError(f"{flag} {out} is {'a link' if out.is_symlink() else 'a folder'}; "
                          f"give {flag} a file name (e.g. {out / 'classifier.pt'})")
    if out.exists() and not os.access(out, os.W_OK):
        raise OutputError(f"{flag} {out} is read-only; choose another {flag}")
    _writable_ancestor(out, flag)
    return out


def _our_png(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.format == "PNG" and PNG_KEY in getattr(img, "text", {})
    except (OSError, ValueError):
        return False


def tag_png(data: bytes, value: str) -> bytes:
    """PNG bytes with a ``PNG_KEY`` text chunk (after the header chunk) saying what wrote them:
    how ``check_out_file`` knows the file is one linkstyle may replace."""
    import struct
    import zlib

    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    body = b"tEXt" + PNG_KEY.encode() + b"\0" + value.encode("latin-1", "replace")
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    end = 8 + 8 + struct.unpack(">I", data[8:12])[0] + 4
    return data[:end] + chunk + data[end:]


def write_file(out: Path, data: bytes) -> None:
    """Write ``data`` to the checked file ``out`` (``check_out_file``) through a temporary
    name in the same folder, so a reader never sees half a file."""
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
