"""Shared by the reliability tests: a labelled folder for the tiny models, a world of an
artifact root beside a user's files, and an environment that every test gets back as it
was."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from storage import ArtifactStore, content_key
from tests.fixtures.tiny_models import tiny_label_folder


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled folder for the tiny generator (parts background, bright, dark)."""
    return Path(tiny_label_folder(tmp_path_factory.mktemp("labels") / "labelled"))


@pytest.fixture(autouse=True)
def _keep_environment() -> object:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def world(tmp_path: Path, labels: Path) -> dict[str, Path]:
    """An artifact root holding one committed artifact, the label folder, a file, and folders
    for broken label folders."""
    root = tmp_path / "artifacts"
    with ArtifactStore(str(root)).writer("paired", content_key("paired", 1, {"x": 1})) as w:
        w.write_array("w", np.ones((3, 2), dtype="float32"))
    (tmp_path / "a-file.txt").write_text("not a folder\n")
    bad_json = tmp_path / "bad-json"
    bad_json.mkdir()
    (bad_json / "parts.json").write_text('["background", "ear"')
    not_imported = tmp_path / "not-imported"
    not_imported.mkdir()
    (not_imported / "parts.json").write_text('["background", "bright", "dark"]')
    corrupt = tmp_path / "corrupt-npz"
    corrupt.mkdir()
    (corrupt / "labels.npz").write_bytes(b"PK\x03\x04 this is not a zip file")
    wrong_shape = tmp_path / "wrong-shape"
    wrong_shape.mkdir()
    np.savez(wrong_shape / "labels.npz", ws=np.zeros((4, 3, 5), "float32"),
             labels=np.zeros((4, 8, 8), "int64"), parts=np.asarray(["background", "x"]))
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")  # a link to a folder not there
    return {"tmp": tmp_path, "root": root, "labels": labels}
