"""``linkstyle labels open DIR``: a labelling page for an exported folder, served locally.

The server is the standard library's ``ThreadingHTTPServer`` bound to 127.0.0.1. It serves the
static page (``static/``: HTML, JS and CSS, nothing fetched from elsewhere), the folder's images,
and a small API:

=========================  ==================================================================
``GET /api/state``         parts, colours, image count and size, which images are labelled,
                           the pre-fill's status, held-out IoU per part and least-sure images
``GET /api/image/N.png``   exported image N
``GET /api/mask/N``        its saved mask, raw bytes (H*W uint8, row-major)
``GET /api/proposal/N``    the pre-fill's proposed mask, raw bytes (404 while there is none)
``PUT /api/mask/N``        save a mask (raw bytes as above): checked, written atomically
=========================  ==================================================================

A mask is saved only for an image that exists, with exactly H*W bytes of labels in
``0..len(parts)-1``, as ``DIR/labels/NNNN.png`` through ``linkstyle_core.labels.save_mask``
(temporary file, then ``os.replace``); the file name is built from the parsed index, never from
the request path, so nothing outside ``DIR/labels`` and ``DIR/preview`` is ever written.

Pre-fill: a background thread trains the stage-3 segmenter on the saved masks
(``linkstyle_core.prefill``) once at least two images are labelled, publishes the proposals
and the least-sure ranking, then the leave-one-out IoU. A save while it trains makes that
training stale: it is abandoned at its next step and a new one starts on the new labels.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from linkstyle_core.labels import (
    LabelError,
    image_count,
    part_colours,
    read_parts,
    save_mask,
)

STATIC = Path(__file__).parent / "static"
_STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript",
                 "app.css": "text/css"}
_INDEXED = re.compile(r"^/api/(image|mask|proposal)/(\d{1,6})(\.png)?$")


class _Stale(Exception):
    """The labels changed (or the session closed) while the pre-fill trained."""


def check_export_folder(folder: Path) -> None:
    """Raise ``LabelError`` (one line, naming the fix) unless ``folder`` is an exported label
    folder: parts.json, latents.npy, images/ with one image per latent, labels/."""
    if not folder.is_dir():
        raise LabelError(f"{folder} is not a folder; create it with `linkstyle labels export "
                         f"--out {folder}`, then run `linkstyle labels open {folder}`")
    for required in ("parts.json", "latents.npy", "images"):
        if not (folder / required).exists():
            raise LabelError(f"{folder} is not a label folder ({required} is missing); create "
                             f"one with `linkstyle labels export --out {folder}`")
    read_parts(folder)
    count = image_count(folder)
    try:
        latents = np.load(folder / "latents.npy", mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise LabelError(f"{folder}/latents.npy cannot be read ({exc}); export the folder "
                         "again") from None
    if count == 0 or len(latents) != count:
        raise LabelError(f"{folder}/images holds {count} images for {len(latents)} latents; "
                         "export the folder again with `linkstyle labels export`")


class LabellingSession:
    """The state behind one labelling page: the folder, its saved masks and the pre-fill.

    generator: the generator the folder was exported with (its feature maps feed the pre-fill),
    or None for a page without pre-fill. steps/seed/hidden/kernel: the segmenter's settings
    (``segment`` of the config).
    """

    def __init__(self, folder: Path, generator: Any | None = None, steps: int = 300,
                 seed: int = 0, hidden: int = 32, kernel: int = 1,
                 device: Any = "cpu", batch_size: int = 64) -> None:
        from PIL import Image

        check_export_folder(folder)
        self.folder = folder
        self.parts = read_parts(folder)
        self.count = image_count(folder)
        with Image.open(folder / "images" / "0000.png") as img:
            self.width, self.height = img.size
        self.generator = generator
        self.settings = {"steps": steps, "seed": seed, "hidden": hidden, "kernel": kernel}
        self.device, self.batch_size = device, batch_size
        (folder / "labels").mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self.labelled = {i for i in range(self.count) if self._saved(i).any()}
        self._generation = 0
        self._closed = False
        self._wake = threading.Event()
        self._features: list[Any] | None = None
        self._proposal: Any = None
        self._prefill: dict[str, Any] = {"status": "off" if generator is None else "waiting"}
        self._worker: threading.Thread | None = None
        if generator is not None:
            self._worker = threading.Thread(target=self._run_prefill, name="prefill",
                                            daemon=True)
            self._worker.start()
            self._wake.set()

    # -- masks ---------------------------------------------------------------------------------
    def _saved(self, index: int) -> np.ndarray:
        from PIL import Image

        path = self.folder / "labels" / f"{index:04d}.png"
        if not path.is_file():
            return np.zeros((self.height, self.width), np.uint8)
        with Image.open(path) as img:
            mask = np.asarray(img)
        if mask.shape != (self.height, self.width):
            return np.zeros((self.height, self.width), np.uint8)
        return mask.astype(np.uint8)

    def mask_bytes(self, index: int) -> bytes:
        return self._saved(index).tobytes()

    def proposal_bytes(self, index: int) -> bytes | None:
        with self._lock:
            proposal = self._proposal
        if proposal is None:
            return None
        return proposal.labels[index].numpy().astype(np.uint8).tobytes()

    def image_png(self, index: int) -> bytes:
        return (self.folder / "images" / f"{index:04d}.png").read_bytes()

    def save(self, index: int, raw: bytes) -> None:
        """Save image ``index``'s mask from H*W raw label bytes (``LabelError`` if they do not
        fit), then restart the pre-fill on the new labels."""
        if not 0 <= index < self.count:
            raise LabelError(f"there is no image {index}; the folder exports images "
                             f"0-{self.count - 1}")
        if len(raw) != self.width * self.height:
            raise LabelError(f"a mask of image {index} needs {self.width * self.height} bytes "
                             f"({self.width}x{self.height} labels), got {len(raw)}")
        mask = np.frombuffer(raw, np.uint8).reshape(self.height, self.width)
        with self._save_lock:
            save_mask(self.folder, index, mask)
        with self._lock:
            if mask.any():
                self.labelled.add(index)
            else:
                self.labelled.discard(index)
            self._generation += 1
        self._wake.set()

    # -- state ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        with self._lock:
            prefill = dict(self._prefill)
            labelled = sorted(self.labelled)
            proposal = self._proposal
        if proposal is not None:
            prefill["least_sure"] = proposal.least_sure(labelled)
            prefill["entropy"] = [round(float(e), 4) for e in proposal.entropy]
        return {
            "folder": str(self.folder), "parts": self.parts,
            "colours": part_colours(len(self.parts)).tolist(), "count": self.count,
            "width": self.width, "height": self.height, "labelled": labelled,
            "prefill": prefill,
        }

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=30)

    # -- pre-fill ------------------------------------------------------------------------------
    def _set(self, **values: Any) -> None:
        with self._lock:
            self._prefill.update(values)

    def _run_prefill(self) -> None:
        from linkstyle_core import stop

        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            with self._lock:
                generation, labelled = self._generation, sorted(self.labelled)

            def check(generation: int = generation) -> None:
                stop.check()
                if self._closed or self._generation != generation:
                    raise _Stale

            try:
                self._prefill_once(labelled, check)
            except _Stale:
                continue
            except Exception as exc:  # shown on the page; the page itself goes on working
                self._set(status="error", error=f"{type(exc).__name__}: {exc}")

    def _prefill_once(self, labelled: list[int], check: Any) -> None:
        import torch

        from linkstyle_core.prefill import MIN_LABELLED, leave_one_out, propose
        from linkstyle_core.tuning import generator_features

        if len(labelled) < MIN_LABELLED:
            self._set(status="waiting", need=MIN_LABELLED - len(labelled))
            return
        if self._features is None:
            assert self.generator is not None  # the worker runs only with a generator
            self._set(status="features")
            ws = torch.from_numpy(np.load(self.folder / "latents.npy")).to(self.device)
            self._features = generator_features(self.generator, ws, self.batch_size)
        check()
        labels = torch.from_numpy(np.stack([self._saved(i) for i in labelled]).astype(np.int64))
        labels = labels.to(self.device)
        self._set(status="training", training_on=labelled)
        t0 = time.perf_counter()
        proposal = propose(self._features, labelled, labels, len(self.parts), check=check,
                           **self.settings)
        check()
        with self._lock:
            self._proposal = proposal
            self._prefill.update(status="held-out", trained_on=labelled,
                                 train_s=round(time.perf_counter() - t0, 2))
        t0 = time.perf_counter()
        held = leave_one_out(self._features, labelled, labels, len(self.parts), check=check,
                             **self.settings)
        check()
        per_part = [None if v != v else round(v, 4) for v in held.per_part]
        self._set(status="ready", heldout={"miou": round(held.miou, 4), "per_part": per_part,
                                           "folds": held.folds,
                                           "labelled": labelled},
                  heldout_s=round(time.perf_counter() - t0, 2))


class _Handler(BaseHTTPRequestHandler):
    server: LabellingServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass  # the terminal shows what matters (the address); requests would drown it

    def _send(self, body: bytes, ctype: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value: Any, status: int = 200) -> None:
        self._send(json.dumps(value).encode(), "application/json", status)

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    def _host_ok(self) -> bool:
        # a page on another site that resolves its own name to 127.0.0.1 (DNS rebinding)
        # sends its own Host: only our address is answered
        port = self.server.server_address[1]
        return self.headers.get("Host", "") in (f"127.0.0.1:{port}", f"localhost:{port}")

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "wrong Host")
        session = self.server.session
        path = self.path.split("?", 1)[0]
        if path == "/":
            path = "/index.html"
        name = path.lstrip("/")
        if name in _STATIC_FILES:
            return self._send((STATIC / name).read_bytes(), _STATIC_FILES[name])
        if path == "/api/state":
            return self._json(session.state())
        match = _INDEXED.match(path)
        if match is None:
            return self._error(HTTPStatus.NOT_FOUND, f"no such page: {path}")
        kind, index = match.group(1), int(match.group(2))
        if index >= session.count:
            return self._error(HTTPStatus.NOT_FOUND, f"there is no image {index}")
        if kind == "image":
            return self._send(session.image_png(index), "image/png")
        if kind == "mask":
            return self._send(session.mask_bytes(index), "application/octet-stream")
        raw = session.proposal_bytes(index)
        if raw is None:
            return self._error(HTTPStatus.NOT_FOUND, "no proposal yet")
        return self._send(raw, "application/octet-stream")

    def do_PUT(self) -> None:  # noqa: N802 - http.server's name
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "wrong Host")
        session = self.server.session
        match = _INDEXED.match(self.path)
        try:
            length = int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            length = -1
        limit = session.width * session.height
        if length < 0 or length > limit:
            self.close_connection = True
            return self._error(HTTPStatus.BAD_REQUEST,
                               f"a mask is {limit} bytes; got Content-Length {length}")
        raw = self.rfile.read(length)
        if match is None or match.group(1) != "mask" or match.group(3):
            return self._error(HTTPStatus.NOT_FOUND, "masks are saved with PUT /api/mask/N")
        try:
            session.save(int(match.group(2)), raw)
        except LabelError as exc:
            return self._error(HTTPStatus.BAD_REQUEST, str(exc))
        return self._json(session.state())


class LabellingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, session: LabellingSession, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.session = session

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


def start(session: LabellingSession, port: int = 0) -> tuple[LabellingServer, threading.Thread]:
    """Serve ``session`` on 127.0.0.1 (``port`` 0: a free one) from a background thread."""
    server = LabellingServer(session, port)
    thread = threading.Thread(target=server.serve_forever, name="labelling-server", daemon=True)
    thread.start()
    return server, thread


def stop_server(server: LabellingServer) -> None:
    server.shutdown()
    server.server_close()
    server.session.close()

