"""Where a flow's tasks run: one local thread, a Dask cluster, or a Ray cluster.

A flow is given ``runner`` ("local", "dask" or "ray"), ``address`` (an existing cluster) and
``workers`` (the size of a cluster started for the run). ``using(spec)`` starts or connects the
task runner for the duration of the run; ``submit`` sends every task to it.

- ``local``: the flow's own single-thread runner (one device, one task at a time).
- ``dask``: ``address`` connects to a running scheduler (``tcp://host:8786``); without it a
  local cluster of ``workers`` processes is started, worker i pinned to GPU ``i mod #GPUs``
  when the machine has GPUs (dask-cuda's one-worker-per-GPU layout). Tasks that run the models
  (tagged ``gpu``) ask for one ``GPU`` resource, so each worker runs one of them at a time;
  workers of a cluster of one's own must offer it (``dask worker ... --resources GPU=1``).
- ``ray``: ``address`` connects to a running cluster (``ray://host:10001`` or ``auto``);
  without it a local Ray instance with ``workers`` CPUs is started. Model tasks ask for one
  GPU when the cluster has GPUs.

Workers report their task runs to the flow's Prefect server: the flow passes its settings
(``PREFECT_API_URL``) along with every task.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from flows import server
from linkstyle_core.config import ConfigError
from tasks.caching import GPU_TAG

RUNNERS = ("local", "dask", "ray")
GPU_RESOURCE = "GPU"  # the Dask worker resource a model task takes (one per worker)


class RunnerError(ConfigError):
    """A task runner that cannot be used as asked (names the problem and the fix)."""


@dataclass(frozen=True)
class RunnerSpec:
    kind: str = "local"
    address: str | None = None
    workers: int | None = None

    def check(self) -> None:
        """Refuse an unknown runner, a bad worker count, or a runner whose package is
        missing, before anything runs."""
        if self.kind not in RUNNERS:
            raise RunnerError(f"runner must be one of {', '.join(RUNNERS)}, got {self.kind!r}")
        if self.workers is not None and (isinstance(self.workers, bool)
                                         or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise RunnerError(f"workers must be a whole number >= 1, got {self.workers!r}")
        if self.kind == "local":
            if self.address or self.workers:
                raise RunnerError("address and workers apply to the dask and ray runners; "
                                  "the local runner runs every task in this process (add "
                                  "--runner dask or --runner ray)")
            return
        if self.address and self.workers:
            raise RunnerError(f"give the {self.kind} runner either an address (a running "
                              "cluster, whose size is its own) or workers (a local cluster "
                              "started for the run), not both")
        modules = {"dask": ("prefect_dask", "distributed"), "ray": ("prefect_ray", "ray")}
        for module in modules[self.kind]:
            try:
                __import__(module)
            except ImportError as exc:
                raise RunnerError(f"the {self.kind} runner needs {module.replace('_', '-')} "
                                  f"({exc}); pip install 'linkstyle[{self.kind}]'") from None

    @property
    def remote(self) -> bool:
        """True when tasks may run on other machines (an address that is not this host)."""
        if not self.address:
            return False
        host = urlparse(self.address if "://" in self.address else f"x://{self.address}")
        return host.hostname not in ("localhost", "127.0.0.1", "::1")


_ACTIVE: ContextVar[Any] = ContextVar("linkstyle_task_runner", default=None)


def active_runner() -> tuple[Any, str, int | None] | None:
    """(the task runner, its kind, the GPUs of a Ray cluster) that ``using`` made active, or
    None (the flow's own runner)."""
    return _ACTIVE.get()


def submit(task: Any, exists: bool, wait_for: list[Any] | None = None, **kwargs: Any) -> Any:
    """Submit ``task`` with parameters ``kwargs`` to the active runner (``using``), else to
    the flow's own; refresh its Prefect cache when the store lacks its output (``exists``
    False). A task tagged ``gpu`` takes one GPU slot; ``wait_for``: futures to wait for."""
    task = task.with_options(refresh_cache=not exists)
    active = _ACTIVE.get()
    if active is None:
        return task.submit(wait_for=wait_for, **kwargs)
    runner, kind, ray_gpus = active
    slot = gpu_slot(kind, ray_gpus) if GPU_TAG in task.tags else contextlib.nullcontext()
    with slot:
        return runner.submit(task, parameters=kwargs, wait_for=wait_for)


def results(futures: list[Any]) -> Iterator[Any]:
    """Wait for ``futures`` in submission order, yielding each once it has its result, so a
    failed task raises its own error first. When one fails, every other submitted task is
    still waited for before the error is raised: each runs to its end once (and commits its
    shard for a rerun to reuse) instead of being cancelled at a moment that depends on timing.
    An interrupt (Ctrl-C) is not a task's failure and stops at once."""
    for i, fut in enumerate(futures):
        try:
            fut.result()
        except Exception:
            from prefect.futures import wait

            wait(futures[i + 1:])
            raise
        yield fut


def gpu_slot(kind: str, ray_gpus: bool = False) -> contextlib.AbstractContextManager[Any]:
    """The context a model task is submitted in: one GPU resource on Dask, one GPU on a Ray
    cluster that has GPUs (``ray_gpus``, looked up once per run), nothing otherwise."""
    if kind == "dask":
        import dask

        return dask.annotate(resources={GPU_RESOURCE: 1})
    if kind == "ray" and ray_gpus:
        from prefect_ray.context import remote_options

        return remote_options(num_gpus=1)
    return contextlib.nullcontext()


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _worker_threads() -> dict[str, str]:
    """The environment of a local cluster's workers. Dask's nanny and Ray give each worker
    one CPU thread (OMP_NUM_THREADS=1); CPU results depend in their last bits on torch's
    thread count, so workers use as many as this process does and compute exactly what a
    local run computes."""
    import torch

    threads = str(torch.get_num_threads())
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE"}


def local_dask_cluster(n_workers: int = 1) -> Any:
    """A local Dask cluster of ``n_workers`` processes, each with one ``GPU`` resource (worker
    i sees only GPU ``i mod #GPUs`` when there are GPUs)."""
    from distributed import Nanny, Scheduler, SpecCluster

    gpus = _gpu_count()
    workers = {}
    for i in range(n_workers):
        env = _worker_threads()
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        # two threads: a model task and a light one (a finalize) may run side by side
        workers[f"linkstyle-{i}"] = {"cls": Nanny, "options": {
            "nthreads": 2, "resources": {GPU_RESOURCE: 1}, "env": env}}
    return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {
        "dashboard_address": ":0"}}, name="linkstyle")


