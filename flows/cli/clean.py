"""``linkstyle clean``: remove uncommitted leftovers of failed or killed runs, and nothing
else."""

from __future__ import annotations

import argparse
from typing import Any

from flows.cli.common import UsageError, add_command, store_for, with_root


def cmd_clean(args: argparse.Namespace) -> int:
    if not args.older_than >= 0:  # also refuses nan
        raise UsageError(f"--older-than must be a number of seconds >= 0, got {args.older_than}")
    store = store_for(args)
    removed = store.cleanup(older_than_s=args.older_than, dry_run=args.dry_run,
                            corrupt=args.corrupt)
    verb = "would remove" if args.dry_run else "removed"
    for path in removed:
        print(f"{verb} {path}")
    print(f"{verb} {len(removed)} uncommitted leftover(s) under {store.root_uri}")
    return 0


def register(sub: Any) -> None:
    """``clean`` under the subparsers ``sub``."""
    p = add_command(sub, "clean", cmd_clean, "remove uncommitted leftovers of failed or killed "
                    "runs")
    with_root(p)
    p.add_argument("--older-than", type=float, default=3600.0, metavar="SECONDS",
                   help="spare leftovers younger than this, a run may still write them "
                        "(default: 3600)")
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.add_argument("--corrupt", action="store_true",
                   help="also remove artifacts whose manifest or files are damaged")
