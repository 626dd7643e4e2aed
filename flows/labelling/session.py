"""The state behind the labelling page of ``linkstyle labels open DIR``: the exported folder,
its saved masks and the pre-fill (``flows.labelling.server`` serves it).

A mask is saved only for an image that exists, with exactly H*W bytes of labels in
``0..len(parts)-1``, as ``DIR/labels/NNNN.png`` through ``linkstyle_core.labels.save_mask``
(temporary file, then ``os.replace``); the file name is built from the parsed index, never from
the request path, so nothing outside ``DIR/labels`` and ``DIR/preview`` is ever written. What the
folder itself gets wrong is answered, never fatal: an image deleted while the page is open
(404), an image that links outside ``DIR/images`` (403, not served), a damaged image (served as
an error; a mask saved for it is kept, only its preview is not written), ``labels/`` that
cannot be written (the error names the fix), a saved mask that cannot be read (the image counts
as unlabelled and is listed in ``damaged``).

Pre-fill: a background thread trains the stage-3 segmenter on the saved masks
(``linkstyle_core.prefill``) once at least two images are labelled, publishes the proposals
and the least-sure ranking, then the leave-one-out IoU. A save while it trains makes that
training stale: it is abandoned at its next step and a new one starts on the new labels.
"""

from __future__ import annotations

import errno
import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from flows.web.app import HTTPError
from linkstyle_core.labels import (
    LabelError,
    image_count,
    part_colours,
    read_parts,
    save_mask,
    write_preview,
)


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
        self._roots = {kind: (folder / kind).resolve() for kind in ("images", "labels")}
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self.damaged: dict[int, str] = {}  # saved masks that cannot be read: index -> why
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

    # -- files ---------------------------------------------------------------------------------
    def _inside(self, kind: str, index: int) -> Path:
        """``DIR/<kind>/NNNN.png``, refused (403) where it links outside ``DIR/<kind>``."""
        path = self.folder / kind / f"{index:04d}.png"
        if path.is_symlink() and not path.resolve().is_relative_to(self._roots[kind]):
            raise HTTPError(403, f"{kind}/{path.name} links to {path.resolve()}, outside "
                            f"{self.folder}/{kind}; it is not served. Copy the file into the "
                            "folder instead of linking it")
        return path

    def image_path(self, index: int) -> Path:
        """Image ``index``'s file: 404 if there is no such image (or it was deleted since the
        page opened), 403 if it links outside the folder."""
        if not 0 <= index < self.count:
            raise HTTPError(404, f"there is no image {index}; the folder exports images "
                            f"0-{self.count - 1}")
        path = self._inside("images", index)
        if not path.is_file():
            raise HTTPError(404, f"image {index} ({self.folder}/images/{path.name}) is gone "
                            "from the folder; put it back or export the folder again")
        return path

    # -- masks ---------------------------------------------------------------------------------
    def _saved(self, index: int) -> np.ndarray:
        """Image ``index``'s saved mask [H, W] uint8; all zeros (unlabelled) where there is none,
        or where it cannot be read (then listed in ``damaged``)."""
        from PIL import Image

        empty = np.zeros((self.height, self.width), np.uint8)
        try:
            path = self._inside("labels", index)
        except HTTPError as exc:
            self.damaged[index] = str(exc.detail)
            return empty
        if not path.is_file():
            return empty
        try:
            with Image.open(path) as img:
                mask = np.asarray(img)
        except (OSError, ValueError, SyntaxError) as exc:  # damaged, truncated, not a PNG
            self.damaged[index] = f"{path} cannot be read ({exc})"
            return empty
        if mask.shape != (self.height, self.width):
            self.damaged[index] = (f"{path} is {mask.shape[-1]}x{mask.shape[0]}, the images are "
                                   f"{self.width}x{self.height}")
            return empty
        self.damaged.pop(index, None)
        return mask.astype(np.uint8)

    def mask_bytes(self, index: int) -> bytes:
        self.image_path(index)
        return self._saved(index).tobytes()

    def proposal_bytes(self, index: int) -> bytes | None:
        with self._lock:
            proposal = self._proposal
        if proposal is None:
            return None
        return proposal.labels[index].numpy().astype(np.uint8).tobytes()

    def image_png(self, index: int) -> bytes:
        """Image ``index``'s PNG, checked to decode (a damaged file is an error naming it, not
        half an image)."""
        from PIL import Image

        path = self.image_path(index)
        data = path.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise HTTPError(500, f"{path} is damaged ({exc}); export the folder again, or "
                            "replace that file") from None
        return data

    def save(self, index: int, raw: bytes) -> dict[str, Any]:
        """Save image ``index``'s mask from H*W raw label bytes (``LabelError`` if they do not
        fit), then restart the pre-fill on the new labels. Returns the state, with a
        ``warning`` where the mask was saved but its preview could not be written."""
        if not 0 <= index < self.count:
            raise LabelError(f"there is no image {index}; the folder exports images "
                             f"0-{self.count - 1}")
        self.image_path(index)
        if len(raw) != self.width * self.height:
            raise LabelError(f"a mask of image {index} needs {self.width * self.height} bytes "
                             f"({self.width}x{self.height} labels), got {len(raw)}")
        mask = np.frombuffer(raw, np.uint8).reshape(self.height, self.width)
        warning = None
        with self._save_lock:
            try:
                save_mask(self.folder, index, mask, preview=False)
            except OSError as exc:
                if exc.errno is None:  # PIL: the image itself cannot be read
                    raise HTTPError(500, f"images/{index:04d}.png cannot be read ({exc}); the "
                                    "mask was not saved. Export the folder again") from None
                raise _unwritable(self.folder, index, exc) from None
            try:
                write_preview(self.folder, index, mask=mask)
            except (OSError, ValueError, SyntaxError) as exc:
                warning = (f"its preview was not written: images/{index:04d}.png cannot be "
                           f"read ({exc}); the mask is saved")
        with self._lock:
            self.damaged.pop(index, None)
            if mask.any():
                self.labelled.add(index)
            else:
                self.labelled.discard(index)
            self._generation += 1
        self._wake.set()
        state = self.state()
        return {**state, "saved": index, **({"warning": warning} if warning else {})}

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
            "damaged": {str(i): why for i, why in sorted(self.damaged.items())},
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


def _unwritable(folder: Path, index: int, exc: OSError) -> HTTPError:
    """A mask that could not be written, as an answer that names the problem and the fix."""
    where = f"{folder}/labels/{index:04d}.png"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return HTTPError(507, f"cannot save {where}: {exc.strerror}; free space on that disk, "
                         "then save again (the page keeps your mask)")
    if exc.errno == errno.EROFS:
        return HTTPError(500, f"cannot save {where}: the file system is read-only; copy "
                         f"{folder} to a writable place and run `linkstyle labels open` there")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return HTTPError(500, f"cannot save {where}: {exc.strerror}; make {folder}/labels "
                         f"writable for this user (chmod u+w {folder}/labels), then save again "
                         "(the page keeps your mask)")
    return HTTPError(500, f"cannot save {where}: {exc.strerror or exc}")
