"""The ``linkstyle`` command line: an edge that reads configuration and runs flows.

Heavy imports (torch, prefect) happen inside the commands that need them, so ``--help``,
``config`` and ``status`` answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

import pandas as pd

from linkstyle_core.config import AnalysisConfig, ConfigError
from storage import ArtifactNotFound, ArtifactStore, CorruptArtifact, IncompleteArtifact

Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A problem with what the user asked for; printed without a traceback."""


def load_config(path: str | None) -> AnalysisConfig:
    return AnalysisConfig.from_yaml(path) if path else AnalysisConfig()


def _store_for(args: argparse.Namespace) -> ArtifactStore:
    root = args.root or load_config(getattr(args, "config", None)).artifact_root
    return ArtifactStore(root)


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that explain a problem with the input: shown as one message, no traceback."""
    errors: list[type[Exception]] = [ConfigError, UsageError, FileNotFoundError,
                                     ArtifactNotFound, CorruptArtifact, IncompleteArtifact]
    if "torch" in sys.modules:  # the model errors live beside torch code; import only if used
        from linkstyle_core.models.registry import ModelError
        from linkstyle_core.paired import AcceptanceError

        errors += [ModelError, AcceptanceError, FloatingPointError]
    return tuple(errors)


# -- commands --------------------------------------------------------------------------------
def cmd_config_show(args: argparse.Namespace) -> int:
    print(load_config(args.config).to_yaml(), end="")
    return 0


def cmd_config_validate(args: argparse.Namespace) -> int:
    load_config(args.file)
    print(f"{args.file}: valid")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    store = _store_for(args)
    infos = store.list_artifacts(args.stage)
    if not infos:
        print(f"no artifacts under {store.root_uri}")
        return 0
    print(f"artifacts under {store.root_uri}")
    print(f"{'stage':<16} {'key':<22} {'status':<12} {'shards':>9} {'size':>10}  created")
    for info in infos:
        shards = f"{info.shards_done}/{info.shards_total}" if info.shards_total else "-"
        created = info.created or "-"
        print(f"{info.stage:<16} {info.key:<22} {info.status:<12} {shards:>9} "
              f"{_human_size(info.size_bytes):>10}  {created}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    store = _store_for(args)
    removed = store.cleanup(older_than_s=args.older_than, dry_run=args.dry_run,
                            corrupt=args.corrupt)
    verb = "would remove" if args.dry_run else "removed"
    for path in removed:
        print(f"{verb} {path}")
    print(f"{verb} {len(removed)} uncommitted leftover(s) under {store.root_uri}")
    return 0


def _quiet_prefect_defaults() -> None:
    """Offline, quiet defaults for a local run; the user's own settings win."""
    for name, value in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("DO_NOT_TRACK", "1"),
                        ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"),
                        ("PREFECT_LOGGING_LEVEL", "WARNING")):
        os.environ.setdefault(name, value)


def _print_link_metrics(metrics: pd.DataFrame) -> None:
    columns = ["split", "n", "r2", "mse", "rsa_class", "rsa_sample", "closed_loop_accuracy",
               "closed_loop_r_corr"]
    shown = metrics[[c for c in columns if c in metrics.columns]]
    print("link metrics (held-out = test):")
    print(shown.to_string(index=False, float_format=lambda x: f"{x:.4f}", na_rep="-"))


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.root:
        config = config.model_copy(update={"artifact_root": args.root})
    _quiet_prefect_defaults()
    from flows.analysis import analysis_flow
    from tasks.context import models_for

    models_for(config)  # load and check the models before any work is done

    print(f"linkstyle run: {config.generator.kind} generator, {config.classifier.kind} "
          f"classifier, stages up to {args.until!r}, artifacts under {config.artifact_root}")
    t0 = time.perf_counter()
    reports = analysis_flow(config.model_dump(mode="json"), until=args.until)
    for report in reports.values():
        print(f"  {report.stage:<8} computed {report.computed:>3}  from cache {report.cached:>3}"
              f"  already stored {report.reused:>3}  keys {report.keys}")
    if "link" in reports:
        _print_link_metrics(reports["link"].extra["metrics"])
    print(f"done in {time.perf_counter() - t0:.1f} s; `linkstyle status` lists the artifacts")
    return 0


# -- parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linkstyle",
        description="Make the learned features of image classifiers visible and measurable "
        "(Linking in Style). Defaults analyse the bundled toy world.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Command, help_: str, parent=sub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="FILE", help="analysis config YAML (default: toy world)")

    def with_root(p: argparse.ArgumentParser) -> None:
        with_config(p)
        p.add_argument("--root", metavar="URI", help="artifact root (default: from the config)")

    p = add("run", cmd_run, "run the analysis (default: the bundled toy world)")
    with_root(p)
    p.add_argument("--until", default="link", choices=["paired", "link"],
                   help="last stage to run (default: link)")

    p = add("status", cmd_status, "list artifacts: stage, key, complete/partial, size, created")
    with_root(p)
    p.add_argument("--stage", help="only this stage")

    p = add("clean", cmd_clean, "remove uncommitted leftovers of failed or killed runs")
    with_root(p)
    p.add_argument("--older-than", type=float, default=3600.0, metavar="SECONDS",
                   help="spare leftovers younger than this, a run may still write them "
                        "(default: 3600)")
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.add_argument("--corrupt", action="store_true",
                   help="also remove artifacts whose manifest cannot be read")

    config = sub.add_parser("config", help="show or validate an analysis config")
    csub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    p = add("show", cmd_config_show, "print the resolved config as YAML", csub)
    with_config(p)
    p = add("validate", cmd_config_validate, "check a config file", csub)
    p.add_argument("file", metavar="FILE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        print(f"linkstyle: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("linkstyle: interrupted; committed artifacts are kept, rerun to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
