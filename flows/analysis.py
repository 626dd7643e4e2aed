"""Prefect flows: paired data (stage 1), link (stage 2), and the full analysis.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.preflight import class_pairs, preflight
from flows.runners import RunnerSpec, checked_spec, prefect_server_for, results, submit, using
from flows.server import temporary_api_url, uses_own_server
from linkstyle_core import stop
from linkstyle_core.config import AnalysisConfig
from storage.catalog import new_run, record_run, stage_of
from tasks.caching import was_cached
from tasks.context import Models, as_config, models_for, resolve_classes, store_for
from tasks.counterfactual import counterfactual_key, counterfactuals
from tasks.directions import compute_directions, compute_ranges
from tasks.link import fit_link, link_key
from tasks.null import null_finalize, null_shard, null_shards
from tasks.paired import SPLITS, paired_finalize, paired_key, paired_shard, shard_id
from tasks.score import score_units, selectivity_key
from tasks.segmenter import fit_segmenter
from tasks.tuning import stage_keys, tune_finalize, tune_params, tune_shard, unit_shards
from tasks.validate import validate_units, validation_key

STAGES = ("paired", "link", "tune", "score", "validate")


@dataclass
class StageReport:
    """What one stage did: its artifact keys and how many tasks ran or came from the cache."""

    stage: str
    keys: dict[str, str]
    computed: int = 0
    cached: int = 0
    reused: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def count(self, future: Any) -> None:
        if was_cached(future):
            self.cached += 1
        elif future.result().get("computed"):
            self.computed += 1
        else:
            self.reused += 1  # ran, but found its artifact already committed


def run_paired(config: AnalysisConfig, models: Models) -> StageReport:
    """Submit stage 1 for both splits: one task per (split, class), then one finalize task
    per split; every class shard of both splits is submitted before anything is waited for."""
    store = store_for(config)
    classes = resolve_classes(config, models)
    payload = config.model_dump(mode="json")
    report = StageReport("paired", {})
    futures = []
    for split in SPLITS:
        key = paired_key(config, models, classes, split)
        report.keys[split] = key
        complete = store.exists("paired", key)
        shard_futures = []
        for cls in classes:
            shard = shard_id(cls)
            done = complete or store.shard_exists("paired", key, shard)
            shard_futures.append(submit(paired_shard, done, config=payload, split=split,
                                        key=key, shard=shard, cls=cls, classes=classes))
        final = submit(paired_finalize, complete, config=payload, split=split, key=key,
                       classes=classes, shards=shard_futures)
        futures += [*shard_futures, final]
    for fut in results(futures):
        report.count(fut)
    return report


def _run_one(config: AnalysisConfig, task: Any, stage: str, artifact: str, key: str,
             **kwargs: Any) -> StageReport:
    """Submit a single-task stage writing artifact ``artifact`` under ``key``; wait for it."""
    fut = submit(task, store_for(config).exists(artifact, key),
                 config=config.model_dump(mode="json"), key=key, **kwargs)
    fut.result()
    report = StageReport(stage, {artifact: key})
    report.count(fut)
    return report


def run_link(config: AnalysisConfig, models: Models, paired: StageReport) -> StageReport:
    """Submit stage 2 and read its metrics back from the store (the source of truth)."""
    key = link_key(config, models, paired.keys)
    report = _run_one(config, fit_link, "link", "link", key, train_key=paired.keys["train"],
                      test_key=paired.keys["test"])
    report.extra["metrics"] = store_for(config).open("link", key).table("metrics")
    return report


def run_tune(config: AnalysisConfig, models: Models, paired: StageReport,
             link: StageReport) -> StageReport:
    """Submit stage 3: ranges, segmenter, one task per unit shard and one per shard of the
    null control, each set finalised once its shards are in."""
    store = store_for(config)
    payload = config.model_dump(mode="json")
    keys = {**stage_keys(config, models, link.keys["link"], paired.keys),
            "link": link.keys["link"], "test": paired.keys["test"]}
    report = StageReport("tune", {k: keys[k] for k in ("ranges", "directions", "segmenter",
                                                       "tune", "null")})
    ranges = submit(compute_ranges, store.exists("ranges", keys["ranges"]), config=payload,
                    key=keys["ranges"], train_key=paired.keys["train"])
    directions = submit(compute_directions, store.exists("directions", keys["directions"]),
                        config=payload, key=keys["directions"], link_key=link.keys["link"],
                        train_key=paired.keys["train"])
    segmenter = submit(fit_segmenter, store.exists("segmenter", keys["segmenter"]),
                       config=payload, key=keys["segmenter"])
    inputs = [ranges, directions, segmenter]  # every unit shard and the null read all three
    shards: list[Any] = []
    finals = []
    for stage, task, plan, finalize in (
            ("tune", tune_shard, unit_shards(tune_params(config, models)["units"],
                                             config.tuning.shard_size), tune_finalize),
            ("null", null_shard, null_shards(config, models), null_finalize)):
        complete = store.exists(stage, keys[stage])
        mine = [submit(task, complete or store.shard_exists(stage, keys[stage], shard),
                       wait_for=inputs, config=payload, key=keys[stage], shard=shard, keys=keys)
                for shard in plan]
        finals.append(submit(finalize, complete, config=payload, key=keys[stage], keys=keys,
                             shards=mine))
        shards += mine
    progress = _Progress("tune-progress", f"tuning: {len(shards)} shards of units and null "
                         "directions", len(shards))
    for fut in results([*inputs, *shards, *finals]):
        report.count(fut)
        if fut in shards:
            progress.step()
    report.extra["miou"] = store.open("segmenter", keys["segmenter"]).info["miou"]
    return report


class _Progress:
    """A Prefect progress artifact of a long stage (the UI shows it filling up), advanced one
    finished task at a time."""

    def __init__(self, key: str, description: str, total: int) -> None:
        from prefect.artifacts import create_progress_artifact

        self.done, self.total = 0, max(total, 1)
        self.id: Any = create_progress_artifact(0.0, key=key, description=description)

    def step(self) -> None:
        from prefect.artifacts import update_progress_artifact

        self.done += 1
        update_progress_artifact(self.id, 100.0 * self.done / self.total)


def run_score(config: AnalysisConfig, tune: StageReport) -> StageReport:
    """Submit stage 4: selectivity against the null; read the unit summary back."""
    key = selectivity_key(config, tune.keys["tune"], tune.keys["null"])
    report = _run_one(config, score_units, "score", "selectivity", key,
                      tune_key=tune.keys["tune"], null_key=tune.keys["null"])
    selectivity = store_for(config).open("selectivity", key)
    report.extra["units"] = selectivity.table("units")
    report.extra["warnings"] = selectivity.info["warnings"]
    return report


def run_validate(config: AnalysisConfig, models: Models, score: StageReport) -> StageReport:
    """Toy world only: the pipeline's top parts against the renderer's ground truth."""
    key = validation_key(score.keys["selectivity"], models)
    report = _run_one(config, validate_units, "validate", "validation", key,
                      selectivity_key=score.keys["selectivity"])
    report.extra["metrics"] = store_for(config).open("validation", key).info
    return report


def analysis_keys(config: AnalysisConfig, models: Models) -> dict[str, str]:
    """The content keys of every stage up to selectivity, computed without running anything
    (to find a finished run's artifacts)."""
    classes = resolve_classes(config, models)
    paired = {split: paired_key(config, models, classes, split) for split in SPLITS}
    link = link_key(config, models, paired)
    keys = {**paired, "link": link, **stage_keys(config, models, link, paired)}
    keys["selectivity"] = selectivity_key(config, keys["tune"], keys["null"])
    return keys


def _analysis(config: AnalysisConfig, until: str) -> dict[str, StageReport]:
    if until not in STAGES:
        raise ValueError(f"until must be one of {', '.join(STAGES)}, got {until!r}")
    models = models_for(config)
    reports = {"paired": run_paired(config, models)}
    if until == "paired":
        return reports
    reports["link"] = run_link(config, models, reports["paired"])
    if until == "link":
        return reports
    reports["tune"] = run_tune(config, models, reports["paired"], reports["link"])
    if until == "tune":
        return reports
    reports["score"] = run_score(config, reports["tune"])
    if until == "score":
        return reports
    reports["validate"] = run_validate(config, models, reports["score"])
    return reports


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
    return _cataloged("linkstyle-paired-data", cfg, lambda: _analysis(cfg, "paired"),
                      checked_spec(runner, address, workers))


@flow(name="linkstyle-link", task_runner=_RUNNER, log_prints=True)
def link_flow(config: dict[str, Any] | None = None, config_path: str | None = None,
              runner: str = "local", address: str | None = None,
              workers: int | None = None) -> dict[str, StageReport]:
    """Stages 1-2: paired data (from the cache when unchanged) and the link."""
    cfg = load_flow_config(config, config_path)
    preflight(cfg, "link")
    return _cataloged("linkstyle-link", cfg, lambda: _analysis(cfg, "link"),
                      checked_spec(runner, address, workers))


@flow(name="linkstyle-tune-score", task_runner=_RUNNER, log_prints=True)
def tune_score_flow(config: dict[str, Any] | None = None, config_path: str | None = None,
                    runner: str = "local", address: str | None = None,
                    workers: int | None = None) -> dict[str, StageReport]:
    """Stages 3-4 (with 1-2 from the cache when unchanged): tuning and selectivity."""
    cfg = load_flow_config(config, config_path)
    preflight(cfg, "score")
    return _cataloged("linkstyle-tune-score", cfg, lambda: _analysis(cfg, "score"),
                      checked_spec(runner, address, workers))


def run_counterfactual(config: AnalysisConfig, models: Models, reports: dict[str, StageReport],
                       pairs: list[tuple[int, int]]) -> StageReport:
    """Submit stage 5 for the given (origin, target) class pairs."""
    keys = {"link": reports["link"].keys["link"], "test": reports["paired"].keys["test"]}
    if "score" in reports:
        keys["selectivity"] = reports["score"].keys["selectivity"]
    key = counterfactual_key(config, models, pairs, keys)
    report = _run_one(config, counterfactuals, "counterfactual", "counterfactual", key,
                      pairs=[list(p) for p in pairs], keys=keys)
    report.extra["summary"] = store_for(config).open("counterfactual", key).table("summary")
    return report


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
        reports = _analysis(cfg, "score" if with_selectivity else "link")
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
    return _cataloged("linkstyle-validate", cfg, lambda: _analysis(cfg, "validate"),
                      checked_spec(runner, address, workers))


@flow(name="linkstyle-analysis", task_runner=_RUNNER, log_prints=True)
def analysis_flow(config: dict[str, Any] | None = None, until: str = "score",
                  config_path: str | None = None, runner: str = "local",
                  address: str | None = None, workers: int | None = None,
                  ) -> dict[str, StageReport]:
    """The full analysis on the configured models, up to and including stage ``until``."""
    cfg = load_flow_config(config, config_path)
    preflight(cfg, until)
    return _cataloged("linkstyle-analysis", cfg, lambda: _analysis(cfg, until),
                      checked_spec(runner, address, workers))
