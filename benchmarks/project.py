"""The projected time of a full analysis from measured throughput: how many images each stage
renders for a config, divided by the images/s that benchmarks/bench.py measured.

    python benchmarks/project.py --bench gpu-bench.json [--config CONFIG] [--units N] [--json]

The image counts are ``linkstyle_core.cost.rendered_images`` (``linkstyle config cost``):
stage 1's accepted samples at ``paired_img_s`` (which counts accepted samples, so rejections
are included), the tuned units and the null directions with their calibrations at
``tune_img_s``. The base images, the link, segmenter and selectivity are left out (seconds
to minutes on a GPU; docs/scale.md measures them on the toy world), so this is the time of the
rendering, a lower bound.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def analysis_images(config: Any, units: int, classes: int) -> dict[str, int]:
    """Images rendered per stage for ``units`` tuned units of ``classes`` classes
    (``linkstyle_core.cost.rendered_images``, the calibrations counted with their stage)."""
    from linkstyle_core.cost import rendered_images

    images = rendered_images(config, units, classes)
    return {"paired": images["paired"],
            "tune": images["tuning"] + images["tuning calibration"],
            "null": images["null"] + images["null calibration"]}


def project(bench: dict[str, Any], config: Any, units: int, classes: int) -> dict[str, Any]:
    images = analysis_images(config, units, classes)
    seconds = {"paired": images["paired"] / bench["paired_img_s"],
               "tune": images["tune"] / bench["tune_img_s"],
               "null": images["null"] / bench["tune_img_s"]}
    return {"units": units, "classes": classes, "images": images, "seconds": seconds,
            "hours": sum(seconds.values()) / 3600}


def main() -> None:
    from linkstyle_core.config import AnalysisConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", required=True, help="bench.py --json output")
    parser.add_argument("--config", default=str(REPO / "configs" /
                                                "resnet50-stylegan-xl-dogs.yaml"))
    parser.add_argument("--units", type=int, default=2048,
                        help="units tuned (default 2048, ResNet-50's penultimate layer)")
    parser.add_argument("--classes", type=int,
                        help="number of classes, for a config with data.classes: all")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = AnalysisConfig.from_yaml(args.config)
    classes = len(config.data.classes) if isinstance(config.data.classes, list) else args.classes
    if not classes:
        parser.error(f"{args.config} analyses data.classes: all; give their number with "
                     "--classes")
    out = project(json.loads(Path(args.bench).read_text()), config, args.units, classes)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{args.config}: {args.units} units x {classes} classes, rendering alone: "
          f"{out['hours']:.1f} h (" + ", ".join(
              f"{s} {n:,} images, {out['seconds'][s] / 60:.0f} min"
              for s, n in out["images"].items()) + ")")


if __name__ == "__main__":
    main()
