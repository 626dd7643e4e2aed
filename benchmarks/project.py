"""The projected time of a full analysis from measured throughput: how many images each stage
renders for a config, divided by the images/s that benchmarks/bench.py measured.

    python benchmarks/project.py --bench gpu-bench.json [--config CONFIG] [--units N] [--json]

The image counts follow the stages' code: stage 1 renders ``samples_per_class +
test_samples_per_class`` accepted samples per class (at ``paired_img_s``, which counts accepted
samples, so rejections are included); a tuned direction renders ``steps`` images per sample
(``samples_per_class`` per class) and, with ``step: calibrated``, two more per calibration
sample (``tune_img_s``); a null direction renders the first and last step on
``null_samples_per_class`` samples per class, and is calibrated as the units are. The
link, segmenter and selectivity are left out (seconds to minutes on a GPU; docs/scale.md
measures them on the toy world), so this is the time of the rendering, a lower bound.
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
    """Images rendered per stage for ``units`` tuned units of ``classes`` classes."""
    data, tuning = config.data, config.tuning
    calibration = 2 * tuning.calibration_samples_per_class if tuning.step == "calibrated" else 0

    def directions(count: int, samples_per_class: int, steps: int) -> int:
        return count * classes * (samples_per_class * steps + calibration)

    return {
        "paired": classes * (data.samples_per_class + data.test_samples_per_class),
        "tune": directions(units, tuning.samples_per_class, tuning.steps),
        "null": directions(tuning.null_directions, tuning.null_samples_per_class, 2),
    }


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
