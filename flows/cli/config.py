"""``linkstyle config show|validate|cost``: the resolved config, its checks (with the models
that ``linkstyle run`` checks before stage 1), and what it renders."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from flows.cli.common import UsageError, add_command, load_config, with_config


def cmd_config_show(args: argparse.Namespace) -> int:
    print(load_config(args.config).to_yaml(), end="")
    return 0


def cmd_config_validate(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    if not args.models:
        print(f"{args.file}: valid (fields, types and bounds; --models also loads the models "
              "and checks the files the config names)")
        return 0
    from flows.preflight import preflight
    from linkstyle_core.config import resolve_units
    from linkstyle_core.cost import rendered_images
    from linkstyle_core.labels import LABELS_FILE
    from tasks.context import resolve_classes

    # the checks `linkstyle run` makes before stage 1; the label folder only once its labels
    # are imported (they are made after a first run: labels export, open, import)
    folder = config.segment.labels
    imported = (Path(folder) / LABELS_FILE).is_file() if folder else False
    labelled = imported or config.generator.kind == "toy"
    models = preflight(config, "score" if labelled else "link")
    gen, cls = models.generator, models.classifier
    print(f"{args.file}: valid; the {config.generator.kind} generator ({gen.c_dim} classes, "
          f"{gen.resolution} px) and the {config.classifier.kind} classifier "
          f"({cls.feature_dim} units) load on {models.device} and fit each other; the "
          f"artifact root {config.artifact_root} can be written"
          + ("; the label folder fits the generator" if imported else "" if labelled else
             f"; segment.labels ({folder}) holds no imported labels yet: `linkstyle run "
             "--until link` can run, then label (labels export, open, import) before the "
             "later stages" if folder else "; segment.labels is not set yet (labels "
             "export/import)"))
    units = len(resolve_units(config.tuning.units, cls.feature_dim))
    classes = len(resolve_classes(config, models))
    images = rendered_images(config, units, classes)
    print(f"it renders at least {sum(images.values()):,} images (`linkstyle config cost "
          f"{args.file} --units {units} --classes {classes}` shows them per stage)")
    return 0


def cmd_config_cost(args: argparse.Namespace) -> int:
    from linkstyle_core.config import resolve_units
    from linkstyle_core.cost import cost_table

    config = load_config(args.file)
    if config.tuning.units == "all" and args.units is None:
        raise UsageError("tuning.units is 'all': give the classifier's number of units with "
                         "--units (2048 for ResNet-50)")
    if args.units is not None and not 1 <= args.units <= 10**6:
        raise UsageError(f"--units must be between 1 and 1000000, got {args.units}")
    units = len(resolve_units(config.tuning.units, args.units or 10**6)) \
        if config.tuning.units != "all" else args.units
    classes = config.data.classes
    if classes == "all" and args.classes is None:
        raise UsageError("data.classes is 'all': give their number with --classes")
    n_classes = args.classes if classes == "all" else len(classes)
    if not 1 <= n_classes <= 10**6:
        raise UsageError(f"--classes must be between 1 and 1000000, got {n_classes}")
    if args.images_per_s is not None and not args.images_per_s > 0:
        raise UsageError(f"--images-per-s must be a positive number, got {args.images_per_s}")
    print(cost_table(config, units, n_classes, args.images_per_s))
    return 0


def register(sub: Any) -> None:
    """``config show|cost|validate`` under the subparsers ``sub``."""
    config = sub.add_parser("config", help="show or validate an analysis config")
    csub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    p = add_command(csub, "show", cmd_config_show, "print the resolved config as YAML")
    with_config(p)
    p = add_command(csub, "cost", cmd_config_cost, "the images every stage of a config renders "
                    "(a Markdown table), and their time at a given throughput")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--units", type=int, help="the classifier's units, for tuning.units: all")
    p.add_argument("--classes", type=int, help="the number of classes, for data.classes: all")
    p.add_argument("--images-per-s", type=float, metavar="R",
                   help="the generator's batched throughput, for the rendering time")
    p = add_command(csub, "validate", cmd_config_validate, "check a config file")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--models", action="store_true", help="also load the models and check the "
                   "files the config names (checkout, network, weights, labels, artifact "
                   "root): what `linkstyle run` checks before stage 1")
