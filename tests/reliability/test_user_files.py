"""A person's files are never overwritten silently (issue 35, cases 1, 2, 8, 9, 14):
``labels export`` never resets painted masks (``--add`` appends), ``report --out`` and
``unit --out`` write only into what they created or marked, never into an artifact root, and
every refusal is one line naming the fix, given before any work."""

from __future__ import annotations

import errno
import json
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from flows.analysis import tune_score_flow
from flows.cli import main
from flows.cli.errors import describe
from flows.outputs import OWNER_FILE
from linkstyle_core.labels import image_count, save_mask
from tests.fixtures.snapshot import snapshot
from tests.fixtures.tiny_models import TINY_CONFIG, tiny_label_folder

pytestmark = pytest.mark.usefixtures("prefect_harness")
PARTS = ["background", "bright", "dark"]


def _write_config(tmp_path: Path, **extra: Any) -> str:
    config = {**TINY_CONFIG, "artifact_root": str(tmp_path / "root"),
              "segment": {"parts": PARTS}, **extra}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_error(err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("linkstyle: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])


# -- labels export ---------------------------------------------------------------------------
def test_export_never_resets_painted_masks_and_add_keeps_them(tmp_path, capsys) -> None:
    config = _write_config(tmp_path)
    folder = tmp_path / "labels"
    assert _run(capsys, "labels", "export", "--config", config, "--out", str(folder),
                "--count", "4")[0] == 0
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 1
    save_mask(folder, 1, mask)  # an hour of painting, in miniature
    before = snapshot(folder)
    for count in ("4", "2"):  # the same count again, or fewer images
        code, _, err = _run(capsys, "labels", "export", "--config", config, "--out",
                            str(folder), "--count", count)
        assert code == 2
        _one_error(err, "labels/0001.png", "--add", "new folder")
        assert snapshot(folder) == before

    latents = np.load(folder / "latents.npy")
    assert _run(capsys, "labels", "export", "--config", config, "--out", str(folder), "--add",
                "--count", "2")[0] == 0
    assert image_count(folder) == 6 and len(np.load(folder / "latents.npy")) == 6
    np.testing.assert_array_equal(np.load(folder / "latents.npy")[:4], latents)
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "labels" / "0001.png")), mask)
    for name, entry in before.items():  # every earlier file is as it was
        if entry is not None and name != "latents.npy":
            assert snapshot(folder)[name] == entry, name
    # the added images are those one export of six would have made
    assert _run(capsys, "labels", "export", "--config", config, "--out",
                str(tmp_path / "six"), "--count", "6")[0] == 0
    for i in (4, 5):
        assert (folder / "images" / f"{i:04d}.png").read_bytes() == \
            (tmp_path / "six" / "images" / f"{i:04d}.png").read_bytes()
    np.testing.assert_array_equal(np.load(folder / "latents.npy"),
                                  np.load(tmp_path / "six" / "latents.npy"))


def test_export_replaces_an_unpainted_folder_whole(tmp_path, capsys) -> None:
    config = _write_config(tmp_path)
    folder = tmp_path / "labels"
    for count in ("5", "3"):
        assert _run(capsys, "labels", "export", "--config", config, "--out", str(folder),
                    "--count", count, "--seed", count)[0] == 0
    # fewer images than before: nothing stale is left, so `labels open` takes the folder
    for sub in ("images", "labels", "preview"):
        assert sorted(p.name for p in (folder / sub).iterdir()) == \
            ["0000.png", "0001.png", "0002.png"], sub
    assert len(np.load(folder / "latents.npy")) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".labels.")]


def test_export_refuses_other_folders_and_the_artifact_root(tmp_path, capsys) -> None:
    config = _write_config(tmp_path)
    mine = tmp_path / "documents"
    mine.mkdir()
    (mine / "thesis.tex").write_text("chapter 1\n")
    root = tmp_path / "root"
    root.mkdir()
    (root / ".linkstyle-root.json").write_text(json.dumps({"linkstyle_root": 1}))
    imported = Path(tiny_label_folder(tmp_path / "imported", count=4))
    unreadable = tmp_path / "unreadable"
    assert _run(capsys, "labels", "export", "--config", config, "--out", str(unreadable),
                "--count", "3")[0] == 0
    (unreadable / "labels" / "0002.png").write_bytes(b"\x89PNG broken")
    cases = [(mine, [], ["not a label folder", "new or empty folder"]),
             (root / "labels", [], ["inside the artifact root", str(root)]),
             (tmp_path / "config.yaml", [], ["is a file"]),
             (imported, [], ["labels.npz", "--add"]),
             (unreadable, [], ["labels/0002.png", "--add"])]  # it may hold work
    for out, extra, words in cases:
        before = snapshot(out)
        code, _, err = _run(capsys, "labels", "export", "--config", config, "--out", str(out),
                            *extra)
        assert code == 2, err
        _one_error(err, *words)
        assert snapshot(out) == before
    assert not (root / "labels").exists()


