"""benchmarks/prior_probes.py: the inversion of paired latents to the generator's prior, and its
command line's refusals (the figures of full runs are in docs/tuning.md, not asserted here)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _module() -> Any:
    spec = importlib.util.spec_from_file_location("prior_probes", ROOT / "benchmarks" /
                                                  "prior_probes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_invert_finds_a_prior_latent_for_latents_the_mapping_made() -> None:
    from linkstyle_core.models.toy import load_toy_generator

    gen = load_toy_generator()
    z = torch.randn(8, gen.z_dim, generator=torch.Generator().manual_seed(3))
    c = torch.nn.functional.one_hot(torch.arange(8) % gen.c_dim, gen.c_dim).float()
    with torch.no_grad():
        w = gen.mapping(z, c, 0.7)[:, 0]
        average = gen.mapping(z, c, 0.0)[:, 0]
    found, residual = _module().invert(gen, w, c, 0.7, steps=1000)
    assert found.shape == z.shape and residual.shape == (8,)
    with torch.no_grad():
        again = gen.mapping(found, c, 0.7)[:, 0]
    distance = ((again - w).norm(dim=1) / (w - average).norm(dim=1)).numpy()
    assert abs(distance - residual).max() < 1e-4          # the residual it reports is the real one
    assert float(torch.tensor(residual).median()) < 0.05  # from the class average: 1.0


@pytest.mark.parametrize(("flags", "message"), [
    (["--subspace", "4", "--own-part", "2"], "--own-part must be at least --subspace"),
    (["--per-sample"], "--per-sample needs --own-part N"),
    (["--split"], "--split needs --per-sample"),
    (["--per-sample", "--own-part", "8", "--split", "--rtol", "1"], "--rtol must be in (0, 1)"),
    (["--per-sample", "--own-part", "8", "--split", "--drop-global", "-1"],
     "--drop-global a count or auto"),
])
def test_command_line_refuses_bad_part_options(tmp_path: Path, flags: list[str],
                                               message: str) -> None:
    done = subprocess.run([sys.executable, "benchmarks/prior_probes.py", "--root", str(tmp_path),
                           *flags], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr
