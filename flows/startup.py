"""Process defaults the command line sets before anything imports Prefect or torch.

Both read some settings once, when they are first imported: Prefect its settings (a default set
later is never seen), torch its OpenMP threads. ``flows.cli`` therefore calls ``apply`` before
its other imports. The user's own environment always wins (``setdefault``).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: how long a command waits for Prefect's temporary server; on a machine at load 4-9 it took
#: 29-65 s to answer, Prefect's own default is 20 s
STARTUP_TIMEOUT_VAR = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
STARTUP_TIMEOUT_S = 90


def defaults(environ: MutableMapping[str, str]) -> list[tuple[str, str]]:
    """(variable, value) of every default for the environment ``environ``."""
    found = [
        # idle OpenMP threads sleep instead of spinning: on a busy machine spinning threads
        # were measured to slow torch down up to 18x
        ("OMP_WAIT_POLICY", "PASSIVE"),
        ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
        ("DO_NOT_TRACK", "1"),
        (STARTUP_TIMEOUT_VAR, str(STARTUP_TIMEOUT_S)),
    ]
    if not environ.get("PREFECT_API_URL"):
        # a local run: its flow runs' logs are not looked at in a UI, so only warnings and
        # errors; with a server of one's own they stay at Prefect's level for its UI
        found.append(("PREFECT_LOGGING_LEVEL", "WARNING"))
    return found


def apply(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set every default that ``environ`` does not set already."""
    for name, value in defaults(environ):
        environ.setdefault(name, value)
