"""The run catalog: rows written per run, read back, and ``latest`` resolved per config."""

from __future__ import annotations

import json

import pytest

from storage import ArtifactStore
from storage.catalog import config_hash, new_run, read_catalog, record_run, resolve_run


def test_runs_are_recorded_and_latest_is_the_newest_completed_of_a_config(tmp_path) -> None:
    store = ArtifactStore(str(tmp_path / "root"))
    assert read_catalog(store).empty
    a, b = {"data": {"seed": 0}}, {"data": {"seed": 1}}
    first = new_run("linkstyle-analysis", a, store.root_uri)
    record_run(store, first, "completed", {"link": "k1"})
    failed = new_run("linkstyle-analysis", a, store.root_uri)
    record_run(store, failed, "failed", {}, error="AcceptanceError: class 3")
    other = new_run("linkstyle-analysis", b, store.root_uri)
    record_run(store, other, "completed", {"link": "k2"})
    catalog = read_catalog(store)
    assert len(catalog) == 3 and list(catalog["status"]) == ["completed", "failed", "completed"]
    assert catalog.loc[1, "error"] == "AcceptanceError: class 3"
    assert json.loads(resolve_run(store, "latest", a)["keys"]) == {"link": "k1"}
    assert resolve_run(store, "latest")["run_id"] == other["run_id"]
    assert resolve_run(store, "latest", needs="link")["run_id"] == other["run_id"]
    with pytest.raises(LookupError):
        resolve_run(store, "latest", needs="selectivity")  # no run scored units
    assert resolve_run(store, first["run_id"])["config_hash"] == config_hash(a)
    with pytest.raises(LookupError, match="no run 'nope'"):
        resolve_run(store, "nope")
    with pytest.raises(LookupError, match="no completed run of this config"):
        resolve_run(store, "latest", {"data": {"seed": 2}})
    # one file per run, no temporary file left behind
    names = sorted(p.name for p in (tmp_path / "root" / "catalog").iterdir())
    assert len(names) == 3 and all(n.endswith(".parquet") for n in names)


def test_config_hash_is_order_independent() -> None:
    assert config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


@pytest.mark.parametrize("config,needs", [({"data": {}}, None), ({"data": {}}, "selectivity"),
                                          (None, "selectivity")])
def test_latest_of_an_empty_root_names_the_fix(tmp_path, config, needs) -> None:
    with pytest.raises(LookupError, match="no completed run .*run `linkstyle run` first"):
        resolve_run(ArtifactStore(str(tmp_path / "empty")), "latest", config, needs=needs)
