"""Every kind of damage to a committed artifact is reported corrupt (naming the file) by
``status --verify`` and repaired by the next run; a damaged catalog file is a warning.

Each command-line case runs ``flows.cli.main`` in-process and asserts its exit code and a
message naming the file or folder. The cases share one small artifact root (stages 1-2 of the
tiny models, built once per module) and damage a copy of it. Misuse of ``clean`` and the
store's own checks are in test_clean.py.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from flows.cli import main
from storage import ArtifactStore
from tests.fixtures.artifacts import assert_same_artifacts
from tests.fixtures.snapshot import snapshot
from tests.fixtures.tiny_models import TINY_CONFIG


# -- damage to a real root: detected by status --verify, repaired by the next run ----------------
def _config(root: Path) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["artifact_root"] = str(root)
    config["link"] = {"type": "ridge", "alpha": 0.01}
    return config


@pytest.fixture(scope="module")
def pristine(prefect_harness, tmp_path_factory) -> dict:
    """Stages 1-2 of the tiny models, built once: the root and the stage keys."""
    from flows.analysis import link_flow

    root = tmp_path_factory.mktemp("pristine") / "artifacts"
    reports = link_flow(_config(root))
    keys = {"train": reports["paired"].keys["train"], "test": reports["paired"].keys["test"],
            "link": reports["link"].keys["link"]}
    return {"root": root, "keys": keys}


def _data(root: Path, stage: str, key: str, shard: str | None = None) -> Path:
    folder = root / stage / key / ("shards/" + shard if shard else "")
    manifest = json.loads((folder / "manifest.json").read_text())
    return folder / manifest["data_dir"]


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def _link_chunk(root: Path, keys: dict) -> Path:
    return sorted((_data(root, "link", keys["link"]) / "coef.zarr").rglob("c/*/*"))[0]


def _train_shard(root: Path, keys: dict) -> Path:
    return _data(root, "paired", keys["train"], "class-0001")


Damage = Callable[[Path, dict], Path]  # damages the root; returns the path the report names


def flip_link_chunk(root: Path, keys: dict) -> Path:
    chunk = _link_chunk(root, keys)
    _flip(chunk)
    return chunk


def delete_link_chunk(root: Path, keys: dict) -> Path:
    chunk = _link_chunk(root, keys)
    chunk.unlink()
    return chunk


def delete_paired_chunk(root: Path, keys: dict) -> Path:
    chunk = sorted((_train_shard(root, keys) / "w.zarr").rglob("c/*/*"))[0]
    chunk.unlink()
    return chunk


def extra_chunk(root: Path, keys: dict) -> Path:
    chunk = _link_chunk(root, keys)
    extra = chunk.parent / "99"
    shutil.copy(chunk, extra)
    return extra


def truncate_link_parquet(root: Path, keys: dict) -> Path:
    table = _data(root, "link", keys["link"]) / "metrics.parquet"
    table.write_bytes(table.read_bytes()[:-40])
    return table


def delete_paired_parquet(root: Path, keys: dict) -> Path:
    table = _train_shard(root, keys) / "acceptance.parquet"
    table.unlink()
    return table


def flip_paired_parquet(root: Path, keys: dict) -> Path:
    table = _data(root, "paired", keys["test"], "class-0002") / "acceptance.parquet"
    _flip(table)
    return table


def manifest_not_utf8(root: Path, keys: dict) -> Path:
    manifest = root / "link" / keys["link"] / "manifest.json"
    manifest.write_bytes(b"\xff\xfe" + manifest.read_bytes()[2:])
    return manifest


def manifest_bad_json(root: Path, keys: dict) -> Path:
    manifest = root / "paired" / keys["test"] / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:-20])
    return manifest


def shard_manifest_bad_json(root: Path, keys: dict) -> Path:
    manifest = root / "paired" / keys["train"] / "shards" / "class-0000" / "manifest.json"
    manifest.write_text('{"stage": "paired", "key": ')
    return manifest


def shard_manifest_wrong_type(root: Path, keys: dict) -> Path:
    manifest = root / "paired" / keys["train"] / "shards" / "class-0002" / "manifest.json"
    manifest.write_text("[1, 2, 3]")
    return manifest


def junk_in_data_dir(root: Path, keys: dict) -> Path:
    junk = _data(root, "link", keys["link"]) / "notes.txt"
    junk.write_text("an editor's backup")
    return junk


def delete_data_dir(root: Path, keys: dict) -> Path:
    data = _data(root, "link", keys["link"])
    shutil.rmtree(data)
    return data


def flip_zarr_metadata(root: Path, keys: dict) -> Path:
    meta = _data(root, "link", keys["link"]) / "coef.zarr" / "zarr.json"
    meta.write_text(meta.read_text().replace('"float', '"int  '))
    return meta


def _edit_manifest(manifest: Path, **fields: object) -> Path:
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), **fields}))
    return manifest


def data_dir_outside_the_root(root: Path, keys: dict) -> Path:
    """A manifest pointing at a folder outside the root (which a rebuild used to delete)."""
    return _edit_manifest(root / "link" / keys["link"] / "manifest.json",
                          data_dir="../../../victim")


def data_dir_of_another_artifact(root: Path, keys: dict) -> Path:
    """A shard manifest pointing at another shard's data folder inside the root."""
    other = _train_shard(root, keys)  # class-0001's data folder
    return _edit_manifest(root / "paired" / keys["train"] / "shards" / "class-0000" /
                          "manifest.json", data_dir=f"../class-0001/{other.name}")


