"""prefect.yaml: every deployment points at a flow that exists, with a known work pool."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parents[2]


def test_every_deployment_entrypoint_is_a_flow() -> None:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pools = {p["name"] for p in spec["definitions"]["work_pools"].values()}
    assert pools == {"linkstyle-cpu", "linkstyle-gpu"}
    names = set()
    for dep in spec["deployments"]:
        path, func = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert isinstance(getattr(module, func), Flow), dep["entrypoint"]
        assert dep["work_pool"]["name"] in pools
        names.add(dep["name"])
    assert len(names) == len(spec["deployments"])
    scheduled = [d for d in spec["deployments"] if d.get("schedules")]
    assert scheduled and all(d["entrypoint"].endswith(":analysis_flow") for d in scheduled)


def test_deployments_pass_parameters_their_flows_take_and_toy_runs_on_cpu() -> None:
    import inspect

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for dep in spec["deployments"]:
        path, func = dep["entrypoint"].split(":")
        flow_fn = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")),
                          func)
        accepted = set(inspect.signature(flow_fn.fn).parameters)
        assert set(dep["parameters"]) <= accepted, dep["name"]
        assert "config_path" in accepted  # every flow reads a config file as well as a mapping
        toy = dep["parameters"] == {"config": {}}
        if toy:  # the bundled toy world needs no GPU
            assert dep["work_pool"]["name"] == "linkstyle-cpu", dep["name"]
        else:
            assert dep["parameters"] == {"config_path": "linkstyle.yaml"}, dep["name"]


def test_flows_read_their_config_from_a_path_or_an_fsspec_uri(tmp_path: Path) -> None:
    import fsspec
    import pytest

    from flows.analysis import load_flow_config
    from linkstyle_core.config import ConfigError

    text = "data:\n  samples_per_class: 17\nartifact_root: /tmp/somewhere\n"
    local = tmp_path / "linkstyle.yaml"
    local.write_text(text)
    with fsspec.open("memory://configs/linkstyle.yaml", "w") as handle:
        handle.write(text)
    for where in (str(local), local.as_uri(), "memory://configs/linkstyle.yaml"):
        cfg = load_flow_config(None, where)
        assert cfg.data.samples_per_class == 17 and cfg.artifact_root == "/tmp/somewhere"
    assert load_flow_config({"data": {"seed": 3}}, None).data.seed == 3
    with pytest.raises(ValueError, match="either config"):
        load_flow_config({"data": {"seed": 3}}, str(local))
    with pytest.raises((ConfigError, FileNotFoundError)):
        load_flow_config(None, str(tmp_path / "missing.yaml"))
