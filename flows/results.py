"""The commands that look at finished runs: ``runs`` (the catalog), ``tables`` (a run's Parquet
files, or DuckDB views over them) and ``report`` (the offline HTML report)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from linkstyle_core.config import AnalysisConfig
from storage import ArtifactStore


class RunNotFound(LookupError):
    """The run asked for is not in the catalog (or never finished)."""


def run_keys(config: AnalysisConfig, run: str, needs: str | None = None
             ) -> tuple[str, dict[str, str]]:
    """(run id, stage keys) of ``run`` (an id or ``latest``, the newest completed analysis of
    ``config`` that made or reused stage ``needs``) under the config's artifact root."""
    from storage.catalog import resolve_run

    store = ArtifactStore(config.artifact_root)
    latest = run == "latest"
    try:
        row = resolve_run(store, run, config.model_dump(mode="json") if latest else None,
                          needs=needs if latest else None)
    except LookupError as exc:
        raise RunNotFound(str(exc)) from None
    return str(row["run_id"]), json.loads(row["keys"])


def cmd_runs(args: argparse.Namespace, config: AnalysisConfig) -> int:
    from storage.catalog import read_catalog

    catalog = read_catalog(ArtifactStore(config.artifact_root))
    if catalog.empty:
        print(f"no runs recorded under {config.artifact_root}")
        return 0
    shown = catalog[["run_id", "flow", "status", "started", "ended", "config_hash"]]
    print(shown.tail(args.last).to_string(index=False))
    return 0


def cmd_tables(args: argparse.Namespace, config: AnalysisConfig) -> int:
    from storage.catalog import duckdb_views, run_tables

    run_id, keys = run_keys(config, args.run)
    tables = run_tables(ArtifactStore(config.artifact_root), keys)
    if args.format == "sql":
        print(f"-- run {run_id}: DuckDB views over its committed Parquet files")
        print(duckdb_views(tables, run_id))
        return 0
    for row in tables.itertuples():
        for path in row.files:
            print(f"{row.view}\t{path}")
    return 0


def cmd_report(args: argparse.Namespace, config: AnalysisConfig) -> dict[str, Any]:
    from flows.outputs import check_out_folder, write_folder
    from tasks.context import models_for
    from tasks.report import build_report

    run_id, keys = run_keys(config, args.run, needs="selectivity")
    missing = [k for k in ("tune", "null", "selectivity") if k not in keys]
    if missing:
        raise RunNotFound(f"run {run_id} did not tune and score its units (no {missing[0]} "
                          "stage); a report needs `linkstyle run`")
    store = ArtifactStore(config.artifact_root)
    out = check_out_folder(args.out or f"linkstyle-report-{run_id}", "report",
                           roots=(config.artifact_root,))
    models = models_for(config)
    if "validation" not in keys:  # validated by another run on the same selectivity
        from tasks.validate import validation_key

        candidate = validation_key(keys["selectivity"], models)
        if store.exists("validation", candidate):
            keys = {**keys, "validation": candidate}
    return write_folder(out, "report", lambda folder: {
        **build_report(store, keys, folder, class_names=models.class_names,
                       title=f"linkstyle report, run {run_id}", unit_pages=args.pages),
        # the paths where the report ends up (it is built beside them when the folder is new)
        "index": str(out / "index.html"), "units_csv": str(out / "units.csv")})
