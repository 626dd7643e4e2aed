"""``linkstyle run``, ``validate`` and ``counterfactual``: the analysis's flows, started from
the command line, and what they print."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import pandas as pd

from flows.cli.common import (
    add_command,
    config_from_args,
    runner_spec,
    with_root,
    with_runner,
)
from flows.cli.errors import install_log_filter
from linkstyle_core.config import AnalysisConfig
from storage import ArtifactStore


def _print_link_metrics(metrics: pd.DataFrame) -> None:
    columns = ["split", "n", "r2", "mse", "rsa_class", "rsa_sample", "closed_loop_accuracy",
               "closed_loop_r_corr"]
    shown = metrics[[c for c in columns if c in metrics.columns]]
    print("link metrics (held-out = test):")
    print(shown.to_string(index=False, float_format=lambda x: f"{x:.4f}", na_rep="-"))


def _print_top_units(units: pd.DataFrame, per_part: int = 5) -> None:
    from tasks.report import ranked_units

    mark = {"significant": "", "leaning": "~", "none": "*"}
    print("top units per part (significant ones by q; then leaning ones, marked ~, by p; then "
          "the others, marked *, by concentration; unit (concentration, q)):")
    for part, group in ranked_units(units).groupby("top_part", sort=True):
        shown = ", ".join(f"{int(u)}{mark[v]} ({c:.2f}, {q:.2g})" for u, c, q, v in
                          zip(group["unit"][:per_part], group["concentration"][:per_part],
                              group["specificity_q"][:per_part], group["verdict"][:per_part],
                              strict=True))
        print(f"  {part:<10} {len(group):>4} units: {shown}")
    counts = units["verdict"].value_counts()
    print(f"  of {len(units)} units, {counts.get('significant', 0)} respond to their top part more "
          "exclusively than random read-outs of r do (specificity q < 0.05), "
          f"{counts.get('leaning', 0)} lean to it (their own p < 0.05, not significant among "
          f"all units), {counts.get('none', 0)} have no such part")
    print(f"  tuning: median closed-loop gain {units['closed_loop_gain'].median():.2f} "
          f"(1 = the re-encoded unit follows the value set), median pixel change "
          f"{units['pixel_change'].median():.3f}, part labels changed "
          f"{units['label_change'].median():.1%}")


def _print_warnings(warnings: list[str]) -> None:
    for message in warnings:
        print(f"WARNING: {message}", file=sys.stderr)


def _print_tables(config: AnalysisConfig, reports: dict) -> None:
    from storage.catalog import stage_of

    store = ArtifactStore(config.artifact_root)
    print("artifacts (Parquet tables and Zarr arrays; columns in docs/tables.md):")
    for report in reports.values():
        for name, key in report.keys.items():
            stage = stage_of(name)
            label = f"{stage} ({name})" if stage != name else stage
            print(f"  {label:<16} {store.artifact_path(stage, key)}")
    run_id = next((r.extra["run_id"] for r in reports.values() if "run_id" in r.extra), None)
    if run_id:
        print(f"run {run_id} is in the catalog: `linkstyle tables --run {run_id}` lists its "
              "tables, `linkstyle report` makes its HTML report")


def _run_flow(args: argparse.Namespace, until: str) -> tuple[AnalysisConfig, dict]:
    config = config_from_args(args)
    from flows.preflight import preflight

    spec = runner_spec(args)
    preflight(config, until)  # every check that needs no stage's result, before Prefect starts
    from flows.analysis import analysis_flow
    from flows.server import temporary_server

    install_log_filter()  # Prefect has configured its logging by now

    where = f" on {spec.kind}" + (f" at {spec.address}" if spec.address else "") \
        if spec.kind != "local" else ""
    print(f"linkstyle: {config.generator.kind} generator, {config.classifier.kind} "
          f"classifier, stages up to {until!r}, artifacts under {config.artifact_root}{where}")
    t0 = time.perf_counter()
    with temporary_server():
        reports = analysis_flow(config.model_dump(mode="json"), until=until, runner=spec.kind,
                                address=spec.address, workers=spec.workers)
    for report in reports.values():
        print(f"  {report.stage:<8} computed {report.computed:>3}  from cache {report.cached:>3}"
              f"  already stored {report.reused:>3}")
    print(f"stages done in {time.perf_counter() - t0:.1f} s")
    return config, reports


def cmd_run(args: argparse.Namespace) -> int:
    config, reports = _run_flow(args, args.until)
    if "link" in reports:
        _print_link_metrics(reports["link"].extra["metrics"])
    if "tune" in reports:
        print(f"segmenter held-out mIoU: {reports['tune'].extra['miou']:.3f}")
    if "score" in reports:
        _print_top_units(reports["score"].extra["units"])
        _print_warnings(reports["score"].extra["warnings"])
    _print_tables(config, reports)
    print("`linkstyle status` lists every artifact")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from linkstyle_core.validation import part_table_cells

    _, reports = _run_flow(args, "validate")
    m = reports["validate"].extra["metrics"]
    source = m.get("ground_truth_source", "weights")
    print("ground-truth validation (toy world, interventional ground truth "
          + ("stored with the classifier's weights" if source == "weights" else
             f"measured for this classifier, cached as ground_truth/{source}")
          + "): top part = ground-truth part for")
    print(f"  all {int(m['n_units'])} evaluated units: {m['match_rate_all']:.1%} "
          f"(chance {m['chance_all']:.1%})")
    print(f"  {int(m['n_strong'])} strongly tuned (top quarter by concentration): "
          f"{m['match_rate']:.1%} (chance {m['chance']:.1%})")
    print(f"  {int(m['n_selective'])} part-selective (ground-truth concentration >= 0.6): "
          f"{m['match_rate_selective']:.1%} (chance {m['chance_selective']:.1%})")
    print("  the verdict per part (power: part-selective units by ground truth, concentration "
          ">= 0.6, called significant with their part; wrong and mixed, concentration < 0.5 by "
          "ground truth: among the units called significant for the part):")
    table = part_table_cells(reports["validate"].extra["parts"]).to_string(index=False)
    print("\n".join("    " + line for line in table.splitlines()))
    print("  top part per part, match (chance) and AUC: " + ", ".join(
        f"{p} {m[f'match_{p}']:.0%} ({m[f'chance_{p}']:.0%}) {m[f'auc_{p}']:.2f}"
        for p in [k.removeprefix("auc_") for k in m if k.startswith("auc_")]))
    print(f"  mean AUC: {m['mean_auc']:.3f}")
    return 0


def cmd_counterfactual(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from flows.preflight import preflight

    spec = runner_spec(args)
    preflight(config, "link" if args.no_selectivity else "score", args.origin, args.target,
              counterfactual=True)
    from flows.analysis import counterfactual_flow
    from flows.server import temporary_server

    install_log_filter()  # Prefect has configured its logging by now

    t0 = time.perf_counter()
    with temporary_server():
        reports = counterfactual_flow(config.model_dump(mode="json"), origin=args.origin,
                                      target=args.target,
                                      with_selectivity=not args.no_selectivity,
                                      runner=spec.kind, address=spec.address,
                                      workers=spec.workers)
    report = reports["counterfactual"]
    summary = report.extra["summary"]
    print(f"counterfactuals ({'computed' if report.computed else 'from the store'}, "
          f"{time.perf_counter() - t0:.1f} s):")
    shown = summary[["origin", "origin_name", "target", "target_name", "n", "flip_rate",
                     "median_steps", "decision_units"]]
    print(shown.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    art = ArtifactStore(config.artifact_root).open("counterfactual", report.keys["counterfactual"])
    print(f"tables and figures: {art.path} (figures: "
          f"{', '.join(sorted(art.manifest.files))})")
    return 0


def register(sub: Any) -> None:
    """``run``, ``validate`` and ``counterfactual`` under the subparsers ``sub``."""
    p = add_command(sub, "run", cmd_run, "run the analysis (default: the bundled toy world)")
    with_root(p)
    with_runner(p)
    p.add_argument("--until", default="score", choices=["paired", "link", "tune", "score"],
                   help="last stage to run (default: score, the full analysis)")

    p = add_command(sub, "validate", cmd_validate, "toy world: compare each unit's selective "
                    "part with the renderer's ground truth")
    with_root(p)
    with_runner(p)

    p = add_command(sub, "counterfactual", cmd_counterfactual,
                    "move samples of one class across the decision boundary to another")
    with_root(p)
    with_runner(p)
    p.add_argument("--origin", type=int, help="origin class (omit both for all pairs)")
    p.add_argument("--target", type=int, help="target class")
    p.add_argument("--samples", type=int, help="samples per pair (default: from the config)")
    p.add_argument("--no-selectivity", action="store_true",
                   help="skip stages 3-4 (no overlap with part-selective units)")
