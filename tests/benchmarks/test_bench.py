"""benchmarks/bench.py keeps working: a tiny run through its command line, every key present
and consistent (the figures themselves are recorded in docs/performance.md, not asserted)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("ceiling_img_s", "tune_img_s", "tune_ratio", "paired_img_s", "paired_ratio",
        "reference_tune_img_s", "reference_paired_img_s", "speedup_tune", "speedup_paired",
        "link_fit_s", "peak_mem_mb")


def test_tiny_bench_prints_every_figure_as_json(tmp_path: Path) -> None:
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "benchmarks/bench.py", "--tiny", "--json"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert set(KEYS) <= set(out)
    rates = [out[k] for k in KEYS if k.endswith("img_s")]
    assert all(math.isfinite(r) and r > 0 for r in rates)
    assert math.isclose(out["tune_ratio"], out["tune_img_s"] / out["ceiling_img_s"])
    assert math.isclose(out["speedup_tune"], out["tune_img_s"] / out["reference_tune_img_s"])
    per_size = out["paired_by_samples"]
    assert out["speedup_paired"] == min(v["speedup_paired"] for v in per_size.values())
    fewest = per_size[min(per_size, key=int)]
    assert (out["paired_img_s"], out["reference_paired_img_s"]) == (
        fewest["paired_img_s"], fewest["reference_paired_img_s"])
    for v in per_size.values():
        assert math.isclose(v["speedup_paired"], v["paired_img_s"] / v["reference_paired_img_s"])
    # peak memory at two unit counts, and a link fitted by both closed forms
    assert len(out["peak_mem_mb"]) == 2 and all(m > 0 for m in out["peak_mem_mb"].values())
    assert set(out["link_fit_s_by_type"]) == {"lr", "ridge"}
    assert out["link_fit_s"] == max(out["link_fit_s_by_type"].values())
