"""The full toy analysis beyond one process: on a local Dask cluster and a local Ray instance
(2 workers each, reporting to the session's Prefect server), and on S3 (a local moto server)
with a kill and a resume. Every run's tables and arrays must equal the sequential run's, bit
for bit.

The config is the toy world reduced in size (4 classes, one tuning sample per class, 96 units in
two tuning shards), so that each run takes a few minutes on two loaded CPU cores; every stage
runs.
The Ray run and the S3 kill-and-resume run are marked ``slow`` (``make test-all``), so that the
default test run is 6 minutes shorter on two cores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
import yaml

from storage import ArtifactStore
from tests.fixtures.artifacts import assert_same_artifacts, committed

pytestmark = pytest.mark.usefixtures("prefect_harness")

REPO = Path(__file__).resolve().parents[2]
CLUSTER_CONFIG: dict[str, Any] = {
    "data": {"classes": [0, 1, 2, 3], "samples_per_class": 60, "test_samples_per_class": 15},
    "tuning": {"units": "0-95", "samples_per_class": 1, "null_samples_per_class": 1,
               "null_directions": 128, "store_images": False},
    "runtime": {"device": "cpu", "batch_size": 256},
}
# tasks that run the models: one at a time per worker (the GPU resource)
MODEL_STAGES = {"paired", "link", "segmenter", "tune", "null", "validation"}


def _config(root: str) -> dict[str, Any]:
    return {**CLUSTER_CONFIG, "artifact_root": root}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The reference: the full analysis with the default runner (one thread, this process)."""
    from flows.analysis import validate_flow

    root = str(tmp_path_factory.mktemp("sequential") / "artifacts")
    reports = validate_flow(_config(root))
    assert reports["score"].extra["units"]["significant"].sum() >= 25  # a table worth comparing
    return {"root": root, "reports": reports}


def _manifests(store: ArtifactStore) -> list[tuple[str, dict[str, Any]]]:
    """(folder, manifest) of every committed artifact and shard under the store's root."""
    fs, root = store.fs, store.root
    paths = fs.glob(f"{root}/*/*/manifest.json") + fs.glob(f"{root}/*/*/shards/*/manifest.json")
    return [(path.rsplit("/", 1)[0], json.loads(fs.cat_file(path))) for path in paths]


def _writes(root: str) -> list[dict[str, Any]]:
    """Every committed data write under ``root`` (artifact or shard): stage, writer pid and
    its [started, committed] interval."""
    return [{"stage": m["stage"], **m["writer"]} for _, m in _manifests(ArtifactStore(root))
            if m["data_dir"] is not None]


def _task_runs(flow_run_id: Any) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def _run_on_cluster(runner: str, sequential: dict[str, Any], root: str) -> list[dict[str, Any]]:
    """The analysis on ``runner`` with 2 local workers: it computes every task in worker
    processes that report to this session's Prefect server, and writes what the sequential
    run wrote. Returns the data writes."""
    from flows.analysis import validate_flow

    state = validate_flow(_config(root), runner=runner, workers=2, return_state=True)
    reports = state.result()
    computed = sum(r.computed for r in reports.values())
    assert computed == sum(r.computed for r in sequential["reports"].values())
    assert sum(r.cached + r.reused for r in reports.values()) == 0
    runs = _task_runs(state.state_details.flow_run_id)
    assert len(runs) == computed and {r.state_name for r in runs} == {"Completed"}
    assert_same_artifacts(sequential["root"], root)
    writes = _writes(root)
    pids = {w["pid"] for w in writes}
    assert os.getpid() not in pids and len(pids) >= 2, pids  # workers, never this process
    return writes


def test_dask_cluster_matches_the_sequential_run(sequential, tmp_path) -> None:
    writes = _run_on_cluster("dask", sequential, str(tmp_path / "artifacts"))
    assert len({w["pid"] for w in writes}) == 2  # the two worker processes, all along
    model = [w for w in writes if w["stage"] in MODEL_STAGES]

    def overlap(a: dict, b: dict) -> bool:
        return a["started"] < b["committed"] and b["started"] < a["committed"]

    pairs = list(combinations(model, 2))
    # one GPU resource per worker: a worker never writes two model artifacts at once...
    assert not [(a, b) for a, b in pairs if a["pid"] == b["pid"] and overlap(a, b)]
    # ...and the two workers do run side by side
    assert any(a["pid"] != b["pid"] and overlap(a, b) for a, b in pairs)


@pytest.mark.slow  # 1.5 min on 2 cores; the Dask run above covers the default test run
def test_ray_matches_the_sequential_run(sequential, tmp_path) -> None:
    pytest.importorskip("prefect_ray", reason="the ray extra is not installed "
                        "(pip install 'linkstyle[ray]')")
    _run_on_cluster("ray", sequential, str(tmp_path / "artifacts"))


# -- S3 --------------------------------------------------------------------------------------
def _counts(out: str) -> dict[str, tuple[int, int, int]]:
    """The command's per-stage line: stage -> (computed, from cache, already stored)."""
    found = re.findall(r"^\s+(\w+)\s+computed\s+(\d+)\s+from cache\s+(\d+)\s+already stored"
                       r"\s+(\d+)$", out, flags=re.M)
    return {stage: (int(a), int(b), int(c)) for stage, a, b, c in found}


