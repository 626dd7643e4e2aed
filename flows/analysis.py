"""Prefect flows: paired data (stage 1), link (stage 2), and the full analysis; each run in the
catalog and published as Prefect artifacts. What a stage submits is in ``flows.stages``.

Every flow first runs ``flows.preflight.preflight`` (config, models, labels, artifact root,
arguments), so a mistake fails before any stage runs and before the run is cataloged.

Flows only compose tasks. Every task is keyed by its artifact's content key; the artifact
store decides what is rebuilt (see ``tasks.caching``). The task runner is the flow call's
choice (``runner``, ``address``, ``workers``; ``flows.runners``): by default one thread, since
the stages share one device; a Dask or Ray cluster runs the shards side by side, one model
task per GPU. Independent tasks are all submitted before any is waited for; when one fails,
the others still run to their end (``flows.runners.results``) before its error is raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.preflight import class_pairs, preflight
from flows.runners import RunnerSpec, checked_spec, prefect_server_for, using
from flows.server import temporary_api_url, uses_own_server
from flows.stages import StageReport, run_analysis, run_counterfactual
from linkstyle_core import stop
from linkstyle_core.config import AnalysisConfig
from storage.catalog import new_run, record_run, stage_of
from tasks.context import as_config, store_for

_RUNNER: Any = ThreadPoolTaskRunner(max_workers=1)


class _NoFalseDeadlockWarning(logging.Filter):
    """Prefect warns that a tagged task with upstream futures may dead-lock a thread pool with
    no more workers than tags (four times in every default run, for the ``gpu`` tag). The
    local runner has one worker that runs tasks in submission order, and every upstream
    future is submitted before the tasks that wait for it, so no task waits on one that
    cannot start: the warning names nothing the user could act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "may lead to dead-locks" not in record.getMessage()


logging.getLogger(_RUNNER.logger.name).addFilter(_NoFalseDeadlockWarning())


def load_flow_config(config: dict[str, Any] | AnalysisConfig | None,
                     config_path: str | None) -> AnalysisConfig:
    """A flow's config: the mapping ``config``, or the YAML file at ``config_path`` (a local
    path or any fsspec URI, e.g. s3://bucket/linkstyle.yaml), not both."""
    if config_path is None:
        return as_config(config)
    if config:
        raise ValueError("give the flow either config (a mapping) or config_path, not both")
    if "://" not in config_path or config_path.startswith("file://"):
        return AnalysisConfig.from_yaml(config_path.removeprefix("file://"))
    import tempfile

    import fsspec

    with fsspec.open(config_path, "rb") as remote, tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "config.yaml"
        local.write_bytes(remote.read())
        return AnalysisConfig.from_yaml(local)


def _cataloged(name: str, config: AnalysisConfig, body: Callable[[], dict[str, StageReport]],
               spec: RunnerSpec) -> dict[str, StageReport]:
    """Run ``body`` with the task runner of ``spec`` and record the run in the artifact root's
    catalog (``storage.catalog``): completed with the key of every stage, or failed with the
    error."""
    store = store_for(config)
    row = new_run(name, config.model_dump(mode="json"), config.artifact_root)
    # without PREFECT_API_URL this process runs a temporary server: a local cluster's workers
    # report to it too, instead of each starting one of its own
    server = None if uses_own_server() else temporary_api_url()
    stop.clear()
    try:
        # a SIGTERM or Ctrl-C ends the running task at its next batch (linkstyle_core.stop)
        with stop.on_signals(), prefect_server_for(spec, server), using(spec):
            reports = body()
    except BaseException as exc:
        try:
            record_run(store, row, "failed", {}, error=f"{type(exc).__name__}: {exc}")
        except Exception:  # a root that cannot be written: the run's own error matters more
            pass
        raise
    keys = {k: v for report in reports.values() for k, v in report.keys.items()}
    path = record_run(store, row, "completed", keys)
    for report in reports.values():
        report.extra["run_id"] = row["run_id"]
    publish(config, reports, row["run_id"], path)
    return reports


