"""Every user mistake is one clear error, found before any stage runs, and changes nothing.

Each case runs ``flows.cli.main`` in-process and asserts exit code 2, a ``linkstyle: error:``
message naming the field, file or argument, no traceback, and an artifact root that did not
change (relative paths, sizes and sha256 of every file; a root that did not exist still does
not). The checks run before Prefect starts (``flows.preflight``), so the whole file takes
seconds. A running command's edges (signals, start-up, pipes, a busy machine) are in
test_running_command.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows.cli import main
from tests.fixtures.snapshot import snapshot
from tests.fixtures.tiny_models import tiny_config as tiny

LABELLED = {"labels": "{labels}"}

# (id, config: a dict written as YAML, raw text, or None for no --config; argv after the
# command; words the message must hold). "{tmp}", "{root}", "{labels}" are filled in.
CASES: list[tuple[str, dict | str | None, list[str], list[str]]] = [
    # -- the config file itself
    ("config-not-utf8", "data:\n  seed: 1  # caf\xe9\n", ["run"], ["config.yaml", "not UTF-8"]),
    ("config-duplicate-key", "data:\n  seed: 1\n  seed: 2\n", ["run"],
     ["config.yaml", "'seed' appears twice", "lines 2 and 3"]),
    ("config-duplicate-section", "data: {seed: 1}\nlink: {type: lr}\ndata: {seed: 2}\n", ["run"],
     ["'data' appears twice"]),
    ("config-bad-yaml", "link: [unclosed\n", ["run"], ["config.yaml", "not valid YAML"]),
    ("config-not-a-mapping", "- 1\n- 2\n", ["run"], ["config.yaml", "must hold a mapping"]),
    ("config-missing", "MISSING", ["run"], ["missing.yaml", "does not exist"]),
    ("config-is-a-folder", "FOLDER", ["run"], ["is a folder"]),
    ("config-unknown-section", {"colour": "red"}, ["run"], ["colour", "unknown field"]),
    ("config-typo", {"data": {"smaples_per_class": 3}}, ["run"],
     ["data.smaples_per_class", "did you mean 'samples_per_class'"]),
    ("config-validate-duplicate", "data:\n  seed: 1\n  seed: 2\n", ["config", "validate", "{cfg}"],
     ["appears twice"]),
    # -- strict types, finite floats, bounds
    ("bool-as-count", tiny(data={"samples_per_class": True}), ["run"],
     ["data.samples_per_class", "valid integer", "True"]),
    ("string-as-count", tiny(data={"samples_per_class": "200"}), ["run"],
     ["data.samples_per_class", "valid integer"]),
    ("float-as-count", tiny(tuning={"steps": 3.5}), ["run"], ["tuning.steps", "valid integer"]),
    ("bool-as-float", tiny(data={"truncation": True}), ["run"], ["data.truncation"]),
    ("inf-lr", "counterfactual:\n  lr: .inf\n", ["run"], ["counterfactual.lr", "finite"]),
    ("nan-alpha", "link:\n  alpha: .nan\n", ["run"], ["link.alpha", "finite"]),
    ("huge-samples", tiny(data={"samples_per_class": 10**30}), ["run"],
     ["data.samples_per_class", "less than or equal to 100000"]),
    ("huge-seed", tiny(data={"seed": 2**40}), ["run"], ["data.seed", "4294967295"]),
    ("negative-seed", tiny(tuning={"seed": -1}), ["run"], ["tuning.seed", "greater than"]),
    ("huge-batch", tiny(runtime={"batch_size": 10**9}), ["run"], ["runtime.batch_size"]),
    ("zero-truncation", tiny(data={"truncation": 0}), ["run"], ["data.truncation"]),
    ("bool-class", tiny(data={"classes": [0, True]}), ["run"], ["data.classes"]),
    ("empty-classes", tiny(data={"classes": []}), ["run"], ["data.classes", "at least one"]),
    ("empty-root", tiny(artifact_root=""), ["run"], ["artifact_root"]),
    ("bad-precision", tiny(runtime={"precision": "fp8"}), ["run"], ["runtime.precision"]),
    ("bad-device-name", tiny(runtime={"device": "gpu"}), ["run"], ["runtime.device"]),
    ("too-few-null-directions", tiny(tuning={"null_directions": 2}), ["run"],
     ["tuning.null_directions", "at least 20", "profiles are noise"]),
    # -- checks against the models, before stage 1
    ("classes-out-of-range", tiny(data={"classes": [0, 7]}, segment=LABELLED), ["run"],
     ["data.classes", "class 7", "out of range", "3 classes"]),
    ("units-out-of-range", tiny(tuning={"units": "0-99999"}, segment=LABELLED), ["run"],
     ["tuning.units", "unit 16", "16 units"]),
    ("units-astronomic", tiny(tuning={"units": "0-1000000000000"}, segment=LABELLED), ["run"],
     ["tuning.units", "out of range"]),
    ("units-not-a-range", tiny(tuning={"units": "0-x"}), ["run"], ["tuning.units", "'0-x'"]),
    ("tuning-more-than-held-out", tiny(tuning={"samples_per_class": 30}, segment=LABELLED),
     ["run"], ["tuning.samples_per_class", "data.test_samples_per_class"]),
    ("validate-needs-toy-world", tiny(segment=LABELLED), ["validate"], ["toy world"]),
    # -- the segmenter's labels
    ("labels-required", tiny(), ["run"], ["segment.labels is required"]),
    ("labels-folder-missing", tiny(segment={"labels": "{tmp}/nowhere"}), ["run"],
     ["segment.labels", "nowhere", "not a folder"]),
    ("labels-not-imported", tiny(segment={"labels": "{tmp}/not-imported"}), ["run"],
     ["not-imported/labels.npz", "labels import"]),
    ("labels-parts-json-invalid", tiny(segment={"labels": "{tmp}/bad-json"}), ["run"],
     ["bad-json/parts.json", "not valid JSON"]),
    ("labels-npz-corrupt", tiny(segment={"labels": "{tmp}/corrupt-npz"}), ["run"],
     ["corrupt-npz/labels.npz", "cannot be read"]),
    ("labels-for-another-generator", tiny(segment={"labels": "{tmp}/wrong-shape"}), ["run"],
     ["wrong-shape", "latents have shape", "export the folder again"]),
    ("parts-unknown-to-labels", tiny(segment={"labels": "{labels}", "parts": ["background",
                                                                           "ear"]}),
     ["run"], ["segment.parts", "unknown part(s) ['ear']", "bright"]),
    ("parts-unknown-to-toy-world", {"segment": {"parts": ["background", "wing"]}}, ["run"],
     ["segment.parts", "'wing'", "toy world"]),
    ("labels-import-bad-json", None, ["labels", "import", "{tmp}/bad-json"],
     ["bad-json/parts.json", "not valid JSON"]),
    ("labels-import-missing-folder", None, ["labels", "import", "{tmp}/nowhere"],
     ["nowhere", "labels export"]),
    ("labels-export-zero", None, ["labels", "export", "--out", "{tmp}/new", "--count", "0"],
     ["--count", "got 0"]),
    ("labels-export-without-parts", tiny(),
     ["labels", "export", "--config", "{cfg}", "--out", "{tmp}/new"], ["segment.parts"]),
    ("labels-open-missing-folder", None, ["labels", "open", "--no-browser", "{tmp}/nowhere"],
     ["nowhere is not a folder", "labels export --out"]),
    ("labels-open-not-an-export", None, ["labels", "open", "--no-browser",
                                         "{tmp}/not-imported"],
     ["not-imported is not a label folder", "latents.npy is missing", "labels export --out"]),
    ("labels-open-another-generator", None, ["labels", "open", "--no-browser", "{labels}"],
     ["latents.npy holds latents [N, 2, 6]", "--config FILE", "--no-prefill"]),
    # -- the artifact root
    ("root-is-a-file", tiny(segment=LABELLED), ["run", "--root", "{tmp}/a-file.txt"],
     ["a-file.txt", "is a file"]),
    ("root-under-a-file", tiny(segment=LABELLED), ["run", "--root", "{tmp}/a-file.txt/sub"],
     ["cannot be created", "a-file.txt is a file"]),
    ("root-dangling-link", tiny(segment=LABELLED), ["run", "--root", "{tmp}/dangling"],
     ["dangling is a symbolic link to", "gone, which does not exist"]),
    ("root-under-a-dangling-link", tiny(segment=LABELLED),
     ["run", "--root", "{tmp}/dangling/artifacts"], ["dangling is a symbolic link"]),
    ("root-unknown-protocol", tiny(segment=LABELLED), ["run", "--root", "nosuch://bucket/x"],
     ["nosuch://bucket/x", "Protocol not known"]),
    ("root-unknown-protocol-status", None, ["status", "--root", "nosuch://bucket/x"],
     ["Protocol not known"]),
    # -- model files
    ("generator-target-malformed", tiny(generator={"target": "no_colon"}), ["run"],
     ["generator.target", "package.module:factory"]),
    ("generator-module-missing", tiny(generator={"target": "nosuch.module:factory"}), ["run"],
     ["generator.target", "cannot import module 'nosuch.module'"]),
    ("generator-factory-missing", tiny(generator={"target": "tests.fixtures.tiny_models:nope"}),
     ["run"], ["generator.target", "has no 'nope'"]),
    ("classifier-not-a-classifier",
     tiny(classifier={"target": "tests.fixtures.tiny_models:tiny_generator"}), ["run"],
     ["classifier", "does not satisfy the Classifier protocol"]),
    ("stylegan-without-network", {"generator": {"kind": "stylegan-xl"}}, ["run"],
     ["generator.network", "generator.source"]),
    ("stylegan-source-not-a-checkout",
     {"generator": {"kind": "stylegan-xl", "network": "{tmp}/no.pkl", "source": "{tmp}"},
      "runtime": {"device": "cpu"}}, ["run"], ["generator.source", "not a StyleGAN-XL checkout"]),
    ("torchvision-weights-missing",
     {"classifier": {"kind": "torchvision", "name": "resnet18", "weights": "{tmp}/no.pth"},
      "runtime": {"device": "cpu"}}, ["run"], ["no.pth"]),
    ("torchvision-without-name", {"classifier": {"kind": "torchvision"}}, ["run"],
     ["classifier.name"]),
    # -- command-line arguments
    ("until-unknown", None, ["run", "--until", "everything"], ["--until", "invalid choice"]),
    ("unknown-command", None, ["rnu"], ["invalid choice: 'rnu'"]),
    ("unknown-flag", None, ["run", "--fast"], ["unrecognized arguments: --fast"]),
    ("origin-without-target", tiny(segment=LABELLED), ["counterfactual", "--origin", "0"],
     ["--origin without --target", "give both"]),
    ("target-without-origin", tiny(segment=LABELLED), ["counterfactual", "--target", "0"],
     ["--target without --origin"]),
    ("origin-equals-target", tiny(segment=LABELLED),
     ["counterfactual", "--origin", "1", "--target", "1"], ["both 1", "different class"]),
    ("target-out-of-range", tiny(segment=LABELLED),
     ["counterfactual", "--origin", "0", "--target", "9"], ["--target 9", "data.classes"]),
    ("origin-not-a-number", tiny(segment=LABELLED), ["counterfactual", "--origin", "cat"],
     ["--origin", "invalid int value: 'cat'"]),
    ("counterfactual-zero-samples", tiny(segment=LABELLED), ["counterfactual", "--samples", "0"],
     ["counterfactual.samples", "greater than or equal to 1"]),
    ("counterfactual-huge-samples", tiny(segment=LABELLED),
     ["counterfactual", "--samples", str(10**30)], ["counterfactual.samples", "100000"]),
    # -- the task runner (flows.runners)
    ("runner-unknown", tiny(segment=LABELLED), ["run", "--runner", "spark"],
     ["--runner", "invalid choice: 'spark'"]),
    ("workers-without-a-runner", tiny(segment=LABELLED), ["run", "--workers", "2"],
     ["address and workers apply to the dask and ray runners", "--runner dask"]),
    ("workers-zero", tiny(segment=LABELLED), ["run", "--runner", "dask", "--workers", "0"],
     ["workers must be a whole number >= 1, got 0"]),
    ("address-and-workers", tiny(segment=LABELLED),
     ["validate", "--runner", "ray", "--address", "auto", "--workers", "2"],
     ["either an address", "not both"]),
    ("counterfactual-more-than-held-out", tiny(segment=LABELLED),
     ["counterfactual", "--samples", "50"],
     ["counterfactual.samples (50)", "data.test_samples_per_class (20)"]),
]


def _fill(value: object, fill: dict[str, str]) -> object:
    if isinstance(value, str):
        return value.format(**fill)
    if isinstance(value, dict):
        return {k: _fill(v, fill) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, fill) for v in value]
    return value


def _argv(world: dict[str, Path], config: dict | str | None, argv: list[str]) -> list[str]:
    """The command line of a case, with its config written to {tmp}/config.yaml."""
    tmp = world["tmp"]
    fill = {"tmp": str(tmp), "root": str(world["root"]), "labels": str(world["labels"]),
            "cfg": str(tmp / "config.yaml")}
    path = tmp / "config.yaml"
    if config == "MISSING":
        path = tmp / "missing.yaml"
    elif config == "FOLDER":
        path = tmp
    elif isinstance(config, str):
        path.write_bytes(config.encode("latin-1"))  # lets a case write a non-UTF-8 byte
    elif isinstance(config, dict):
        raw = _fill(config, fill)
        assert isinstance(raw, dict)
        raw.setdefault("artifact_root", str(world["root"]))
        path.write_text(yaml.safe_dump(raw))
    args = [str(_fill(a, fill)) for a in argv]
    if config is not None and args[0] not in ("config", "labels") \
            and "--config" not in args:
        args[1:1] = ["--config", str(path)]
    if args[0] in ("run", "validate", "counterfactual", "status") and "--root" not in args \
            and not (isinstance(config, dict) and "artifact_root" in config):
        args[1:1] = ["--root", str(world["root"])]
    return args


@pytest.mark.parametrize("case,config,argv,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error_and_changes_nothing(world, capsys, case, config, argv,
                                                          words) -> None:
    args = _argv(world, config, argv)
    watched = [world["root"], world["tmp"] / "a-file.txt", world["labels"],
               world["tmp"] / "new", world["tmp"] / "nowhere"]
    before = [snapshot(p) for p in watched]
    t0 = time.perf_counter()
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert err.startswith("linkstyle: error: "), err
    assert "Traceback" not in out + err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    assert [snapshot(p) for p in watched] == before
    assert time.perf_counter() - t0 < 30  # found before any stage ran


def test_cuda_without_a_gpu_is_a_config_error(world, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    args = _argv(world, tiny(runtime={"device": "cuda"}, segment=LABELLED), ["run"])
    before = snapshot(world["root"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "runtime.device is 'cuda' but no CUDA device is available" in err
    assert "Traceback" not in err and snapshot(world["root"]) == before


def test_a_remote_cluster_needs_a_prefect_server_its_workers_reach(world, capsys,
                                                                    monkeypatch) -> None:
    import flows.server

    monkeypatch.setattr(flows.server, "uses_own_server", lambda: False)  # no PREFECT_API_URL
    args = _argv(world, tiny(segment=LABELLED), ["counterfactual", "--runner", "dask",
                                                  "--address", "tcp://10.1.2.3:8786"])
    before = snapshot(world["root"])
    t0 = time.perf_counter()
    assert main(args) == 2
    err = capsys.readouterr().err
    for words in ("tcp://10.1.2.3:8786", "cannot reach this command's temporary Prefect "
                  "server", "prefect server start", "PREFECT_API_URL"):
        assert words in err, err
    assert "Traceback" not in err and snapshot(world["root"]) == before
    assert time.perf_counter() - t0 < 5  # refused before a server or a cluster starts
    # the same cluster with a server of one's own is accepted (and then reached: not here)
    from flows.runners import RunnerSpec, check_reachable_server

    check_reachable_server(RunnerSpec("dask", "tcp://10.1.2.3:8786"), own_server=True)
    check_reachable_server(RunnerSpec("dask", "tcp://127.0.0.1:8786"), own_server=False)


def test_s3_without_s3fs_says_what_to_install(world, tmp_path) -> None:
    """In a fresh process whose ``s3fs`` cannot be imported (a stand-in package that raises
    ImportError, first on the path), as if the s3 extra were not installed."""
    fake = tmp_path / "no-s3fs" / "s3fs"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("No module named \'s3fs\'")\n')
    args = _argv(world, tiny(segment=LABELLED), ["run", "--root", "s3://bucket/prefix"])
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{fake.parent}{os.pathsep}{repo}"}
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True,
                          text=True, env=env, cwd=repo, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "s3://bucket/prefix" in done.stderr and "s3fs" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_root_that_is_not_writable_is_refused(world, capsys, monkeypatch) -> None:
    """Root may write anywhere, so the permission check itself is made to say no."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == world["root"]
                        else real(p, mode))
    args = _argv(world, tiny(segment=LABELLED), ["run"])
    before = snapshot(world["root"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"artifact_root {world['root']} is not writable" in err
    assert snapshot(world["root"]) == before


def test_a_root_that_does_not_exist_is_not_created(world, capsys) -> None:
    missing = world["tmp"] / "fresh" / "root"
    args = _argv(world, tiny(tuning={"units": "0-99"}, segment=LABELLED),
                 ["run", "--root", str(missing)])
    assert main(args) == 2
    assert "tuning.units" in capsys.readouterr().err
    assert not (world["tmp"] / "fresh").exists()


def test_os_errors_the_user_must_fix_are_messages_and_bugs_keep_tracebacks(monkeypatch,
                                                                           capsys) -> None:
    import errno

    import flows.cli.config as config_commands

    def full_disk(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/artifacts/paired/x")

    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(config_commands, "cmd_config_show", full_disk)
    assert main(["config", "show"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("linkstyle: error: No space left on device: /data/artifacts/paired/x")
    assert "free space" in err
    monkeypatch.setattr(config_commands, "cmd_config_show", bug)
    with pytest.raises(ZeroDivisionError):
        main(["config", "show"])


def test_user_errors_in_prefect_logs_lose_their_traceback(monkeypatch) -> None:
    import logging

    import flows.server
    from flows.cli.errors import HideUserErrorTracebacks
    from linkstyle_core.config import ConfigError

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1,
                                     "Task run failed with exception", None, sys.exc_info())

    quiet = HideUserErrorTracebacks()
    monkeypatch.setattr(flows.server, "uses_own_server", lambda: False)
    user = record(ConfigError("data.classes: class 7 is out of range"))
    assert quiet.filter(user) is False and user.exc_info is None  # no own server: dropped
    bug = record(ZeroDivisionError("a bug"))
    assert quiet.filter(bug) is True and bug.exc_info is not None  # a bug keeps its traceback
    # with a server of one's own (PREFECT_API_URL) the line stays for the UI, without traceback
    monkeypatch.setattr(flows.server, "uses_own_server", lambda: True)
    user = record(ConfigError("data.classes: class 7 is out of range"))
    assert quiet.filter(user) is True and user.exc_info is None


def test_the_console_shows_no_prefect_line_about_a_failed_run() -> None:
    """What Prefect prints while a run fails ("Finished in state Failed(...)", a task that
    failed on a user's mistake) stays off the console; ``main`` prints the error once. Other
    warnings, and the traceback of a bug, stay."""
    import logging

    from flows.cli.errors import QuietConsole

    def record(name: str, level: int, message: str, **extra: object) -> logging.LogRecord:
        rec = logging.LogRecord(name, level, __file__, 1, message, None, None)
        rec.__dict__.update(extra)
        return rec

    quiet = QuietConsole()
    assert not quiet.filter(record("prefect.task_runs", logging.ERROR, "Finished in state "
                                   "Failed('Task run encountered an exception AcceptanceError')"))
    assert not quiet.filter(record("prefect.flow_runs", logging.ERROR,
                                   "Finished in state NotReady('Upstream task run ...')"))
    assert not quiet.filter(record("prefect.task_runs", logging.ERROR, "Task run failed",
                                   linkstyle_user_error=True))
    assert quiet.filter(record("prefect.task_runs", logging.ERROR, "Task run failed with "
                               "exception: ZeroDivisionError"))  # a bug: kept
    assert quiet.filter(record("prefect.flow_runs", logging.WARNING, "a warning to act on"))
    assert quiet.filter(record("prefect.flow_runs", logging.INFO, "Finished in state Completed()"))


