"""The runner choice (flows.runners): checks before anything runs, the GPU slot a model task
takes, the Prefect server the workers report to, and a cluster that could never run a model
task. The full analysis on Dask, Ray and S3 is in test_cluster.py."""

from __future__ import annotations

import os
import sys

import pytest

from flows.runners import (
    GPU_RESOURCE,
    RunnerError,
    RunnerSpec,
    gpu_slot,
    prefect_server_for,
    using,
)
from tasks.caching import GPU_TAG
from tasks.directions import compute_ranges
from tasks.link import fit_link
from tasks.null import null_finalize, null_shard
from tasks.paired import paired_finalize, paired_shard
from tasks.score import score_units
from tasks.segmenter import fit_segmenter
from tasks.tuning import tune_finalize, tune_shard


@pytest.mark.parametrize("spec,words", [
    (RunnerSpec("spark"), ["local, dask, ray", "'spark'"]),
    (RunnerSpec("dask", workers=0), ["whole number >= 1, got 0"]),
    (RunnerSpec("dask", workers=True), ["whole number >= 1, got True"]),
    (RunnerSpec("ray", workers=1.5), ["whole number >= 1, got 1.5"]),  # type: ignore[arg-type]
    (RunnerSpec("local", workers=2), ["apply to the dask and ray runners"]),
    (RunnerSpec("local", address="tcp://h:8786"), ["apply to the dask and ray runners"]),
    (RunnerSpec("dask", address="tcp://h:8786", workers=2), ["not both"]),
])
def test_a_runner_that_cannot_work_is_refused_with_the_fix(spec, words) -> None:
    with pytest.raises(RunnerError) as err:
        spec.check()
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("kind,module", [("dask", "prefect_dask"), ("ray", "prefect_ray")])
def test_a_runner_without_its_package_names_the_extra(monkeypatch, kind, module) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(RunnerError, match=rf"pip install 'linkstyle\[{kind}\]'"):
        RunnerSpec(kind, workers=2).check()


def test_addresses_of_this_host_are_not_remote() -> None:
    assert not RunnerSpec("dask", "tcp://127.0.0.1:8786").remote
    assert not RunnerSpec("dask", "localhost:8786").remote
    assert RunnerSpec("dask", "tcp://10.0.0.5:8786").remote
    assert RunnerSpec("ray", "ray://head:10001").remote
    assert not RunnerSpec("dask", workers=2).remote


def test_model_tasks_and_only_they_take_a_gpu_slot() -> None:
    import dask

    for task in (paired_shard, fit_link, fit_segmenter, tune_shard, null_shard):
        assert GPU_TAG in task.tags, task.name
    for task in (paired_finalize, compute_ranges, tune_finalize, null_finalize, score_units):
        assert GPU_TAG not in task.tags, task.name
    with gpu_slot("dask"):
        assert dask.get_annotations() == {"resources": {GPU_RESOURCE: 1}}
    with gpu_slot("local"):
        assert dask.get_annotations() == {}


def test_workers_of_a_local_cluster_report_to_the_commands_server(monkeypatch) -> None:
    from prefect.settings import PREFECT_API_URL

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    url = "http://127.0.0.1:4321/api"
    with prefect_server_for(RunnerSpec("dask", workers=2), url):
        assert os.environ["PREFECT_API_URL"] == url and PREFECT_API_URL.value() == url
    assert "PREFECT_API_URL" not in os.environ
    with prefect_server_for(RunnerSpec("local"), url):  # one process: nothing to pass on
        assert "PREFECT_API_URL" not in os.environ
    with pytest.raises(RunnerError, match="PREFECT_API_URL"):
        with prefect_server_for(RunnerSpec("dask", "tcp://10.0.0.5:8786"), url):
            pass


def test_a_local_dask_cluster_has_one_gpu_slot_per_worker_and_leaves_the_environment() -> None:
    import torch

    from flows import runners

    before = dict(os.environ)
    with using(RunnerSpec("dask", workers=2)):
        runner, kind, _ = runners.active_runner()
        info = runner.client.scheduler_info(n_workers=-1)["workers"].values()  # starts it
        specs = list(runner.client.cluster.worker_spec.values())
        assert kind == "dask" and len(specs) == 2 and len(info) == 2
        assert all(w["resources"] == {GPU_RESOURCE: 1} for w in info)
        for spec in specs:  # as many CPU threads as this process: the same numbers
            assert spec["options"]["env"]["OMP_NUM_THREADS"] == str(torch.get_num_threads())
    # the nanny's OMP_NUM_THREADS=1 for its workers does not stay in this process
    assert dict(os.environ) == before


def test_a_dask_cluster_without_gpu_workers_is_refused() -> None:
    """Model tasks ask for a GPU resource; a cluster that offers none would wait forever."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        with pytest.raises(RunnerError, match=r"--resources GPU=1"):
            with using(RunnerSpec("dask", address=cluster.scheduler_address)):
                pass


def test_an_unreachable_dask_scheduler_is_named() -> None:
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(RunnerError, match=r"could not reach the Dask scheduler at "
                                              r"tcp://127.0.0.1:9"):
            with using(RunnerSpec("dask", address="tcp://127.0.0.1:9")):
                pass
