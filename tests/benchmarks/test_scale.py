"""benchmarks/scale.py keeps working: a tiny run through its command line (the figures of a
full run are recorded in docs/scale.md, not asserted here)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # 1-3.5 min on 2 cores: six analyses in subprocesses (make test-all)
def test_tiny_scale_run_measures_every_size(tmp_path: Path) -> None:
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
    plot = tmp_path / "scale.png"
    done = subprocess.run(
        [sys.executable, "benchmarks/scale.py", "--tiny", "--units", "2,4", "--json",
         "--root", str(tmp_path / "work"), "--plot", str(plot)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    # the warm-up computed the stages that do not grow with the units, once; the null
    # directions are computed for every size (their steps follow the tuned units' ranges)
    assert {"paired", "link", "segmenter"} <= set(out["fixed_stages_s"])
    assert "null" not in out["fixed_stages_s"]
    sizes = out["sizes"]
    assert [s["units"] for s in sizes] == [2, 4]
    for size in sizes:
        # each size tuned, scored and validated its own units (no cache hit of the warm-up's)
        assert all(size["stages_s"][s] > 0
                   for s in ("tune", "null", "selectivity", "validation"))
        assert size["tune_images"] == size["units"] * 4 * 3  # 4 classes x 1 sample, 3 steps
        assert math.isfinite(size["tune_img_s"]) and size["tune_img_s"] > 0
        assert size["task_runs"] > 0 and size["log_lines"] > 0
        assert size["report_s"] > 0 and size["unit_s"] > 0
        assert size["peak_rss_mb"] >= size["peak_rss_mb_analysis"] > 0
        assert set(size["bytes_per_unit"]) == {"tune", "selectivity", "validation", "report"}
        assert all(v > 0 for v in size["files_per_unit"].values())
        assert size["duckdb_s"] is None or size["duckdb_s"] > 0
        # the report of every size has a page per unit
        pages = list((tmp_path / "work" / f"report-{size['units']}" / "units").iterdir())
        assert len(pages) == size["units"]
    assert set(out["time_per_unit_ratio"]) == {"2"}
    assert set(out["time_per_unit_ratio"]["2"]) >= {"tune", "selectivity", "report"}
    assert out["peak_rss_ratio_largest_smallest"] > 0
    assert plot.stat().st_size > 10_000
