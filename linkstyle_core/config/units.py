"""``tuning.units``: which units to tune, as written in a config ('all', 7, '0-127,200') and
resolved against a classifier's units."""

from __future__ import annotations

import re
from typing import Any, Literal

from linkstyle_core.config.errors import ConfigError

_UNIT_ITEM = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_units(spec: Literal["all"] | int | str | list[int | str]) -> list[tuple[int, int]] | None:
    """Units as inclusive ranges; None means all. Accepts 'all', 7, '0-127,200', [0, '5-9']."""
    if spec == "all":
        return None
    items: list[int | str]
    if isinstance(spec, int):
        items = [spec]
    elif isinstance(spec, str):
        items = [s for s in spec.split(",") if s.strip()]
    else:
        items = list(spec)
    if not items:
        raise ValueError("units must not be empty: use 'all', a list, or ranges like '0-127'")
    ranges = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"unit {item!r} is not an index")
        if isinstance(item, int):
            if item < 0:
                raise ValueError(f"unit index {item} is negative")
            ranges.append((item, item))
            continue
        m = _UNIT_ITEM.match(str(item))
        if not m:
            raise ValueError(f"unit item {item!r} is neither an index nor a range like '0-127'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"unit range {item!r} ends before it starts")
        ranges.append((lo, hi))
    return ranges


def resolve_units(spec: Any, feature_dim: int) -> list[int]:
    """Sorted unique unit indices for a classifier with ``feature_dim`` units."""
    ranges = parse_units(spec)
    if ranges is None:
        return list(range(feature_dim))
    # checked on the ranges before they are expanded: '0-10**12' must not fill the memory
    bad = min((lo if lo >= feature_dim else feature_dim for lo, hi in ranges if hi >= feature_dim),
              default=None)
    if bad is not None:
        raise ConfigError(
            f"tuning.units: unit {bad} is out of range; the classifier has {feature_dim} "
            f"units (0-{feature_dim - 1}); set tuning.units to indices below {feature_dim} "
            "or 'all'"
        )
    return sorted({u for lo, hi in ranges for u in range(lo, hi + 1)})
