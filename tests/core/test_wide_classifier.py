"""The wide toy classifier: thousands of units derived from the bundled 192 by a fixed
construction, whose selective and mixed units are told apart by measurement."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from linkstyle_core.models.protocols import Classifier
from linkstyle_core.models.toy import load_toy_classifier, load_toy_generator
from linkstyle_core.toyworld.ground_truth import measure_ground_truth
from linkstyle_core.toyworld.wide import wide_toy_classifier


@pytest.fixture(scope="module")
def wide():
    return wide_toy_classifier(units=512)


def test_the_wide_classifier_decides_as_the_bundled_one(wide) -> None:
    base, gen = load_toy_classifier(), load_toy_generator()
    z = torch.randn(64, gen.z_dim, generator=torch.Generator().manual_seed(3))
    c = torch.nn.functional.one_hot(torch.arange(64) % gen.c_dim, gen.c_dim).float()
    with torch.no_grad():
        x = base.preprocess(gen.synthesis(gen.mapping(z, c, 0.7)))
        r = wide.features(x)
        torch.testing.assert_close(wide.head(r), base.head(base.features(x)), atol=1e-4,
                                   rtol=1e-4)
    assert isinstance(wide, Classifier) and wide.feature_dim == 512 and (r >= 0).all()
    assert torch.linalg.matrix_rank(wide.mixing.double()) == base.feature_dim
    again = wide_toy_classifier(units=512)
    torch.testing.assert_close(again.mixing, wide.mixing)  # a fixed construction
    assert wide.unit_kind[:4] == ("selective", "mixed", "selective", "mixed")


def test_measured_ground_truth_tells_selective_from_mixed_units(wide) -> None:
    gt = measure_ground_truth(wide, n_per_class=4)
    conc = gt["concentration"].numpy()
    kind = np.array(wide.unit_kind)
    assert (conc[kind == "selective"] >= 0.6).mean() > 0.9
    assert (conc[kind == "mixed"] < 0.5).mean() > 0.9


def test_too_few_units_for_an_exact_head_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 384"):
        wide_toy_classifier(units=200)


def test_the_fingerprint_does_not_depend_on_the_thread_count() -> None:
    """Every cache key holds the classifier's fingerprint: a run on 1 thread must find what a
    run on 2 stored (the pseudo-inverse LAPACK computes differs in its last bits)."""
    code = ("from linkstyle_core.models.registry import fingerprint; "
            "from linkstyle_core.toyworld.wide import wide_toy_classifier; "
            "print(fingerprint(wide_toy_classifier(), 'spec'))")
    prints = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=300, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": str(threads)}).stdout
              for threads in (1, 2)}
    assert len(prints) == 1
