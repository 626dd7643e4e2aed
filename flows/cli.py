"""The ``linkstyle`` command line: an edge that reads configuration and runs flows.

Heavy imports (torch, prefect) happen inside the commands that need them, so ``--help``,
``config`` and ``status`` answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, NoReturn, TextIO

import pandas as pd

from flows import startup
from linkstyle_core import stop
from linkstyle_core.config import AnalysisConfig, ConfigError
from storage import (
    STAGE_NAMES,
    ArtifactNotFound,
    ArtifactStore,
    CorruptArtifact,
    IncompleteArtifact,
    NotAnArtifactRoot,
)
from storage.errors import USER_ERRNOS, StoreWarning

if TYPE_CHECKING:
    from flows.runners import RunnerSpec

Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A problem with what the user asked for; printed without a traceback."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: the same clean shutdown as a Ctrl-C (the flow run is
    marked crashed, the temporary Prefect server is stopped, committed artifacts are kept)."""


class _Parser(argparse.ArgumentParser):
    """argparse with the command line's one error format (``linkstyle: error: ...``, exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def load_config(path: str | None) -> AnalysisConfig:
    return AnalysisConfig.from_yaml(path) if path else AnalysisConfig()


def _store_for(args: argparse.Namespace) -> ArtifactStore:
    return ArtifactStore(_config_from_args(args).artifact_root)


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
                                     ArtifactNotFound, CorruptArtifact, IncompleteArtifact,
                                     NotAnArtifactRoot]
    if "torch" in sys.modules:  # the model errors live beside torch code; import only if used
        from linkstyle_core.labels import LabelError
        from linkstyle_core.models.registry import ModelError
        from linkstyle_core.paired import AcceptanceError

        errors += [ModelError, AcceptanceError, FloatingPointError, LabelError]
    if "flows.results" in sys.modules:
        from flows.results import RunNotFound

        errors.append(RunNotFound)
    if "flows.server" in sys.modules:
        from flows.server import ServerStartError

        errors.append(ServerStartError)
    if "botocore" in sys.modules:  # credentials that vanished or expired after the preflight
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError

        errors += [NoCredentialsError, PartialCredentialsError]
    return tuple(errors)


_ERRNO_FIX = {
    errno.ENOSPC: "free space on that disk (or choose another artifact root) and rerun; "
                  "committed artifacts are kept and the run resumes",
    errno.EROFS: "the file system is read-only: choose a writable artifact root (--root)",
}
_ERRNO_FIX[errno.EDQUOT] = _ERRNO_FIX[errno.ENOSPC]


def _is_user_error(exc: BaseException) -> bool:
    """True for an error that explains a mistake in the input or the environment."""
    if isinstance(exc, _user_errors()):
        return True
    return isinstance(exc, OSError) and exc.errno in USER_ERRNOS


def _describe(exc: BaseException) -> str:
    """The message of a user error; an OSError gets its file and the fix."""
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.strerror \
            and exc.errno in USER_ERRNOS:
        where = f": {exc.filename}" if exc.filename else ""
        fix = _ERRNO_FIX.get(exc.errno or 0, "check the permissions of the artifact root "
                             "(--root) or choose another one")
        return f"{exc.strerror}{where}; {fix}"
    if type(exc).__module__.startswith("botocore"):
        return (f"{exc}: the artifact root's AWS credentials are missing or incomplete; set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), then rerun")
    return str(exc)


class _HideUserErrorTracebacks(logging.Filter):
    """On Prefect's run loggers: a task or flow that failed because of a user's mistake logs
    no traceback ("Task run failed with exception ..."); ``main`` prints the one message. With
    a Prefect server of one's own (PREFECT_API_URL) the line stays, without the traceback, so
    the UI shows it; in a local run it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not _is_user_error(exc):
            return True
        record.exc_info, record.exc_text = None, None
        record.linkstyle_user_error = True  # for _QuietConsole
        from flows.server import uses_own_server

        return uses_own_server()


_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs", "prefect.engine")


