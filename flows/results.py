"""Finding a finished run's artifacts: a run id (or the latest run of a config) through the
artifact root's catalog, to its stages' keys (``linkstyle tables``, ``report``, ``unit``,
``explore``)."""

from __future__ import annotations

import json

from linkstyle_core.config import AnalysisConfig
from storage import ArtifactStore


class RunNotFound(LookupError):
    """The run asked for is not in the catalog (or never finished)."""


def run_keys(config: AnalysisConfig, run: str, needs: str | None = None
             ) -> tuple[str, dict[str, str]]:
    """(run id, stage keys) of ``run`` (an id or ``latest``, the newest completed analysis of
    ``config`` that made or reused stage ``needs``) under the config's artifact root."""
    from storage.catalog import resolve_run

    store = ArtifactStore(config.artifact_root)
    latest = run == "latest"
    try:
        row = resolve_run(store, run, config.model_dump(mode="json") if latest else None,
                          needs=needs if latest else None)
    except LookupError as exc:
        raise RunNotFound(str(exc)) from None
    return str(row["run_id"]), json.loads(row["keys"])
