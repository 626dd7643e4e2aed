"""Stages 1-2 as flows: results, caching (unchanged rerun, changed link type, deleted artifact)
and shard-granular resume, counted by how often the core computations actually run."""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

import linkstyle_core.link as link_module
import tasks.paired as paired_tasks
from flows.analysis import link_flow, paired_data_flow
from storage import ArtifactStore
from storage.catalog import read_catalog
from tests.fixtures.tiny_models import TINY_CONFIG

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    """Counts the core computations: one per sampled (split, class), one per link fit."""
    counter: Counter = Counter()
    original_sample, original_fit = paired_tasks.sample_class, link_module.LinearLink.fit

    def sample(*args, **kwargs):
        counter[f"paired-{kwargs['split']}"] += 1
        return original_sample(*args, **kwargs)

    def fit(self, r, w):
        counter["link"] += 1
        return original_fit(self, r, w)

    monkeypatch.setattr(paired_tasks, "sample_class", sample)
    monkeypatch.setattr(link_module.LinearLink, "fit", fit)
    yield counter


def _config(tmp_path, **link) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["artifact_root"] = str(tmp_path / "artifacts")
    config["link"] = {"type": "ridge", "alpha": 0.01, **link}
    return config


def test_stages_write_pairs_and_link_metrics(tmp_path, calls: Counter) -> None:
    config = _config(tmp_path)
    reports = link_flow(config)
    assert calls == {"paired-train": 3, "paired-test": 3, "link": 1}
    store = ArtifactStore(config["artifact_root"])
    train = store.open("paired", reports["paired"].keys["train"])
    w, r, labels = train.load("w"), train.load("r"), train.load("label")
    assert w.shape == (120, 6) and r.shape == (120, 16) and (r >= 0).all()
    assert np.bincount(labels).tolist() == [40, 40, 40]
    acceptance = train.table("acceptance")
    assert list(acceptance["class"]) == [0, 1, 2]
    assert ((acceptance["acceptance_rate"] > 0.5) & (acceptance["acceptance_rate"] <= 1)).all()
    metrics = reports["link"].extra["metrics"].set_index("split")
    # the tiny generator's w is a smooth function of a 16-unit r: a linear link explains most
    assert metrics.loc["train", "r2"] > 0.6 and metrics.loc["test", "r2"] > 0.5
    assert metrics.loc["test", "closed_loop_accuracy"] > 0.8
    assert metrics.loc["test", "closed_loop_r_corr"] > 0.8
    link = store.open("link", reports["link"].keys["link"])
    assert link.load("coef").shape == (6, 16)
    assert set(link.table("r2_per_dim")["split"]) == {"train", "test"}


def test_unchanged_rerun_recomputes_nothing(tmp_path, calls: Counter) -> None:
    config = _config(tmp_path)
    link_flow(config)
    calls.clear()
    reports = link_flow(config)
    assert calls == {}
    assert reports["paired"].computed == 0 and reports["paired"].cached == 8  # 6 shards + 2
    assert reports["link"].computed == 0 and reports["link"].cached == 1
    assert paired_data_flow(config)["paired"].cached == 8


def test_changing_link_type_reruns_only_the_link(tmp_path, calls: Counter) -> None:
    first = link_flow(_config(tmp_path))
    calls.clear()
    second = link_flow(_config(tmp_path, type="lr"))
    assert calls == {"link": 1}
    assert second["paired"].keys == first["paired"].keys
    assert second["link"].keys != first["link"].keys


def test_deleted_artifacts_are_rebuilt_alone(tmp_path, calls: Counter) -> None:
    config = _config(tmp_path)
    reports = link_flow(config)
    store = ArtifactStore(config["artifact_root"])
    link_key = reports["link"].keys["link"]
    before = store.open("link", link_key).load("coef")

    calls.clear()
    store.delete("link", link_key)  # Prefect still remembers it; the store is the truth
    link_flow(config)
    assert calls == {"link": 1}
    np.testing.assert_allclose(store.open("link", link_key).load("coef"), before, rtol=1e-5)

    calls.clear()
    store.delete("paired", reports["paired"].keys["test"])
    link_flow(config)
    # the rebuilt test split has the same content key, so the link built on it stays valid
    assert calls == {"paired-test": 3}


def test_killed_run_resumes_at_shard_granularity(tmp_path, calls: Counter) -> None:
    config = _config(tmp_path)
    reports = paired_data_flow(config)
    store = ArtifactStore(config["artifact_root"])
    key = reports["paired"].keys["train"]
    path = store.artifact_path("paired", key)
    # as if the run had been killed after two of three class shards of the train split
    store.fs.rm_file(f"{path}/manifest.json")
    store.fs.rm(f"{path}/shards/class-0001", recursive=True)
    assert store.list_artifacts("paired")[0].status in {"partial", "complete"}
    calls.clear()
    paired_data_flow(config)
    assert calls == {"paired-train": 1}
    assert store.exists("paired", key)
    assert np.bincount(store.open("paired", key).load("label")).tolist() == [40, 40, 40]


