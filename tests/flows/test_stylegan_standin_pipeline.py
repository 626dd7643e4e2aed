"""Stages 1-2 on a StyleGAN-XL network: the stand-in checkout (tests/fixtures/stylegan_standin.py)
runs through the `stylegan-xl` adapter in the toy-sized pipeline, with a classifier fitted to it
through a `python` entry point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flows.analysis import link_flow
from storage import ArtifactStore
from tests.fixtures.stylegan_standin import (
    C_DIM,
    FEATURES,
    NETWORK_ENV,
    SOURCE_ENV,
    W_DIM,
    write_checkout,
    write_network,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_link_flow_runs_on_the_stylegan_xl_adapter(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_checkout(tmp_path / "stylegan-xl")
    network = write_network(tmp_path / "networks" / "standin16.pkl", source)
    monkeypatch.setenv(SOURCE_ENV, str(source))
    monkeypatch.setenv(NETWORK_ENV, str(network))
    config = {
        "generator": {"kind": "stylegan-xl", "network": str(network), "source": str(source),
                      "ops": "ref"},
        "classifier": {"kind": "python",
                       "target": "tests.fixtures.stylegan_standin:standin_classifier"},
        "data": {"classes": list(range(C_DIM)), "samples_per_class": 24,
                 "test_samples_per_class": 12},
        "link": {"type": "ridge", "alpha": 0.01},
        "runtime": {"device": "cpu", "batch_size": 32},
        "artifact_root": str(tmp_path / "artifacts"),
    }
    reports = link_flow(config)

    store = ArtifactStore(config["artifact_root"])
    train = store.open("paired", reports["paired"].keys["train"])
    assert train.load("w").shape == (24 * C_DIM, W_DIM)
    assert train.load("r").shape == (24 * C_DIM, FEATURES)
    assert np.bincount(train.load("label")).tolist() == [24] * C_DIM
    acceptance = train.table("acceptance")
    assert (acceptance["acceptance_rate"] > 0.2).all()

    link_key = reports["link"].keys["link"]
    assert store.exists("link", link_key)
    assert store.open("link", link_key).load("coef").shape == (W_DIM, FEATURES)
    metrics = reports["link"].extra["metrics"].set_index("split")
    both = metrics[["r2", "mse", "rsa_class", "rsa_sample"]].to_numpy()
    closed_loop = metrics.loc["test", ["closed_loop_accuracy", "closed_loop_r_corr"]].to_numpy()
    assert np.isfinite(both).all() and np.isfinite(closed_loop.astype(float)).all()
    # r predicts w far better than chance, and images rendered from predicted w keep their class
    assert metrics.loc["train", "r2"] > 0.6 and metrics.loc["test", "r2"] > 0.5
    assert metrics.loc["test", "closed_loop_accuracy"] > 0.5
