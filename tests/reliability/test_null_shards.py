"""The null is sharded like the tuning (issue 35, case 10): a stop during it loses at most the
shard that was running, a rerun resumes at the next one, and the result is the unsharded null
to the last bit; a run logged to a file gets one line per task and no progress bars."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import tasks.null as null_task
from flows.analysis import tune_score_flow
from linkstyle_core import stop
from linkstyle_core.config import AnalysisConfig
from storage import ArtifactStore
from tasks.null import null_shard_size
from tests.fixtures.tiny_models import TINY_CONFIG, tiny_label_folder

pytestmark = pytest.mark.usefixtures("prefect_harness")
REPO = Path(__file__).resolve().parents[2]
COMMON = {"sample_index", "sample_class", "base_area"}


def test_shards_hold_whole_batches() -> None:
    config = AnalysisConfig.from_dict({"tuning": {"null_shard_size": 100, "null_directions": 1024},
                                       "runtime": {"batch_size": 256}})
    # 8 classes: 16 null samples (8 directions a batch of 128), 8 probes (16 a batch)
    assert null_shard_size(config, 8) == 112
    config = AnalysisConfig.from_dict({"tuning": {"null_shard_size": 5, "null_directions": 30,
                                                  "null_samples_per_class": 1},
                                       "runtime": {"batch_size": 64}})
    assert null_shard_size(config, 3) == 30  # 3 classes: 32 directions a batch, more than all


def _same(a: ArtifactStore, key_a: str, b: ArtifactStore, key_b: str, stage: str) -> int:
    x, y = a.open(stage, key_a), b.open(stage, key_b)
    assert x.array_names == y.array_names and x.table_names == y.table_names
    for name in x.array_names:
        # the samples every shard holds alike are read once, as the scores read them
        read = "load_common" if name in COMMON else "load"
        u, v = getattr(x, read)(name), getattr(y, read)(name)
        assert u.dtype == v.dtype and u.shape == v.shape, name
        assert np.array_equal(u, v, equal_nan=u.dtype.kind == "f"), f"{stage} array {name}"
    for name in x.table_names:
        pd.testing.assert_frame_equal(x.table(name), y.table(name), check_exact=True)
    return len(x.array_names) + len(x.table_names)


def _tiny(root: Path, labels: str, null_shard_size: int, null_directions: int = 64) -> dict:
    """A tiny-model analysis of 8 units whose null has ``null_directions`` directions in shards
    of ``null_shard_size``."""
    return {**TINY_CONFIG, "artifact_root": str(root),
            "data": {**TINY_CONFIG.get("data", {}), "samples_per_class": 12,
                     "test_samples_per_class": 6},
            "tuning": {"units": "0-7", "shard_size": 4, "samples_per_class": 2,
                       "null_samples_per_class": 1, "null_directions": null_directions,
                       "null_shard_size": null_shard_size},
            "runtime": {**TINY_CONFIG.get("runtime", {}), "batch_size": 16},
            "segment": {"labels": labels, "labelled_images": 16, "steps": 30}}


def test_a_stopped_null_resumes_at_its_next_shard_with_the_unsharded_numbers(
        tmp_path, monkeypatch) -> None:
    """A null of 64 directions in one shard, and the same null in four shards stopped in its
    second shard (as SIGTERM stops it), then rerun: the rerun computes only the shards that
    were not committed, and null and selectivity equal the one-shard run's to the last bit."""
    labels = tiny_label_folder(tmp_path / "labels")
    one = tune_score_flow(_tiny(tmp_path / "one", labels, 64))
    config = _tiny(tmp_path / "many", labels, 16)
    store = ArtifactStore(config["artifact_root"])
    calls: list[int] = []
    original = null_task.tune_directions

    def stopping(*args, **kwargs):
        calls.append(len(args[5]))  # the directions of a null shard (the units are stored)
        if len(calls) == 2:
            stop.request("SIGTERM")
            stop.check()
        return original(*args, **kwargs)

    monkeypatch.setattr(null_task, "tune_directions", stopping)
    with pytest.raises(stop.StopRequested):
        tune_score_flow(config)
    stop.clear()
    partial = [a for a in store.list_artifacts("null") if a.status == "partial"]
    assert len(partial) == 1 and (partial[0].shards_done, partial[0].shards_total) == (1, 4)
    assert calls == [16, 16]  # the third and fourth shard stopped before their first batch

    calls.clear()
    monkeypatch.setattr(null_task, "tune_directions", lambda *a, **k: calls.append(len(a[5])) or
                        original(*a, **k))
    many = tune_score_flow(config)
    assert calls == [16, 16, 16]  # only the shards that were not committed
    assert many["tune"].keys["null"] == partial[0].key
    assert store.open("null", partial[0].key).shards == [
        "directions-0000-0015", "directions-0016-0031", "directions-0032-0047",
        "directions-0048-0063"]
    first = ArtifactStore(str(tmp_path / "one"))
    assert _same(first, one["tune"].keys["null"], store, partial[0].key, "null") > 10
    # the selectivity tables built on them, to the last bit
    assert _same(first, one["score"].keys["selectivity"], store,
                 many["score"].keys["selectivity"], "selectivity") >= 4


def test_a_run_logged_to_a_file_has_one_line_per_task_and_no_bars(tmp_path) -> None:
    config = _tiny(tmp_path / "root", tiny_label_folder(tmp_path / "labels"), 16, 40)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    with open(tmp_path / "log", "wb") as log:
        run = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config",
                              str(tmp_path / "c.yaml")], stdout=log, stderr=subprocess.STDOUT,
                             cwd=REPO, timeout=600)
    text = (tmp_path / "log").read_text()
    assert run.returncode == 0, text[-3000:]
    assert "\r" not in text and "it/s" not in text and "█" not in text
    lines = text.splitlines()
    for task in ("tune units-0000-0003", "tune units-0004-0007", "null directions-0000-0015",
                 "null directions-0016-0031", "null directions-0032-0039", "paired train class 0",
                 "paired test class 2"):
        found = [line for line in lines if line.startswith(f"linkstyle: {task}: ")]
        assert len(found) == 1, (task, text[-3000:])
        assert " img in " in found[0] and " s (" in found[0]
