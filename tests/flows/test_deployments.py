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
    assert scheduled and scheduled[0]["entrypoint"].endswith(":analysis_flow")
