"""tasks.validate.ground_truth is called by the benchmarks outside any flow: it measures a
classifier without stored figures there too, and caches what it measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tasks.validate as validate
from linkstyle_core.config import AnalysisConfig
from linkstyle_core.toyworld.factors import FACTOR_PARTS, FACTORS
from linkstyle_core.toyworld.ground_truth import GROUND_TRUTH_PARTS
from tasks.context import models_for, store_for


def test_ground_truth_is_measured_and_cached_outside_a_flow(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = AnalysisConfig.from_dict({
        "classifier": {"kind": "python",
                       "target": "linkstyle_core.toyworld.wide:wide_toy_classifier"},
        "runtime": {"device": "cpu"}, "artifact_root": str(tmp_path)})
    models = models_for(cfg)
    d = models.classifier.feature_dim
    calls: list[int] = []

    follows = [list(FACTOR_PARTS)[u % len(FACTOR_PARTS)] for u in range(d)]   # one factor each

    def measured(classifier: Any, **_: Any) -> dict[str, Any]:   # the real one takes minutes
        calls.append(1)
        sens = np.zeros((d, len(FACTORS)), dtype=np.float32)
        sens[np.arange(d), [FACTORS.index(f) for f in follows]] = 1.0
        part = np.stack([sens[:, [FACTORS.index(f) for f, q in FACTOR_PARTS.items() if q == p]]
                         .sum(1) for p in GROUND_TRUTH_PARTS], 1)
        return {"factors": list(FACTORS), "parts": list(GROUND_TRUTH_PARTS),
                "sensitivity": sens, "part_sensitivity": part,
                "concentration": np.ones(d, dtype=np.float32),
                "gt_part": [FACTOR_PARTS[f] for f in follows], "n_images": 0, "seed": 0}

    monkeypatch.setattr(validate, "measure_ground_truth", measured)
    store = store_for(cfg)
    table, key = validate.ground_truth(cfg, models, store)
    assert len(table) == d and key != "weights"
    assert list(table["gt_part"]) == [FACTOR_PARTS[f] for f in follows]
    again, key_again = validate.ground_truth(cfg, models, store)   # read back, not re-measured
    assert key_again == key and len(calls) == 1 and again.equals(table)
