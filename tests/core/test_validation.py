"""Validation against a toy classifier's ground truth: the figures, and any toy classifier file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from linkstyle_core.config import ClassifierConfig
from linkstyle_core.models.errors import ModelError
from linkstyle_core.models.registry import load_classifier
from linkstyle_core.toyworld import ToyClassifierConfig, train_classifier
from linkstyle_core.validation import part_table, part_table_cells, validate

PARTS = ["head", "eye", "leg"]


def _units_and_truth() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ten units with a known verdict: 0-3 selective head units (3 significant, 1 not), 4-5
    selective eye units called significant, one with the wrong part (leg), 6-7 mixed units,
    one of them significant (head), 8-9 in between (concentration 0.55), not significant."""
    top = ["head", "head", "head", "head", "eye", "leg", "head", "leg", "eye", "leg"]
    significant = [True, True, True, False, True, True, True, False, False, False]
    gt_part = ["head"] * 4 + ["eye", "eye", "leg", "leg", "eye", "head"]
    gt_conc = [0.9, 0.8, 0.7, 0.65, 0.9, 0.7, 0.3, 0.4, 0.55, 0.55]
    units = pd.DataFrame({"unit": range(10), "top_part": top, "significant": significant,
                          "concentration": np.linspace(0.9, 0.2, 10),
                          "tuning_strength": 1.0,
                          **{f"score_{p}": [float(t == p) for t in top] for p in PARTS}})
    truth = pd.DataFrame({"unit": range(10), "gt_part": gt_part, "gt_concentration": gt_conc,
                          "evaluated": True})
    return units, truth


def test_validation_counts_wrong_parts_mixed_units_and_power() -> None:
    units, truth = _units_and_truth()
    m, table = validate(units, truth, PARTS, selective_concentration=0.6,
                        mixed_concentration=0.5)
    assert m["n_significant"] == 6 and m["n_selective"] == 6 and m["n_mixed"] == 2
    # significant: 0, 1, 2 (right), 4 (right), 5 (eye unit called leg), 6 (mixed, head)
    assert m["wrong_share_significant"] == pytest.approx(2 / 6)
    assert m["n_significant_not_selective"] == 1
    assert m["not_selective_share_significant"] == pytest.approx(1 / 6)
    # selective: 0-5; significant with the right part: 0, 1, 2, 4
    assert m["power_selective"] == pytest.approx(4 / 6)
    assert m["power_selective_head"] == pytest.approx(3 / 4)
    assert m["power_selective_eye"] == pytest.approx(1 / 2)
    # called significant for the head: 0, 1, 2 (head units) and 6 (a leg unit)
    assert m["wrong_share_significant_head"] == pytest.approx(1 / 4)
    assert m["wrong_share_significant_leg"] == pytest.approx(1.0)
    assert np.isnan(m["power_selective_leg"])  # no selective leg unit
    assert m["top_share_head"] == pytest.approx(0.5) and m["gt_share_head"] == pytest.approx(0.5)
    assert table.loc[table["unit"] == 6, "gt_mixed"].item()
    assert not table.loc[table["unit"] == 8, "gt_mixed"].item()


def test_the_verdict_per_part_counts_what_each_share_divides() -> None:
    """``linkstyle validate``'s and the report's per-part table on the ten units above."""
    units, truth = _units_and_truth()
    _, table = validate(units, truth, PARTS, selective_concentration=0.6,
                        mixed_concentration=0.5)
    parts = part_table(table, PARTS).set_index("part")
    head, eye, leg, every = (parts.loc[p] for p in ("head", "eye", "leg", "all"))
    # head: 4 selective head units, 3 found; called head: 0, 1, 2 and the mixed leg unit 6
    assert (head.part_selective, head.found, head.significant, head.wrong, head.mixed) == (
        4, 3, 4, 1, 1)
    assert head.power == pytest.approx(3 / 4) and head.mixed_share == pytest.approx(1 / 4)
    # eye: 2 selective, 1 found (unit 5 was called leg); called eye: unit 4 only
    assert (eye.part_selective, eye.found, eye.significant, eye.wrong) == (2, 1, 1, 0)
    # leg: no selective leg unit; called leg: unit 5, an eye unit
    assert leg.part_selective == 0 and np.isnan(leg.power) and leg.wrong_share == 1.0
    assert (every.part_selective, every.found, every.significant, every.wrong, every.mixed) == (
        6, 4, 6, 2, 1)
    cells = part_table_cells(part_table(table, PARTS)).set_index("part")
    assert cells.loc["head", "power"] == "3 of 4 (75%)"
    assert cells.loc["leg", "power"] == "0 of 0"
    assert cells.loc["leg", "wrong part"] == "1 of 1 (100%)"


def test_a_toy_classifier_file_loads_through_the_config(tmp_path: Path) -> None:
    path = tmp_path / "mine.pt"
    train_classifier(path, steps=1, batch_size=4, seed=3, progress=False,
                     config=ToyClassifierConfig(channels=(8, 8, 8, 12)), invariance=0.0,
                     ground_truth_images=0)
    clf = load_classifier(ClassifierConfig(kind="toy", weights=str(path)), torch.device("cpu"))
    assert clf.feature_dim == 12  # the file's, not the bundled classifier's 192
    with pytest.raises(ModelError, match="linkstyle toy train-classifier --out"):
        load_classifier(ClassifierConfig(kind="toy", weights=str(tmp_path / "no.pt")),
                        torch.device("cpu"))
    (tmp_path / "junk.pt").write_bytes(b"not a weight file")
    with pytest.raises(ModelError, match="junk.pt is not a readable toy weight file"):
        load_classifier(ClassifierConfig(kind="toy", weights=str(tmp_path / "junk.pt")),
                        torch.device("cpu"))
    with pytest.raises(ValueError, match="invariance must be a finite number >= 0"):
        train_classifier(tmp_path / "x.pt", steps=1, invariance=-1.0)


def test_the_bundled_mixed_classifier_is_mostly_not_part_selective() -> None:
    from linkstyle_core.models.toy import toy_classifier_file
    from linkstyle_core.toyworld import read_ground_truth, summarize_ground_truth

    clf = load_classifier(ClassifierConfig(kind="toy", weights="mixed"), torch.device("cpu"))
    assert clf.feature_dim == 192
    truth = read_ground_truth(toy_classifier_file("mixed"))
    summary = summarize_ground_truth(truth)
    assert 0.2 <= summary["part_selective_share"] <= 0.35  # measured: 25.5%
    assert (np.asarray(truth["concentration"]) < 0.5).mean() >= 0.4  # measured: 53.6% mixed
    # the bundled ordinary classifier (invariance 0): no unit part-selective
    truth = read_ground_truth(toy_classifier_file("ordinary"))
    assert summarize_ground_truth(truth)["part_selective_share"] == 0.0
    assert (np.asarray(truth["concentration"]) < 0.5).mean() >= 0.9  # measured: 96.4% mixed
    assert load_classifier(ClassifierConfig(kind="toy", weights="ordinary"),
                           torch.device("cpu")).feature_dim == 192
