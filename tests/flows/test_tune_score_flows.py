"""Stages 3-4 as flows on tiny models with a user-labelled folder: tables, caching, resume."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest

import tasks.tuning as tuning_tasks
from flows.analysis import tune_score_flow
from linkstyle_core.measure import MEASURES
from linkstyle_core.selectivity import ALL_MEASURES
from storage import ArtifactStore
from tests.fixtures.tiny_models import TINY_CONFIG, tiny_label_folder

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_label_folder(tmp_path_factory.mktemp("labels"))


def _config(tmp_path, labels: str) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config.update({
        "artifact_root": str(tmp_path / "artifacts"),
        "link": {"alpha": 0.01},
        "tuning": {"samples_per_class": 3, "shard_size": 6, "null_directions": 8},
        "segment": {"labels": labels, "labelled_images": 16, "steps": 60},
    })
    return config


def test_tables_cover_every_unit_part_and_measure(tmp_path, labels) -> None:
    config = _config(tmp_path, labels)
    reports = tune_score_flow(config)
    store = ArtifactStore(config["artifact_root"])
    tuned = store.open("tune", reports["tune"].keys["tune"])
    assert tuned.shards == ["units-0000-0005", "units-0006-0011", "units-0012-0015"]
    n_units, n_samples, steps, parts = 16, 9, 3, 3
    assert tuned.load("measures").shape == (n_units, n_samples, steps, parts, len(MEASURES))
    assert tuned.load("images").shape == (n_units, n_samples, steps, 3, 8, 8)
    response = tuned.table("response")
    assert len(response) == n_units * n_samples * steps
    # the set values span each unit's training range, first step at the minimum
    ranges = store.open("ranges", reports["tune"].keys["ranges"]).table("ranges")
    first = response[response["step"] == 0].groupby("unit")["set_value"].first()
    np.testing.assert_allclose(first.to_numpy(), ranges["low"].to_numpy(), rtol=1e-5)
    assert len(tuned.table("measures")) == n_units * n_samples * steps * parts
    table = store.open("selectivity", reports["score"].keys["selectivity"]).table("selectivity")
    assert len(table) == n_units * parts * len(ALL_MEASURES)
    assert table["q_value"].dropna().between(0, 1).all()
    assert (table["q_value"].dropna() >= table["p_value"].dropna() - 1e-12).all()
    units = reports["score"].extra["units"]
    assert sorted(units["unit"]) == list(range(16))
    assert set(units["top_part"]) <= {"bright", "dark"}
    assert units["concentration"].between(0, 1).all()
    # units that the closed loop can drive show a positive rank correlation on average
    assert units["closed_loop_spearman"].mean() > 0.2
    assert 0 <= reports["tune"].extra["miou"] <= 1


def test_unchanged_rerun_and_shard_resume(tmp_path, labels, monkeypatch) -> None:
    config = _config(tmp_path, labels)
    reports = tune_score_flow(config)
    calls: Counter = Counter()
    original = tuning_tasks.tune

    def counting(*args, **kwargs):
        calls[len(kwargs["offsets"] if "offsets" in kwargs else args[8])] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(tuning_tasks, "tune", counting)
    again = tune_score_flow(config)
    assert calls == {} and again["tune"].computed == 0 and again["score"].computed == 0

    store = ArtifactStore(config["artifact_root"])
    key = reports["tune"].keys["tune"]
    path = store.artifact_path("tune", key)
    store.fs.rm_file(f"{path}/manifest.json")  # killed before the last shard committed
    store.fs.rm(f"{path}/shards/units-0006-0011", recursive=True)
    tune_score_flow(config)
    assert calls == {6: 1}  # only the missing shard of 6 units was tuned again
    assert store.exists("tune", key)
