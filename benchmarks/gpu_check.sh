#!/usr/bin/env bash
# The GPU checks, in one go, on a machine with one CUDA device (about 3-5 minutes):
# the GPU tests, then the benchmark on the StyleGAN-XL-sized generator, then the projected
# rendering time of a full 2048-unit ResNet-50 x StyleGAN-XL analysis from its images/s.
# Prints the figures as JSON and keeps them in ${OUT:-.}/gpu-bench.json and projection.json
# with the machine's description.
#   bash benchmarks/gpu_check.sh            (after `make install`)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=${OUT:-.}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
timeout 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider
timeout 240 "$PY" benchmarks/bench.py --device cuda --generator scaled --samples 256 --repeat 2 \
  --json | tee "$out/gpu-bench.json"
"$PY" benchmarks/project.py --bench "$out/gpu-bench.json" --json | tee "$out/projection.json"
