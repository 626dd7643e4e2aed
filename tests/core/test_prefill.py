"""Pre-fill while labelling: proposals, the least-sure ranking, leave-one-out, cancellation, and
the quality on the toy world that docs/real-models.md states."""

from __future__ import annotations

import pytest
import torch

from linkstyle_core.labels import toy_labelled
from linkstyle_core.prefill import Proposal, leave_one_out, propose
from linkstyle_core.segment import mean_iou
from linkstyle_core.tuning import generator_features
from tests.fixtures.tiny_models import RES, tiny_generator

# docs/real-models.md, "Pre-fill": held-out mIoU on 64 fresh toy images after 3 labelled
TOY_MIOU_3 = 0.80


def _tiny(n: int = 6):
    gen = tiny_generator()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, gen.z_dim, generator=g)
    c = torch.nn.functional.one_hot(torch.arange(n) % gen.c_dim, gen.c_dim).float()
    ws = gen.mapping(z, c)
    images = gen.synthesis(ws).mean(1)
    labels = torch.where(images > 0.3, 1, torch.where(images < -0.3, 2, 0))
    return generator_features(gen, ws, batch_size=4), labels


def test_proposals_cover_every_image_and_rank_the_unlabelled() -> None:
    feats, labels = _tiny()
    proposal = propose(feats, [0, 2], labels[[0, 2]], 3, steps=40)
    assert proposal.labels.shape == (6, RES, RES) and proposal.labels.dtype == torch.int64
    assert proposal.entropy.shape == (6,) and bool((proposal.entropy >= 0).all())
    assert proposal.trained_on == (0, 2)
    order = proposal.least_sure([0, 2])
    assert sorted(order) == [1, 3, 4, 5]
    assert proposal.entropy[order[0]] >= proposal.entropy[order[-1]]


def test_least_sure_orders_by_entropy() -> None:
    p = Proposal(torch.zeros(4, 2, 2, dtype=torch.long), torch.tensor([0.1, 0.9, 0.5, 0.7]),
                 (0,))
    assert p.least_sure([0]) == [1, 3, 2]
    assert p.least_sure() == [1, 3, 2, 0]


def test_leave_one_out_holds_out_each_labelled_image() -> None:
    feats, labels = _tiny()
    held = leave_one_out(feats, [0, 1, 2], labels[:3], 3, steps=30)
    assert held.folds == 3 and len(held.per_part) == 3 and 0.0 <= held.miou <= 1.0


def test_fewer_than_two_labelled_images_are_refused() -> None:
    feats, labels = _tiny()
    with pytest.raises(ValueError, match="at least 2 labelled images"):
        propose(feats, [0], labels[:1], 3)
    with pytest.raises(ValueError, match="at least 2 labelled images"):
        leave_one_out(feats, [0], labels[:1], 3)


def test_a_stale_training_is_abandoned_at_its_next_step() -> None:
    feats, labels = _tiny()
    calls = []

    class Stale(Exception):
        pass

    def check() -> None:
        calls.append(1)
        if len(calls) > 5:
            raise Stale

    with pytest.raises(Stale):
        propose(feats, [0, 1], labels[:2], 3, steps=1000, check=check)
    assert len(calls) == 6


def _toy_miou(labelled: int, steps: int) -> float:
    from linkstyle_core.models.toy import load_toy_generator
    from linkstyle_core.toyworld.factors import PARTS

    gen = load_toy_generator()
    ws, labels = toy_labelled(gen, labelled, 0)
    ws_eval, labels_eval = toy_labelled(gen, 64, 10_000)
    feats = generator_features(gen, torch.cat([ws, ws_eval]))
    proposal = propose(feats, list(range(labelled)), labels, len(PARTS), steps=steps)
    return mean_iou(proposal.labels[labelled:], labels_eval, len(PARTS))[0]


def test_toy_prefill_from_three_painted_images_reaches_the_stated_miou() -> None:
    """The renderer's label maps of 3 toy images stand in for a person's painted masks."""
    assert _toy_miou(3, steps=300) >= TOY_MIOU_3
