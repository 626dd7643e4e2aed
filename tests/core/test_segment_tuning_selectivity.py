"""Segmenter, tuning trajectories and selectivity statistics on small known cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from linkstyle_core.link import LinearLink
from linkstyle_core.segment import mean_iou, train_segmenter
from linkstyle_core.selectivity import (
    ALL_MEASURES,
    benjamini_hochberg,
    closed_loop_spearman,
    first_last_change,
    selectivity_table,
    unit_summary,
)
from linkstyle_core.tuning import (
    activation_ranges,
    null_directions,
    select_samples,
    step_values,
    unit_offsets,
)


@pytest.mark.parametrize("kernel", [1, 3])
def test_segmenter_learns_parts_from_feature_maps(kernel: int) -> None:
    # like a generator: a coarse map that knows the parts and a full-resolution map that
    # carries their edges, both noisy, plus an uninformative map
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (24, 8, 8), generator=g).repeat_interleave(4, 1)
    labels = labels.repeat_interleave(4, 2)  # 32x32 blocks of parts
    onehot = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    coarse = torch.nn.functional.avg_pool2d(onehot, 4) + 0.1 * torch.randn(24, 3, 8, 8, generator=g)
    fine = onehot + 0.5 * torch.randn(24, 3, 32, 32, generator=g)
    feats = [coarse, fine, torch.randn(24, 5, 16, 16, generator=g)]
    seg = train_segmenter([f[:16] for f in feats], labels[:16], 3, steps=300, seed=0,
                          kernel=kernel)
    miou, per_part = mean_iou(seg.predict([f[16:] for f in feats]), labels[16:], 3)
    assert miou > 0.9 and len(per_part) == 3
    with pytest.raises(ValueError, match="labels must lie in"):
        train_segmenter(feats, labels + 5, 3, steps=1)


def test_mean_iou_known_value() -> None:
    target = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1]]])
    miou, per_part = mean_iou(pred, target, 3)
    assert per_part[0] == pytest.approx(0.5) and per_part[1] == pytest.approx(2 / 3)
    assert np.isnan(per_part[2]) and miou == pytest.approx((0.5 + 2 / 3) / 2)


def test_trajectory_equals_linking_the_modified_activation() -> None:
    g = torch.Generator().manual_seed(0)
    r_train = torch.rand(200, 10, generator=g)
    link = LinearLink("lr").fit(r_train, r_train @ torch.randn(10, 4, generator=g))
    low, high = activation_ranges(r_train)
    assert torch.equal(low, r_train.min(0).values) and torch.equal(high, r_train.max(0).values)
    r = torch.rand(5, 10, generator=g)
    units = torch.tensor([2, 7])
    values = step_values(low[units], high[units], 4)
    offsets = unit_offsets(values, r[:, units])  # [U, Ns, S]
    w = link.predict(r)[None, :, None, :] + offsets[..., None] * link.coef_[:, units].T[:, None,
                                                                                        None, :]
    for ui, u in enumerate(units):
        for step in range(4):
            modified = r.clone()
            modified[:, u] = values[ui, step]
            torch.testing.assert_close(w[ui, :, step], link.predict(modified))
    low_p, high_p = activation_ranges(r_train, "percentile", (10, 90))
    assert (low_p > low).all() and (high_p < high).all()


def test_null_directions_match_unit_step_sizes() -> None:
    spans = torch.tensor([1.0, 2.0, 4.0])
    d, offsets = null_directions(16, spans, count=6, steps=3, n_samples=5, seed=1)
    assert torch.allclose(d.norm(dim=1), torch.ones(6))
    total = offsets[:, :, -1] - offsets[:, :, 0]
    assert set(total[:, 0].tolist()) <= {1.0, 2.0, 4.0}
    assert torch.allclose(offsets.sum(-1), torch.zeros(6, 5), atol=1e-6)  # centred on r
    d2, _ = null_directions(16, spans, count=6, steps=3, n_samples=5, seed=1)
    assert torch.equal(d, d2)


def test_select_samples_takes_the_first_per_class() -> None:
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2])
    assert select_samples(labels, 2, [0, 2]).tolist() == [0, 2, 3, 6]
    with pytest.raises(ValueError, match="class 2 has only 2 held-out samples"):
        select_samples(labels, 3, [2])


def test_benjamini_hochberg_matches_the_definition() -> None:
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, np.nan])
    q = benjamini_hochberg(p)
    expected = [0.008, 0.032, 0.0672, 0.0672, 0.0672, 0.08, 0.0846, 0.205]
    np.testing.assert_allclose(q[:8], expected, atol=1e-4)
    assert np.isnan(q[8])


def test_a_unit_that_moves_one_part_is_selective_for_it() -> None:
    rng = np.random.default_rng(0)
    parts = ["background", "ear", "tail"]
    measures = rng.normal(0, 1, (3, 30, 3, 3, 9))
    null = rng.normal(0, 1, (32, 30, 3, 3, 9))
    measures[1, :, -1, 1, 0] += 4.0  # unit 1 grows the ear's area
    motion = np.abs(rng.normal(0, 1, (3, 30, 3)))
    null_motion = np.abs(rng.normal(0, 1, (32, 30, 3)))
    table = selectivity_table([5, 6, 7], first_last_change(measures, motion),
                              first_last_change(null, null_motion), parts)
    assert len(table) == 3 * 3 * len(ALL_MEASURES)
    hit = table[(table.unit == 6) & (table.part == "ear") & (table.measure == "area")].iloc[0]
    assert hit.effect_size > 2 and hit.q_value < 1e-6
    others = table[~((table.unit == 6) & (table.part == "ear") & (table.measure == "area"))]
    assert (others.q_value > 0.01).mean() > 0.95
    summary = unit_summary(table, parts).set_index("unit")
    assert summary.loc[6, "top_part"] == "ear" and bool(summary.loc[6, "significant"])
    assert summary.loc[6, "concentration"] > summary.drop(6)["concentration"].max()


def test_angle_changes_wrap_around() -> None:
    measures = np.zeros((1, 1, 2, 1, 9))
    measures[0, 0, 0, 0, 8], measures[0, 0, 1, 0, 8] = 85.0, -85.0
    assert first_last_change(measures, np.zeros((1, 1, 1)))[0, 0, 0, 8] == pytest.approx(10.0)


def test_closed_loop_spearman() -> None:
    x = np.tile(np.arange(6.0), (2, 1)).reshape(2, 2, 3)
    y = np.stack([x[0] ** 3, -x[1]])
    np.testing.assert_allclose(closed_loop_spearman(x, y), [1.0, -1.0])
    assert isinstance(pd.DataFrame({"s": closed_loop_spearman(x, y)}), pd.DataFrame)
