"""The ``linkstyle`` command line: an edge that reads configuration and runs flows.

Heavy imports (torch, prefect) happen inside the commands that need them, so ``--help``,
``config`` and ``status`` answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import datetime

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
    infos = store.list(args.stage)
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


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    store = _store_for(args)
    print(f"linkstyle {datetime.now():%Y-%m-%d %H:%M}: configuration is valid")
    print(f"  generator: {config.generator.kind}, classifier: {config.classifier.kind}, "
          f"link: {config.link.type}, artifact root: {store.root_uri}")
    raise UsageError(
        "the analysis stages are not implemented yet in this version; "
        "`linkstyle status` lists what the store holds"
    )


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

    p = add("run", cmd_run, "run the analysis")
    with_root(p)

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
    except (ConfigError, UsageError, FileNotFoundError, ArtifactNotFound, CorruptArtifact,
            IncompleteArtifact) as exc:
        print(f"linkstyle: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("linkstyle: interrupted; committed artifacts are kept, rerun to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
