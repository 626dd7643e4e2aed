"""Labelled images for the few-shot segmenter: from the toy renderer, or from a user's folder.

A label folder (for real generators) is written by ``linkstyle labels export`` and completed
by a person::

    DIR/parts.json          ["background", "ear", ...]  (label value i = parts[i])
    DIR/latents.npy         ws [N, num_ws, w_dim] float32 of the exported images
    DIR/images/0000.png     the generated images, to label
    DIR/labels/0000.png     index masks (mode "L" or "P"), same size as the images
    DIR/preview/0000.png    the image with its mask overlaid in the part colours, to check
                            labels without a paint program (rewritten on every save)

``linkstyle labels open DIR`` paints the masks in a browser; ``linkstyle labels import DIR``
checks every mask against the part list and writes ``DIR/labels.npz`` (ws, labels, parts),
which the segmenter stage reads.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from linkstyle_core.models.protocols import Generator
from linkstyle_core.render import synthesize

LABELS_FILE = "labels.npz"
# One colour per part, label 0 (background) first: distinct on the screen and in print
# (Tableau-like hues), cycled with darker shades past the first 16 parts.
_COLOURS = np.array([
    [0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
    [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
], dtype=np.uint8)


class LabelError(ValueError):
    """A label folder that cannot be used; the message names the file and the fix."""


def toy_labelled(generator: Generator, n: int, seed: int,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """n toy-world latents with their renderer label maps (the ground truth the toy generator
    was trained to reproduce). Returns (ws [n, num_ws, w_dim], labels [n, H, W] int64)."""
    from linkstyle_core.toyworld.factors import SPECIES, factors_from_latent, sample_latent
    from linkstyle_core.toyworld.generator import one_hot
    from linkstyle_core.toyworld.renderer import render

    g = torch.Generator().manual_seed(seed)
    z = sample_latent(n, g)
    species = torch.arange(n) % len(SPECIES)
    with torch.no_grad():
        ws = generator.mapping(z.to(device), one_hot(species, generator.c_dim).to(device), 1.0)
    labels = render(factors_from_latent(z, species)).labels
    return ws, labels.to(device)


EXPORTED = ("parts.json", "latents.npy", "images", "labels", "preview", LABELS_FILE)
"""Everything ``labels export`` and ``labels import`` write into a label folder."""


def painted(folder: Path) -> list[str]:
    """A person's work in a label folder, which no export may reset: every mask under
    ``labels/`` that labels a pixel other than background, or cannot be read (it cannot be
    proven empty), and an imported ``labels.npz``. Relative paths, sorted."""
    from PIL import Image

    work = [LABELS_FILE] if (folder / LABELS_FILE).exists() else []
    for path in sorted((folder / "labels").glob("*.png")):
        try:
            with Image.open(path) as img:
                if np.asarray(img).any():
                    work.append(f"labels/{path.name}")
        except (OSError, ValueError):
            work.append(f"labels/{path.name}")
    return sorted(work)


def export_mode(out: Path, add: bool) -> str:
    """How ``labels export`` may write into ``out``, decided before anything is generated:
    ``new`` (no folder, or an empty one), ``replace`` (a label folder nobody has painted in:
    written afresh, nothing stale left behind) or ``add`` (``add``: new images appended to a
    label folder, every saved mask kept). ``LabelError`` naming the fix for anything else: a
    folder with painted masks (without ``add``), a file, a folder holding other files."""
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise LabelError(f"{out} is a file; give --out a new or empty folder")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return "new"
    if not {"parts.json", "latents.npy", "images"} <= set(entries):
        raise LabelError(f"{out} is not empty and is not a label folder ({len(entries)} "
                         f"entries, e.g. {entries[0]}); export into a new or empty folder")
    if add:
        return "add"
    work = painted(out)
    if work:
        raise LabelError(
            f"{out} holds {len(work)} labelled mask(s) or imported labels (e.g. {work[0]}) that "
            f"a new export would reset; add images and keep every mask with `linkstyle labels "
            f"export --out {out} --add --count N`, or export into a new folder")
    foreign = [name for name in entries if name not in EXPORTED]
    if foreign:
        raise LabelError(f"{out} holds files that labels export did not write (e.g. "
                         f"{foreign[0]}); export into a new or empty folder")
    return "replace"


def export_folder(generator: Generator, out: Path, count: int, parts: list[str], seed: int,
                  truncation: float, device: torch.device | str = "cpu",
                  add: bool = False) -> int:
    """Write ``count`` generated images, their latents, empty label masks, their previews and
    the part list into the label folder ``out`` (``export_mode`` decides how; nothing a person
    painted is ever reset). With ``add``, the images are appended after the folder's own and
    are those a single export of all of them with the same seed would have made. Returns the
    index of the first image written."""
    mode = export_mode(out, add)
    start = 0
    if mode == "add":
        start = _check_addable(out, parts, generator)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(start + count, generator.z_dim, generator=g)[start:]
    c = torch.nn.functional.one_hot(torch.arange(start, start + count) % generator.c_dim,
                                    generator.c_dim).float()
    with torch.no_grad():
        ws = generator.mapping(z.to(device), c.to(device), truncation)
    if mode == "add":
        export_latents(generator, out, ws, parts, start=start)
        return start
    # a new folder appears whole, or not at all: written beside it, then renamed into place
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.export-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        export_latents(generator, staging, ws, parts)
        if mode == "replace":
            os.rename(out, old)
        elif out.exists():
            out.rmdir()  # empty (export_mode)
        os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return 0


def _check_addable(out: Path, parts: list[str], generator: Generator) -> int:
    """The number of images of the label folder ``out`` to which new ones are added, after
    checking that its parts and latents fit (``LabelError`` naming the fix if not)."""
    if read_parts(out) != list(parts):
        raise LabelError(f"{out}/parts.json lists {read_parts(out)}, this export {parts}; add "
                         "images with the part list the folder was exported with")
    try:
        shape = np.load(out / "latents.npy", mmap_mode="r").shape
    except (OSError, ValueError) as exc:
        raise LabelError(f"{out}/latents.npy cannot be read ({exc}); the folder cannot be "
                         "extended: export into a new folder") from None
    count = image_count(out)
    if shape[0] != count or tuple(shape[1:]) != (generator.num_ws, generator.w_dim):
        raise LabelError(
            f"{out} holds {count} images and latents of shape {tuple(shape)}, but this "
            f"generator makes latents [N, {generator.num_ws}, {generator.w_dim}]; add images "
            "with the config the folder was exported with, or export into a new folder")
    return count


def export_latents(generator: Generator, out: Path, ws: torch.Tensor, parts: list[str],
                   start: int = 0) -> None:
    """Write a label folder for given latents ws [N, num_ws, w_dim]: images, latents, empty
    masks, their previews and the part list. With ``start`` > 0 the images are numbered from
    ``start`` and their latents appended to the folder's ``latents.npy`` (written last,
    atomically), leaving every existing file as it is."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "labels", "preview"):
        (out / sub).mkdir(exist_ok=True)
    with torch.no_grad():
        images = synthesize(generator, ws[:, 0])
    latents = ws.cpu().numpy().astype(np.float32)
    if start:
        latents = np.concatenate([np.load(out / "latents.npy")[:start], latents])
    else:
        (out / "parts.json").write_text(json.dumps(parts, indent=1))
    pixels = ((images.cpu().permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255)
    for i, img in enumerate(pixels.to(torch.uint8).numpy(), start=start):
        Image.fromarray(img).save(out / "images" / f"{i:04d}.png")
        mask = np.zeros(img.shape[:2], np.uint8)
        Image.fromarray(mask, mode="L").save(out / "labels" / f"{i:04d}.png")
        write_preview(out, i, img, mask)
    tmp = out / f".latents.{os.getpid()}.tmp.npy"
    np.save(tmp, latents)
    os.replace(tmp, out / "latents.npy")


def part_colours(num_parts: int) -> np.ndarray:
    """[num_parts, 3] uint8 RGB, one colour per part (background black)."""
    reps = -(-num_parts // len(_COLOURS))
    shades = [(_COLOURS * (1.0 - 0.35 * k)).astype(np.uint8) for k in range(reps)]
    colours = np.concatenate(shades)[:num_parts]
    colours[0] = 0
    return colours


def overlay(image: np.ndarray, mask: np.ndarray, num_parts: int,
            opacity: float = 0.55) -> np.ndarray:
    """image [H, W, 3] uint8, mask [H, W] int -> the image with every labelled pixel tinted in
    its part's colour [H, W, 3] uint8 (background pixels unchanged)."""
    colours = part_colours(max(num_parts, int(mask.max()) + 1)).astype(np.float32)
    tinted = image.astype(np.float32) * (1 - opacity) + colours[mask] * opacity
    out = np.where((mask > 0)[..., None], tinted, image.astype(np.float32))
    return out.round().clip(0, 255).astype(np.uint8)


def write_preview(folder: Path, index: int, image: np.ndarray | None = None,
                  mask: np.ndarray | None = None) -> Path:
    """Write ``DIR/preview/NNNN.png``: image ``index`` with its mask overlaid (read from the
    folder where not given). Atomic: a reader sees the old preview or the new one."""
    from PIL import Image

    name = f"{index:04d}.png"
    if image is None:
        image = np.asarray(Image.open(folder / "images" / name).convert("RGB"))
    if mask is None:
        mask = np.asarray(Image.open(folder / "labels" / name))
    out = folder / "preview"
    out.mkdir(exist_ok=True)
    path = out / name
    _atomic_png(Image.fromarray(overlay(image, mask, len(read_parts(folder)))), path)
    return path


def _atomic_png(image: object, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(image)}.tmp")
    try:
        image.save(tmp, format="PNG")  # type: ignore[attr-defined]
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def image_count(folder: Path) -> int:
    """How many images the folder exports (``images/0000.png`` ... without gaps)."""
    n = 0
    while (folder / "images" / f"{n:04d}.png").is_file():
        n += 1
    return n


def save_mask(folder: Path, index: int, mask: np.ndarray, preview: bool = True) -> Path:
    """Save the index mask [H, W] of exported image ``index`` as ``DIR/labels/NNNN.png`` and
    (``preview``) its preview. Checked first: the image exists, the mask has its size and only
    labels of parts.json. Atomic (a temporary file in the same folder, then ``os.replace``), so
    a reader or a crash never sees half a mask, and only this image's mask is written."""
    from PIL import Image

    parts = read_parts(folder)
    name = f"{index:04d}.png" if isinstance(index, int) and index >= 0 else ""
    if not name or not (folder / "images" / name).is_file():
        raise LabelError(f"{folder} has no exported image {index}; masks are saved for images "
                         f"0-{image_count(folder) - 1} only")
    with Image.open(folder / "images" / name) as img:
        width, height = img.size
    mask = np.asarray(mask)
    if mask.shape != (height, width):
        raise LabelError(f"the mask for {name} is {mask.shape[1] if mask.ndim > 1 else '?'}x"
                         f"{mask.shape[0]}, the image is {width}x{height}")
    if mask.size and (int(mask.min()) < 0 or int(mask.max()) >= len(parts)):
        raise LabelError(f"the mask for {name} uses label {int(mask.max())} but parts.json "
                         f"names only {len(parts)} parts (0-{len(parts) - 1})")
    mask = mask.astype(np.uint8)
    (folder / "labels").mkdir(exist_ok=True)
    path = folder / "labels" / name
    _atomic_png(Image.fromarray(mask, mode="L"), path)
    if preview:
        write_preview(folder, index, mask=mask)
    return path


def import_folder(folder: Path, resolution: int | None = None) -> dict[str, object]:
    """Validate the masks of a label folder and write ``labels.npz``; returns a summary."""
    from PIL import Image

    for required in ("parts.json", "latents.npy", "labels"):
        if not (folder / required).exists():
            raise LabelError(f"{folder}/{required} is missing; create the folder with "
                             "`linkstyle labels export --out DIR`")
        if required == "parts.json":
            parts = read_parts(folder)
    try:
        ws = np.load(folder / "latents.npy")
    except (OSError, ValueError) as exc:
        raise LabelError(f"{folder}/latents.npy cannot be read ({exc}); export the folder "
                         "again") from None
    masks = sorted((folder / "labels").glob("*.png"))
    if len(masks) != len(ws):
        raise LabelError(f"{folder}/labels holds {len(masks)} masks for {len(ws)} exported "
                         "images; label every exported image (or delete both image and latent)")
    labels = []
    for path in masks:
        try:
            mask = np.asarray(Image.open(path))
        except OSError as exc:
            raise LabelError(f"{path} is not a readable image ({exc}); save it as a "
                             "single-channel PNG whose values are part indices") from None
        if mask.ndim != 2:
            raise LabelError(f"{path} is not an index mask (shape {mask.shape}); save it as a "
                             "single-channel PNG whose values are part indices")
        if resolution is not None and mask.shape != (resolution, resolution):
            raise LabelError(f"{path} is {mask.shape[1]}x{mask.shape[0]}, the generator "
                             f"renders {resolution}x{resolution}")
        if mask.max() >= len(parts):
            raise LabelError(f"{path} uses label {int(mask.max())} but parts.json names only "
                             f"{len(parts)} parts (0-{len(parts) - 1}): {parts}")
        labels.append(mask.astype(np.int64))
    stacked = np.stack(labels)
    unlabelled = [m.name for m, lab in zip(masks, stacked, strict=True) if lab.max() == 0]
    if unlabelled:
        raise LabelError(f"{len(unlabelled)} masks contain only background (first: "
                         f"{unlabelled[0]}); label them or remove them with their latents")
    present = np.bincount(stacked.ravel(), minlength=len(parts))
    missing = [(i, p) for i, p in enumerate(parts) if present[i] == 0]
    if missing:
        i, part = missing[0]
        more = f" (and {len(missing) - 1} more: {[p for _, p in missing[1:]]})" \
            if len(missing) > 1 else ""
        raise LabelError(f"part {part!r} (label {i}) is labelled in none of the {len(stacked)} "
                         f"masks{more}; label it where it shows, or remove it from parts.json "
                         "and segment.parts")
    in_images = (stacked.reshape(len(stacked), -1)[:, :, None]
                 == np.arange(len(parts))).any(1).sum(0)
    tmp = folder / f".{LABELS_FILE}.tmp.npz"
    np.savez_compressed(tmp, ws=ws, labels=stacked, parts=np.asarray(parts))
    os.replace(tmp, folder / LABELS_FILE)
    return {"images": len(stacked), "parts": parts,
            "pixels_per_part": dict(zip(parts, present.tolist(), strict=True)),
            "images_per_part": dict(zip(parts, in_images.tolist(), strict=True))}


def read_parts(folder: Path) -> list[str]:
    """The part names of a label folder's ``parts.json`` (``LabelError`` if it is not a JSON
    list of at least two distinct names)."""
    path = folder / "parts.json"
    try:
        parts = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelError(f"{path} is not valid JSON ({exc}); write the part names as a JSON "
                         'list, background first, e.g. ["background", "ear", "tail"]') from None
    if not isinstance(parts, list) or len(parts) < 2 or len(set(map(str, parts))) != len(parts) \
            or not all(isinstance(p, str) for p in parts):
        raise LabelError(f"{path} must list at least two distinct part names (strings), "
                         "background first")
    return parts


def load_folder(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor, list[str], str]:
    """(ws, labels, parts, content hash) from an imported label folder."""
    if not Path(folder).is_dir():
        raise LabelError(f"segment.labels: {folder} is not a folder; create it with `linkstyle "
                         f"labels export --out {folder}`, label the images, then run `linkstyle "
                         f"labels import {folder}`")
    path = Path(folder) / LABELS_FILE
    if not path.is_file():
        raise LabelError(f"{path} does not exist; run `linkstyle labels import {folder}` after "
                         "labelling the exported images")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()[:20]
    try:
        with np.load(io.BytesIO(raw)) as data:
            ws, labels, parts = data["ws"], data["labels"], [str(p) for p in data["parts"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise LabelError(f"{path} cannot be read ({type(exc).__name__}: {exc}); run "
                         f"`linkstyle labels import {folder}` again") from None
    if ws.ndim != 3 or labels.ndim != 3 or len(ws) != len(labels) or len(ws) < 2:
        raise LabelError(f"{path} holds latents of shape {ws.shape} and labels of shape "
                         f"{labels.shape}; expected [N, num_ws, w_dim] and [N, H, W] with the same "
                         f"N >= 2; run `linkstyle labels import {folder}` again")
    return torch.from_numpy(ws), torch.from_numpy(labels), parts, digest
