"""Looking at what is in an artifact root: ``status``, ``runs``, ``tables``, ``report`` and
``unit`` (a run is found through the catalog, ``flows.results``)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from flows.cli.common import (
    UsageError,
    add_command,
    config_from_args,
    human_size,
    store_for,
    with_root,
)
from flows.results import RunNotFound, run_keys
from linkstyle_core.config import AnalysisConfig
from storage import STAGE_NAMES, ArtifactStore


def cmd_status(args: argparse.Namespace) -> int:
    if args.stage is not None and args.stage not in STAGE_NAMES:
        raise UsageError(f"--stage {args.stage!r} is not a stage; the stages are "
                         f"{', '.join(STAGE_NAMES)}")
    store = store_for(args)
    infos = store.list_artifacts(args.stage, verify=args.verify)
    if not infos:
        print(f"no artifacts under {store.root_uri}")
        return 0
    print(f"artifacts under {store.root_uri}")
    print(f"{'stage':<16} {'key':<22} {'status':<12} {'shards':>9} {'size':>10}  created")
    for info in infos:
        shards = f"{info.shards_done}/{info.shards_total}" if info.shards_total else "-"
        created = info.created or "-"
        print(f"{info.stage:<16} {info.key:<22} {info.status:<12} {shards:>9} "
              f"{human_size(info.size_bytes):>10}  {created}")
        if info.problem:
            print(f"  {info.status}: {info.problem}")
    damaged = [i for i in infos if i.status == "corrupt"]
    if damaged:
        print(f"{len(damaged)} corrupt artifact(s): the next run rebuilds them (and what depends "
              "on them)", file=sys.stderr)
    return 1 if args.verify and damaged else 0


def cmd_runs(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from storage.catalog import read_catalog

    catalog = read_catalog(ArtifactStore(config.artifact_root))
    if catalog.empty:
        print(f"no runs recorded under {config.artifact_root}")
        return 0
    shown = catalog[["run_id", "flow", "status", "started", "ended", "config_hash"]]
    print(shown.tail(args.last).to_string(index=False))
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    config = config_from_args(args)
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


def _write_report(args: argparse.Namespace, config: AnalysisConfig) -> dict[str, Any]:
    """Write the report of ``args.run`` into its folder (``flows.outputs``); what it wrote."""
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


def cmd_report(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    out = _write_report(args, config_from_args(args))
    print(f"report: {out['index']} ({out['unit_pages']} unit pages, {time.perf_counter() - t0:.0f}"
          f" s); units.csv: {out['units_csv']}")
    return 0


def cmd_unit(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if not 1 <= args.shown <= 64:
        raise UsageError(f"--samples must be between 1 and 64, got {args.shown}")
    from flows.outputs import check_out_file, tag_png, write_file

    out = check_out_file(args.out or f"unit-{args.unit}.png", ".png",
                         roots=(config.artifact_root,))
    from flows.results import RunNotFound, run_keys
    from linkstyle_core.figures import unit_figure
    from tasks.unit_view import VERDICT_TEXT, unit_view, weak_label_text

    # the newest run of this config in the catalog: no models to load, no stage code to import
    # (a few seconds at start-up); without one, the keys this code would compute
    try:
        _, keys = run_keys(config, "latest", needs="selectivity")
    except RunNotFound:
        from flows.stages import analysis_keys
        from tasks.context import models_for

        keys = analysis_keys(config, models_for(config))
    try:
        view = unit_view(ArtifactStore(config.artifact_root), keys, args.unit, args.shown)
    except ValueError as exc:  # a unit that was not tuned, a run without images
        raise UsageError(str(exc)) from None
    row, parts, shares = view["row"], view["part_names"], view["shares"]

    print(f"unit {args.unit}: top part {row['top_part']} (concentration "
          f"{row['concentration']:.2f}); specificity p {row['specificity_p']:.3g}, q "
          f"{row['specificity_q']:.3g}: {VERDICT_TEXT[row['verdict']]}")
    if row["weak_label"]:
        print(f"  {weak_label_text(row)}")
    print(f"  closed loop: gain {row['closed_loop_gain']:.2f} (slope of re-encoded on set value), "
          f"rank {int(row['closed_loop_rank'])} among all units' standardised changes")
    print(f"  image change first -> last step: pixels {row['pixel_change']:.3f} (mean |delta| in "
          f"[0, 1]), part labels {row['label_change']:.1%}")
    ranked = sorted(zip(shares, parts, view["highlighted"], strict=True), reverse=True)
    print("  what the unit responds to, share per part (* beyond the significance line, "
          f"{view['line']:.2f}): "
          + ", ".join(f"{p} {s:.2f}{'*' if b else ''}" for s, p, b in ranked))
    title = (f"unit {args.unit}: top part {row['top_part']}, concentration "
             f"{row['concentration']:.2f}, q {row['specificity_q']:.2g}, gain "
             f"{row['closed_loop_gain']:.2f}, pixel change {row['pixel_change']:.3f}")
    png = unit_figure(view["images"], view["parts"], view["set_value"], view["response"],
                      shares, parts, view["highlighted"], view["line"], title,
                      [f"class {c}" for c in view["sample_class"]])
    write_file(out, tag_png(png, f"linkstyle unit {args.unit}"))
    print(f"  figure: {out}")
    return 0


def register(sub: Any) -> None:
    """``unit``, ``runs``, ``tables``, ``report`` and ``status`` under the subparsers ``sub``."""
    p = add_command(sub, "unit", cmd_unit, "show what one unit does: tuning strips with "
                    "difference maps and part outlines, the closed loop, per-part change (after "
                    "`linkstyle run`)")
    with_root(p)
    p.add_argument("unit", type=int, metavar="U", help="unit index")
    p.add_argument("--out", metavar="FILE.png", help="where to write the figure "
                   "(default: unit-U.png)")
    # dest "shown": --samples of `counterfactual` is a config override, this one is not
    p.add_argument("--samples", dest="shown", type=int, default=4,
                   help="samples shown (default: 4)")

    p = add_command(sub, "runs", cmd_runs, "list the runs recorded in the artifact root's "
                    "catalog")
    with_root(p)
    p.add_argument("--last", type=int, default=20, help="show the newest N runs (default: 20)")

    p = add_command(sub, "tables", cmd_tables, "a run's tables: Parquet file paths or DuckDB "
                    "views")
    with_root(p)
    p.add_argument("--run", default="latest", metavar="ID|latest",
                   help="a run id from `linkstyle runs`, or latest (the newest completed run "
                        "of this config; default)")
    p.add_argument("--format", choices=["paths", "sql"], default="paths",
                   help="paths: one line per file (view name, path); sql: DuckDB CREATE VIEW "
                        "statements over exactly those files")

    p = add_command(sub, "report", cmd_report, "write a static HTML report of a run (opens "
                    "from disk)")
    with_root(p)
    p.add_argument("--run", default="latest", metavar="ID|latest",
                   help="a run id from `linkstyle runs`, or latest (default)")
    p.add_argument("--out", metavar="DIR", help="folder to write (default: "
                   "linkstyle-report-<run id>)")
    p.add_argument("--pages", choices=["all", "top"], default="all",
                   help="a page for every unit (default) or only for the top units per part")

    p = add_command(sub, "status", cmd_status, "list artifacts: stage, key, complete/partial, "
                    "size, created")
    with_root(p)
    p.add_argument("--stage", help="only this stage")
    p.add_argument("--verify", action="store_true",
                   help="read every file and compare its checksum with the manifest's; exit "
                        "code 1 if an artifact is corrupt")
