"""One Prefect test server for the whole session, with cache records in a temporary folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


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
