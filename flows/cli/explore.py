"""``linkstyle explore [--run ID] [--port N]``: a finished run explored live in the browser.

The run's models, link, calibrated steps and segmenter are loaded once; the page
(``flows.explore``) then moves any unit of any sample under a slider, and walks counterfactual
paths, rendering each frame with the stages' own code.
"""

from __future__ import annotations

import argparse
from typing import Any

from flows.cli.common import UsageError, add_command, config_from_args, with_root
from linkstyle_core.config import AnalysisConfig


def register(sub: Any) -> None:
    """``explore`` under the subparsers ``sub``."""
    p = add_command(sub, "explore", cmd_explore, "explore a finished run live: move any unit "
                    "of any sample under a slider, walk counterfactual paths (a page on "
                    "127.0.0.1)")
    with_root(p)
    p.add_argument("--run", default="latest", metavar="ID|latest",
                   help="a run id from `linkstyle runs`, or latest (the newest completed "
                        "analysis of this config; default)")
    p.add_argument("--port", type=int, default=0,
                   help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--no-browser", action="store_true",
                   help="only print the address, do not open a browser")


def explored_run(config: AnalysisConfig, run: str) -> tuple[str, dict[str, str]]:
    """(run id, stage keys) of the run to explore; without a catalog entry for ``latest``, the
    keys this code computes for the config (as ``linkstyle unit`` does)."""
    from flows.results import RunNotFound, run_keys
    from storage import ArtifactStore

    try:
        run_id, keys = run_keys(config, run, needs="selectivity")
    except RunNotFound:
        if run != "latest":
            raise
        from flows.stages import analysis_keys
        from tasks.context import models_for

        keys = analysis_keys(config, models_for(config))
        store = ArtifactStore(config.artifact_root)
        if not all(store.exists(s, keys[s]) for s in ("tune", "null", "selectivity")):
            raise
        run_id = "(not in the catalog)"
    missing = [s for s in ("tune", "null", "selectivity") if s not in keys]
    if missing:
        raise UsageError(f"run {run_id} did not tune and score its units (it has no "
                         f"{missing[0]} stage); explore a run of `linkstyle run` with all its "
                         "stages (`linkstyle runs` lists them), or finish this one with "
                         "`linkstyle run`")
    return run_id, keys


def cmd_explore(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {args.port}")
    run_id, keys = explored_run(config, args.run)
    from flows.explore.server import start
    from flows.explore.session import ExploreSession, RunMismatch
    from flows.web.serve import ServeError, open_page, wait
    from storage import ArtifactStore
    from tasks.context import models_for

    models = models_for(config)
    try:
        session = ExploreSession(ArtifactStore(config.artifact_root), keys, models, config,
                                 run_id)
    except RunMismatch as exc:
        raise UsageError(str(exc)) from None
    try:
        served = start(session, args.port)
    except ServeError as exc:
        raise UsageError(str(exc)) from None
    print(f"exploring run {run_id} ({len(session.tuned_units)} tuned units, "
          f"{config.generator.kind} generator on {models.device}) at {served.url}", flush=True)
    open_page(served, args.no_browser)
    print("Ctrl-C stops the server", flush=True)
    wait(served)
    return 0
