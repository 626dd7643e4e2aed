"""The run catalog: one Parquet row per flow run under ``<root>/catalog/``, and the tables of a
run as file paths or DuckDB views.

Every run writes its own file (``run-<started>-<run id>.parquet``, written to a temporary name
and renamed), so concurrent runs never append to one file; the catalog is all of them. A row
holds the run id, the flow, start and end time, the status (completed or failed, with the
error), the config and its hash, the code version and the key of every stage the run used, so
a table found by its content key leads back to the runs that made or reused it.

A catalog file that cannot be read (truncated, junk, another schema) is left out with a
``StoreWarning`` naming it; ``linkstyle clean --corrupt`` removes it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
import warnings
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from storage.errors import StoreWarning
from storage.layout import CATALOG, CATALOG_RUN
from storage.store import ArtifactStore

COLUMNS = ("run_id", "flow", "status", "started", "ended", "config_hash", "config",
           "code_version", "artifact_root", "keys", "error")


def config_hash(config: dict[str, Any]) -> str:
    """A short hash of a config as resolved (every field, defaults included), except where
    its artifacts live: a root that was moved, or named by another path (relative, absolute,
    through a link), still holds the runs of the same config."""
    kept = {k: v for k, v in config.items() if k != "artifact_root"}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def code_version() -> str:
    try:
        return metadata.version("linkstyle")
    except metadata.PackageNotFoundError:
        return "unknown"


def new_run(flow: str, config: dict[str, Any], artifact_root: str) -> dict[str, Any]:
    """A catalog row for a run that starts now (status 'running' until ``record_run``)."""
    return {"run_id": uuid.uuid4().hex[:12], "flow": flow, "status": "running",
            "started": datetime.now(UTC).isoformat(timespec="milliseconds"), "ended": None,
            "config_hash": config_hash(config),
            "config": json.dumps(config, sort_keys=True, default=str),
            "code_version": code_version(), "artifact_root": artifact_root, "keys": "{}",
            "error": None}


def record_run(store: ArtifactStore, row: dict[str, Any], status: str,
               keys: dict[str, str], error: str | None = None) -> str:
    """Finish ``row`` (status, end time, stage keys) and write it as the run's catalog file;
    returns the file's path."""
    row = {**row, "status": status, "keys": json.dumps(keys, sort_keys=True), "error": error,
           "ended": datetime.now(UTC).isoformat(timespec="milliseconds")}
    table = pa.Table.from_pylist([{c: row.get(c) for c in COLUMNS}],
                                 schema=pa.schema([(c, pa.string()) for c in COLUMNS]))
    folder = f"{store.root}/{CATALOG}"
    store.fs.makedirs(folder, exist_ok=True)
    stamp = row["started"].replace(":", "").replace("-", "")
    final = f"{folder}/run-{stamp}-{row['run_id']}.parquet"
    partial = f"{final}.{uuid.uuid4().hex[:8]}.tmp"
    with store.fs.open(partial, "wb") as handle:
        pq.write_table(table, handle)
    store.fs.mv(partial, final)
    return final


def _run_files(store: ArtifactStore) -> list[str]:
    folder = f"{store.root}/{CATALOG}"
    try:
        found = store.fs.ls(folder, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(str(p) for p in found if CATALOG_RUN.match(str(p).rstrip("/").rsplit("/")[-1]))


def _read_run_file(store: ArtifactStore, path: str) -> pd.DataFrame:
    """One run's rows; ``ValueError`` (or ``OSError``) naming what is wrong if the file is not
    a catalog row."""
    with store.fs.open(path, "rb") as handle:
        frame = pq.read_table(handle).to_pandas()  # pyarrow's errors are ValueErrors
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"no column {missing[0]!r}")
    return frame[list(COLUMNS)]


def unreadable_run_files(store: ArtifactStore) -> list[str]:
    """The catalog files that cannot be read as a run's row (for ``clean --corrupt``)."""
    bad = []
    for path in _run_files(store):
        try:
            _read_run_file(store, path)
        except (ValueError, OSError):
            bad.append(path)
    return bad


def read_catalog(store: ArtifactStore) -> pd.DataFrame:
    """Every recorded run, oldest first (an empty frame with the columns when none). A file
    that cannot be read is left out with a ``StoreWarning`` that names it."""
    frames = []
    for path in _run_files(store):
        try:
            frames.append(_read_run_file(store, path))
        except (ValueError, OSError) as exc:
            warnings.warn(StoreWarning(
                f"catalog file {path} cannot be read ({exc}); its run is left out. Remove it "
                "(`linkstyle clean --corrupt` does), the run's artifacts are not affected"),
                stacklevel=2)
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    return pd.concat(frames, ignore_index=True).sort_values("started", ignore_index=True)


