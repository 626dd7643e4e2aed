"""What each stage submits: its tasks, keyed by their artifacts' content keys, all submitted
before any is waited for, and what they did (``StageReport``). The flows of ``flows.analysis``
chain these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flows.runners import results, submit
from linkstyle_core.config import AnalysisConfig
from tasks.caching import was_cached
from tasks.context import Models, models_for, resolve_classes, store_for
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
    progress = StageProgress("tune-progress", f"tuning: {len(shards)} shards of units and null "
                         "directions", len(shards))
    for fut in results([*inputs, *shards, *finals]):
        report.count(fut)
        if fut in shards:
            progress.step()
    report.extra["miou"] = store.open("segmenter", keys["segmenter"]).info["miou"]
    return report


class StageProgress:
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
    validation = store_for(config).open("validation", key)
    report.extra["metrics"] = validation.info
    report.extra["parts"] = validation.table("parts")
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


def run_analysis(config: AnalysisConfig, until: str) -> dict[str, StageReport]:
    """Stages 1 to ``until`` (one of ``STAGES``), each submitted once the one before is done."""
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
