"""What `linkstyle labels open` does when its folder, its clients or its process misbehave: each
case an outside probe of the old http.server handler found (a wrong answer, a dropped
connection, a traceback, a crash at start-up, a file served from outside the folder, exit code
0 on SIGTERM). In-process servers for the page's answers; the real command in a subprocess for
start-up warnings, signals and a folder this user cannot write."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.labelling.server import LabellingSession, start, stop_server
from linkstyle_core.labels import export_folder
from tests.fixtures.http_client import call
from tests.fixtures.tiny_models import RES, tiny_generator

ROOT = Path(__file__).resolve().parents[2]
PARTS = ["background", "bright", "dark"]


def _export(folder: Path, count: int = 4) -> Path:
    export_folder(tiny_generator(), folder, count, PARTS, seed=0, truncation=1.0)
    return folder


def _call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    return call(port, method, path, body)


def _mask(value: int = 1) -> np.ndarray:
    mask = np.zeros((RES, RES), np.uint8)
    mask[1:5, 1:6] = value
    return mask


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def served(tmp_path: Path):
    folder = _export(tmp_path / "export")
    server, _ = start(LabellingSession(folder), timeout=2.0)
    yield folder, server
    stop_server(server)


def test_a_truncated_image_keeps_the_saved_mask_and_is_a_clear_error(served) -> None:
    folder, server = served
    image = folder / "images/0001.png"
    image.write_bytes(image.read_bytes()[:60])  # the header survives, the pixels do not
    status, body = _call(server.port, "PUT", "/api/mask/1", _mask().tobytes())
    assert status == 200, body
    answer = json.loads(body)
    assert answer["saved"] == 1 and answer["labelled"] == [1]
    assert "preview was not written" in answer["warning"] and "0001.png" in answer["warning"]
    assert np.array_equal(np.asarray(Image.open(folder / "labels/0001.png")), _mask())
    status, body = _call(server.port, "GET", "/api/image/1.png")
    assert status == 500
    error = json.loads(body)["error"]
    assert "0001.png is damaged" in error and "export the folder again" in error
    assert _call(server.port, "GET", "/api/image/0.png")[0] == 200  # the others still served


def test_an_image_deleted_while_the_page_is_open_is_404_with_a_message(served) -> None:
    folder, server = served
    (folder / "images/0002.png").unlink()
    status, body = _call(server.port, "GET", "/api/image/2.png")
    assert status == 404 and "is gone from the folder" in json.loads(body)["error"]
    before = _files(folder)
    status, body = _call(server.port, "PUT", "/api/mask/2", _mask().tobytes())
    assert status == 404 and "0002.png" in json.loads(body)["error"]
    assert _files(folder) == before
    # the images after it are still labelled as before
    assert _call(server.port, "PUT", "/api/mask/3", _mask().tobytes())[0] == 200


def test_an_image_linking_outside_the_folder_is_refused(served, tmp_path: Path) -> None:
    folder, server = served
    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((RES, RES, 3), 7, np.uint8)).save(secret)
    (folder / "images/0003.png").unlink()
    (folder / "images/0003.png").symlink_to(secret)
    status, body = _call(server.port, "GET", "/api/image/3.png")
    assert status == 403 and secret.read_bytes() not in body
    assert "outside" in json.loads(body)["error"]
    before = _files(folder)
    assert _call(server.port, "PUT", "/api/mask/3", _mask().tobytes())[0] == 403
    assert _files(folder) == before
    # a link that stays inside the folder is served
    (folder / "images/0002.png").unlink()
    (folder / "images/0002.png").symlink_to(folder / "images/0000.png")
    status, body = _call(server.port, "GET", "/api/image/2.png")
    assert status == 200 and body == (folder / "images/0000.png").read_bytes()


def test_clients_that_disconnect_mid_upload_print_and_save_nothing(served, capfd) -> None:
    folder, server = served
    before = _files(folder)
    capfd.readouterr()
    body = _mask().tobytes()
    for attempt in range(34):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(f"PUT /api/mask/{attempt % 4} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}"
                         f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                         + body[:len(body) // 2])
    status, state = _call(server.port, "GET", "/api/state")  # still serving, after all of them
    assert status == 200 and json.loads(state)["labelled"] == []
    time.sleep(0.5)  # a late line about the aborted uploads would show now
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert _files(folder) == before


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@pytest.mark.parametrize("partial", [
    b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nAcc",  # headers that stop
    b"PUT /api/mask/0 HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nContent-Length: %d\r\n\r\nabc"
    % (RES * RES),
    b"",  # a connection that never sends a byte
], ids=["slow-headers", "slow-body", "silent"])
def test_a_slow_client_is_dropped_after_the_deadline(served, partial, capfd) -> None:
    folder, server = served
    before = _files(folder)
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(partial.replace(b"PORT", str(server.port).encode()))
        t0 = time.monotonic()
        # meanwhile others are served
        assert _call(server.port, "GET", "/api/state")[0] == 200
        answer = _read_all(sock)  # returns once the server closes the connection
        waited = time.monotonic() - t0
    assert waited < 30  # the deadline is 2 s here; without one, this never returned
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 2 s" in answer
    assert _files(folder) == before
    assert "Traceback" not in capfd.readouterr().err


def test_an_unreadable_mask_is_flagged_not_fatal(tmp_path: Path) -> None:
    folder = _export(tmp_path / "export")
    Image.fromarray(_mask()).save(folder / "labels/0000.png")
    (folder / "labels/0002.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png at all")
    session = LabellingSession(folder)
    server, _ = start(session)
    try:
        state = json.loads(_call(server.port, "GET", "/api/state")[1])
        assert state["labelled"] == [0]
        assert list(state["damaged"]) == ["2"] and "0002.png cannot be read" in \
            state["damaged"]["2"]
        status, raw = _call(server.port, "GET", "/api/mask/2")
        assert status == 200 and not any(raw)  # counts as unlabelled
        # saving it again repairs it
        assert _call(server.port, "PUT", "/api/mask/2", _mask(2).tobytes())[0] == 200
        state = json.loads(_call(server.port, "GET", "/api/state")[1])
        assert state["damaged"] == {} and state["labelled"] == [0, 2]
    finally:
        stop_server(server)


# -- the command itself: warnings, signals, permissions -----------------------------------------
class LabelsOpen:
    """``linkstyle labels open DIR --no-prefill`` in a subprocess; ``unprivileged``: without the
    capabilities that let root write where the permissions say no (util-linux's setpriv)."""

    def __init__(self, folder: Path, unprivileged: bool = False) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner",
                  "--"] if unprivileged else []
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "flows.cli", "labels", "open", str(folder),
             "--no-prefill", "--no-browser"], cwd=ROOT, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        deadline = time.monotonic() + 300
        while True:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"no address printed: {self.lines} "
                                     f"{self.proc.stderr.read()}")  # type: ignore[union-attr]
            self.lines.append(line)
            if " at http://127.0.0.1:" in line:
                self.port = int(line.rsplit(":", 1)[1].strip(" /\n"))
                return

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, "".join(self.lines) + out, err


