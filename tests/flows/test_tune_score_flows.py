"""Stages 3-4 as flows on tiny models with a user-labelled folder: tables, caching, resume."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest

import tasks.trajectories as trajectories
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
        "tuning": {"samples_per_class": 3, "shard_size": 6, "null_directions": 20},
        "segment": {"labels": labels, "labelled_images": 16, "steps": 60},
    })
    return config


def test_tables_cover_every_unit_part_and_measure(tmp_path, labels, caplog) -> None:
    config = _config(tmp_path, labels)
    reports = tune_score_flow(config)
    # Prefect's warning about tagged tasks in a one-thread pool is a false alarm here
    assert "may lead to dead-locks" not in caplog.text
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
    # one unit's images and part maps, read from whichever shard holds it
    loaded = tuned.load("images")
    for unit in (0, 7, 15):
        np.testing.assert_array_equal(tuned.select("images", "unit", unit)[0], loaded[unit])
    assert tuned.select("parts", "unit", 7).shape == (1, n_samples, steps, 8, 8)
    with pytest.raises(KeyError, match="unit == 99"):
        tuned.select("images", "unit", 99)
    table = store.open("selectivity", reports["score"].keys["selectivity"]).table("selectivity")
    assert len(table) == n_units * parts * len(ALL_MEASURES)
    units = reports["score"].extra["units"]
    assert sorted(units["unit"]) == list(range(16))
    assert set(units["top_part"]) <= {"bright", "dark"}
    assert units["concentration"].between(0.5, 1).all()  # two foreground parts
    assert units["specificity_p"].between(1 / 4001, 1).all()  # 4000 random read-outs
    assert (units["specificity_q"] >= units["specificity_p"] - 1e-12).all()
    assert (units["significant"] == (units["specificity_q"] < 0.05)).all()
    # calibrated steps: the re-encoded units follow the values they were set to
    assert units["closed_loop_gain"].median() == pytest.approx(1.0, abs=0.3)
    assert units["closed_loop_spearman"].mean() > 0.5
    assert units["closed_loop_rank"].between(1, 16).all()
    assert (units["pixel_change"] > 0).all() and units["label_change"].between(0, 1).all()
    assert 0 <= reports["tune"].extra["miou"] <= 1


def test_unit_command_shows_what_a_unit_does(tmp_path, labels, capsys) -> None:
    import matplotlib.image
    import yaml

    from flows.cli import main

    config = _config(tmp_path, labels)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    assert main(["unit", "7", "--config", str(config_file)]) == 2  # nothing has run yet
    assert "run `linkstyle run` with the same config first" in capsys.readouterr().err
    reports = tune_score_flow(config)
    row = reports["score"].extra["units"].set_index("unit").loc[7]
    out = tmp_path / "unit7.png"
    assert main(["unit", "7", "--config", str(config_file), "--out", str(out),
                 "--samples", "3"]) == 0
    text = capsys.readouterr().out
    assert f"unit 7: top part {row['top_part']} (concentration {row['concentration']:.2f})" in text
    assert f"gain {row['closed_loop_gain']:.2f}" in text
    assert f"pixels {row['pixel_change']:.3f}" in text
    picture = matplotlib.image.imread(out)
    assert picture.shape[1] > picture.shape[0] > 300  # strips on the left, plots on the right
    assert picture[..., :3].std() > 0.1  # not blank
    assert main(["unit", "99", "--config", str(config_file)]) == 2
    assert "unit 99 was not tuned in this run" in capsys.readouterr().err


def test_paper_procedure_range_steps_along_link_columns(tmp_path, labels) -> None:
    config = _config(tmp_path, labels)
    config["tuning"].update({"direction": "link", "step": "range"})
    reports = tune_score_flow(config)
    store = ArtifactStore(config["artifact_root"])
    tuned = store.open("tune", reports["tune"].keys["tune"])
    np.testing.assert_allclose(tuned.load("step_scale"), 1.0)  # offset x A[:, u], unscaled
    link = store.open("link", reports["link"].keys["link"]).load("coef")
    directions = store.open("directions", reports["tune"].keys["directions"]).load("directions")
    np.testing.assert_array_equal(directions, link)
    assert reports["score"].extra["units"]["closed_loop_gain"].notna().all()


def test_unchanged_rerun_and_shard_resume(tmp_path, labels, monkeypatch) -> None:
    config = _config(tmp_path, labels)
    reports = tune_score_flow(config)
    calls: Counter = Counter()
    original = trajectories.tune

    def counting(*args, **kwargs):
        calls[len(kwargs["offsets"] if "offsets" in kwargs else args[8])] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(trajectories, "tune", counting)
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


def test_tuning_publishes_its_progress_to_prefect(tmp_path, labels) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    state = tune_score_flow(_config(tmp_path, labels), return_state=True)
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    progress = [a for a in artifacts if a.key == "tune-progress"]
    assert len(progress) == 1 and progress[0].type == "progress"
    assert float(progress[0].data) == 100.0  # every shard and the null finished
    assert {"top-units-per-part", "linkstyle-run-summary"} <= {a.key for a in artifacts}