def test_shards_retry_transient_io_errors_but_not_user_errors(
        tmp_path, calls: Counter, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dropped connection while a shard runs is retried (with backoff, here without delay);
    a user's mistake fails at once and is not retried."""
    import errno

    from linkstyle_core.paired import AcceptanceError

    monkeypatch.setattr(paired_tasks.paired_shard, "retry_delay_seconds", [0, 0, 0])
    counting = paired_tasks.sample_class  # the `calls` fixture's counter
    failures: Counter = Counter()

    def flaky(*args, **kwargs):
        if kwargs["split"] == "train" and failures["io"] < 2:
            failures["io"] += 1
            raise OSError(errno.EIO, "Input/output error (network file system)")
        return counting(*args, **kwargs)

    monkeypatch.setattr(paired_tasks, "sample_class", flaky)
    reports = paired_data_flow(_config(tmp_path))
    assert failures["io"] == 2 and calls["paired-train"] == 3
    store = ArtifactStore(str(tmp_path / "artifacts"))
    assert store.exists("paired", reports["paired"].keys["train"])

    attempts: Counter = Counter()

    def refused(*args, **kwargs):
        split, cls = kwargs["split"], args[2]
        attempts[split, cls] += 1
        if split == "test":
            time.sleep(0.2)  # still running when train's first shard fails
        if (split, cls) == ("train", 0):
            raise AcceptanceError(f"class {cls}: the classifier accepts too few of its images")
        return counting(*args, **kwargs)

    monkeypatch.setattr(paired_tasks, "sample_class", refused)
    with pytest.raises(AcceptanceError):
        paired_data_flow(_config(tmp_path / "second"))
    # every shard of both splits (all submitted before any is waited for) tried once, none
    # retried: the flow waits for the others before raising the first shard's error, so every
    # shard but the refused one is committed for the rerun
    assert set(attempts) == {(split, c) for split in ("train", "test") for c in range(3)}
    assert set(attempts.values()) == {1}
    second_store = ArtifactStore(str(tmp_path / "second" / "artifacts"))
    folders = [p.split("/") for p in second_store.fs.glob(f"{second_store.root}/paired/*/shards/*")]
    assert sum(second_store.shard_exists("paired", p[-3], p[-1]) for p in folders) == 5
    monkeypatch.setattr(paired_tasks, "sample_class", counting)
    before = calls.copy()
    paired_data_flow(_config(tmp_path / "second"))
    assert calls - before == Counter({"paired-train": 1})  # only the refused shard ran again
    # every run is in its root's catalog: the first completed with its keys, the second failed
    # with its error, and its rerun completed
    first = read_catalog(store).iloc[-1]
    assert first["status"] == "completed" and first["flow"] == "linkstyle-paired-data"
    assert json.loads(first["keys"]) == reports["paired"].keys
    second, rerun = (row for _, row in read_catalog(second_store).iloc[-2:].iterrows())
    assert second["status"] == "failed" and second["error"].startswith("AcceptanceError: class 0")
    assert rerun["status"] == "completed"


def test_transient_io_error_condition() -> None:
    import errno

    from prefect.states import Failed

    from tasks.caching import transient_io_error

    def retried(exc: BaseException) -> bool:
        return transient_io_error(None, None, Failed(data=exc))  # type: ignore[arg-type]

    assert retried(OSError(errno.EIO, "eio")) and retried(ConnectionResetError())
    assert retried(TimeoutError())
    assert not retried(OSError(errno.ENOSPC, "full")) and not retried(PermissionError())
    assert not retried(FileNotFoundError()) and not retried(ValueError("bad config"))


def test_a_flow_run_shows_its_logs_and_artifacts_in_prefect(tmp_path) -> None:
    """The Prefect server holds the run's logs (stages, artifact folders, metrics) and its
    artifacts: a markdown summary and the link metrics as a table."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    state = link_flow(_config(tmp_path), return_state=True)
    run_id = state.state_details.flow_run_id
    # logs reach the server in batches from a background worker: on a busy machine that takes
    # a while, so wait for the run's last line (up to two minutes), not for a fixed time
    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        while True:
            APILogWorker.drain_all(timeout=10)
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            messages = "\n".join(log.message for log in logs)
            if "held-out R2" in messages or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    assert runs[0].state.is_completed()
    assert "stage link: computed 1" in messages and "held-out R2" in messages
    assert str(tmp_path / "artifacts" / "link") in messages
    kinds = {a.key: a.type for a in artifacts}
    assert kinds.get("linkstyle-run-summary") == "markdown"
    assert kinds.get("link-metrics") == "table"
    summary = next(a for a in artifacts if a.key == "linkstyle-run-summary")
    assert "| link | link | 1 |" in summary.data