def shard_copied_over_another(root: Path, keys: dict) -> Path:
    """``cp -r`` of one shard folder in place of another: every file intact, the wrong shard."""
    shards = root / "paired" / keys["train"] / "shards"
    shutil.rmtree(shards / "class-0002")
    shutil.copytree(shards / "class-0000", shards / "class-0002")
    return shards / "class-0002" / "manifest.json"


def key_folders_swapped(root: Path, keys: dict) -> Path:
    """The train and test folders of paired data swapped: two intact artifacts, each under
    the other's key."""
    train, test = root / "paired" / keys["train"], root / "paired" / keys["test"]
    train.rename(root / "paired" / "swap")
    test.rename(train)
    (root / "paired" / "swap").rename(test)
    return train / "manifest.json"


# (damage, status the artifact gets, exit code of `status --verify`)
DAMAGE = [
    (flip_link_chunk, "corrupt", 1),
    (delete_link_chunk, "corrupt", 1),
    (delete_paired_chunk, "corrupt", 1),
    (extra_chunk, "corrupt", 1),
    (truncate_link_parquet, "corrupt", 1),
    (delete_paired_parquet, "corrupt", 1),
    (flip_paired_parquet, "corrupt", 1),
    (manifest_not_utf8, "corrupt", 1),
    (manifest_bad_json, "corrupt", 1),
    (shard_manifest_bad_json, "corrupt", 1),
    (shard_manifest_wrong_type, "corrupt", 1),
    (junk_in_data_dir, "corrupt", 1),
    (delete_data_dir, "corrupt", 1),
    (flip_zarr_metadata, "corrupt", 1),
    (data_dir_outside_the_root, "corrupt", 1),
    (data_dir_of_another_artifact, "corrupt", 1),
    (shard_copied_over_another, "corrupt", 1),
    (key_folders_swapped, "corrupt", 1),
]


