"""Where and how tensors are computed: device choice, mixed precision, batching."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from linkstyle_core.config import ConfigError

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else cpu; otherwise the named device, checked to exist
    (``ConfigError`` naming runtime.device if it does not)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"runtime.device is {spec!r} but no CUDA device is available; "
            "set runtime.device to 'cpu' or 'auto'"
        )
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"runtime.device is {spec!r} but there are only {torch.cuda.device_count()} CUDA "
            f"device(s) (cuda:0-cuda:{torch.cuda.device_count() - 1}); pick one of them or 'auto'"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("runtime.device is 'mps' but MPS is not available; use 'cpu' or 'auto'")
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for generator/classifier calls; fp32 (or fp16 on CPU) is exact."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cpu" and precision == "fp16":
        return contextlib.nullcontext()  # CPU fp16 autocast is slow and poorly supported
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering range(n) with at most batch_size items each."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))
