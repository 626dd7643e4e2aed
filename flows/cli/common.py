"""What every command of the command line shares: the parser's error format, the options
that name a config and an artifact root, and the config those resolve to."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from linkstyle_core.config import AnalysisConfig
from storage import ArtifactStore

if TYPE_CHECKING:
    from flows.runners import RunnerSpec

Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A problem with what the user asked for; printed without a traceback."""


class Parser(argparse.ArgumentParser):
    """argparse with the command line's one error format (``linkstyle: error: ...``, exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def add_command(parent: Any, name: str, func: Command, help_: str) -> argparse.ArgumentParser:
    """A subcommand ``name`` of the subparsers ``parent`` that runs ``func``."""
    p = parent.add_parser(name, help=help_, description=help_)
    p.set_defaults(func=func)
    return p


def with_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="analysis config YAML (default: toy world)")


def with_root(p: argparse.ArgumentParser) -> None:
    with_config(p)
    p.add_argument("--root", metavar="URI", help="artifact root (default: from the config)")


def with_runner(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runner", choices=["local", "dask", "ray"], default="local",
                   help="where the tasks run: one local thread (default), a Dask or a Ray "
                        "cluster (README, 'Running on a cluster')")
    p.add_argument("--address", metavar="URI", help="a running cluster's scheduler "
                   "(dask: tcp://host:8786; ray: ray://host:10001 or auto); default: start "
                   "a local one")
    p.add_argument("--workers", type=int, metavar="N", help="workers of the local cluster "
                   "(default: one per GPU, else 1)")


def load_config(path: str | None) -> AnalysisConfig:
    return AnalysisConfig.from_yaml(path) if path else AnalysisConfig()


def config_from_args(args: argparse.Namespace) -> AnalysisConfig:
    """The config file (or the toy defaults) with the command line's overrides, validated."""
    raw = load_config(args.config).model_dump(mode="json")
    if getattr(args, "root", None):
        raw["artifact_root"] = args.root
    if getattr(args, "samples", None) is not None:
        raw["counterfactual"]["samples"] = args.samples
    config = AnalysisConfig.from_dict(raw, source="config and command line")
    from flows.preflight import check_remote_root

    # an unknown protocol, s3:// without s3fs, a remote root without credentials: in seconds
    check_remote_root(config.artifact_root)
    return config


def store_for(args: argparse.Namespace) -> ArtifactStore:
    return ArtifactStore(config_from_args(args).artifact_root)


def runner_spec(args: argparse.Namespace) -> RunnerSpec:
    """The --runner, --address and --workers options, checked (``flows.runners``). The flow
    passes the command's temporary Prefect server on to a local cluster's workers."""
    from flows.runners import checked_spec

    return checked_spec(args.runner, args.address, args.workers)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
