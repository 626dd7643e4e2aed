"""benchmarks/project.py: the images each stage renders for a config, and the projected time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_projection_of_the_dogs_config_counts_every_stage_image(tmp_path: Path) -> None:
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"paired_img_s": 100.0, "tune_img_s": 50.0}))
    done = subprocess.run(
        [sys.executable, "benchmarks/project.py", "--bench", str(bench), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    out = json.loads(done.stdout)
    # configs/resnet50-stylegan-xl-dogs.yaml: 5 classes, 500 + 100 samples per class; 2048
    # units x 4 samples per class x 3 steps, one calibration sample per class (2 renders);
    # 1024 null directions x 2 samples per class x 2 steps, calibrated alike
    assert out["images"] == {"paired": 5 * 600, "tune": 2048 * 5 * (4 * 3 + 2),
                             "null": 1024 * 5 * (2 * 2 + 2)}
    assert out["seconds"]["tune"] == out["images"]["tune"] / 50.0
    assert abs(out["hours"] - (3000 / 100 + (143360 + 30720) / 50) / 3600) < 1e-9
    # a config over all classes needs their number
    toy = tmp_path / "toy.yaml"
    toy.write_text("data: {classes: all}\n")
    refused = subprocess.run(
        [sys.executable, "benchmarks/project.py", "--bench", str(bench), "--config", str(toy)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--classes" in refused.stderr
