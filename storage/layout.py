"""Where things live under an artifact root, and which names the store can prove are its own.

One place for the names the store writes and ``clean`` may remove (DESIGN.md, "Artifacts and
caching")::

    <root>/.linkstyle-root.json                      marks a folder as an artifact root
    <root>/<stage>/<key>/manifest.json               commits the artifact (written last)
    <root>/<stage>/<key>/data-<txid>/...              arrays, tables and files of one write
    <root>/<stage>/<key>/data-<txid>/_lease.json      held by its writer until the commit
    <root>/<stage>/<key>/shards.json                 the shard plan of a sharded artifact
    <root>/<stage>/<key>/shards/<shard>/...          one shard, the same layout inside
    <root>/catalog/run-<started>-<run id>.parquet    one row per run (storage.catalog)

``stage`` is one of ``STAGE_NAMES``; ``key`` is a content key (``KEY_LENGTH`` lowercase hex,
see ``storage.keys``); ``txid`` is ``<utc yyyymmddThhmmss>-<8 hex>``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from storage.keys import KEY_LENGTH

ROOT_MARKER = ".linkstyle-root.json"
ROOT_FORMAT = 1
MANIFEST = "manifest.json"
SHARD_PLAN = "shards.json"
SHARDS = "shards"
LEASE = "_lease.json"  # a live writer's lease on its data folder (storage.lease)
STARTED = "_started.json"  # what a data folder held before leases: when its write started

#: Every stage folder the pipeline writes (the ``STAGE`` of each task module). ``clean`` and
#: ``status`` look at these folders of a root and at nothing else.
STAGE_NAMES: tuple[str, ...] = (
    "paired", "link", "ranges", "directions", "segmenter", "tune", "null", "selectivity",
    "validation", "ground_truth", "counterfactual",
)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
KEY = re.compile(rf"^[0-9a-f]{{{KEY_LENGTH}}}$")
DATA_DIR = re.compile(r"^data-(\d{8}T\d{6})-[0-9a-f]{8}$")
# what atomic_write_text leaves behind when killed between its write and its rename: inside an
# artifact or shard folder, and the root marker's
TMP = re.compile(r"^\.(manifest|shards)\.json\.[0-9a-f]{32}\.tmp$")
ROOT_TMP = re.compile(r"^\.linkstyle-root\.json\.[0-9a-f]{32}\.tmp$")
# the run catalog (storage.catalog): one file per run, written to a temporary name and renamed
CATALOG = "catalog"
CATALOG_RUN = re.compile(r"^run-[0-9T.+]+-[0-9a-f]{12}\.parquet$")
CATALOG_TMP = re.compile(r"^run-[0-9T.+]+-[0-9a-f]{12}\.parquet\.[0-9a-f]{8}\.tmp$")


def check_name(kind: str, name: str) -> str:
    """``name`` if it is a safe file or folder name for an array, table, file or shard."""
    if not NAME.match(name) or name.endswith((".zarr", ".parquet")):
        raise ValueError(
            f"{kind} name {name!r} is not allowed: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit, without a .zarr/.parquet suffix"
        )
    return name


def check_stage(stage: str) -> str:
    if stage not in STAGE_NAMES:
        raise ValueError(
            f"stage name {stage!r} is not allowed: the stages are {', '.join(STAGE_NAMES)}"
        )
    return stage


def check_key(key: str) -> str:
    if not KEY.match(key):
        raise ValueError(
            f"key {key!r} is not allowed: a content key is {KEY_LENGTH} lowercase hex "
            "characters (storage.content_key)"
        )
    return key


def txid_time(name: str) -> float | None:
    """The start time (epoch seconds) encoded in a ``data-<txid>`` folder name, or None."""
    match = DATA_DIR.match(name)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC).timestamp()


def is_owned_entry(name: str) -> bool:
    """True for the names the store itself writes inside an artifact or shard folder."""
    return (name in (MANIFEST, SHARD_PLAN, SHARDS) or DATA_DIR.match(name) is not None
            or TMP.match(name) is not None)
