"""A stop (Ctrl-C, SIGTERM) ends every batch loop at its next batch (``linkstyle_core.stop``).

Each loop runs with tiny models and many small batches; the stop is requested from inside the
first batch's synthesis, and the loop must raise ``StopRequested`` before it renders a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from linkstyle_core import stop
from linkstyle_core.counterfactual import find_counterfactuals
from linkstyle_core.link import LinearLink
from linkstyle_core.paired import sample_class
from linkstyle_core.segment import train_segmenter
from linkstyle_core.tuning import base_images, measured_gains, tune
from tests.fixtures.tiny_models import W_DIM, tiny_classifier, tiny_generator


@pytest.fixture(autouse=True)
def _no_stop_left() -> Iterator[None]:
    stop.clear()
    yield
    stop.clear()


class StoppingGenerator:
    """The tiny generator, asking for a stop during its first synthesis; counts calls."""

    def __init__(self) -> None:
        self.inner = tiny_generator()
        self.calls = 0
        for name in ("z_dim", "c_dim", "w_dim", "num_ws", "resolution", "mapping", "features"):
            setattr(self, name, getattr(self.inner, name))

    def synthesis(self, ws: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        stop.request("SIGTERM")
        return self.inner.synthesis(ws)


def _segmenter():
    gen = tiny_generator()
    ws = gen.mapping(torch.randn(4, gen.z_dim), torch.eye(gen.c_dim)[[0, 1, 2, 0]])
    return train_segmenter(gen.features(ws), torch.zeros(4, 8, 8, dtype=torch.long), 2,
                           steps=2)


def _loops() -> dict[str, Callable[[StoppingGenerator], object]]:
    classifier = tiny_classifier()
    w0 = torch.randn(12, W_DIM)
    k, n, steps = 5, len(w0), 3
    offsets = torch.linspace(-1, 1, steps).expand(k, n, steps).contiguous()
    segmenter = _segmenter()
    return {
        "paired sampling": lambda g: sample_class(g, classifier, 0, 40, batch_size=4,
                                                  min_acceptance=0.0),
        "measured gains": lambda g: measured_gains(g, classifier, w0, torch.randn(k, W_DIM),
                                                   torch.randn(k, 16), offsets[..., :2],
                                                   batch_size=4),
        "base images": lambda g: base_images(g, classifier, segmenter, w0, batch_size=2),
        "tuning and the null": lambda g: tune(g, classifier, segmenter, w0,
                                              torch.zeros(n, dtype=torch.long),
                                              torch.zeros(n, 3), torch.randn(k, W_DIM),
                                              torch.randn(k, 16), offsets, batch_size=6),
        "counterfactuals": lambda g: find_counterfactuals(
            g, classifier, _identity_link(), torch.rand(6, 16), torch.zeros(6, dtype=torch.long),
            torch.ones(6, dtype=torch.long), max_steps=50),
    }


def _identity_link() -> LinearLink:
    link = LinearLink()
    link.coef_ = torch.randn(W_DIM, 16) * 0.1
    link.intercept_ = torch.zeros(W_DIM)
    return link


@pytest.mark.parametrize("loop", list(_loops()))
def test_every_batch_loop_stops_at_its_next_batch(loop: str) -> None:
    generator = StoppingGenerator()
    with pytest.raises(stop.StopRequested, match="asked to stop"):
        _loops()[loop](generator)
    assert generator.calls == 1  # the batch running when the stop came, and no other


def test_segmenter_training_stops_at_its_next_step() -> None:
    gen = tiny_generator()
    ws = gen.mapping(torch.randn(4, gen.z_dim), torch.eye(gen.c_dim)[[0, 1, 2, 0]])
    stop.request("SIGINT")
    with pytest.raises(stop.StopRequested):
        train_segmenter(gen.features(ws), torch.zeros(4, 8, 8, dtype=torch.long), 2, steps=500)
    assert stop.requested() == "SIGINT"
    stop.clear()
    assert stop.requested() is None