def _data_folders(store: ArtifactStore) -> tuple[set[str], set[str]]:
    """(data folders under the root, those a manifest names)."""
    fs, root = store.fs, store.root
    folders = {p.rstrip("/") for p in fs.glob(f"{root}/*/*/data-*")
               + fs.glob(f"{root}/*/*/shards/*/data-*")}
    named = {f"{folder}/{m['data_dir']}" for folder, m in _manifests(store) if m["data_dir"]}
    return folders, named


def _assert_manifests_written_last(store: ArtifactStore) -> None:
    """On the object store, every data write's manifest is newer than all its data objects."""
    for folder, manifest in _manifests(store):
        if not manifest["data_dir"]:
            continue
        data = store.fs.find(f"{folder}/{manifest['data_dir']}", detail=True)
        assert data and max(d["LastModified"] for d in data.values()) \
            <= store.fs.info(f"{folder}/manifest.json")["LastModified"], folder


def test_an_s3_root_in_a_bucket_that_does_not_exist_is_named(s3, capsys) -> None:
    from flows.cli import main

    assert main(["status", "--root", "s3://no-such-bucket/runs"]) == 2
    err = capsys.readouterr().err
    assert "the bucket 'no-such-bucket' does not exist" in err and "Traceback" not in err
    assert main(["status", "--root", "s3://linkstyle-test/runs"]) == 0  # the one that exists
    assert "no artifacts under s3://linkstyle-test/runs" in capsys.readouterr().out


@pytest.mark.slow  # 4-5 min on 2 cores: three runs of the command, each with its own server
def test_s3_root_writes_caches_resumes_after_a_kill_and_cleans(sequential, s3, tmp_path) -> None:
    root = "s3://linkstyle-test/analysis"
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(_config(root)))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}, **s3,
           "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect")}
    run = [sys.executable, "-m", "flows.cli", "validate", "--config", str(config)]
    store = ArtifactStore(root)
    fs = store.fs

    # 1. killed (SIGKILL) while tuning: once a unit shard is committed and the next one writes
    proc = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            cwd=REPO)
    try:
        deadline, ready = time.time() + 300, False
        while not ready and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            done = fs.glob(f"{store.root}/tune/*/shards/*/manifest.json")
            started = fs.glob(f"{store.root}/tune/*/shards/*/data-*/_lease.json")
            ready = bool(done) and any(p.split("/data-")[0] + "/manifest.json" not in done
                                       for p in started)
        assert ready, proc.stderr.read().decode()[-2000:] if proc.poll() is not None else \
            "the run never reached the tune stage"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    status = committed(root)
    tune = store.list_artifacts("tune")
    assert len(tune) == 1 and tune[0].status == "partial", status
    assert tune[0].shards_done is not None and 0 < tune[0].shards_done < tune[0].shards_total
    assert ("selectivity", sequential["reports"]["score"].keys["selectivity"]) not in status
    kept = {p: fs.cat_file(p) for p in fs.glob(f"{store.root}/tune/*/shards/*/manifest.json")}
    folders, named = _data_folders(store)
    leftovers = folders - named
    assert leftovers, "the killed shard left no uncommitted data folder"

    # 2. resumed: the shards committed before the kill are kept as they are
    resumed = subprocess.run(run, capture_output=True, env=env, cwd=REPO, timeout=600)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    for path, text in kept.items():
        assert fs.cat_file(path) == text, f"{path} was rewritten by the resumed run"
    tune_counts = _counts(resumed.stdout.decode())["tune"]
    null = store.list_artifacts("null")
    assert null[0].shards_total is not None
    # the missing unit shards, the null's shards, both finalisations
    assert tune_counts[0] <= tune[0].shards_total - tune[0].shards_done + null[0].shards_total + 2
    assert_same_artifacts(sequential["root"], root)
    _assert_manifests_written_last(store)

    # 3. unchanged rerun: everything from Prefect's cache or the store, nothing computed
    again = subprocess.run(run, capture_output=True, env=env, cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    counts = _counts(again.stdout.decode())
    assert set(counts) == {"paired", "link", "tune", "score", "validate"}
    assert all(c[0] == 0 for c in counts.values()), counts

    # 4. clean removes the killed run's leftovers and nothing committed
    folders, named = _data_folders(store)
    assert folders - named == leftovers
    cleaned = subprocess.run([sys.executable, "-m", "flows.cli", "clean", "--root", root,
                              "--older-than", "0"], capture_output=True, env=env, cwd=REPO,
                             timeout=300)
    assert cleaned.returncode == 0, cleaned.stderr.decode()[-3000:]
    folders, named = _data_folders(store)
    assert folders == named and not fs.glob(f"{store.root}/**/_lease.json")
    verify = subprocess.run([sys.executable, "-m", "flows.cli", "status", "--root", root,
                             "--verify"], capture_output=True, env=env, cwd=REPO, timeout=300)
    assert verify.returncode == 0, verify.stdout.decode()[-3000:]
    assert_same_artifacts(sequential["root"], root)
