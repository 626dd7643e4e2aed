"""A symbolic link inside an artifact root (issue 35, case 3): ``status`` and ``status
--verify`` show it as corrupt with where it points, no run writes through it (nothing outside
the root is touched), and ``clean`` leaves it alone."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from storage import ArtifactStore, CorruptArtifact, content_key
from tests.fixtures.snapshot import snapshot

KEY = content_key("paired", 1, {"case": "link"})


def _linked_root(tmp_path: Path) -> tuple[ArtifactStore, Path, Path]:
    """A root whose paired/<KEY> folder was moved elsewhere and replaced by a link to it."""
    root = tmp_path / "root"
    store = ArtifactStore(str(root))
    with store.writer("paired", KEY) as w:
        w.write_array("w", np.arange(12, dtype="float32").reshape(3, 4))
    outside = tmp_path / "elsewhere" / KEY
    outside.parent.mkdir()
    shutil.move(str(root / "paired" / KEY), str(outside))
    os.symlink(outside, root / "paired" / KEY)
    return store, root, outside


def test_status_and_verify_show_a_linked_key_folder(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    _, root, outside = _linked_root(tmp_path)
    assert main(["status", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert KEY in out and "corrupt" in out and "symbolic link" in out and str(outside) in out
    assert main(["status", "--root", str(root), "--verify"]) == 1
    assert "symbolic link" in capsys.readouterr().out


def test_no_write_goes_through_a_link(tmp_path: Path) -> None:
    store, root, outside = _linked_root(tmp_path)
    before = snapshot(outside)
    assert not store.exists("paired", KEY)
    with pytest.raises(CorruptArtifact, match="symbolic link.*never writes through a link"):
        with store.writer("paired", KEY) as w:
            w.write_array("w", np.zeros(3))
    with pytest.raises(CorruptArtifact, match="symbolic link"):
        store.sharded("paired", KEY, ["a", "b"])
    assert snapshot(outside) == before  # the old data folder at the target is still there


def test_clean_leaves_a_link_and_its_target(tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    _, root, outside = _linked_root(tmp_path)
    before = snapshot(outside)
    assert main(["clean", "--root", str(root), "--older-than", "0", "--corrupt"]) == 0
    assert "removed 0" in capsys.readouterr().out
    assert (root / "paired" / KEY).is_symlink() and snapshot(outside) == before
