"""``linkstyle toy train-generator|train-classifier|evaluate|sheet``: rebuild, measure and
picture the bundled toy world."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from flows.cli.common import UsageError, add_command


def _toy_models():
    from linkstyle_core.models.toy import load_toy_classifier, load_toy_generator

    return load_toy_generator(), load_toy_classifier()


def _checked_training(args: argparse.Namespace, default: str) -> str:
    """The weight file a ``toy train-*`` command writes, and its arguments, checked before the
    training (minutes) starts."""
    import math

    if not 1 <= args.steps <= 10_000_000:
        raise UsageError(f"--steps must be between 1 and 10000000, got {args.steps}")
    invariance = getattr(args, "invariance", 0.0)
    if not (math.isfinite(invariance) and 0 <= invariance <= 1e6):
        raise UsageError(f"--invariance must be a finite number from 0 (an ordinary classifier) "
                         f"to 1e6, got {invariance}")
    from flows.outputs import check_out_weights
    from linkstyle_core.models.toy import bundled_weights_path

    return str(check_out_weights(args.out or str(bundled_weights_path(default))))


def cmd_toy_train_generator(args: argparse.Namespace) -> int:
    from linkstyle_core.models.toy import GENERATOR_FILE
    from linkstyle_core.toyworld import train_generator

    out = _checked_training(args, GENERATOR_FILE)
    metrics = train_generator(out, steps=args.steps, seed=args.seed)
    print(f"wrote {out}: {metrics}")
    return 0


def cmd_toy_train_classifier(args: argparse.Namespace) -> int:
    from linkstyle_core.models.toy import CLASSIFIER_FILE
    from linkstyle_core.toyworld import train_classifier

    out = _checked_training(args, CLASSIFIER_FILE)
    metrics = train_classifier(out, steps=args.steps, seed=args.seed,
                               invariance=args.invariance)
    print(f"wrote {out}: {metrics}")
    return 0


def cmd_toy_evaluate(args: argparse.Namespace) -> int:
    import json

    from linkstyle_core.models.toy import toy_classifier_path
    from linkstyle_core.toyworld import THRESHOLDS, check, evaluate, format_report
    from linkstyle_core.toyworld.checkpoint import read_ground_truth

    generator, classifier = _toy_models()
    try:  # the ground truth shipped with the weights; measured afresh if the file has none
        ground_truth = read_ground_truth(toy_classifier_path())
    except KeyError:
        ground_truth = None
    metrics = evaluate(
        generator, classifier, n_per_class=args.n, seed=args.seed, ground_truth=ground_truth
    )
    failures = check(metrics)
    if args.json:
        print(json.dumps({"metrics": metrics, "thresholds": THRESHOLDS, "failures": failures},
                         indent=2, allow_nan=True))
    else:
        print(format_report(metrics))
    for failure in failures:
        print(f"below threshold: {failure}", file=sys.stderr)
    return 1 if failures else 0


def cmd_toy_sheet(args: argparse.Namespace) -> int:
    from linkstyle_core.toyworld import write_sheet

    generator, _ = _toy_models()
    print(f"wrote {write_sheet(generator, args.out, seed=args.seed)}")
    return 0


def register(sub: Any) -> None:
    """``toy train-generator|train-classifier|evaluate|sheet`` under the subparsers ``sub``."""
    toy = sub.add_parser("toy", help="the bundled toy world: train, evaluate, picture")
    tsub = toy.add_subparsers(dest="toy_command", required=True, metavar="ACTION")
    for name, func, steps, seed, what in (
        ("train-generator", cmd_toy_train_generator, 4000, 0, "the toy generator"),
        ("train-classifier", cmd_toy_train_classifier, 800, 1, "the toy classifier"),
    ):
        p = add_command(tsub, name, func, f"retrain {what} (deterministic on CPU)")
        p.add_argument("--steps", type=int, default=steps)
        p.add_argument("--seed", type=int, default=seed)
        p.add_argument("--out", metavar="FILE", help="default: the bundled weights file")
        if name == "train-classifier":
            p.add_argument("--invariance", type=float, default=1.0, metavar="X",
                           help="weight of the part-invariance loss: 1 (bundled) makes every "
                           "unit follow one part, 0 trains an ordinary classifier")
    p = add_command(tsub, "evaluate", cmd_toy_evaluate, "measure the toy world's quality on "
                    "fresh seeds")
    p.add_argument("--n", type=int, default=200, help="images per species and measurement")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--json", action="store_true", help="print every figure as JSON")
    p = add_command(tsub, "sheet", cmd_toy_sheet, "picture: renderer vs. generator images and "
                    "labels")
    p.add_argument("out", metavar="OUT.png")
    p.add_argument("--seed", type=int, default=0)