def _dask_runner(spec: RunnerSpec) -> Any:
    from prefect_dask import DaskTaskRunner

    if spec.address:
        return DaskTaskRunner(address=spec.address)
    return DaskTaskRunner(cluster_class=local_dask_cluster,
                          cluster_kwargs={"n_workers": spec.workers or max(1, _gpu_count())})


def _check_dask_workers(runner: Any, address: str) -> None:
    """Workers of an existing cluster must offer the GPU resource, or model tasks never start."""
    try:
        workers = runner.client.scheduler_info(n_workers=-1)["workers"]
    except OSError as exc:
        raise RunnerError(f"could not reach the Dask scheduler at {address} ({exc}); start one "
                          "(`dask scheduler`) or fix --address") from None
    if workers and not any(w.get("resources", {}).get(GPU_RESOURCE) for w in workers.values()):
        raise RunnerError(
            f"none of the {len(workers)} workers of the Dask cluster at {address} offers a "
            f"{GPU_RESOURCE!r} resource, so the model tasks would wait forever; start one "
            f"worker per GPU with `dask worker {address} --nthreads 2 --resources "
            f"{GPU_RESOURCE}=1` (or `dask cuda worker {address} --resources {GPU_RESOURCE}=1`)")


def _ray_runner(spec: RunnerSpec) -> Any:
    from prefect_ray import RayTaskRunner

    if spec.address:
        return RayTaskRunner(address=spec.address)
    init = {"num_cpus": spec.workers or max(1, _gpu_count()), "include_dashboard": False,
            "runtime_env": {"env_vars": _worker_threads()}}
    return RayTaskRunner(init_kwargs=init)


def _ray_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def checked_spec(runner: str, address: str | None, workers: int | None) -> RunnerSpec:
    """A flow's or the command line's runner choice, checked before anything runs
    (``RunnerError`` names the problem and the fix): a cluster on other machines needs a
    Prefect server they reach (``PREFECT_API_URL``)."""
    spec = RunnerSpec(runner, address or None, workers)
    spec.check()
    check_reachable_server(spec, server.uses_own_server())
    return spec


def check_reachable_server(spec: RunnerSpec, own_server: bool) -> None:
    """A cluster at a remote address needs a Prefect server its workers reach
    (``PREFECT_API_URL``, ``own_server``), not a command's temporary one on 127.0.0.1."""
    if spec.remote and not own_server:
        raise RunnerError(
            f"the {spec.kind} cluster at {spec.address} runs tasks on other machines, which "
            "cannot reach this command's temporary Prefect server on 127.0.0.1; start a "
            "long-lived one (`prefect server start --host 0.0.0.0`) and set "
            "PREFECT_API_URL=http://<this host>:4200/api on this machine and every worker "
            "(or use Prefect Cloud)")


@contextlib.contextmanager
def prefect_server_for(spec: RunnerSpec, api_url: str | None) -> Iterator[None]:
    """Let the workers of ``spec`` report to this process's temporary Prefect server at
    ``api_url`` (None: ``PREFECT_API_URL`` already names a server, or there is none): its URL
    becomes this process's setting and, for the worker processes of a local cluster, its
    environment."""
    if spec.kind == "local" or api_url is None:
        yield
        return
    check_reachable_server(spec, own_server=False)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with environ_kept(), temporary_settings({PREFECT_API_URL: api_url}):
        os.environ["PREFECT_API_URL"] = api_url
        yield


@contextlib.contextmanager
def environ_kept() -> Iterator[None]:
    """Restore this process's environment on the way out. Starting a local Dask cluster sets
    OMP_NUM_THREADS=1 (and more) in the parent's environment for its workers and leaves it
    there; a later local run in this process, or a command it starts, would then compute with
    one thread, and its results would differ in their last bits."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for name in set(os.environ) - set(before):
            del os.environ[name]
        os.environ.update(before)


@contextlib.contextmanager
def using(spec: RunnerSpec) -> Iterator[None]:
    """Start (or connect) the task runner of ``spec`` for the block; tasks submitted through
    ``submit`` inside it run there. The local runner changes nothing."""
    spec.check()
    if spec.kind == "local":
        yield
        return
    runner = _dask_runner(spec) if spec.kind == "dask" else _ray_runner(spec)
    with environ_kept(), runner:
        if spec.kind == "dask" and spec.address:
            _check_dask_workers(runner, spec.address)
        ray_gpus = spec.kind == "ray" and _ray_has_gpus()
        token = _ACTIVE.set((runner, spec.kind, ray_gpus))
        try:
            yield
        finally:
            _ACTIVE.reset(token)