# SIGINT is also tests/cli/test_cli.py's Ctrl-C test; here it runs with -m slow only
@pytest.mark.parametrize("sig,code", [
    (signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)],
    ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_labels_open_with_its_exit_code_keeping_the_masks(tmp_path, sig,
                                                                         code) -> None:
    folder = _export(tmp_path / "export")
    (folder / "labels/0003.png").write_bytes(b"garbage")
    server = LabelsOpen(folder)
    try:
        assert _call(server.port, "PUT", "/api/mask/1", _mask().tobytes())[0] == 200
    finally:
        returncode, out, err = server.stop(sig)
    assert returncode == code, err
    assert np.array_equal(np.asarray(Image.open(folder / "labels/0001.png")), _mask())
    assert "1 of 4 images labelled" in out
    warnings = [line for line in err.splitlines() if line.startswith("linkstyle: warning")]
    assert len(warnings) == 1 and "labels/0003.png cannot be read" in warnings[0]
    assert "Traceback" not in err


def test_labels_that_cannot_be_written_are_a_clear_error(tmp_path) -> None:
    """As root, whom no permission stops, the server runs without root's capabilities to
    override them."""
    root = os.geteuid() == 0
    if root and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv (util-linux) to drop the capabilities "
                    "that override file permissions")
    folder = _export(tmp_path / "export")
    (folder / "labels").chmod(0o555)
    try:
        before = _files(folder)
        server = LabelsOpen(folder, unprivileged=root)
        try:
            status, body = _call(server.port, "PUT", "/api/mask/1", _mask().tobytes())
        finally:
            returncode, _, err = server.stop()
        assert status == 500, body
        error = json.loads(body)["error"]
        assert "cannot save" in error and "0001.png" in error
        assert "Permission denied" in error and f"chmod u+w {folder}/labels" in error
        assert _files(folder) == before
        assert returncode == 143 and "Traceback" not in err
    finally:
        (folder / "labels").chmod(0o755)


def test_a_port_in_use_is_one_line_naming_the_fix(tmp_path, capsys) -> None:
    from flows.cli import main

    folder = _export(tmp_path / "export")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["labels", "open", str(folder), "--no-prefill", "--no-browser", "--port",
                     str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"127.0.0.1:{port}" in err[0] and "another --port" in err[0]
