"""What an analysis costs as the number of units grows: stages 1-4, validate and the report.

    python benchmarks/scale.py [--units 192,512,1024,2048] [--config configs/toy-2048.yaml]
                               [--root DIR] [--plot FILE.png] [--nulls K] [--json] [--tiny]

One artifact root for all sizes. A warm-up analysis of a few units (at most half the smallest
size) first computes everything that does not depend on how many units are analysed (paired
data, link, segmenter, null directions, tuning ranges and directions, the classifier's ground
truth); then each size runs
the same config with ``tuning.units: 0-(N-1)`` in a fresh process of its own (so that its
peak memory is its own), with its own temporary Prefect server:

- ``validate_flow`` (stages 1-4 and validate; the fixed stages are cache hits), per stage the
  wall time summed over its Prefect task runs (``stages_s``), their count (``task_runs``) and
  the Prefect log lines of the run (``log_lines``); tuned images per second (``tune_img_s``);
- ``linkstyle report`` (every unit gets a page), its wall time (``report_s``) and what it wrote;
- peak resident memory of that process (``peak_rss_mb``; ``peak_rss_mb_analysis`` before the
  report);
- bytes and files written per unit by the stages that grow with the units (tune,
  selectivity, validation) and by the report;
- the three DuckDB queries of docs/tables.md on the run's views (``duckdb_s``; None without
  the duckdb extra) and ``linkstyle unit U`` as a user runs it, a new process (``unit_s``).

``--nulls K`` then reruns the largest size with K null directions (its tuning is a cache hit)
and reports how many of its significant units agree with the default's (``null_check``).
``--json`` prints everything as one object; otherwise a table. The warm-up's stage times are
the fixed costs (``fixed_stages_s``; the null directions are computed again for every size,
since their step sizes come from the tuned units' ranges). ``--tiny`` runs a small version (the
bundled classifier, 4 classes, few samples, 20 null directions) for the test suite.
docs/scale.md records a full run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STAGES = ("paired", "link", "ranges", "directions", "segmenter", "tune", "null", "selectivity",
          "validation")
PER_UNIT_STAGES = ("tune", "selectivity", "validation")
"""The stages whose artifacts hold one entry per analysed unit (the others are fixed costs)."""
PER_RUN_STAGES = ("null",)
"""Fixed per run, not per unit, but computed again for every set of units: the null
directions' step sizes come from the tuned units' ranges."""
WARM_UP_UNITS = 16
VALIDATION_FIGURES = ("n_units", "n_significant", "n_selective", "n_mixed",
                      "wrong_share_significant", "n_significant_not_selective",
                      "not_selective_share_significant", "power_selective",
                      "match_rate_selective", "match_rate_all")
TINY = {
    "data": {"classes": [0, 1, 2, 3], "samples_per_class": 60, "test_samples_per_class": 15},
    "tuning": {"samples_per_class": 1, "null_samples_per_class": 1, "null_directions": 20,
               "shard_size": 4},
    "segment": {"labelled_images": 8, "steps": 40},
}


def _stage_of(task_run_name: str) -> str:
    """The stage of a Prefect task run, by its run name (``tune-units-0000-0063`` -> tune)."""
    for stage in STAGES:
        if task_run_name == stage or task_run_name.startswith(stage + "-"):
            return stage
    return task_run_name


def _read_all(read: Any) -> list[Any]:
    out, offset = [], 0
    while True:
        page = read(limit=200, offset=offset)
        out.extend(page)
        if len(page) < 200:
            return out
        offset += len(page)


def _folder_size(folder: Path) -> tuple[int, int]:
    """(bytes, files) under a folder: an artifact with its shards, or a report."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def worker(config_file: Path, units: int, out_file: Path, report: bool) -> None:
    """One size, in this process: the analysis, the report, the queries; figures to out_file."""
    import yaml
    from prefect.client.orchestration import get_client

    from flows.analysis import validate_flow
    from flows.cli import main
    from flows.server import temporary_server

    config = yaml.safe_load(config_file.read_text())
    result: dict[str, Any] = {"units": units}
    t0 = time.perf_counter()
    with temporary_server():
        reports = validate_flow(config)
        result["analysis_s"] = time.perf_counter() - t0
        with get_client(sync_client=True) as client:
            runs = _read_all(client.read_task_runs)
            result["task_runs"] = len(runs)
            result["log_lines"] = len(_read_all(client.read_logs))
    stages: dict[str, float] = {}
    for run in runs:
        if run.start_time is not None and run.end_time is not None:
            stage = _stage_of(run.name)
            stages[stage] = stages.get(stage, 0.0) + (run.end_time - run.start_time
                                                      ).total_seconds()
    result["stages_s"] = stages
    result["peak_rss_mb_analysis"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    keys = reports["validate"].keys if "validate" in reports else {}
    keys = {**reports["score"].keys, **reports["tune"].keys, **keys}
    root = Path(config["artifact_root"])
    from storage import ArtifactStore

    tuned = ArtifactStore(str(root)).open("tune", keys["tune"])
    images = units * len(tuned.load_common("sample_index")) * int(tuned.manifest.params["steps"])
    result["tune_images"] = images  # the tuning trajectories (not the calibration renders)
    if stages.get("tune"):
        result["tune_img_s"] = images / stages["tune"]
    per_unit = {stage: _folder_size(root / stage / keys[stage]) for stage in PER_UNIT_STAGES
                if stage in keys}
    result["bytes_per_unit"] = {s: b / units for s, (b, _) in per_unit.items()}
    result["files_per_unit"] = {s: f / units for s, (_, f) in per_unit.items()}
    if report:
        out = root.parent / f"report-{units}"
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["report", "--config", str(config_file), "--out", str(out)]) == 0
        result["report_s"] = time.perf_counter() - t0
        size, files = _folder_size(out)
        result["bytes_per_unit"]["report"] = size / units
        result["files_per_unit"]["report"] = files / units
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["duckdb_s"] = _duckdb_queries(config_file)
    summary = reports["score"].extra["units"]
    result["significant"] = int(summary["significant"].sum())
    result["significant_units"] = [int(u) for u in summary.loc[summary["significant"], "unit"]]
    if "validate" in reports:  # the toy world: the statistics against the ground truth
        metrics = reports["validate"].extra["metrics"]
        result["validation"] = {k: metrics[k] for k in VALIDATION_FIGURES if k in metrics}
    out_file.write_text(json.dumps(result))


