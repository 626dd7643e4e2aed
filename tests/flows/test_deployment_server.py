"""prefect.yaml end to end: a local Prefect server, the work pools, `prefect deploy --all`, and one
deployment run by a process worker on the toy world, which records its catalog row."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from storage import ArtifactStore
from storage.catalog import read_catalog

ROOT = Path(__file__).resolve().parents[2]
# about 40 s on 2 cores (server start, deploy, one worker run): in the default test run
pytestmark = pytest.mark.timeout(600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prefect(*args: str, env: dict[str, str], timeout: float = 180) -> str:
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    result = subprocess.run([prefect, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_deploy_all_and_run_one_deployment_through_a_process_worker(tmp_path: Path) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "LINKSTYLE_CHECKOUT": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("PREFECT_PROFILES_PATH", None)
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    server = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the Prefect server did not start in 120 s"
            time.sleep(1)
        for pool in ("linkstyle-cpu", "linkstyle-gpu"):
            _prefect("work-pool", "create", pool, "--type", "process", env=env)
        _prefect("--no-prompt", "deploy", "--all", env=env)
        root = tmp_path / "artifacts"
        params = {"config": {"artifact_root": str(root), "data": {
            "classes": [0, 1], "samples_per_class": 20, "test_samples_per_class": 5}},
            "until": "link"}
        out = _prefect("deployment", "run", "linkstyle-analysis/full-analysis", "--params",
                       json.dumps(params), env=env)
        assert "Created flow run" in out
        _prefect("worker", "start", "--pool", "linkstyle-cpu", "--run-once", env=env,
                 timeout=600)
        catalog = read_catalog(ArtifactStore(str(root)))
        assert len(catalog) == 1 and catalog.loc[0, "status"] == "completed"
        assert {"train", "test", "link"} <= set(json.loads(catalog.loc[0, "keys"]))
        request = urllib.request.Request(f"{api}/flow_runs/filter", method="POST",
                                         data=b'{"limit": 50}',
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            runs = json.load(response)
        ran = [r for r in runs if r["parameters"].get("until") == "link"]
        assert len(ran) == 1 and ran[0]["state_type"] == "COMPLETED"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