def publish(config: AnalysisConfig, reports: dict[str, StageReport], run_id: str,
            catalog_path: str) -> None:
    """What a run did, in the flow run's logs and as Prefect artifacts (visible in the UI):
    a markdown summary, the link metrics and the top units per part as tables."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    logger = get_run_logger()
    store = store_for(config)
    lines = [f"# linkstyle run {run_id}", "",
             f"Artifacts under `{config.artifact_root}`; catalog row `{catalog_path}`.", "",
             "| stage | artifact | computed | from cache | already stored | folder |",
             "|---|---|---|---|---|---|"]
    for report in reports.values():
        logger.info("stage %s: computed %d, from cache %d, already stored %d", report.stage,
                    report.computed, report.cached, report.reused)
        for name, key in report.keys.items():
            folder = store.artifact_path(stage_of(name), key)
            logger.info("  %s: %s", name, folder)
            lines.append(f"| {report.stage} | {name} | {report.computed} | {report.cached} | "
                         f"{report.reused} | `{folder}` |")
    if "link" in reports:
        metrics = reports["link"].extra["metrics"]
        test = metrics.set_index("split").loc["test"]
        logger.info("link: held-out R2 %.3f, closed-loop accuracy %.3f", test["r2"],
                    test["closed_loop_accuracy"])
        create_table_artifact(metrics.round(4).to_dict(orient="records"), key="link-metrics",
                              description=f"run {run_id}: the link's train and test metrics")
    if "score" in reports:
        from tasks.report import ranked_units

        units = reports["score"].extra["units"]
        significant = int(units["significant"].sum())
        logger.info("selectivity: %d of %d units significant (q < 0.05), median closed-loop "
                    "gain %.2f, median pixel change %.3f", significant, len(units),
                    units["closed_loop_gain"].median(), units["pixel_change"].median())
        lines += ["", f"{significant} of {len(units)} units significant (specificity q < 0.05); "
                  "`linkstyle report --run " + run_id + "` writes the HTML report."]
        top = ranked_units(units).groupby("top_part", sort=True).head(5)
        create_table_artifact(
            top[["top_part", "unit", "specificity_q", "significant", "concentration",
                 "closed_loop_gain"]].round(4).to_dict(orient="records"),
            key="top-units-per-part",
            description=f"run {run_id}: the five top units of every part (significant first)")
    if "validate" in reports:
        m = reports["validate"].extra["metrics"]
        logger.info("validation: match %.3f (chance %.3f), mean AUC %.3f",
                    m["match_rate_all"], m["chance_all"], m["mean_auc"])
        lines += ["", f"Validation: top part = ground-truth part for {m['match_rate_all']:.1%} "
                  f"of units (chance {m['chance_all']:.1%}); mean AUC {m['mean_auc']:.3f}."]
    create_markdown_artifact("\n".join(lines), key="linkstyle-run-summary",
                             description=f"run {run_id}: stages, artifacts, figures")


# Every flow takes the runner parameters: runner "local" (one thread, the default), "dask" or
# "ray"; address: a running cluster; workers: the size of a local cluster (flows.runners).
@flow(name="linkstyle-paired-data", task_runner=_RUNNER, log_prints=True)
def paired_data_flow(config: dict[str, Any] | None = None, config_path: str | None = None,
                     runner: str = "local", address: str | None = None,
                     workers: int | None = None) -> dict[str, StageReport]:
    """Stage 1 alone: paired (w, r) data for the train and test splits."""
    cfg = load_flow_config(config, config_path)
    preflight(cfg, "paired")
    return _cataloged("linkstyle-paired-data", cfg, lambda: run_analysis(cfg, "paired"),
                      checked_spec(runner, address, workers))


@flow(name="linkstyle-link", task_runner=_RUNNER, log_prints=True)
def link_flow(config: dict[str, Any] | None = None, config_path: str | None = None,
              runner: str = "local", address: str | None = None,
              workers: int | None = None) -> dict[str, StageReport]:
    """Stages 1-2: paired data (from the cache when unchanged) and the link."""
    cfg = load_flow_config(config, config_path)
    preflight(cfg, "link")
    return _cataloged("linkstyle-link", cfg, lambda: run_analysis(cfg, "link"),
                      checked_spec(runner, address, workers))


@flow(name="linkstyle-tune-score", task_runner=_RUNNER, log_prints=True)
def tune_score_flow(config: dict[str, Any] | None = None, config_path: str | None = None,
                    runner: str = "local", address: str | None = None,
                    workers: int | None = None) -> dict[str, StageReport]:
    """Stages 3-4 (with 1-2 from the cache when unchanged): tuning and selectivity."""
    cfg = load_flow_config(config, config_path)
    preflight(cfg, "score")
    return _cataloged("linkstyle-tune-score", cfg, lambda: run_analysis(cfg, "score"),
                      checked_spec(runner, address, workers))


@flow(name="linkstyle-counterfactual", task_runner=_RUNNER, log_prints=True)
def counterfactual_flow(config: dict[str, Any] | None = None, origin: int | None = None,
                        target: int | None = None, with_selectivity: bool = True,
                        config_path: str | None = None, runner: str = "local",
                        address: str | None = None,
                        workers: int | None = None) -> dict[str, StageReport]:
    """Stages 1-2 (and 3-4 for the overlap with selective units), then counterfactuals."""
    cfg = load_flow_config(config, config_path)
    models = preflight(cfg, "score" if with_selectivity else "link", origin, target,
                       counterfactual=True)
    pairs = class_pairs(cfg, models, origin, target)

    def body() -> dict[str, StageReport]:
        reports = run_analysis(cfg, "score" if with_selectivity else "link")
        reports["counterfactual"] = run_counterfactual(cfg, models, reports, pairs)
        return reports

    return _cataloged("linkstyle-counterfactual", cfg, body,
                      checked_spec(runner, address, workers))


@flow(name="linkstyle-validate", task_runner=_RUNNER, log_prints=True)
def validate_flow(config: dict[str, Any] | None = None, config_path: str | None = None,
                  runner: str = "local", address: str | None = None,
                  workers: int | None = None) -> dict[str, StageReport]:
    """Stages 1-4 (cached) and the toy world's ground-truth validation."""
    cfg = load_flow_config(config, config_path)
    preflight(cfg, "validate")
    return _cataloged("linkstyle-validate", cfg, lambda: run_analysis(cfg, "validate"),
                      checked_spec(runner, address, workers))


@flow(name="linkstyle-analysis", task_runner=_RUNNER, log_prints=True)
def analysis_flow(config: dict[str, Any] | None = None, until: str = "score",
                  config_path: str | None = None, runner: str = "local",
                  address: str | None = None, workers: int | None = None,
                  ) -> dict[str, StageReport]:
    """The full analysis on the configured models, up to and including stage ``until``."""
    cfg = load_flow_config(config, config_path)
    preflight(cfg, until)
    return _cataloged("linkstyle-analysis", cfg, lambda: run_analysis(cfg, until),
                      checked_spec(runner, address, workers))
