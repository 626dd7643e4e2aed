"""Content keys: stable across order and representation, sensitive to every parameter."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from linkstyle_core.config import AnalysisConfig
from storage import canonical_json, content_key

PARAMS = {"truncation": 0.7, "classes": [0, 1, 2], "link": {"type": "ridge", "alpha": 1.0}}


def test_key_is_pinned_across_sessions_and_machines() -> None:
    # A key must never drift between releases of Python, numpy or this package, or every
    # stored artifact would silently be rebuilt. This literal was computed once and is frozen.
    assert content_key("paired", "1", PARAMS, {"model": "abc"}) == "a21e684efba9ac8eeaf9"


def test_key_is_the_same_in_a_fresh_interpreter() -> None:
    code = (
        "from storage import content_key;"
        f"print(content_key('paired', '1', {PARAMS!r}, {{'model': 'abc'}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == content_key("paired", "1", PARAMS, {"model": "abc"})


def test_dict_order_and_container_types_do_not_matter() -> None:
    a = {"b": 2, "a": {"y": (1, 2), "x": 1.0}}
    b = {"a": {"x": 1, "y": [1, 2]}, "b": 2}
    assert content_key("s", 1, a) == content_key("s", 1, b)
    assert content_key("s", 1, {}, {"p": "k1", "q": "k2"}) == content_key(
        "s", 1, {}, {"q": "k2", "p": "k1"}
    )


def test_floats_are_canonical() -> None:
    assert canonical_json({"x": 0.1 + 0.2}) == canonical_json({"x": 0.30000000000000004})
    assert canonical_json({"x": np.float64(0.25)}) == canonical_json({"x": 0.25})
    assert canonical_json({"x": -0.0}) == canonical_json({"x": 0})
    assert canonical_json({"x": float("nan")}) == canonical_json({"x": float("nan")})
    # a float32 that is not exactly 0.1 is a different parameter
    assert canonical_json({"x": np.float32(0.1)}) != canonical_json({"x": 0.1})
    assert content_key("s", 1, {"x": 0.7}) != content_key("s", 1, {"x": 0.70000001})


def test_unhashable_parameters_are_refused_with_a_clear_message() -> None:
    with pytest.raises(TypeError, match="cannot build a content key from a .*object"):
        content_key("s", 1, {"model": object()})


def test_stage_version_and_inputs_change_the_key() -> None:
    base = content_key("paired", 1, PARAMS, {"model": "abc"})
    assert content_key("link", 1, PARAMS, {"model": "abc"}) != base
    assert content_key("paired", 2, PARAMS, {"model": "abc"}) != base
    assert content_key("paired", 1, PARAMS, {"model": "abd"}) != base
    assert content_key("paired", 1, PARAMS, {"model2": "abc"}) != base
    assert content_key("paired", 1, PARAMS, {}) != base


def _leaves(tree: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(tree, dict):
        return [leaf for k, v in tree.items() for leaf in _leaves(v, path + (k,))]
    return [path]


def _perturb(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.5 + 0.125
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list | tuple):
        return [*value, value[0] if value else 1]
    if value is None:
        return "set"
    raise AssertionError(f"no perturbation for {value!r}")


def test_every_config_parameter_changes_the_key() -> None:
    params = AnalysisConfig().model_dump(mode="json")
    base = content_key("analysis", 1, params)
    seen = {base}
    leaves = _leaves(params)
    assert len(leaves) > 25  # the whole config is covered, not a handful of fields
    for path in leaves:
        changed = copy.deepcopy(params)
        node = changed
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = _perturb(node[path[-1]])
        key = content_key("analysis", 1, changed)
        assert key not in seen, f"changing {'.'.join(path)} did not change the key"
        seen.add(key)
