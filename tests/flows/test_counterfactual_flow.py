"""Stage 5 as a flow: per-pair and per-class-pair tables, stored images, figures."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from PIL import Image

from flows.analysis import counterfactual_flow
from storage import ArtifactStore
from tests.fixtures.tiny_models import TINY_CONFIG, tiny_classifier, tiny_label_folder

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_counterfactuals_are_stored_measured_and_confirmed(tmp_path) -> None:
    config = copy.deepcopy(TINY_CONFIG)
    config.update({
        "artifact_root": str(tmp_path / "artifacts"), "link": {"alpha": 0.01},
        "tuning": {"samples_per_class": 2, "shard_size": 16, "null_directions": 20},
        "segment": {"labels": tiny_label_folder(tmp_path / "labels"), "steps": 30},
        "counterfactual": {"samples": 5, "max_steps": 150},
    })
    reports = counterfactual_flow(config, origin=0, target=2)
    store = ArtifactStore(config["artifact_root"])
    art = store.open("counterfactual", reports["counterfactual"].keys["counterfactual"])
    pairs = art.table("pairs")
    assert len(pairs) == 5 and set(pairs["origin"]) == {0} and set(pairs["target"]) == {2}
    assert pairs["success"].mean() > 0.5
    # every reported success holds for the stored counterfactual image
    images = torch.from_numpy(art.load("images"))
    clf = tiny_classifier()
    logits = clf.head(clf.features(images[:, 1].float() / 127.5 - 1.0))
    assert np.array_equal((logits.argmax(1) == 2).numpy(), pairs["success"].to_numpy())
    assert art.load("shift").shape == (5, 16)
    assert all(len(u) == 10 for u in pairs["top_units"])
    summary = art.table("summary").iloc[0]
    assert summary["flip_rate"] == pytest.approx(pairs["success"].mean())
    assert len(summary["decision_units"]) == len(summary["decision_unit_parts"]) <= 10
    assert any(c.startswith("overlap_") for c in art.table("summary").columns)
    figure = Image.open(io.BytesIO(art.read_file("pair-0-2.png")))
    assert figure.size[0] > 500 and figure.size[1] > 5 * 100  # a row per pair, 4 columns
    pixels = np.asarray(figure.convert("L"))
    assert pixels.std() > 10  # not a blank canvas

    again = counterfactual_flow(config, origin=0, target=2)
    assert again["counterfactual"].cached == 1 and again["counterfactual"].computed == 0
    with pytest.raises(ValueError, match="give both --origin and --target"):
        counterfactual_flow(config, origin=0)
