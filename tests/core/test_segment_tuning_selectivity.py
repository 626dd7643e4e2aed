"""Segmenter, tuning trajectories and selectivity statistics on small known cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from linkstyle_core.link import LinearLink
from linkstyle_core.measure import MEASURES
from linkstyle_core.segment import mean_iou, train_segmenter
from linkstyle_core.selectivity import (
    ALL_MEASURES,
    benjamini_hochberg,
    closed_loop_spearman,
    direction_means,
    first_last_change,
    mask_small_parts,
    null_reference,
    probe_design,
    random_readouts,
    selectivity_table,
    sensitivity_profiles,
    significance_line,
    specificity_p,
    two_stage_q,
    unit_parts_table,
    unit_summary,
)
from linkstyle_core.tuning import (
    activation_ranges,
    analytic_gains,
    calibrated_scale,
    latent_directions,
    measured_gains,
    null_directions,
    reverse_map,
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


PARTS = ["ear", "tail", "leg", "head", "body", "eye"]


def _probes(rng: np.random.Generator, k: int = 256, samples: int = 10) -> np.ndarray:
    """Changes [K, Ns, P, M'] of K random probes: every part's appearance and position move."""
    per_probe = rng.normal(0, 1, (k, 1, len(PARTS), len(ALL_MEASURES)))
    return per_probe + rng.normal(0, 0.3, (k, samples, len(PARTS), len(ALL_MEASURES)))


def _sensitivity(change: np.ndarray, responses: np.ndarray, readouts: int = 2000):
    means = direction_means(change)
    design, column_part = probe_design(means, *null_reference(means), range(len(PARTS)))
    scores = sensitivity_profiles(design, column_part, len(PARTS), responses)
    null = random_readouts(responses.shape[1], readouts, seed=1)
    return scores, sensitivity_profiles(design, column_part, len(PARTS), responses, null)


def _appearance(means: np.ndarray, part: str) -> np.ndarray:
    """A response to one part's appearance (area and colour), [K]."""
    j = PARTS.index(part)
    return sum(means[:, j, ALL_MEASURES.index(m)] for m in ("area", "red_green", "width"))


def test_a_unit_that_reads_one_part_is_significant_for_it_and_mixtures_are_not() -> None:
    rng = np.random.default_rng(0)
    change = _probes(rng)
    means = direction_means(change)
    # 24 units: 12 read one part each (two per part), 12 read every part about equally
    own = [_appearance(means, PARTS[i % 6]) for i in range(12)]
    mixed = [sum(rng.uniform(0.7, 1.3) * _appearance(means, p) for p in PARTS)
             for _ in range(12)]
    responses = np.stack(own + mixed, 1) + rng.normal(0, 0.5, (len(means), 24))
    scores, null_scores = _sensitivity(change, responses)
    table = selectivity_table(np.arange(24), change[:24], change, PARTS)
    assert len(table) == 24 * len(PARTS) * len(ALL_MEASURES)
    np.testing.assert_allclose(table["null_mean"].to_numpy().reshape(24, len(PARTS), -1)[0],
                               null_reference(means)[0])
    tuning = rng.uniform(0, 1, scores.shape)
    summary = unit_summary(np.arange(24), scores, null_scores, PARTS, tuning)
    assert summary["top_part"][:12].tolist() == [PARTS[i % 6] for i in range(12)]
    assert summary["significant"][:12].all() and not summary["significant"][12:].any()
    assert summary["specificity_p"][:12].max() < 0.01
    assert (summary["concentration"][:12] > 0.9).all()
    assert set(summary["verdict"][12:]) <= {"leaning", "none"}
    np.testing.assert_allclose(summary["tuning_strength"], tuning.sum(1))
    assert {f"score_{p}" for p in PARTS} | {f"tuning_{p}" for p in PARTS} <= set(summary)
    long = unit_parts_table(summary, null_scores, PARTS)
    assert len(long) == 24 * len(PARTS)
    np.testing.assert_allclose(long.groupby("unit")["share"].sum(), 1.0)
    assert (long.groupby("unit")["top"].sum() == 1).all()
    hit = long[(long.unit == 4) & (long.part == "body")].iloc[0]
    assert hit.top and hit.q == pytest.approx(summary.loc[4, "specificity_q"])
    assert long.loc[~long.top, "q"].isna().all()


def test_random_readouts_are_not_significant() -> None:
    # units that are themselves random mixtures of the representation: p-values uniform
    rng = np.random.default_rng(1)
    change = _probes(rng)
    means = direction_means(change)
    basis = np.stack([_appearance(means, p) for p in PARTS], 1)  # six part features
    representation = basis @ rng.normal(0, 1, (6, 64)) + rng.normal(0, 0.5, (len(means), 64))
    responses = representation @ random_readouts(64, 128, seed=7)
    scores, null_scores = _sensitivity(change, representation)
    units_scores = sensitivity_profiles(
        *probe_design(means, *null_reference(means), range(len(PARTS))), len(PARTS), responses)
    summary = unit_summary(np.arange(128), units_scores, null_scores, PARTS,
                           np.ones_like(units_scores))
    assert summary["significant"].mean() <= 0.05
    assert 0.3 < summary["specificity_p"].median() < 0.7
    assert scores.shape == (64, len(PARTS))


def test_the_profile_credits_the_part_read_not_the_parts_it_carries_along() -> None:
    # a longer body carries the legs along: their positions follow the body's width in every
    # probe, and the legs' appearance changes a little with it. A body unit is a body unit.
    rng = np.random.default_rng(2)
    change = _probes(rng)
    body, leg = PARTS.index("body"), PARTS.index("leg")
    width = ALL_MEASURES.index("width")
    for m in ("cx", "cy", "motion"):
        change[:, :, leg, ALL_MEASURES.index(m)] = 2 * change[:, :, body, width]
    change[:, :, leg, ALL_MEASURES.index("area")] += 0.5 * change[:, :, body, width]
    means = direction_means(change)
    responses = _appearance(means, "body")[:, None] + rng.normal(0, 0.3, (len(means), 1))
    scores, _ = _sensitivity(change, responses)
    share = scores[0] / scores[0].sum()
    assert share.argmax() == body and share[body] > 0.8 and share[leg] < 0.1
    # a leg unit, where the legs are carried along by the body: the leg, not the body
    responses = _appearance(means, "leg")[:, None] + rng.normal(0, 0.3, (len(means), 1))
    scores, _ = _sensitivity(change, responses)
    assert scores[0].argmax() == leg and scores[0, leg] / scores[0].sum() > 0.8


def test_two_stage_q_gains_power_only_when_most_tests_have_an_effect() -> None:
    rng = np.random.default_rng(3)
    # 160 of 200 tests have an effect, 60 of them with p in (0.02, 0.06): BH passes about 110,
    # the two stages nearly all 160
    p = np.concatenate([rng.uniform(0, 0.02, 100), rng.uniform(0.02, 0.06, 60),
                        rng.uniform(0, 1, 40), [np.nan]])
    bh, two = benjamini_hochberg(p), two_stage_q(p, 0.05)
    assert np.isnan(two[-1])
    assert (bh < 0.05).sum() < 130 and (two < 0.05).sum() >= 150
    # the decision is the two-stage procedure's: BH at alpha/(1+alpha), then BH with m0 = m - r
    finite = p[:-1]
    r = int((benjamini_hochberg(finite) <= 0.05 / 1.05).sum())
    order = np.sort(finite)
    passing = np.nonzero(order <= np.arange(1, 201) * (0.05 / 1.05) / (200 - r))[0]
    assert (two < 0.05).sum() == passing.max() + 1
    # all null: as conservative as BH (no stage-one rejections, BH's q-values times 1.05)
    null = rng.uniform(0, 1, 500)
    np.testing.assert_allclose(two_stage_q(null), np.minimum(benjamini_hochberg(null) * 1.05, 1))
    assert (two_stage_q(null) < 0.05).sum() == 0


def test_specificity_p_counts_the_null_at_or_above() -> None:
    null = np.array([0.1, 0.2, 0.3, 0.4])
    p = specificity_p(np.array([0.05, 0.3, 0.5, np.nan]), null)
    np.testing.assert_allclose(p[:3], [5 / 5, 3 / 5, 1 / 5])
    assert np.isnan(p[3])


@pytest.mark.parametrize("effects", [0, 5, 60, 190])
def test_the_significance_line_separates_significant_units_from_the_others(effects: int) -> None:
    """A unit's concentration exceeds the run's line exactly when the test calls it
    significant: the bars' line and q tell the same story, with few or many effects, ties in
    the read-outs and none significant."""
    rng = np.random.default_rng(effects)
    null = np.round(rng.beta(4, 5, 4000), 3)  # rounded: many ties
    conc = np.concatenate([np.round(rng.beta(4, 5, 200 - effects), 3),
                           rng.uniform(0.6, 0.99, effects)])
    p = specificity_p(conc, null)
    q = two_stage_q(p)
    line = significance_line(null, p, q)
    np.testing.assert_array_equal(conc > line, q < 0.05)
    assert ((q < 0.05).sum() > 0) == (effects > 0)
    if effects == 0:  # the line a single unit would have to pass: beyond all but a few
        assert line >= np.quantile(null, 0.999)


def test_the_significance_line_is_out_of_reach_when_no_p_can_pass() -> None:
    """With 2048 units and 40 read-outs, no p (at least 1/41) passes BH for one unit."""
    null = np.linspace(0.2, 0.8, 40)
    p = specificity_p(np.full(2048, 0.5), null)
    assert significance_line(null, p, two_stage_q(p)) == 1.0


def test_small_parts_are_masked_by_their_base_area() -> None:
    change = np.ones((2, 3, 2, len(ALL_MEASURES)))
    base_area = np.array([[0.1, 0.0005], [0.1, 0.01], [0.0001, 0.01]])  # [Ns, P]
    masked = mask_small_parts(change, base_area, 0.001)
    assert np.isnan(masked[:, 0, 1]).all() and np.isnan(masked[:, 2, 0]).all()
    assert np.isfinite(masked[:, 1]).all() and change.sum() == change.size  # input untouched
    # a part measured on too few of the samples has no mean change
    means = direction_means(masked, min_fraction=0.8)
    assert np.isnan(means[:, 0]).all() and np.isnan(means[:, 1]).all()


def test_directions_and_calibration_on_a_linear_world() -> None:
    """w -> image -> r all linear: the reverse map is exact, so the calibrated step makes the
    re-encoded unit follow the value set (gain 1), in closed form and rendered."""
    g = torch.Generator().manual_seed(0)
    w_dim, d = 6, 4
    to_r = torch.randn(d, w_dim, generator=g)

    class Gen:
        num_ws = 1

        def synthesis(self, ws):  # scaled to stay inside the image range [-1, 1]
            return (ws[:, 0] / 100).view(-1, 1, 1, w_dim).repeat(1, 3, 1, 1)

    class Clf:
        def preprocess(self, x):
            return x[:, 0, 0] * 100

        def features(self, x):
            return x @ to_r.T

        def head(self, r):
            return r[:, :2]

    w = torch.randn(500, w_dim, generator=g)
    r = w @ to_r.T
    reverse = reverse_map(r, w, alpha=1e-6)
    torch.testing.assert_close(reverse, to_r, atol=1e-3, rtol=1e-3)
    link = torch.linalg.lstsq(r, w).solution.T  # [w_dim, D]
    assert torch.equal(latent_directions("link", link, r, w, 1.0), link)
    cross = latent_directions("crosscov", link, r, w, 1.0)
    ridge = latent_directions("ridge", link, r, w, 1e9)
    cos = torch.nn.functional.cosine_similarity(cross, ridge, dim=0)
    assert (cos > 0.999).all()  # ridge tends to the cross-covariance for large alpha
    with pytest.raises(ValueError, match="tuning.direction"):
        latent_directions("jacobian", link, r, w, 1.0)

    dirs, readout = ridge.T, torch.eye(d)
    gains = analytic_gains(reverse, dirs, readout)
    spans = torch.ones(d)
    scale = calibrated_scale(gains, dirs, spans, max_latent_step=1e6)
    offsets = torch.tensor([-0.5, 1.5]).expand(d, 3, 2)
    measured = measured_gains(Gen(), Clf(), w[:3], dirs * scale[:, None], readout, offsets)
    torch.testing.assert_close(measured, torch.ones(d), atol=1e-3, rtol=1e-3)
    # the cap: a direction too weak to calibrate moves the latent by max_latent_step at most
    capped = calibrated_scale(gains * 1e-6, dirs, spans, max_latent_step=0.5)
    torch.testing.assert_close(capped * dirs.norm(dim=1) * spans, torch.full((d,), 0.5))
    assert (calibrated_scale(-gains, dirs, spans, 0.5) > 0).all()


def test_class_centred_directions_leave_out_what_the_classes_differ_in() -> None:
    # unit 0 tracks w[:, 0] within each class; the two classes also differ in w[:, 1], and the
    # unit's mean differs between them: a fit on the overall mean mixes w[:, 1] in
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(2).repeat_interleave(400)
    w = torch.randn(800, 4, generator=g)
    w[:, 1] += 3.0 * labels
    r = (w[:, :1] + 2.0 * labels[:, None] + 0.1 * torch.randn(800, 1, generator=g)).clamp_min(0)
    for mode in ("crosscov", "ridge"):
        overall = latent_directions(mode, torch.zeros(4, 1), r, w, 10.0)[:, 0]
        within = latent_directions(mode, torch.zeros(4, 1), r, w, 10.0, labels)[:, 0]
        assert abs(overall[1]) > 0.5 * abs(overall[0])
        assert abs(within[1]) < 0.1 * abs(within[0])


def test_angle_changes_wrap_around() -> None:
    angle = MEASURES.index("angle")
    measures = np.zeros((1, 1, 2, 1, len(MEASURES)))
    measures[0, 0, 0, 0, angle], measures[0, 0, 1, 0, angle] = 85.0, -85.0
    change = first_last_change(measures, np.zeros((1, 1, 1)))
    assert change[0, 0, 0, angle] == pytest.approx(10.0)


def test_closed_loop_spearman() -> None:
    x = np.tile(np.arange(6.0), (2, 1)).reshape(2, 2, 3)
    y = np.stack([x[0] ** 3, -x[1]])
    np.testing.assert_allclose(closed_loop_spearman(x, y), [1.0, -1.0])
    assert isinstance(pd.DataFrame({"s": closed_loop_spearman(x, y)}), pd.DataFrame)
