"""Labelled images for the few-shot segmenter: from the toy renderer, or from a user's folder.

A label folder (for real generators) is written by ``linkstyle labels export`` and completed
by a person::

    DIR/parts.json          ["background", "ear", ...]  (label value i = parts[i])
    DIR/latents.npy         ws [N, num_ws, w_dim] float32 of the exported images
    DIR/images/0000.png     the generated images, to label
    DIR/labels/0000.png     index masks (mode "L" or "P"), same size as the images

``linkstyle labels import DIR`` checks every mask against the part list and writes
``DIR/labels.npz`` (ws, labels, parts), which the segmenter stage reads.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from linkstyle_core.models.protocols import Generator
from linkstyle_core.render import synthesize

LABELS_FILE = "labels.npz"


class LabelError(ValueError):
    """A label folder that cannot be used; the message names the file and the fix."""


def toy_labelled(generator: Generator, n: int, seed: int,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """n toy-world latents with their renderer label maps (the ground truth the toy generator
    was trained to reproduce). Returns (ws [n, num_ws, w_dim], labels [n, H, W] int64)."""
    from linkstyle_core.toyworld.generator import one_hot
    from linkstyle_core.toyworld.renderer import SPECIES, factors_from_latent, render, sample_latent

    g = torch.Generator().manual_seed(seed)
    z = sample_latent(n, g)
    species = torch.arange(n) % len(SPECIES)
    with torch.no_grad():
        ws = generator.mapping(z.to(device), one_hot(species, generator.c_dim).to(device), 1.0)
    labels = render(factors_from_latent(z, species)).labels
    return ws, labels.to(device)


def export_folder(generator: Generator, out: Path, count: int, parts: list[str], seed: int,
                  truncation: float, device: torch.device | str = "cpu") -> None:
    """Write generated images, their latents, empty label masks and the part list."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(count, generator.z_dim, generator=g)
    c = torch.nn.functional.one_hot(torch.arange(count) % generator.c_dim,
                                    generator.c_dim).float()
    with torch.no_grad():
        ws = generator.mapping(z.to(device), c.to(device), truncation)
        images = synthesize(generator, ws[:, 0])
    np.save(out / "latents.npy", ws.cpu().numpy().astype(np.float32))
    (out / "parts.json").write_text(json.dumps(parts, indent=1))
    pixels = ((images.cpu().permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255)
    for i, img in enumerate(pixels.to(torch.uint8).numpy()):
        Image.fromarray(img).save(out / "images" / f"{i:04d}.png")
        mask = Image.fromarray(np.zeros(img.shape[:2], np.uint8), mode="L")
        mask.save(out / "labels" / f"{i:04d}.png")


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
    tmp = folder / f".{LABELS_FILE}.tmp.npz"
    np.savez_compressed(tmp, ws=ws, labels=stacked, parts=np.asarray(parts))
    os.replace(tmp, folder / LABELS_FILE)
    present = np.bincount(stacked.ravel(), minlength=len(parts))
    return {"images": len(stacked), "parts": parts,
            "pixels_per_part": dict(zip(parts, present.tolist(), strict=True))}


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
