"""The run catalog's files: one Parquet file of one row per run under ``<root>/catalog/``
(``storage.catalog`` writes and reads them; ``clean --corrupt`` removes the unreadable ones).
"""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq

from storage.layout import CATALOG, CATALOG_RUN
from storage.root import Root

COLUMNS = ("run_id", "flow", "status", "started", "ended", "config_hash", "config",
           "code_version", "artifact_root", "keys", "error")


def run_files(root: Root) -> list[str]:
    folder = f"{root.root}/{CATALOG}"
    try:
        found = root.fs.ls(folder, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(str(p) for p in found if CATALOG_RUN.match(str(p).rstrip("/").rsplit("/")[-1]))


def read_run_file(root: Root, path: str) -> pd.DataFrame:
    """One run's rows; ``ValueError`` (or ``OSError``) naming what is wrong if the file is not
    a catalog row."""
    with root.fs.open(path, "rb") as handle:
        frame = pq.read_table(handle).to_pandas()  # pyarrow's errors are ValueErrors
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"no column {missing[0]!r}")
    return frame[list(COLUMNS)]


def unreadable_run_files(root: Root) -> list[str]:
    """The catalog files that cannot be read as a run's row (for ``clean --corrupt``)."""
    bad = []
    for path in run_files(root):
        try:
            read_run_file(root, path)
        except (ValueError, OSError):
            bad.append(path)
    return bad