def resolve_run(store: ArtifactStore, run: str, config: dict[str, Any] | None = None,
                needs: str | None = None) -> pd.Series:
    """The catalog row of ``run``: a run id, or ``latest`` (the newest completed run of
    ``config`` when given, else of any config; only runs that made or reused stage ``needs``
    when given)."""
    catalog = read_catalog(store)
    if run != "latest":
        found = catalog[catalog["run_id"] == run]
        if found.empty:
            known = ", ".join(catalog["run_id"].tail(5)) or "none yet"
            raise LookupError(f"no run {run!r} in the catalog under {store.root_uri} (the "
                              f"newest: {known}); `linkstyle runs` lists them")
        return found.iloc[-1]
    done = catalog[catalog["status"] == "completed"]
    if config is not None:  # hashed afresh: rows written when the hash held the root match too
        wanted = config_hash(config)
        # masks as Series: an empty list would select no columns of an empty catalog
        done = done[pd.Series([_row_hash(text) == wanted for text in done["config"]],
                              index=done.index, dtype=bool)]
    if needs is not None:
        done = done[pd.Series([needs in json.loads(k) for k in done["keys"]],
                              index=done.index, dtype=bool)]
    if done.empty:
        which = "of this config " if config is not None else ""
        raise LookupError(f"no completed run {which}in the catalog under {store.root_uri}; "
                          "run `linkstyle run` first")
    return done.iloc[-1]


def _row_hash(config_text: Any) -> str | None:
    try:
        return config_hash(json.loads(config_text))
    except (TypeError, ValueError, AttributeError):
        return None


def stage_of(name: str) -> str:
    """The stage of a run's key name: ``train`` and ``test`` are the two ``paired`` artifacts,
    every other name is its stage."""
    return "paired" if name in ("train", "test") else name


def run_tables(store: ArtifactStore, keys: dict[str, str]) -> pd.DataFrame:
    """Every table of a run's committed artifacts: one row per (stage, key, table) with the
    Parquet files that hold it (one per shard, in shard order). The split of a ``paired``
    artifact and the link type are in ``view``, the name a DuckDB view gets. An artifact of
    the run that is gone, damaged or stale is left out with a ``StoreWarning`` naming it."""
    rows = []
    for name, key in keys.items():
        stage = stage_of(name)
        if not store.exists(stage, key):
            problems = store.verify(stage, key)
            what = problems[0][1] if problems else "it cannot be read"
            warnings.warn(StoreWarning(
                f"the {name} artifact of this run ({store.artifact_path(stage, key)}) is "
                f"{problems[0][0] if problems else 'damaged'}: {what}; its tables are left "
                "out. Rerun the analysis with the run's config (`linkstyle run`) to rebuild it"),
                stacklevel=2)
            continue
        art = store.open(stage, key)
        parts = [art.shard(s) for s in art.shards] if art.shards else [art]
        for table in art.table_names:
            files = [p._data_path(table, "parquet") for p in parts]
            view = f"{name}_{table}" if name != stage else f"{stage}_{table}"
            rows.append({"stage": stage, "key": key, "table": table, "view": view,
                         "files": [_uri(store, f) for f in files]})
    return pd.DataFrame(rows, columns=["stage", "key", "table", "view", "files"])


def _uri(store: ArtifactStore, path: str) -> str:
    protocol = store.fs.protocol
    protocol = protocol[0] if isinstance(protocol, (tuple, list)) else protocol
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def duckdb_views(tables: pd.DataFrame, run_id: str | None = None) -> str:
    """``CREATE VIEW`` statements over exactly the files of ``run_tables``; each view adds the
    artifact's ``stage_key`` (and the ``run_id``) as columns."""
    statements = []
    for row in tables.itertuples():
        files = ", ".join("'" + f.replace("'", "''") + "'" for f in row.files)
        extra = f", '{row.key}' AS stage_key" + (f", '{run_id}' AS run_id" if run_id else "")
        statements.append(f"CREATE OR REPLACE VIEW {row.view} AS SELECT *{extra} FROM "
                          f"read_parquet([{files}]);")
    return "\n".join(statements)
