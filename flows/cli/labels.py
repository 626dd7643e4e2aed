"""``linkstyle labels ...``: export images to label, paint them in the browser, import them.

    linkstyle labels export --out DIR     images, latents, empty masks, previews, parts.json
    linkstyle labels open DIR             the labelling page (127.0.0.1, pre-filled masks)
    linkstyle labels import DIR           check the masks, count pixels per part, labels.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flows.cli.common import UsageError, add_command, load_config, with_config


def register(sub: Any) -> None:
    """``labels export|open|import`` under the subparsers ``sub``."""
    labels = sub.add_parser("labels", help="label generated images for the part segmenter")
    lsub = labels.add_subparsers(dest="labels_command", required=True, metavar="ACTION")
    p = add_command(lsub, "export", cmd_labels_export,
            "write generated images, their latents and empty masks to label")
    with_config(p)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="a new or empty folder (or, with --add, a label folder)")
    p.add_argument("--count", type=int, default=32, help="images to export (default: 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--add", action="store_true",
                   help="append --count images to an exported label folder, keeping every "
                        "image and saved mask (the same images as one export of all of them "
                        "with the same --seed)")
    p = add_command(lsub, "open", cmd_labels_open,
            "paint the masks of an exported folder in the browser, pre-filled by a segmenter "
            "trained on the images labelled so far")
    with_config(p)
    p.add_argument("folder", metavar="DIR")
    p.add_argument("--port", type=int, default=0,
                   help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--no-browser", action="store_true",
                   help="only print the address, do not open a browser")
    p.add_argument("--no-prefill", action="store_true",
                   help="do not load the generator; paint without proposals")
    p.add_argument("--steps", type=int, metavar="N",
                   help="training steps of the pre-fill's segmenter (default: segment.steps; "
                        "fewer answer sooner on a slow CPU)")
    p = add_command(lsub, "import", cmd_labels_import,
                    "check labelled masks against the part list")
    with_config(p)
    p.add_argument("folder", metavar="DIR")


def _parts_for(config: Any) -> list[str]:
    """segment.parts, or the toy world's parts for the toy generator."""
    parts = list(config.segment.parts or [])
    if not parts and config.generator.kind == "toy":
        from linkstyle_core.toyworld.factors import PARTS

        parts = list(PARTS)
    return parts


def cmd_labels_export(args: argparse.Namespace) -> int:
    from flows.outputs import check_outside_roots, check_writable
    from linkstyle_core.labels import export_folder, export_mode
    from tasks.context import models_for

    if not 1 <= args.count <= 100_000:
        raise UsageError(f"--count must be between 1 and 100000 images, got {args.count}")
    if not 0 <= args.seed <= 2**63 - 1:
        raise UsageError(f"--seed must be between 0 and 2**63-1, got {args.seed}")
    config = load_config(args.config)
    parts = _parts_for(config)
    if len(parts) < 2:
        raise UsageError("set segment.parts in the config (background first) before exporting")
    out = Path(args.out)
    # before the models load: never into an artifact root, never over a person's masks
    check_outside_roots(out, roots=(config.artifact_root,))
    export_mode(out, args.add)
    check_writable(out)
    models = models_for(config)
    start = export_folder(models.generator, out, args.count, parts, args.seed,
                          config.data.truncation, models.device, add=args.add)
    config_arg = f" --config {args.config}" if args.config else ""
    added = f"images {start}-{start + args.count - 1}" if start else f"{args.count} images"
    print(f"wrote {added} to {args.out}/images (overlays in {args.out}/preview); "
          f"label them with `linkstyle labels open {args.out}{config_arg}` (or paint index "
          f"masks into {args.out}/labels, value i = parts[i] of {parts}), then "
          f"`linkstyle labels import {args.out}{config_arg}`")
    return 0


def cmd_labels_import(args: argparse.Namespace) -> int:
    from linkstyle_core.labels import import_folder
    from tasks.context import models_for

    config = load_config(args.config)
    summary = import_folder(Path(args.folder), models_for(config).generator.resolution)
    print(f"{args.folder}: {summary['images']} labelled images, parts {summary['parts']}")
    pixels: dict[str, int] = summary["pixels_per_part"]  # type: ignore[assignment]
    images: dict[str, int] = summary["images_per_part"]  # type: ignore[assignment]
    total = sum(pixels.values()) or 1
    width = max(len(p) for p in pixels)
    print(f"  {'part':<{width}}  {'pixels':>10}  {'share':>6}  images")
    for part, count in pixels.items():
        print(f"  {part:<{width}}  {count:>10}  {count / total:>6.1%}  {images[part]}")
    print(f"set `segment: {{labels: {args.folder}}}` in your config to train the segmenter")
    return 0


def _load_generator(config: Any, folder: Path) -> Any:
    import fsspec
    import numpy as np

    from linkstyle_core.labels import LabelError
    from linkstyle_core.models.registry import load_generator
    from linkstyle_core.runtime import resolve_device

    generator = load_generator(config.generator, resolve_device(config.runtime.device),
                               open_uri=fsspec.open)
    shape = np.load(folder / "latents.npy", mmap_mode="r").shape
    if tuple(shape[1:]) != (generator.num_ws, generator.w_dim):
        raise LabelError(f"{folder}/latents.npy holds latents [N, {shape[1]}, {shape[2]}] but "
                         f"the config's generator takes [N, {generator.num_ws}, "
                         f"{generator.w_dim}]; pass the config the folder was exported with "
                         "(--config FILE), or --no-prefill")
    return generator


def cmd_labels_open(args: argparse.Namespace) -> int:
    from flows.labelling.server import LabellingSession, check_export_folder, start
    from flows.web.serve import ServeError, open_page, wait
    from linkstyle_core.labels import read_parts

    folder = Path(args.folder)
    check_export_folder(folder)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {args.port}")
    generator, seg = None, None
    device: Any = "cpu"
    if not args.no_prefill:
        from linkstyle_core.runtime import resolve_device

        config = load_config(args.config)
        parts = read_parts(folder)
        if config.segment.parts and list(config.segment.parts) != parts:
            raise UsageError(f"segment.parts {config.segment.parts} differ from {folder}/"
                             f"parts.json {parts}; make them agree")
        generator = _load_generator(config, folder)
        device, seg = resolve_device(config.runtime.device), config.segment
    if args.steps is not None and not 1 <= args.steps <= 100_000:
        raise UsageError(f"--steps must be between 1 and 100000, got {args.steps}")
    session = LabellingSession(
        folder, generator, device=device,
        **({"steps": args.steps or seg.steps, "seed": seg.seed, "hidden": seg.hidden,
            "kernel": seg.kernel} if seg is not None else {}))
    for index, why in sorted(session.damaged.items()):
        print(f"linkstyle: warning: {why}; image {index} counts as unlabelled until its mask is "
              "saved again", file=sys.stderr, flush=True)
    try:
        server, _ = start(session, args.port)
    except ServeError as exc:
        session.close()
        raise UsageError(str(exc)) from None
    print(f"labelling {folder} ({session.count} images, {len(session.labelled)} labelled) at "
          f"{server.url}", flush=True)
    open_page(server, args.no_browser)
    print("Ctrl-C stops the server; saved masks are kept", flush=True)
    try:
        wait(server)  # Ctrl-C and SIGTERM stop the server, then end the command (130, 143)
    finally:
        print(f"stopped; {len(session.labelled)} of {session.count} images labelled in "
              f"{folder}/labels", flush=True)
    return 0
