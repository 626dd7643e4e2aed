"""A running command's edges: a failing shard shows its own error (not Prefect's
``UnfinishedRun``), SIGTERM, SIGINT and SIGKILL leave no temporary Prefect server and close the
output pipe, start-up on a busy machine, a closed output pipe, a remote root without
credentials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows.cli import main
from tests.fixtures.tiny_models import tiny_config as tiny


# -- the running command: the shard's own error, no orphan server ------------------------------
def _run_tiny(tmp_path: Path, **data) -> list[str]:
    config = tiny(data={"samples_per_class": 12, "test_samples_per_class": 6, **data})
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
    config = tiny(data={"samples_per_class": 12, "test_samples_per_class": 6},
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
    config.write_text(yaml.safe_dump(tiny(segment={"labels": str(world["labels"])})))
    t0 = time.perf_counter()
    code = main([argv[0], "--config", str(config), "--root", "s3://linkstyle-bucket/runs"])
    took = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("linkstyle: error: artifact_root "
                                        "s3://linkstyle-bucket/runs: no AWS credentials found")
    assert "AWS_ACCESS_KEY_ID" in err and "Traceback" not in err
    assert took < 10, took  # no wait on instance metadata or retries