class _QuietConsole(logging.Filter):
    """On Prefect's console handler during a command: no line about a run that failed
    ("Finished in state Failed(...)", "NotReady", the failed task's own line for a user's
    mistake). ``main`` prints the error once, after the run, as one line (a bug with its
    traceback, which Prefect's "Task run failed with exception" record still shows). A server
    of one's own still receives every line for its UI (through Prefect's API handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "linkstyle_user_error", False):
            return False
        return not (record.name.startswith(_RUN_LOGGERS) and record.levelno >= logging.WARNING
                    and record.getMessage().startswith("Finished in state"))


def _install_log_filter() -> None:
    """The filters above: on Prefect's run loggers, and on its console handler once Prefect
    has configured logging (at its import; call again after it)."""
    for name in _RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _HideUserErrorTracebacks) for f in logger.filters):
            logger.addFilter(_HideUserErrorTracebacks())
    if "prefect.logging.handlers" not in sys.modules:
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) \
                and not any(isinstance(f, _QuietConsole) for f in handler.filters):
            handler.addFilter(_QuietConsole())


@contextlib.contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``Terminated`` (a KeyboardInterrupt) in the main
    thread, as SIGINT raises KeyboardInterrupt, and both ask every running loop to stop at its
    next batch (``linkstyle_core.stop``). Python's default for SIGTERM would end the process at
    once, skipping every ``finally`` and ``atexit`` hook (the temporary Prefect server was left
    running); and a task in a worker thread ran on to its end (minutes for the null control)
    before the process could exit."""

    def terminate(signum: int, frame: object) -> NoReturn:
        stop.request("SIGTERM")
        raise Terminated()

    def interrupt(signum: int, frame: object) -> NoReturn:
        stop.request("SIGINT")
        raise KeyboardInterrupt()

    stop.clear()
    try:
        previous = {sig: signal.signal(sig, handler)
                    for sig, handler in ((signal.SIGTERM, terminate), (signal.SIGINT, interrupt))}
    except ValueError:  # not the main thread (an in-process caller): leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- commands --------------------------------------------------------------------------------
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

    # the checks `linkstyle run` makes before stage 1; the label folder only once it is set
    # (it is made after a first run, `linkstyle labels export`)
    labelled = bool(config.segment.labels) or config.generator.kind == "toy"
    models = preflight(config, "score" if labelled else "link")
    gen, cls = models.generator, models.classifier
    print(f"{args.file}: valid; the {config.generator.kind} generator ({gen.c_dim} classes, "
          f"{gen.resolution} px) and the {config.classifier.kind} classifier "
          f"({cls.feature_dim} units) load on {models.device} and fit each other; the "
          f"artifact root {config.artifact_root} can be written"
          + ("; the label folder fits the generator" if config.segment.labels else
             "" if labelled else "; segment.labels is not set yet (labels export/import)"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if args.stage is not None and args.stage not in STAGE_NAMES:
        raise UsageError(f"--stage {args.stage!r} is not a stage; the stages are "
                         f"{', '.join(STAGE_NAMES)}")
    store = _store_for(args)
    infos = store.list_artifacts(args.stage, verify=args.verify)
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
        if info.problem:
            print(f"  {info.status}: {info.problem}")
    damaged = [i for i in infos if i.status == "corrupt"]
    if damaged:
        print(f"{len(damaged)} corrupt artifact(s): the next run rebuilds them (and what depends "
              "on them)", file=sys.stderr)
    return 1 if args.verify and damaged else 0


def cmd_clean(args: argparse.Namespace) -> int:
    if not args.older_than >= 0:  # also refuses nan
        raise UsageError(f"--older-than must be a number of seconds >= 0, got {args.older_than}")
    store = _store_for(args)
    removed = store.cleanup(older_than_s=args.older_than, dry_run=args.dry_run,
                            corrupt=args.corrupt)
    verb = "would remove" if args.dry_run else "removed"
    for path in removed:
        print(f"{verb} {path}")
    print(f"{verb} {len(removed)} uncommitted leftover(s) under {store.root_uri}")
    return 0


def _print_link_metrics(metrics: pd.DataFrame) -> None:
    columns = ["split", "n", "r2", "mse", "rsa_class", "rsa_sample", "closed_loop_accuracy",
               "closed_loop_r_corr"]
    shown = metrics[[c for c in columns if c in metrics.columns]]
    print("link metrics (held-out = test):")
    print(shown.to_string(index=False, float_format=lambda x: f"{x:.4f}", na_rep="-"))


def _print_top_units(units: pd.DataFrame, per_part: int = 5) -> None:
    from tasks.report import ranked_units

    mark = {"significant": "", "leaning": "~", "none": "*"}
    print("top units per part (significant ones by q; then leaning ones, marked ~, by p; then "
          "the others, marked *, by concentration; unit (concentration, q)):")
    for part, group in ranked_units(units).groupby("top_part", sort=True):
        shown = ", ".join(f"{int(u)}{mark[v]} ({c:.2f}, {q:.2g})" for u, c, q, v in
                          zip(group["unit"][:per_part], group["concentration"][:per_part],
                              group["specificity_q"][:per_part], group["verdict"][:per_part],
                              strict=True))
        print(f"  {part:<10} {len(group):>4} units: {shown}")
    counts = units["verdict"].value_counts()
    print(f"  of {len(units)} units, {counts.get('significant', 0)} respond to their top part more "
          "exclusively than random read-outs of r do (specificity q < 0.05), "
          f"{counts.get('leaning', 0)} lean to it (their own p < 0.05, not significant among "
          f"all units), {counts.get('none', 0)} have no such part")
    print(f"  tuning: median closed-loop gain {units['closed_loop_gain'].median():.2f} "
          f"(1 = the re-encoded unit follows the value set), median pixel change "
          f"{units['pixel_change'].median():.3f}, part labels changed "
          f"{units['label_change'].median():.1%}")


def _print_warnings(warnings: list[str]) -> None:
    for message in warnings:
        print(f"WARNING: {message}", file=sys.stderr)


def _print_tables(config: AnalysisConfig, reports: dict) -> None:
    from storage.catalog import stage_of

    store = ArtifactStore(config.artifact_root)
    print("artifacts (Parquet tables and Zarr arrays; columns in docs/tables.md):")
    for report in reports.values():
        for name, key in report.keys.items():
            stage = stage_of(name)
            label = f"{stage} ({name})" if stage != name else stage
            print(f"  {label:<16} {store.artifact_path(stage, key)}")
    run_id = next((r.extra["run_id"] for r in reports.values() if "run_id" in r.extra), None)
    if run_id:
        print(f"run {run_id} is in the catalog: `linkstyle tables --run {run_id}` lists its "
              "tables, `linkstyle report` makes its HTML report")


def _config_from_args(args: argparse.Namespace) -> AnalysisConfig:
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


def _runner(args: argparse.Namespace) -> RunnerSpec:
    """The --runner, --address and --workers options, checked (``flows.runners``). The flow
    passes the command's temporary Prefect server on to a local cluster's workers."""
    from flows.runners import checked_spec

    return checked_spec(args.runner, args.address, args.workers)


def _run_flow(args: argparse.Namespace, until: str) -> tuple[AnalysisConfig, dict]:
    config = _config_from_args(args)
    from flows.preflight import preflight

    spec = _runner(args)
    preflight(config, until)  # every check that needs no stage's result, before Prefect starts
    from flows.analysis import analysis_flow
    from flows.server import temporary_server

    _install_log_filter()  # Prefect has configured its logging by now

    where = f" on {spec.kind}" + (f" at {spec.address}" if spec.address else "") \
        if spec.kind != "local" else ""
    print(f"linkstyle: {config.generator.kind} generator, {config.classifier.kind} "
          f"classifier, stages up to {until!r}, artifacts under {config.artifact_root}{where}")
    t0 = time.perf_counter()
    with temporary_server():
        reports = analysis_flow(config.model_dump(mode="json"), until=until, runner=spec.kind,
                                address=spec.address, workers=spec.workers)
    for report in reports.values():
        print(f"  {report.stage:<8} computed {report.computed:>3}  from cache {report.cached:>3}"
              f"  already stored {report.reused:>3}")
    print(f"stages done in {time.perf_counter() - t0:.1f} s")
    return config, reports


def cmd_run(args: argparse.Namespace) -> int:
    config, reports = _run_flow(args, args.until)
    if "link" in reports:
        _print_link_metrics(reports["link"].extra["metrics"])
    if "tune" in reports:
        print(f"segmenter held-out mIoU: {reports['tune'].extra['miou']:.3f}")
    if "score" in reports:
        _print_top_units(reports["score"].extra["units"])
        _print_warnings(reports["score"].extra["warnings"])
    _print_tables(config, reports)
    print("`linkstyle status` lists every artifact")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from flows.results import cmd_runs as runs

    return runs(args, _config_from_args(args))


def cmd_tables(args: argparse.Namespace) -> int:
    from flows.results import cmd_tables as tables

    return tables(args, _config_from_args(args))


def cmd_report(args: argparse.Namespace) -> int:
    from flows.results import cmd_report as report

    t0 = time.perf_counter()
    out = report(args, _config_from_args(args))
    print(f"report: {out['index']} ({out['unit_pages']} unit pages, {time.perf_counter() - t0:.0f}"
          f" s); units.csv: {out['units_csv']}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    _, reports = _run_flow(args, "validate")
    m = reports["validate"].extra["metrics"]
    source = m.get("ground_truth_source", "weights")
    print("ground-truth validation (toy world, interventional ground truth "
          + ("stored with the classifier's weights" if source == "weights" else
             f"measured for this classifier, cached as ground_truth/{source}")
          + "): top part = ground-truth part for")
    print(f"  all {int(m['n_units'])} evaluated units: {m['match_rate_all']:.1%} "
          f"(chance {m['chance_all']:.1%})")
    print(f"  {int(m['n_strong'])} strongly tuned (top quarter by concentration): "
          f"{m['match_rate']:.1%} (chance {m['chance']:.1%})")
    print(f"  {int(m['n_selective'])} part-selective (ground-truth concentration >= 0.6): "
          f"{m['match_rate_selective']:.1%} (chance {m['chance_selective']:.1%})")
    print(f"  significant: {int(m['n_significant'])} units; wrong part "
          f"{m['wrong_share_significant']:.1%}, mixed by ground truth (concentration < 0.5) "
          f"{m['not_selective_share_significant']:.1%} "
          f"({int(m['n_significant_not_selective'])} units); power on the part-selective "
          f"{m['power_selective']:.1%} ({int(m['n_mixed'])} mixed units in all)")
    parts = [k.removeprefix("auc_") for k in m if k.startswith("auc_")]
    print("  per part, match (chance), AUC, power, wrong part among significant: " + ", ".join(
        f"{p} {m[f'match_{p}']:.0%} ({m[f'chance_{p}']:.0%}) {m[f'auc_{p}']:.2f} "
        f"{m[f'power_selective_{p}']:.0%} {m[f'wrong_share_significant_{p}']:.0%}"
        for p in parts))
    print(f"  mean AUC: {m['mean_auc']:.3f}")
    return 0


def cmd_unit(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    from flows.results import RunNotFound, run_keys
    from linkstyle_core.figures import unit_figure
    from tasks.unit_view import VERDICT_TEXT, unit_view, weak_label_text

    # the newest run of this config in the catalog: no models to load, no stage code to import
    # (a few seconds at start-up); without one, the keys this code would compute
    try:
        _, keys = run_keys(config, "latest", needs="selectivity")
    except RunNotFound:
        from flows.analysis import analysis_keys
        from tasks.context import models_for

        keys = analysis_keys(config, models_for(config))
    try:
        view = unit_view(ArtifactStore(config.artifact_root), keys, args.unit, args.shown)
    except ValueError as exc:  # a unit that was not tuned, a run without images
        raise UsageError(str(exc)) from None
    row, parts, shares = view["row"], view["part_names"], view["shares"]
    beyond = shares > view["null_threshold"]

    print(f"unit {args.unit}: top part {row['top_part']} (concentration "
          f"{row['concentration']:.2f}); specificity p {row['specificity_p']:.3g}, q "
          f"{row['specificity_q']:.3g}: {VERDICT_TEXT[row['verdict']]}")
    if row["weak_label"]:
        print(f"  {weak_label_text(row)}")
    print(f"  closed loop: gain {row['closed_loop_gain']:.2f} (slope of re-encoded on set value), "
          f"rank {int(row['closed_loop_rank'])} among all units' standardised changes")
    print(f"  image change first -> last step: pixels {row['pixel_change']:.3f} (mean |delta| in "
          f"[0, 1]), part labels {row['label_change']:.1%}")
    ranked = sorted(zip(shares, parts, beyond, strict=True), reverse=True)
    print("  what the unit responds to, share per part (* beyond 95% of random read-outs): "
          + ", ".join(f"{p} {s:.2f}{'*' if b else ''}" for s, p, b in ranked))
    out = args.out or f"unit-{args.unit}.png"
    title = (f"unit {args.unit}: top part {row['top_part']}, concentration "
             f"{row['concentration']:.2f}, q {row['specificity_q']:.2g}, gain "
             f"{row['closed_loop_gain']:.2f}, pixel change {row['pixel_change']:.3f}")
    png = unit_figure(view["images"], view["parts"], view["set_value"], view["response"],
                      shares, parts, view["highlighted"], view["null_threshold"], title,
                      [f"class {c}" for c in view["sample_class"]])
    with open(out, "wb") as handle:
        handle.write(png)
    print(f"  figure: {out}")
    return 0


def cmd_counterfactual(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    from flows.preflight import preflight

    spec = _runner(args)
    preflight(config, "link" if args.no_selectivity else "score", args.origin, args.target,
              counterfactual=True)
    from flows.analysis import counterfactual_flow
    from flows.server import temporary_server

    _install_log_filter()  # Prefect has configured its logging by now

    t0 = time.perf_counter()
    with temporary_server():
        reports = counterfactual_flow(config.model_dump(mode="json"), origin=args.origin,
                                      target=args.target,
                                      with_selectivity=not args.no_selectivity,
                                      runner=spec.kind, address=spec.address,
                                      workers=spec.workers)
    report = reports["counterfactual"]
    summary = report.extra["summary"]
    print(f"counterfactuals ({'computed' if report.computed else 'from the store'}, "
          f"{time.perf_counter() - t0:.1f} s):")
    shown = summary[["origin", "origin_name", "target", "target_name", "n", "flip_rate",
                     "median_steps", "decision_units"]]
    print(shown.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    art = ArtifactStore(config.artifact_root).open("counterfactual", report.keys["counterfactual"])
    print(f"tables and figures: {art.path} (figures: "
          f"{', '.join(sorted(art.manifest.files))})")
    return 0


def _toy_models():
    from linkstyle_core.models.toy import load_toy_classifier, load_toy_generator

    return load_toy_generator(), load_toy_classifier()


def cmd_toy_train_generator(args: argparse.Namespace) -> int:
    from linkstyle_core.models.toy import GENERATOR_FILE, bundled_weights_path
    from linkstyle_core.toyworld import train_generator

    out = args.out or str(bundled_weights_path(GENERATOR_FILE))
    metrics = train_generator(out, steps=args.steps, seed=args.seed)
    print(f"wrote {out}: {metrics}")
    return 0


def cmd_toy_train_classifier(args: argparse.Namespace) -> int:
    from linkstyle_core.models.toy import CLASSIFIER_FILE, bundled_weights_path
    from linkstyle_core.toyworld import train_classifier

    out = args.out or str(bundled_weights_path(CLASSIFIER_FILE))
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


# -- parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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

    def with_runner(p: argparse.ArgumentParser) -> None:
        p.add_argument("--runner", choices=["local", "dask", "ray"], default="local",
                       help="where the tasks run: one local thread (default), a Dask or a Ray "
                            "cluster (README, 'Running on a cluster')")
        p.add_argument("--address", metavar="URI", help="a running cluster's scheduler "
                       "(dask: tcp://host:8786; ray: ray://host:10001 or auto); default: start "
                       "a local one")
        p.add_argument("--workers", type=int, metavar="N", help="workers of the local cluster "
                       "(default: one per GPU, else 1)")

    p = add("run", cmd_run, "run the analysis (default: the bundled toy world)")
    with_root(p)
    with_runner(p)
    p.add_argument("--until", default="score", choices=["paired", "link", "tune", "score"],
                   help="last stage to run (default: score, the full analysis)")

    p = add("validate", cmd_validate,
            "toy world: compare each unit's selective part with the renderer's ground truth")
    with_root(p)
    with_runner(p)

    p = add("unit", cmd_unit, "show what one unit does: tuning strips with difference maps "
            "and part outlines, the closed loop, per-part change (after `linkstyle run`)")
    with_root(p)
    p.add_argument("unit", type=int, metavar="U", help="unit index")
    p.add_argument("--out", metavar="FILE.png", help="where to write the figure "
                   "(default: unit-U.png)")
    # dest "shown": --samples of `counterfactual` is a config override, this one is not
    p.add_argument("--samples", dest="shown", type=int, default=4,
                   help="samples shown (default: 4)")

    p = add("counterfactual", cmd_counterfactual,
            "move samples of one class across the decision boundary to another")
    with_root(p)
    with_runner(p)
    p.add_argument("--origin", type=int, help="origin class (omit both for all pairs)")
    p.add_argument("--target", type=int, help="target class")
    p.add_argument("--samples", type=int, help="samples per pair (default: from the config)")
    p.add_argument("--no-selectivity", action="store_true",
                   help="skip stages 3-4 (no overlap with part-selective units)")

    from flows.cli_labels import add_labels_commands  # labels export|open|import

    add_labels_commands(sub, add, with_config)

    from flows.cli_explore import add_explore_command  # explore a run live in the browser

    add_explore_command(sub, add, with_root, _config_from_args)

    toy = sub.add_parser("toy", help="the bundled toy world: train, evaluate, picture")
    tsub = toy.add_subparsers(dest="toy_command", required=True, metavar="ACTION")
    for name, func, steps, seed, what in (
        ("train-generator", cmd_toy_train_generator, 4000, 0, "the toy generator"),
        ("train-classifier", cmd_toy_train_classifier, 800, 1, "the toy classifier"),
    ):
        p = add(name, func, f"retrain {what} (deterministic on CPU)", tsub)
        p.add_argument("--steps", type=int, default=steps)
        p.add_argument("--seed", type=int, default=seed)
        p.add_argument("--out", metavar="FILE", help="default: the bundled weights file")
        if name == "train-classifier":
            p.add_argument("--invariance", type=float, default=1.0, metavar="X",
                           help="weight of the part-invariance loss: 1 (bundled) makes every "
                           "unit follow one part, 0 trains an ordinary classifier")
    p = add("evaluate", cmd_toy_evaluate, "measure the toy world's quality on fresh seeds", tsub)
    p.add_argument("--n", type=int, default=200, help="images per species and measurement")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--json", action="store_true", help="print every figure as JSON")
    p = add("sheet", cmd_toy_sheet, "picture: renderer vs. generator images and labels", tsub)
    p.add_argument("out", metavar="OUT.png")
    p.add_argument("--seed", type=int, default=0)

    p = add("runs", cmd_runs, "list the runs recorded in the artifact root's catalog")
    with_root(p)
    p.add_argument("--last", type=int, default=20, help="show the newest N runs (default: 20)")

    p = add("tables", cmd_tables, "a run's tables: Parquet file paths or DuckDB views")
    with_root(p)
    p.add_argument("--run", default="latest", metavar="ID|latest",
                   help="a run id from `linkstyle runs`, or latest (the newest completed run "
                        "of this config; default)")
    p.add_argument("--format", choices=["paths", "sql"], default="paths",
                   help="paths: one line per file (view name, path); sql: DuckDB CREATE VIEW "
                        "statements over exactly those files")

    p = add("report", cmd_report, "write a static HTML report of a run (opens from disk)")
    with_root(p)
    p.add_argument("--run", default="latest", metavar="ID|latest",
                   help="a run id from `linkstyle runs`, or latest (default)")
    p.add_argument("--out", metavar="DIR", help="folder to write (default: "
                   "linkstyle-report-<run id>)")
    p.add_argument("--pages", choices=["all", "top"], default="all",
                   help="a page for every unit (default) or only for the top units per part")

    p = add("status", cmd_status, "list artifacts: stage, key, complete/partial, size, created")
    with_root(p)
    p.add_argument("--stage", help="only this stage")
    p.add_argument("--verify", action="store_true",
                   help="read every file and compare its checksum with the manifest's; exit "
                        "code 1 if an artifact is corrupt")

    p = add("clean", cmd_clean, "remove uncommitted leftovers of failed or killed runs")
    with_root(p)
    p.add_argument("--older-than", type=float, default=3600.0, metavar="SECONDS",
                   help="spare leftovers younger than this, a run may still write them "
                        "(default: 3600)")
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.add_argument("--corrupt", action="store_true",
                   help="also remove artifacts whose manifest or files are damaged")

    config = sub.add_parser("config", help="show or validate an analysis config")
    csub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    p = add("show", cmd_config_show, "print the resolved config as YAML", csub)
    with_config(p)
    p = add("validate", cmd_config_validate, "check a config file", csub)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--models", action="store_true", help="also load the models and check the "
                   "files the config names (checkout, network, weights, labels, artifact "
                   "root): what `linkstyle run` checks before stage 1")
    return parser


_SHOW_WARNING = warnings.showwarning


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """A ``StoreWarning`` is one ``linkstyle: warning: ...`` line; other warnings as usual."""
    if issubclass(category, StoreWarning):
        print(f"linkstyle: warning: {message}", file=sys.stderr)
    else:
        _SHOW_WARNING(message, category, filename, lineno, file, line)


def _closed_stdout() -> int:
    """The reader of our output went away (``linkstyle status | head``): say nothing more,
    and exit as a process killed by SIGPIPE would (128 + 13)."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


@contextlib.contextmanager
def _own_log_lines() -> Iterator[None]:
    """linkstyle's own log lines (``linkstyle_core``: e.g. which entries of a network pickle
    were left unloaded) on stderr as ``linkstyle: ...``, from INFO up; Prefect's logging,
    whose level is WARNING in a local run, would hide them."""
    logger = logging.getLogger("linkstyle_core")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("linkstyle: %(message)s"))
    before = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before[0])
        logger.propagate = before[1]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done, 1 a check failed (``status --verify``, ``toy
    evaluate``), 2 a user error (one ``linkstyle: error:`` line, no traceback), 130 interrupted
    (Ctrl-C), 141 the reader of the output went away (a closed pipe), 143 terminated (SIGTERM);
    anything else is a bug and keeps its traceback."""
    parser = build_parser()
    _install_log_filter()
    with _signals_as_interrupt(), _own_log_lines(), warnings.catch_warnings():
        warnings.showwarning = _show_warning
        warnings.simplefilter("always", StoreWarning)
        try:
            args = parser.parse_args(argv)
            code = int(args.func(args))
            sys.stdout.flush()  # a closed pipe shows here, not at exit
            return code
        except BrokenPipeError:
            return _closed_stdout()
        except Exception as exc:
            if stop.requested():  # a task stopped by the signal raised first: still a stop
                return _stopped(stop.requested() == "SIGTERM")
            if not _is_user_error(exc):
                raise
            print(f"linkstyle: error: {_describe(exc)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            return _stopped(isinstance(exc, Terminated))


def _stopped(terminated: bool) -> int:
    what = "terminated (SIGTERM)" if terminated else "interrupted"
    print(f"linkstyle: {what}; committed artifacts are kept, rerun to resume", file=sys.stderr)
    return 143 if terminated else 130


def entry() -> int:
    """The ``linkstyle`` console command (and ``python -m flows.cli``): the process defaults
    of ``flows.startup`` first, which must be set before anything imports Prefect or torch
    (this module imports neither), then ``main``. Kept out of ``main`` so that a caller in
    the same process (a test, a notebook) keeps its own environment."""
    startup.apply()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
