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
import json
import os
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
    parts = json.loads((folder / "parts.json").read_text())
    if not isinstance(parts, list) or len(parts) < 2:
        raise LabelError(f"{folder}/parts.json must list at least two part names")
    ws = np.load(folder / "latents.npy")
    masks = sorted((folder / "labels").glob("*.png"))
    if len(masks) != len(ws):
        raise LabelError(f"{folder}/labels holds {len(masks)} masks for {len(ws)} exported "
                         "images; label every exported image (or delete both image and latent)")
    labels = []
    for path in masks:
        mask = np.asarray(Image.open(path))
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


def load_folder(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor, list[str], str]:
    """(ws, labels, parts, content hash) from an imported label folder."""
    path = Path(folder) / LABELS_FILE
    if not path.is_file():
        raise LabelError(f"{path} does not exist; run `linkstyle labels import {folder}` after "
                         "labelling the exported images")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:20]
    data = np.load(path)
    return (torch.from_numpy(data["ws"]), torch.from_numpy(data["labels"]),
            [str(p) for p in data["parts"]], digest)
