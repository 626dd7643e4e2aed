"""Counterfactual core: flips confirmed on the stored (8-bit) images, bounded shifts."""

from __future__ import annotations

import pytest
import torch

from linkstyle_core.counterfactual import find_counterfactuals, pixel_distance, shift_statistics
from linkstyle_core.link import LinearLink
from linkstyle_core.paired import sample_class
from tests.fixtures.tiny_models import tiny_classifier, tiny_generator


@pytest.fixture(scope="module")
def world():
    gen, clf = tiny_generator(), tiny_classifier()
    samples = [sample_class(gen, clf, c, 60) for c in range(3)]
    r = torch.cat([s.r for s in samples])
    w = torch.cat([s.w for s in samples])
    return gen, clf, LinearLink("ridge", alpha=0.01).fit(r, w), samples


def test_successes_are_confirmed_by_the_stored_images(world) -> None:
    gen, clf, link, samples = world
    r = samples[0].r[:8]
    origin, target = torch.zeros(8, dtype=torch.long), torch.full((8,), 2)
    res = find_counterfactuals(gen, clf, link, r, origin, target, max_steps=200)
    assert res.success.float().mean() > 0.5
    stored = res.images[:, 1].float() / 127.5 - 1.0  # exactly what the store keeps
    predicted = clf.head(clf.features(clf.preprocess(stored))).argmax(1)
    assert torch.equal(predicted == 2, res.success)
    originals = clf.head(clf.features(clf.preprocess(res.images[:, 0].float() / 127.5 - 1)))
    assert (originals.argmax(1) == 0).float().mean() > 0.7  # they started as the origin class
    assert (res.prob_after[res.success] > res.prob_before[res.success]).all()
    assert (res.steps[res.success] <= 200).all() and (res.steps[res.success] % 10 == 0).all()
    assert ((r - res.shift) >= -1e-6).all()  # r - s stays non-negative


def test_a_tiny_budget_fails_honestly(world) -> None:
    gen, clf, link, samples = world
    r = samples[1].r[:4]
    res = find_counterfactuals(gen, clf, link, r, torch.ones(4, dtype=torch.long),
                               torch.zeros(4, dtype=torch.long), max_steps=1, lr=1e-6)
    assert not res.success.any() and (res.steps == 1).all()


def test_shift_statistics_and_pixel_distance() -> None:
    shift = torch.tensor([[0.0, 3.0, -4.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    stats = shift_statistics(shift, top_k=2)
    assert stats["l1"].tolist() == [7.0, 4.0] and stats["l2"].tolist() == [5.0, 2.0]
    assert stats["sparsity"].tolist() == [0.5, 0.0]
    assert stats["top_units"][0].tolist() == [2, 1]
    images = torch.zeros(1, 2, 3, 2, 2, dtype=torch.uint8)
    images[0, 1] = 255
    assert pixel_distance(images).item() == pytest.approx(1.0)
