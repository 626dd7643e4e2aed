"""Stage 1 core: seeds per (run, split, class, index), batch-size independence, clear failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linkstyle_core.paired import AcceptanceError, sample_class, sample_latents
from tests.fixtures.tiny_models import tiny_classifier, tiny_generator


@pytest.fixture(scope="module")
def models():
    return tiny_generator(), tiny_classifier()


def test_latents_depend_only_on_seed_split_class_and_index() -> None:
    all_ten = sample_latents(8, 0, "train", 1, np.arange(10))
    assert torch.equal(sample_latents(8, 0, "train", 1, np.array([7])), all_ten[7:8])
    assert not torch.equal(sample_latents(8, 0, "test", 1, np.arange(10)), all_ten)
    assert not torch.equal(sample_latents(8, 0, "train", 2, np.arange(10)), all_ten)
    assert not torch.equal(sample_latents(8, 1, "train", 1, np.arange(10)), all_ten)


def test_result_does_not_depend_on_batch_size(models) -> None:
    gen, clf = models
    a = sample_class(gen, clf, 0, 30, batch_size=64)
    b = sample_class(gen, clf, 0, 30, batch_size=5)
    assert torch.equal(a.index, b.index) and a.attempts == b.attempts
    torch.testing.assert_close(a.w, b.w)
    torch.testing.assert_close(a.r, b.r)


def test_only_correctly_classified_samples_are_kept(models) -> None:
    gen, clf = models
    s = sample_class(gen, clf, 1, 25, batch_size=16)
    assert s.w.shape == (25, gen.w_dim) and s.r.shape == (25, clf.feature_dim)
    assert (s.label == 1).all() and (s.confidence > 1 / 3).all()
    assert s.attempts >= 25 and 0 < s.acceptance_rate <= 1
    # re-rendering the kept latents gives the class again
    c = torch.nn.functional.one_hot(s.label, gen.c_dim).float()
    assert len(torch.unique(s.index)) == 25
    z = sample_latents(gen.z_dim, 0, "train", 1, s.index.numpy())
    ws = gen.mapping(z, c, 0.7)
    torch.testing.assert_close(ws[:, 0], s.w)
    logits = clf.head(clf.features(clf.preprocess(gen.synthesis(ws))))
    assert (logits.argmax(1) == 1).all()


class _NeverClass2:
    """Wraps a classifier so that it never predicts class 2."""

    def __init__(self, inner, nan: bool = False) -> None:
        self.inner, self.nan = inner, nan
        self.num_classes, self.feature_dim = inner.num_classes, inner.feature_dim

    def preprocess(self, x):
        return self.inner.preprocess(x)

    def features(self, x):
        r = self.inner.features(x)
        return r * float("nan") if self.nan else r

    def head(self, r):
        logits = self.inner.head(r)
        logits[:, 2] = -1e9
        return logits


def test_rarely_accepted_class_fails_naming_class_and_rate(models) -> None:
    gen, clf = models
    with pytest.raises(AcceptanceError, match=r"class 2: acceptance rate 0\.0% after 12 draws"):
        sample_class(gen, _NeverClass2(clf), 2, 10, batch_size=4)
    with pytest.raises(AcceptanceError, match=r"class 2: only 0 of 10 train samples accepted"):
        sample_class(gen, _NeverClass2(clf), 2, 10, batch_size=4, min_acceptance=0.0,
                     max_attempts_factor=2)


def test_nan_activations_are_refused(models) -> None:
    gen, clf = models
    with pytest.raises(FloatingPointError, match="contain NaN/Inf.*runtime.precision"):
        sample_class(gen, _NeverClass2(clf, nan=True), 0, 5)
