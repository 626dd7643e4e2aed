"""The tune stage's background image writer: images and part maps streamed into a shard while
the trajectories render are exactly those kept in memory, and a failed write fails the shard
instead of committing it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from linkstyle_core.config import AnalysisConfig
from linkstyle_core.paired import one_hot
from linkstyle_core.render import broadcast_w
from linkstyle_core.segment import FewShotSegmenter
from linkstyle_core.tuning import base_images, render_with_features, tune
from storage import ArtifactStore, content_key
from tasks.context import models_for
from tasks.tuning import run_streamed


@pytest.fixture(scope="module")
def setup():
    models = models_for(AnalysisConfig(runtime={"device": "cpu"}))
    gen, clf = models.generator, models.classifier
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        w0 = gen.mapping(torch.randn(3, gen.z_dim, generator=g), one_hot(labels, gen.c_dim),
                         0.7)[:, 0]
        feats = render_with_features(gen, broadcast_w(w0[:1], gen.num_ws))[1]
    torch.manual_seed(0)
    seg = FewShotSegmenter([f.shape[1] for f in feats], 7, gen.resolution).eval()
    base = base_images(gen, clf, seg, w0)[0]
    dirs = torch.randn(5, gen.w_dim, generator=g) * 0.5
    r_dim = clf.features(clf.preprocess(torch.zeros(1, 3, gen.resolution,
                                                    gen.resolution))).shape[1]
    readout = torch.nn.functional.one_hot(torch.arange(5), r_dim).float()
    offsets = torch.linspace(-1, 1, 3).expand(5, 3, 3).contiguous()

    def run(**kwargs):
        # batch_size 4: a batch of 3-step trajectories holds one direction's samples and part
        # of the next one's, so directions are completed across batches
        return tune(gen, clf, seg, w0, labels, base, dirs, readout, offsets, batch_size=4,
                    **kwargs)

    return run


def _shard(tmp_path: Path):
    writer = ArtifactStore(str(tmp_path)).sharded("tune", content_key("tune", "t"), ["s0"])
    return writer, writer.shard("s0")


def test_streamed_images_equal_the_kept_ones(setup, tmp_path: Path) -> None:
    kept = setup(keep_images=True)
    writer, shard = _shard(tmp_path)
    with shard as out:
        streamed = run_streamed(out, 5, 3, lambda on_images: setup(on_images=on_images))
    assert streamed.images is None and streamed.parts is None
    torch.testing.assert_close(streamed.measures, kept.measures, equal_nan=True)
    writer.finalize()
    artifact = ArtifactStore(str(tmp_path)).open("tune", writer.key).shard("s0")
    assert np.array_equal(artifact.load("images"), kept.images.numpy())
    assert np.array_equal(artifact.load("parts"), kept.parts.numpy())
    assert artifact.load("images").shape[:3] == (5, 3, 3)


def test_a_failed_image_write_fails_the_shard(setup, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import zarr

    def broken(self, key, value):
        raise OSError(28, "No space left on device")

    writer, shard = _shard(tmp_path)
    monkeypatch.setattr(zarr.Array, "__setitem__", broken)
    with pytest.raises((OSError, RuntimeError), match="No space left on device"):
        with shard as out:
            run_streamed(out, 5, 3, lambda on_images: setup(on_images=on_images))
    assert writer.committed() == []