# -- report --out and unit --out -------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished tiny run (stages 1-4, images stored) and its config file."""
    tmp = tmp_path_factory.mktemp("tiny-run")
    config = {**TINY_CONFIG, "artifact_root": str(tmp / "root"), "link": {"alpha": 0.01},
              "tuning": {"units": "0-5", "samples_per_class": 2, "shard_size": 6,
                         "null_directions": 20},
              "segment": {"labels": tiny_label_folder(tmp / "labels"), "labelled_images": 16,
                          "steps": 40}}
    reports = tune_score_flow(config)
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    return {"config": str(tmp / "config.yaml"), "root": tmp / "root", "reports": reports}


def test_report_out_never_overwrites_a_persons_files_or_the_root(run, tmp_path, capsys,
                                                                  monkeypatch) -> None:
    import tasks.report

    mine = tmp_path / "site"
    (mine / "img").mkdir(parents=True)
    (mine / "index.html").write_text("<h1>my page</h1>")
    (mine / "units.csv").write_text("a,b\n1,2\n")
    (mine / "img" / "strip-0.png").write_bytes(b"my picture")
    root = run["root"]
    built: list[Path] = []
    monkeypatch.setattr(tasks.report, "build_report",
                        lambda *a, **k: built.append(a[2]) or pytest.fail("built"))
    for out, words in ((mine, ["already holds", "index.html", "new folder"]),
                       (root, ["inside the artifact root"]),
                       (root / "link", ["inside the artifact root"]),
                       (tmp_path / "config-file", ["is a file"])):
        if out.name == "config-file":
            out.write_text("x")
        before, root_before = snapshot(out), snapshot(root)
        code, _, err = _run(capsys, "report", "--config", run["config"], "--out", str(out))
        assert code == 2
        _one_error(err, *words)
        assert snapshot(out) == before and snapshot(root) == root_before
    assert built == []  # refused before any work


def test_report_writes_a_new_folder_and_rewrites_only_its_own(run, tmp_path, capsys) -> None:
    out = tmp_path / "reports" / "tiny"
    code, text, _ = _run(capsys, "report", "--config", run["config"], "--out", str(out),
                         "--pages", "top")
    assert code == 0 and str(out / "index.html") in text
    assert json.loads((out / OWNER_FILE).read_text())["kind"] == "report"
    assert not [p for p in out.parent.iterdir() if p.name != "tiny"]  # no staging left
    # the classes row names the classes analysed (all three of the tiny classifier here)
    assert "3: " in (out / "index.html").read_text()
    (out / "notes.txt").write_text("my notes")  # a person's file beside the report
    (out / "index.html").write_text("stale")
    assert _run(capsys, "report", "--config", run["config"], "--out", str(out), "--pages",
                "top")[0] == 0
    assert (out / "notes.txt").read_text() == "my notes"
    assert "<html" in (out / "index.html").read_text()


def test_unit_out_never_overwrites_a_persons_file(run, tmp_path, capsys,
                                                   monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("unit-3.png").write_bytes(b"my own figure")
    Path("photo.jpg").write_bytes(b"jpeg")
    for argv, words in ((["3"], ["unit-3.png", "did not write it"]),
                        (["3", "--out", "photo.jpg"], ["must end in .png"]),
                        (["3", "--out", str(run["root"] / "u.png")], ["artifact root"]),
                        (["3", "--out", "missing/u.png"], ["does not exist"]),
                        (["3", "--samples", "0"], ["--samples"])):
        before = snapshot(tmp_path)
        code, _, err = _run(capsys, "unit", *argv, "--config", run["config"])
        assert code == 2
        _one_error(err, *words)
        assert snapshot(tmp_path) == before
    assert _run(capsys, "unit", "3", "--config", run["config"], "--out", "u3.png")[0] == 0
    first = Path("u3.png").read_bytes()
    assert Image.open("u3.png").text.get("linkstyle") == "linkstyle unit 3"
    # its own figure it replaces
    assert _run(capsys, "unit", "3", "--config", run["config"], "--out", "u3.png")[0] == 0
    assert Path("u3.png").read_bytes()[:8] == first[:8]


def test_report_without_a_completed_run_says_so(tmp_path, capsys) -> None:
    config = _write_config(tmp_path)
    code, _, err = _run(capsys, "report", "--config", config)
    assert code == 2
    _one_error(err, "no completed run of this config with a selectivity stage",
                "`linkstyle run` first")
    assert "'keys'" not in err


def test_an_out_error_names_out_not_the_artifact_root(tmp_path) -> None:
    args = Namespace(out=str(tmp_path / "site"), root=None)
    exc = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "site" / "x.png"))
    assert "--out" in describe(exc, args) and "--root" not in describe(exc, args)
    staged = PermissionError(errno.EACCES, "Permission denied",
                             str(tmp_path / ".site.partial-12" / "x.png"))
    assert "--out" in describe(staged, args)
    elsewhere = PermissionError(errno.EACCES, "Permission denied", "/srv/artifacts/x")
    assert "artifact root (--root)" in describe(elsewhere, args)
    folder = Namespace(folder=str(tmp_path / "labels"))
    exc = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "labels" / "a"))
    assert "DIR" in describe(exc, folder) and "--root" not in describe(exc, folder)
