"""Every user mistake is one clear error, found before any stage runs, and changes nothing.

Each case runs ``flows.cli.main`` in-process and asserts exit code 2, a ``linkstyle: error:``
message naming the field, file or argument, no traceback, and an artifact root that did not
change (relative paths, sizes and sha256 of every file; a root that did not exist still does
not). The checks run before Prefect starts (``flows.preflight``), so the whole file takes
seconds. The last tests check that a failing shard's own error is shown (not Prefect's
``UnfinishedRun``) and that a SIGTERM leaves no temporary Prefect server behind.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from flows.cli import main
from storage import ArtifactStore, content_key
from tests.fixtures.snapshot import snapshot
from tests.fixtures.tiny_models import TINY_CONFIG, tiny_label_folder


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled folder for the tiny generator (parts background, bright, dark)."""
    return Path(tiny_label_folder(tmp_path_factory.mktemp("labels") / "labelled"))


@pytest.fixture(autouse=True)
def _keep_environment() -> object:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def world(tmp_path: Path, labels: Path) -> dict[str, Path]:
    """An artifact root holding one committed artifact, the label folder, a file, and folders
    for broken label folders."""
    root = tmp_path / "artifacts"
    with ArtifactStore(str(root)).writer("paired", content_key("paired", 1, {"x": 1})) as w:
        w.write_array("w", np.ones((3, 2), dtype="float32"))
    (tmp_path / "a-file.txt").write_text("not a folder\n")
    bad_json = tmp_path / "bad-json"
    bad_json.mkdir()
    (bad_json / "parts.json").write_text('["background", "ear"')
    not_imported = tmp_path / "not-imported"
    not_imported.mkdir()
    (not_imported / "parts.json").write_text('["background", "bright", "dark"]')
    corrupt = tmp_path / "corrupt-npz"
    corrupt.mkdir()
    (corrupt / "labels.npz").write_bytes(b"PK\x03\x04 this is not a zip file")
    wrong_shape = tmp_path / "wrong-shape"
    wrong_shape.mkdir()
    np.savez(wrong_shape / "labels.npz", ws=np.zeros((4, 3, 5), "float32"),
             labels=np.zeros((4, 8, 8), "int64"), parts=np.asarray(["background", "x"]))
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")  # a link to a folder not there
    return {"tmp": tmp_path, "root": root, "labels": labels}


