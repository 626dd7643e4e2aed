"""Content keys: a stable hash of what a stage output depends on.

See DESIGN.md, "Artifacts and caching".

``content_key(stage, version, params, inputs)`` is the same string whenever the stage name, its
code version, its parameters and the keys of its inputs are the same, on any machine and in any
Python session, and a different string when any of them changes. Parameters are canonicalised
first, so dict order, tuple-vs-list, ``1`` vs ``1.0`` and numpy scalars do not matter.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

KEY_LENGTH = 20  # hex characters of sha256: 80 bits, ample for one artifact root


def canonical(value: Any) -> Any:
    """Return a JSON-ready value whose serialisation is the same for equal parameters.

    - dicts: keys must be strings (or ints/enums, turned into strings); sorted when dumped;
    - lists, tuples: lists; sets and frozensets: sorted lists;
    - floats: integral finite floats become ints (``1.0 == 1``), ``-0.0`` becomes ``0``,
      others keep Python's shortest round-trip ``repr``; NaN and +/-Inf become strings;
    - numpy scalars and 0-d arrays: their Python value; pydantic models: ``model_dump()``;
      dataclasses: ``asdict``; enums: their value; paths: ``str``.

    Anything else raises ``TypeError`` naming the type, so an unhashable parameter never
    silently falls back to ``repr`` (which may contain memory addresses).
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value.is_integer():
            return int(value)
        return float(value)  # json writes floats with the shortest round-trip repr
    if isinstance(value, enum.Enum):
        return canonical(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(k, enum.Enum):
                k = k.value
            if not isinstance(k, str | int) or isinstance(k, bool):
                raise TypeError(f"parameter keys must be strings or ints, got {type(k).__name__}")
            out[str(k)] = canonical(v)
        return out
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, set | frozenset):
        items = [canonical(v) for v in value]
        return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))
    if hasattr(value, "model_dump"):  # pydantic v2 models
        return canonical(value.model_dump(mode="python"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return canonical(dataclasses.asdict(value))
    # numpy scalars / 0-d arrays without importing numpy here
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return canonical(value.item())
    raise TypeError(
        f"cannot build a content key from a {type(value).__module__}.{type(value).__name__}; "
        "pass plain parameters (numbers, strings, lists, dicts) or the key of an input artifact"
    )


def canonical_json(value: Any) -> str:
    """The canonical JSON text of ``value`` (sorted keys, no whitespace)."""
    return json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_key(
    stage: str,
    version: str | int,
    params: Mapping[str, Any] | None = None,
    inputs: Mapping[str, str] | None = None,
) -> str:
    """Hash of (stage name, stage code version, canonical parameters, input keys).

    stage: the stage name, e.g. ``"paired"``; version: the stage's code version, bumped
    whenever its code changes what it writes; params: the stage's parameters; inputs: the
    content keys of the artifacts it reads, by role (``{"paired": "3f2a..."}``).
    Returns ``KEY_LENGTH`` lowercase hex characters.
    """
    if not stage or "/" in stage:
        raise ValueError(f"stage name must be a non-empty string without '/', got {stage!r}")
    payload = {
        "stage": stage,
        "version": str(version),
        "params": params or {},
        "inputs": {name: str(key) for name, key in (inputs or {}).items()},
    }
    digest = hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()
    return digest[:KEY_LENGTH]
