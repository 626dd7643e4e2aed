"""Shared test set-up: every RNG seeded, quiet offline Prefect, GPU tests skip without CUDA."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import numpy as np
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see flows/startup.py
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


# One Prefect test server for the whole session (tests/flows, tests/reliability), with cache
# records in a temporary folder.
@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    results = tmp_path_factory.mktemp("prefect-results")
    with prefect_test_harness(server_startup_timeout=90):
        with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(results),
                                 PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield


@pytest.fixture(scope="session")
def toy_run(prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The reduced toy-world analysis of tests/fixtures/toy_run.py, built once per session."""
    from tests.fixtures.toy_run import build_toy_run

    return build_toy_run(tmp_path_factory.mktemp("toy"))