def _tiny(**sections: object) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values} if isinstance(values, dict) else values
    return config


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
    ("bool-as-count", _tiny(data={"samples_per_class": True}), ["run"],
     ["data.samples_per_class", "valid integer", "True"]),
    ("string-as-count", _tiny(data={"samples_per_class": "200"}), ["run"],
     ["data.samples_per_class", "valid integer"]),
    ("float-as-count", _tiny(tuning={"steps": 3.5}), ["run"], ["tuning.steps", "valid integer"]),
    ("bool-as-float", _tiny(data={"truncation": True}), ["run"], ["data.truncation"]),
    ("inf-lr", "counterfactual:\n  lr: .inf\n", ["run"], ["counterfactual.lr", "finite"]),
    ("nan-alpha", "link:\n  alpha: .nan\n", ["run"], ["link.alpha", "finite"]),
    ("huge-samples", _tiny(data={"samples_per_class": 10**30}), ["run"],
     ["data.samples_per_class", "less than or equal to 100000"]),
    ("huge-seed", _tiny(data={"seed": 2**40}), ["run"], ["data.seed", "4294967295"]),
    ("negative-seed", _tiny(tuning={"seed": -1}), ["run"], ["tuning.seed", "greater than"]),
    ("huge-batch", _tiny(runtime={"batch_size": 10**9}), ["run"], ["runtime.batch_size"]),
    ("zero-truncation", _tiny(data={"truncation": 0}), ["run"], ["data.truncation"]),
    ("bool-class", _tiny(data={"classes": [0, True]}), ["run"], ["data.classes"]),
    ("empty-classes", _tiny(data={"classes": []}), ["run"], ["data.classes", "at least one"]),
    ("empty-root", _tiny(artifact_root=""), ["run"], ["artifact_root"]),
    ("bad-precision", _tiny(runtime={"precision": "fp8"}), ["run"], ["runtime.precision"]),
    ("bad-device-name", _tiny(runtime={"device": "gpu"}), ["run"], ["runtime.device"]),
    ("too-few-null-directions", _tiny(tuning={"null_directions": 2}), ["run"],
     ["tuning.null_directions", "at least 20", "profiles are noise"]),
    # -- checks against the models, before stage 1
    ("classes-out-of-range", _tiny(data={"classes": [0, 7]}, segment=LABELLED), ["run"],
     ["data.classes", "class 7", "out of range", "3 classes"]),
    ("units-out-of-range", _tiny(tuning={"units": "0-99999"}, segment=LABELLED), ["run"],
     ["tuning.units", "unit 16", "16 units"]),
    ("units-astronomic", _tiny(tuning={"units": "0-1000000000000"}, segment=LABELLED), ["run"],
     ["tuning.units", "out of range"]),
    ("units-not-a-range", _tiny(tuning={"units": "0-x"}), ["run"], ["tuning.units", "'0-x'"]),
    ("tuning-more-than-held-out", _tiny(tuning={"samples_per_class": 30}, segment=LABELLED),
     ["run"], ["tuning.samples_per_class", "data.test_samples_per_class"]),
    ("validate-needs-toy-world", _tiny(segment=LABELLED), ["validate"], ["toy world"]),
    # -- the segmenter's labels
    ("labels-required", _tiny(), ["run"], ["segment.labels is required"]),
    ("labels-folder-missing", _tiny(segment={"labels": "{tmp}/nowhere"}), ["run"],
     ["segment.labels", "nowhere", "not a folder"]),
    ("labels-not-imported", _tiny(segment={"labels": "{tmp}/not-imported"}), ["run"],
     ["not-imported/labels.npz", "labels import"]),
    ("labels-parts-json-invalid", _tiny(segment={"labels": "{tmp}/bad-json"}), ["run"],
     ["bad-json/parts.json", "not valid JSON"]),
    ("labels-npz-corrupt", _tiny(segment={"labels": "{tmp}/corrupt-npz"}), ["run"],
     ["corrupt-npz/labels.npz", "cannot be read"]),
    ("labels-for-another-generator", _tiny(segment={"labels": "{tmp}/wrong-shape"}), ["run"],
     ["wrong-shape", "latents have shape", "export the folder again"]),
    ("parts-unknown-to-labels", _tiny(segment={"labels": "{labels}", "parts": ["background",
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
    ("labels-export-without-parts", _tiny(),
     ["labels", "export", "--config", "{cfg}", "--out", "{tmp}/new"], ["segment.parts"]),
    ("labels-open-missing-folder", None, ["labels", "open", "--no-browser", "{tmp}/nowhere"],
     ["nowhere is not a folder", "labels export --out"]),
    ("labels-open-not-an-export", None, ["labels", "open", "--no-browser",
                                         "{tmp}/not-imported"],
     ["not-imported is not a label folder", "latents.npy is missing", "labels export --out"]),
    ("labels-open-another-generator", None, ["labels", "open", "--no-browser", "{labels}"],
     ["latents.npy holds latents [N, 2, 6]", "--config FILE", "--no-prefill"]),
    # -- the artifact root
    ("root-is-a-file", _tiny(segment=LABELLED), ["run", "--root", "{tmp}/a-file.txt"],
     ["a-file.txt", "is a file"]),
    ("root-under-a-file", _tiny(segment=LABELLED), ["run", "--root", "{tmp}/a-file.txt/sub"],
     ["cannot be created", "a-file.txt is a file"]),
    ("root-dangling-link", _tiny(segment=LABELLED), ["run", "--root", "{tmp}/dangling"],
     ["dangling is a symbolic link to", "gone, which does not exist"]),
    ("root-under-a-dangling-link", _tiny(segment=LABELLED),
     ["run", "--root", "{tmp}/dangling/artifacts"], ["dangling is a symbolic link"]),
    ("root-unknown-protocol", _tiny(segment=LABELLED), ["run", "--root", "nosuch://bucket/x"],
     ["nosuch://bucket/x", "Protocol not known"]),
    ("root-unknown-protocol-status", None, ["status", "--root", "nosuch://bucket/x"],
     ["Protocol not known"]),
    # -- model files
    ("generator-target-malformed", _tiny(generator={"target": "no_colon"}), ["run"],
     ["generator.target", "package.module:factory"]),
    ("generator-module-missing", _tiny(generator={"target": "nosuch.module:factory"}), ["run"],
     ["generator.target", "cannot import module 'nosuch.module'"]),
    ("generator-factory-missing", _tiny(generator={"target": "tests.fixtures.tiny_models:nope"}),
     ["run"], ["generator.target", "has no 'nope'"]),
    ("classifier-not-a-classifier",
     _tiny(classifier={"target": "tests.fixtures.tiny_models:tiny_generator"}), ["run"],
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
    ("origin-without-target", _tiny(segment=LABELLED), ["counterfactual", "--origin", "0"],
     ["--origin without --target", "give both"]),
    ("target-without-origin", _tiny(segment=LABELLED), ["counterfactual", "--target", "0"],
     ["--target without --origin"]),
    ("origin-equals-target", _tiny(segment=LABELLED),
     ["counterfactual", "--origin", "1", "--target", "1"], ["both 1", "different class"]),
    ("target-out-of-range", _tiny(segment=LABELLED),
     ["counterfactual", "--origin", "0", "--target", "9"], ["--target 9", "data.classes"]),
    ("origin-not-a-number", _tiny(segment=LABELLED), ["counterfactual", "--origin", "cat"],
     ["--origin", "invalid int value: 'cat'"]),
    ("counterfactual-zero-samples", _tiny(segment=LABELLED), ["counterfactual", "--samples", "0"],
     ["counterfactual.samples", "greater than or equal to 1"]),
    ("counterfactual-huge-samples", _tiny(segment=LABELLED),
     ["counterfactual", "--samples", str(10**30)], ["counterfactual.samples", "100000"]),
    # -- the task runner (flows.runners)
    ("runner-unknown", _tiny(segment=LABELLED), ["run", "--runner", "spark"],
     ["--runner", "invalid choice: 'spark'"]),
    ("workers-without-a-runner", _tiny(segment=LABELLED), ["run", "--workers", "2"],
     ["address and workers apply to the dask and ray runners", "--runner dask"]),
    ("workers-zero", _tiny(segment=LABELLED), ["run", "--runner", "dask", "--workers", "0"],
     ["workers must be a whole number >= 1, got 0"]),
    ("address-and-workers", _tiny(segment=LABELLED),
     ["validate", "--runner", "ray", "--address", "auto", "--workers", "2"],
     ["either an address", "not both"]),
    ("counterfactual-more-than-held-out", _tiny(segment=LABELLED),
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
    args = _argv(world, _tiny(runtime={"device": "cuda"}, segment=LABELLED), ["run"])
    before = snapshot(world["root"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "runtime.device is 'cuda' but no CUDA device is available" in err
    assert "Traceback" not in err and snapshot(world["root"]) == before


def test_a_remote_cluster_needs_a_prefect_server_its_workers_reach(world, capsys,
                                                                    monkeypatch) -> None:
    import flows.server

    monkeypatch.setattr(flows.server, "uses_own_server", lambda: False)  # no PREFECT_API_URL
    args = _argv(world, _tiny(segment=LABELLED), ["counterfactual", "--runner", "dask",
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


def test_s3_without_s3fs_says_what_to_install(world, capsys, monkeypatch) -> None:
    from fsspec.registry import _registry

    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if the s3 extra were not installed
    monkeypatch.delitem(_registry, "s3", raising=False)
    args = _argv(world, _tiny(segment=LABELLED), ["run", "--root", "s3://bucket/prefix"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "s3://bucket/prefix" in err and "s3fs" in err and "Traceback" not in err


def test_a_root_that_is_not_writable_is_refused(world, capsys, monkeypatch) -> None:
    """Root may write anywhere, so the permission check itself is made to say no."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == world["root"]
                        else real(p, mode))
    args = _argv(world, _tiny(segment=LABELLED), ["run"])
    before = snapshot(world["root"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"artifact_root {world['root']} is not writable" in err
    assert snapshot(world["root"]) == before


def test_a_root_that_does_not_exist_is_not_created(world, capsys) -> None:
    missing = world["tmp"] / "fresh" / "root"
    args = _argv(world, _tiny(tuning={"units": "0-99"}, segment=LABELLED),
                 ["run", "--root", str(missing)])
    assert main(args) == 2
    assert "tuning.units" in capsys.readouterr().err
    assert not (world["tmp"] / "fresh").exists()


def test_os_errors_the_user_must_fix_are_messages_and_bugs_keep_tracebacks(monkeypatch,
                                                                           capsys) -> None:
    import errno

    import flows.cli as cli

    def full_disk(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/artifacts/paired/x")

    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "cmd_config_show", full_disk)
    assert main(["config", "show"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("linkstyle: error: No space left on device: /data/artifacts/paired/x")
    assert "free space" in err
    monkeypatch.setattr(cli, "cmd_config_show", bug)
    with pytest.raises(ZeroDivisionError):
        main(["config", "show"])


def test_user_errors_in_prefect_logs_lose_their_traceback(monkeypatch) -> None:
    import logging

    import flows.server
    from flows.cli import _HideUserErrorTracebacks
    from linkstyle_core.config import ConfigError

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1,
                                     "Task run failed with exception", None, sys.exc_info())

    quiet = _HideUserErrorTracebacks()
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

    from flows.cli import _QuietConsole

    def record(name: str, level: int, message: str, **extra: object) -> logging.LogRecord:
        rec = logging.LogRecord(name, level, __file__, 1, message, None, None)
        rec.__dict__.update(extra)
        return rec

    quiet = _QuietConsole()
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


# -- the running command: the shard's own error, no orphan server ------------------------------
def _run_tiny(tmp_path: Path, **data) -> list[str]:
    config = _tiny(data={"samples_per_class": 12, "test_samples_per_class": 6, **data})
    config["artifact_root"] = str(tmp_path / "root")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "flows.cli", "run", "--config", str(path), "--until", "paired"]


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL],
                         ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_a_killed_run_leaves_no_server_and_closes_the_pipe(tmp_path, sig) -> None:
    proc = subprocess.Popen(_run_tiny(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_env(), cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.time() + 120
        children: list[int] = []
        while not children and time.time() < deadline and proc.poll() is None:
            children = _children(proc.pid)  # the temporary Prefect server
            time.sleep(0.1)
        assert children, "the run did not start its temporary Prefect server"
        time.sleep(1.0)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)  # returns only when every writer closed the pipe
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    expected = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGKILL: -9}[sig]
    assert proc.returncode == expected, err.decode()[-2000:]
    if sig != signal.SIGKILL:
        assert b"committed artifacts are kept" in err and b"Traceback" not in err
    deadline = time.time() + 10
    while any(_alive(c) for c in children) and time.time() < deadline:
        time.sleep(0.1)
    assert not [c for c in children if _alive(c)], "the temporary Prefect server outlived the run"
    if sig == signal.SIGKILL:  # and the next run works
        again = subprocess.run(_run_tiny(tmp_path), capture_output=True, env=_env(), timeout=300,
                               cwd=Path(__file__).resolve().parents[2])
        assert again.returncode == 0, again.stderr.decode()[-2000:]


@pytest.mark.slow
def test_a_failing_shard_shows_its_own_error(tmp_path) -> None:
    """A class the classifier rarely accepts fails its paired shard: the command shows that
    AcceptanceError as one message, not Prefect's UnfinishedRun, no traceback, and no Prefect
    ERROR line ("Finished in state Failed", "NotReady") before it."""
    run = subprocess.run(_run_tiny(tmp_path, min_acceptance=1.0, max_attempts_factor=1.0),
                         capture_output=True, env=_env(), timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    err = run.stderr.decode()
    assert run.returncode == 2, err[-2000:]
    assert "linkstyle: error: class " in err and "data.min_acceptance" in err
    assert "UnfinishedRun" not in err and "Traceback" not in err
    assert "ERROR" not in err and "Finished in state" not in err, err[-3000:]


@pytest.mark.slow
def test_sigterm_during_the_null_control_stops_within_a_batch(tmp_path, labels) -> None:
    """The null control is one long task (here 100000 directions, minutes of work): a SIGTERM
    while it runs ends the command within seconds, not when the task would have ended."""
    config = _tiny(data={"samples_per_class": 12, "test_samples_per_class": 6},
                   tuning={"units": "0-3", "shard_size": 4, "samples_per_class": 1,
                           "null_samples_per_class": 1, "null_directions": 100000,
                           "store_images": False},
                   segment={"labels": str(labels)})
    config["artifact_root"] = str(tmp_path / "root")
    (tmp_path / "null.yaml").write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "flows.cli", "run", "--config", str(tmp_path / "null.yaml")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
                            cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None \
                and not list((tmp_path / "root").glob("tune/*/shards/*/manifest.json")):
            time.sleep(0.2)  # the unit shard is committed: the null control runs next
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(3.0)
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        took = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err.decode()[-2000:]
    assert b"terminated (SIGTERM)" in err and b"Traceback" not in err
    assert not list((tmp_path / "root").glob("null/*/manifest.json"))  # it did not finish
    print(f"stopped {took:.1f} s after SIGTERM")
    assert took < 30, f"the run took {took:.0f} s to stop"


# -- the command line's edges: start-up, a busy machine, pipes, remote roots, two runs at once ---
_STARTUP_VARS = ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "PREFECT_LOGGING_LEVEL",
                 "OMP_WAIT_POLICY")

_PROBE = """
import contextlib, sys
import flows.server

@contextlib.contextmanager
def probe():  # what Prefect itself would use when the run starts its server
    from prefect.settings import get_current_settings
    settings = get_current_settings()
    print("PROBE", settings.server.ephemeral.startup_timeout_seconds, settings.logging.level,
          flush=True)
    raise SystemExit(0)
    yield

flows.server.temporary_server = probe
from flows.cli import entry  # the console command's own path
sys.exit(entry())
"""


def _fresh_env(tmp_path: Path) -> dict[str, str]:
    """This environment without the command line's start-up defaults (a user's shell), and
    with a Prefect home of its own."""
    env = {k: v for k, v in _env().items() if k not in _STARTUP_VARS}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    return env


def test_startup_defaults_reach_prefect_in_a_fresh_process(tmp_path) -> None:
    """The defaults are set before anything imports Prefect (which reads its settings once):
    the run's Prefect sees a 90 s start-up timeout and the WARNING log level, not its own 20 s
    and INFO."""
    argv = _run_tiny(tmp_path)[3:]  # after `python -m flows.cli`
    run = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True,
                         env=_fresh_env(tmp_path), cwd=_env()["PYTHONPATH"], timeout=300)
    assert "PROBE 90 WARNING" in run.stdout, run.stdout + run.stderr[-2000:]
    # importing the command line (a test, a notebook) leaves the caller's environment alone
    check = ("import os; before = dict(os.environ); import flows.cli; "
             "print(dict(os.environ) == before)")
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         env=_fresh_env(tmp_path), cwd=_env()["PYTHONPATH"], timeout=120)
    assert run.stdout.strip() == "True", run.stderr[-2000:]


def test_a_server_that_does_not_start_is_one_line_with_its_output_and_the_fix(tmp_path) -> None:
    env = _fresh_env(tmp_path) | {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1"}
    run = subprocess.run(_run_tiny(tmp_path), capture_output=True, text=True, env=env,
                         cwd=env["PYTHONPATH"], timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("linkstyle: error: Prefect's temporary server did not start "
                                "within 1 s"), lines
    for words in ("its output: ", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=4",
                  "prefect server start", "PREFECT_API_URL"):
        assert words in lines[-1]
    assert "Traceback" not in run.stderr and " ERROR " not in run.stderr
    assert not (tmp_path / "root").exists() or not list((tmp_path / "root").rglob("manifest.json"))


def _hogs(n: int = 2) -> list[subprocess.Popen]:
    """``n`` processes that keep a core each busy (a shared CI machine, a laptop at work)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def test_the_main_command_succeeds_on_a_busy_machine_twice_at_once(tmp_path) -> None:
    """Two identical ``linkstyle run --until paired`` on one root at once, while two CPU-bound
    processes keep both cores of a 2-core machine busy (load about 4): each temporary Prefect
    server starts later, within the command's start-up timeout; both runs compute the same
    keys and commit the same bytes, neither reports damage, and the root verifies."""
    argv, env = _run_tiny(tmp_path), _fresh_env(tmp_path)
    hogs = _hogs(2)
    try:
        time.sleep(1.0)
        t0 = time.perf_counter()
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env, cwd=env["PYTHONPATH"]) for _ in range(2)]
        outputs = [p.communicate(timeout=600) for p in procs]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, f"load {load:.1f}: " + err[-3000:]
        assert "stages done" in out and " ERROR " not in err
        assert "error" not in err.lower() and "corrupt" not in (out + err).lower()
    assert main(["status", "--root", str(tmp_path / "root"), "--verify"]) == 0
    print(f"busy machine: load {load:.1f} at the end, both runs took "
          f"{time.perf_counter() - t0:.0f} s")


def test_a_closed_output_pipe_ends_quietly(world, tmp_path) -> None:
    """``linkstyle status | head -n 0``: the reader goes away; no BrokenPipeError traceback,
    and the exit code of a process stopped by SIGPIPE."""
    command = (f"set -o pipefail; {sys.executable} -m flows.cli status --root {world['root']} "
               "| head -n 0")
    run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=_env(),
                         cwd=_env()["PYTHONPATH"], timeout=120)
    assert run.stderr == "" and run.returncode == 141, run.stderr


@pytest.mark.parametrize("argv", [["run"], ["clean"], ["status"], ["runs"]],
                         ids=lambda a: a[0])
def test_an_s3_root_without_credentials_is_refused_in_seconds(world, capsys, monkeypatch,
                                                              argv) -> None:
    pytest.importorskip("s3fs")
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(world["tmp"]))  # no ~/.aws
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(world["tmp"] / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(world["tmp"] / "no-config"))
    config = world["tmp"] / "s3.yaml"
    config.write_text(yaml.safe_dump(_tiny(segment={"labels": str(world["labels"])})))
    t0 = time.perf_counter()
    code = main([argv[0], "--config", str(config), "--root", "s3://linkstyle-bucket/runs"])
    took = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("linkstyle: error: artifact_root "
                                        "s3://linkstyle-bucket/runs: no AWS credentials found")
    assert "AWS_ACCESS_KEY_ID" in err and "Traceback" not in err
    assert took < 10, took  # no wait on instance metadata or retries