@pytest.mark.parametrize("damage,status,code", DAMAGE, ids=[d[0].__name__ for d in DAMAGE])
def test_damage_is_reported_and_repaired(pristine, tmp_path, capsys, damage, status,
                                         code) -> None:
    from flows.analysis import link_flow

    root, keys = tmp_path / "artifacts", pristine["keys"]
    shutil.copytree(pristine["root"], root)
    named = damage(root, keys)
    damaged = snapshot(root)
    assert main(["status", "--root", str(root), "--verify"]) == code
    out = capsys.readouterr().out
    assert f" {status}" in out
    relative = named.relative_to(root).as_posix()
    assert relative in out, out
    assert snapshot(root) == damaged  # status only reads

    link_dir = _data(pristine["root"], "link", keys["link"]).name
    link_flow(_config(root))
    assert main(["status", "--root", str(root), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "corrupt" not in out and "stale" not in out
    assert_same_artifacts(str(pristine["root"]), str(root))
    if "link" not in relative.split("/")[0]:  # paired repaired with the same bytes: the link
        assert _data(root, "link", keys["link"]).name == link_dir  # built on it stays valid


def test_deleted_manifest_is_uncommitted_and_rebuilt(pristine, tmp_path, capsys) -> None:
    from flows.analysis import link_flow

    root, keys = tmp_path / "artifacts", pristine["keys"]
    shutil.copytree(pristine["root"], root)
    (root / "link" / keys["link"] / "manifest.json").unlink()
    assert main(["status", "--root", str(root), "--verify"]) == 0  # nothing corrupt
    line = next(x for x in capsys.readouterr().out.splitlines() if keys["link"] in x)
    assert line.split()[2] == "uncommitted"
    link_flow(_config(root))
    assert ArtifactStore(str(root)).exists("link", keys["link"])
    assert_same_artifacts(str(pristine["root"]), str(root))


def test_a_manifest_never_makes_a_run_delete_outside_its_folder(pristine, tmp_path,
                                                                 capsys) -> None:
    """A manifest naming a folder outside the root, or another artifact's data, is corrupt: the
    rebuild neither follows nor removes it, and both folders are as they were."""
    from flows.analysis import link_flow

    root, keys = tmp_path / "project" / "artifacts", pristine["keys"]
    shutil.copytree(pristine["root"], root)
    victim = tmp_path / "victim"
    (victim / "thesis").mkdir(parents=True)
    (victim / "thesis" / "chapter1.tex").write_text("years of work")
    other = _data(root, "paired", keys["test"], "class-0000")
    _edit_manifest(root / "link" / keys["link"] / "manifest.json", data_dir="../../../victim")
    _edit_manifest(root / "paired" / keys["train"] / "shards" / "class-0001" / "manifest.json",
                   data_dir=f"../../../{keys['test']}/shards/class-0000/{other.name}")
    before = snapshot(victim) | snapshot(other)
    assert main(["status", "--root", str(root), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "../../../victim" in out and "not a data-<txid> folder" in out
    link_flow(_config(root))
    assert snapshot(victim) | snapshot(other) == before
    assert main(["status", "--root", str(root), "--verify"]) == 0
    assert_same_artifacts(str(pristine["root"]), str(root))


def _root_config(tmp_path: Path, root: Path | str) -> str:
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_config(Path(root)) | {"artifact_root": str(root)}))
    return str(path)


def test_a_damaged_catalog_file_is_a_warning_and_clean_corrupt_removes_it(pristine, tmp_path,
                                                                          capsys) -> None:
    root = tmp_path / "artifacts"
    shutil.copytree(pristine["root"], root)
    catalog = root / "catalog"
    good = sorted(catalog.glob("run-*.parquet"))
    junk = catalog / "run-20260101T000000.000+0000-0123456789ab.parquet"
    junk.write_bytes(b"PAR1 not really")
    truncated = catalog / "run-20260102T000000.000+0000-ba9876543210.parquet"
    truncated.write_bytes(good[0].read_bytes()[:-30])
    config = _root_config(tmp_path, root)
    for argv in (["runs"], ["tables"], ["tables", "--format", "sql"]):
        assert main([*argv, "--config", config]) == 0, argv
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        for bad in (junk, truncated):
            assert f"linkstyle: warning: catalog file {bad} cannot be read" in err
        assert "clean --corrupt" in err
        assert ("link_metrics" in out) if argv[0] == "tables" else (len(out.splitlines()) == 2)
    assert main(["report", "--config", config]) == 2  # no scored run: the report's own message
    err = capsys.readouterr().err
    assert "did not tune and score" in err or "no completed run" in err
    assert "Traceback" not in err and "ArrowInvalid" not in err
    assert main(["clean", "--root", str(root), "--older-than", "0", "--corrupt"]) == 0
    out = capsys.readouterr().out
    assert f"removed {junk}" in out and f"removed {truncated}" in out
    assert sorted(catalog.glob("run-*.parquet")) == good
    assert ArtifactStore(str(root)).exists("link", pristine["keys"]["link"])


def test_tables_say_which_artifact_of_the_run_is_damaged(pristine, tmp_path, capsys) -> None:
    root = tmp_path / "artifacts"
    shutil.copytree(pristine["root"], root)
    chunk = _link_chunk(root, pristine["keys"])
    _flip(chunk)
    assert main(["tables", "--config", _root_config(tmp_path, root)]) == 0
    out, err = capsys.readouterr()
    link = root / "link" / pristine["keys"]["link"]
    assert f"linkstyle: warning: the link artifact of this run ({link}) is corrupt" in err
    assert chunk.name in err and "rebuild" in err
    assert "train_acceptance" in out and "link_metrics" not in out


def test_a_moved_or_relatively_named_root_still_finds_its_runs(pristine, tmp_path, capsys,
                                                               monkeypatch) -> None:
    moved = tmp_path / "elsewhere" / "artifacts"
    shutil.copytree(pristine["root"], moved)
    assert main(["tables", "--config", _root_config(tmp_path, moved)]) == 0
    assert str(moved) in capsys.readouterr().out
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["tables", "--config", _root_config(tmp_path, "artifacts")]) == 0
    out, err = capsys.readouterr()
    assert "link_metrics" in out and "error" not in err