def _duckdb_queries(config_file: Path) -> float | None:
    """Seconds to run docs/tables.md's three queries on the run's DuckDB views (None without
    duckdb)."""
    try:
        import duckdb
    except ImportError:
        return None
    from flows.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["tables", "--config", str(config_file), "--format", "sql"]) == 0
    con = duckdb.connect()
    con.execute(buffer.getvalue())
    queries = re.findall(r"```sql\n(.*?)```", (REPO / "docs" / "tables.md").read_text(),
                         flags=re.S)
    t0 = time.perf_counter()
    for query in queries:
        con.sql(query).df()
    return time.perf_counter() - t0


def _environment(home: Path) -> dict[str, str]:
    return os.environ | {
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1", "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "results"),
        "TQDM_DISABLE": "1",
    }


def run_size(config: dict[str, Any], units: int, work: Path, report: bool = True,
             tag: str = "") -> dict[str, Any]:
    """One size in a fresh process (its own Prefect home and temporary server)."""
    import yaml

    config_file = work / f"config-{units}{tag}.yaml"
    tuning = {**config.get("tuning", {}), "units": f"0-{units - 1}"}
    config_file.write_text(yaml.safe_dump({**config, "tuning": tuning}))
    out_file = work / f"result-{units}{tag}.json"
    home = Path(tempfile.mkdtemp(prefix="prefect-", dir=work))
    done = subprocess.run(
        [sys.executable, __file__, "--worker", str(units), "--config-file", str(config_file),
         "--out-file", str(out_file), *([] if report else ["--no-report"])],
        env=_environment(home), cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{units} units failed (exit {done.returncode}): "
                           f"{done.stderr[-3000:]}")
    result = json.loads(out_file.read_text())
    if report:
        t0 = time.perf_counter()
        unit = subprocess.run(
            [sys.executable, "-m", "flows.cli", "unit", str(units - 1), "--config",
             str(config_file), "--out", str(work / f"unit-{units}.png")],
            env=_environment(home), cwd=REPO, capture_output=True, text=True)
        result["unit_s"] = time.perf_counter() - t0
        if unit.returncode != 0:
            raise RuntimeError(f"linkstyle unit failed: {unit.stderr[-2000:]}")
    return result


