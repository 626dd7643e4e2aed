"""What an analysis renders, computed from its configuration: the images of every stage.

The generator bounds an analysis (DESIGN.md, "Performance rules"), so its cost is the number of
images it renders. The counts follow the stages' code:

- stage 1 keeps ``samples_per_class + test_samples_per_class`` correctly classified samples per
  class (it renders more where the classifier rejects some: this count is a lower bound);
- a tuned unit renders ``tuning.steps`` images per tuned sample (``samples_per_class`` per
  class), and with ``step: calibrated`` two more per calibration sample, its trajectory's ends;
- a null direction renders the first and last step on ``null_samples_per_class`` samples per
  class, calibrated as the units are;
- every unit shard and every null shard renders its samples' base images once.

``linkstyle config cost FILE`` prints these as a table (docs/real-models.md, section 5).
"""

from __future__ import annotations

import math
from typing import Any


def rendered_images(config: Any, units: int, classes: int) -> dict[str, int]:
    """Images each part of stages 1-3 renders for ``units`` tuned units of ``classes``
    classes under ``config`` (an ``AnalysisConfig``), in stage order."""
    data, t = config.data, config.tuning
    calibration = 2 * t.calibration_samples_per_class * classes \
        if t.step == "calibrated" else 0
    null_shard = min(t.null_shard_size, t.null_directions)  # before rounding to whole batches
    return {
        "paired": classes * (data.samples_per_class + data.test_samples_per_class),
        "tuning": units * t.steps * t.samples_per_class * classes,
        "tuning calibration": units * calibration,
        "null": t.null_directions * 2 * t.null_samples_per_class * classes,
        "null calibration": t.null_directions * calibration,
        "base images": math.ceil(units / t.shard_size) * t.samples_per_class * classes
        + math.ceil(t.null_directions / null_shard) * t.null_samples_per_class * classes,
    }


_FORMULAS = {
    "paired": "classes × (samples_per_class + test_samples_per_class), at least",
    "tuning": "units × steps × samples per class × classes",
    "tuning calibration": "units × 2 ends × calibration samples per class × classes",
    "null": "null directions × 2 steps × null samples per class × classes",
    "null calibration": "null directions × 2 ends × calibration samples per class × classes",
    "base images": "(unit shards + null shards) × their samples per class × classes",
}


def cost_table(config: Any, units: int, classes: int, images_per_s: float | None = None) -> str:
    """``rendered_images`` as a Markdown table, with the total and, given the generator's
    batched throughput ``images_per_s``, the time the rendering takes."""
    images = rendered_images(config, units, classes)
    lines = ["| stage | what | images |", "| --- | --- | ---: |"]
    lines += [f"| {name} | {_FORMULAS[name]} | {count:,} |" for name, count in images.items()]
    total = sum(images.values())
    lines.append(f"| in all | {units} units, {classes} classes | {total:,} |")
    if images_per_s:
        minutes = total / images_per_s / 60
        lines.append("")
        lines.append(f"At {images_per_s:g} images/s: about {minutes:,.0f} minutes of rendering.")
    return "\n".join(lines)