def per_unit_ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per smaller size and stage that grows with the units (and the report): the time per
    unit at the largest size over the time per unit at that size (1: linear cost)."""
    large = results[-1]
    out: dict[str, dict[str, float]] = {}
    for small in results[:-1]:
        times_small = {**small["stages_s"], "report": small.get("report_s")}
        times_large = {**large["stages_s"], "report": large.get("report_s")}
        out[str(small["units"])] = {
            stage: (times_large[stage] / large["units"]) / (times_small[stage] / small["units"])
            for stage in (*PER_UNIT_STAGES, "report")
            if times_small.get(stage) and times_large.get(stage)}
    return out


def plot(results: list[dict[str, Any]], fixed: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = [r["units"] for r in results]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = {s: [r["stages_s"].get(s, 0.0) for r in results]
              for s in (*PER_UNIT_STAGES, *PER_RUN_STAGES)}
    series["report"] = [r.get("report_s", 0.0) for r in results]
    for name, values in series.items():
        ax.plot(units, values, marker="o", label=name)
    total_fixed = sum(fixed.values())
    ax.axhline(total_fixed, color="grey", linestyle="--",
               label=f"fixed stages, once ({total_fixed:.0f} s)")
    ax.set_xlabel("units analysed")
    ax.set_ylabel("wall time (s)")
    ax.set_xticks(units)
    ax.set_title("Time per stage against units (2 CPU cores)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", default="192,512,1024,2048")
    parser.add_argument("--config", default=str(REPO / "configs" / "toy-2048.yaml"))
    parser.add_argument("--root", help="working folder (default: a temporary one, removed)")
    parser.add_argument("--plot", help="write the time-per-stage plot here (PNG)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--nulls", type=int, help="then rerun the largest size with this many "
                        "null directions and compare its significant units with the default's")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--config-file", help=argparse.SUPPRESS)
    parser.add_argument("--out-file", help=argparse.SUPPRESS)
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        from flows.startup import STARTUP_TIMEOUT_S, STARTUP_TIMEOUT_VAR

        # the console command's start-up timeout for Prefect's server, on a busy machine too
        os.environ.setdefault(STARTUP_TIMEOUT_VAR, str(STARTUP_TIMEOUT_S))
        worker(Path(args.config_file), args.worker, Path(args.out_file), not args.no_report)
        return

    import yaml

    sizes = sorted({int(u) for u in args.units.split(",")})
    config = {} if args.tiny else (yaml.safe_load(Path(args.config).read_text()) or {})
    if args.tiny:
        config.update(TINY)
    with contextlib.ExitStack() as stack:
        work = Path(args.root) if args.root else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="linkstyle-scale-")))
        work.mkdir(parents=True, exist_ok=True)
        config["artifact_root"] = str(work / "artifacts")
        # fewer units than the smallest size: its tuning is never a cache hit of a size's
        warm = run_size(config, max(1, min(WARM_UP_UNITS, sizes[0] // 2)), work, report=False)
        fixed = {s: t for s, t in warm["stages_s"].items()
                 if s not in (*PER_UNIT_STAGES, *PER_RUN_STAGES)}
        results = []
        for n in sizes:
            results.append(run_size(config, n, work))
            print(f"{n} units done", file=sys.stderr, flush=True)
        if args.nulls:  # the largest size again, its tuning a cache hit, with more nulls
            more = {**config, "tuning": {**config.get("tuning", {}),
                                         "null_directions": args.nulls}}
            check = run_size(more, sizes[-1], work, report=False, tag=f"-nulls{args.nulls}")
            a, b = set(results[-1]["significant_units"]), set(check["significant_units"])
            null_check = {"null_directions": args.nulls, "significant": len(b),
                          "agreement": len(a & b) / max(len(a | b), 1),
                          "only_default": len(a - b), "only_more": len(b - a),
                          "null_s": check["stages_s"].get("null"),
                          "validation": check.get("validation")}
        out = {"fixed_stages_s": fixed, "sizes": results,
               "time_per_unit_ratio": per_unit_ratios(results),
               "peak_rss_ratio_largest_smallest":
                   results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"]}
        if args.nulls:
            out["null_check"] = null_check
        if args.plot:
            plot(results, fixed, Path(args.plot))
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print("fixed stages (once): " + ", ".join(f"{s} {t:.1f} s" for s, t in fixed.items()))
    head = ["units", *PER_UNIT_STAGES, "report", "img/s", "peak MB", "task runs", "log lines",
            "bytes/unit", "files/unit", "duckdb s", "unit s"]
    print(" | ".join(head))
    for r in results:
        print(" | ".join(str(x) for x in [
            r["units"], *(f"{r['stages_s'].get(s, 0):.1f}" for s in PER_UNIT_STAGES),
            f"{r.get('report_s', 0):.1f}", f"{r.get('tune_img_s', 0):.1f}",
            f"{r['peak_rss_mb']:.0f}", r["task_runs"], r["log_lines"],
            f"{sum(r['bytes_per_unit'].values()):.0f}", f"{sum(r['files_per_unit'].values()):.1f}",
            f"{r['duckdb_s']:.3f}" if r["duckdb_s"] is not None else "-",
            f"{r.get('unit_s', 0):.1f}"]))
    if "null_check" in out:
        c = out["null_check"]
        print(f"with {c['null_directions']} null directions: {c['significant']} significant, "
              f"agreement with the default {c['agreement']:.3f} ({c['only_default']} only with "
              f"the default, {c['only_more']} only with more)")
    for n, ratios in out["time_per_unit_ratio"].items():
        print(f"time per unit at {sizes[-1]} units over that at {n}: " + ", ".join(
            f"{s} {v:.2f}" for s, v in ratios.items()))


if __name__ == "__main__":
    main()
