"""Custom CUDA ops (``generator.ops``). The official code builds its CUDA plugins (``bias_act``,
``upfirdn2d``, ``filtered_lrelu`` in ``torch_utils/ops/``) at first use through
``torch_utils.custom_ops.get_plugin``, which calls ``torch.utils.cpp_extension.load(...)`` and
then ``importlib.import_module(module_name)``. Current PyTorch no longer registers the built
module under its name, so that import fails (``No module named 'bias_act_plugin'``). At load
time this adapter wraps ``get_plugin`` in memory so the module object returned by ``load`` is
the one imported; the user's files are never modified. Modes:

- ``auto``: build the plugins; if that fails or there is no CUDA device, use the reference ops
  with a ``ReferenceOpsWarning`` (about 8-11x slower synthesis);
- ``cuda``: the plugins are required; a ``ModelError`` if they cannot be built;
- ``ref``: always the pure-PyTorch reference ops (each op module's ``_init`` returns False).
"""

from __future__ import annotations

import functools
import importlib
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from linkstyle_core.models.errors import ModelError
from linkstyle_core.models.stylegan_checkout import check_checkout, import_checkout

OP_MODULES = ("bias_act", "upfirdn2d", "filtered_lrelu")
"""The op modules of ``torch_utils/ops/`` that build CUDA plugins (StyleGAN3/StyleGAN-XL)."""

SLOWDOWN = (
    "synthesis with the reference ops is about 8-11x slower (measured on an H200 for a 256-px "
    "StyleGAN-XL layout: ~12 instead of 98-137 images/s)"
)

_BUILD_LOCK = threading.RLock()


class ReferenceOpsWarning(UserWarning):
    """StyleGAN-XL runs on its slow pure-PyTorch reference ops instead of its CUDA plugins."""


def patch_get_plugin(custom_ops: ModuleType) -> None:
    """Make ``custom_ops.get_plugin`` return the module ``torch.utils.cpp_extension.load`` built.

    The checkout's own ``get_plugin`` still runs (its source hashing and build cache); while it
    does, ``load`` is wrapped to register the returned module in ``sys.modules`` under its name,
    so the ``importlib.import_module(module_name)`` that follows finds it, as older PyTorch did.
    In memory only; idempotent.
    """
    original = custom_ops.get_plugin
    if getattr(original, "linkstyle_patched", False):
        return

    @functools.wraps(original)
    def get_plugin(*args: Any, **kwargs: Any) -> Any:
        import torch.utils.cpp_extension as cpp_extension

        with _BUILD_LOCK:
            build = cpp_extension.load

            def load(*load_args: Any, **load_kwargs: Any) -> Any:
                module = build(*load_args, **load_kwargs)
                if isinstance(module, ModuleType):
                    sys.modules[module.__name__] = module
                return module

            cpp_extension.load = load
            try:
                return original(*args, **kwargs)
            finally:
                cpp_extension.load = build

    get_plugin.linkstyle_patched = True  # type: ignore[attr-defined]
    custom_ops.get_plugin = get_plugin  # type: ignore[attr-defined]


def _reference_only() -> bool:
    return False


def _op_modules(root: Path) -> dict[str, ModuleType]:
    """The checkout's op modules that exist (``torch_utils/ops/<name>.py``), imported."""
    found = {}
    for name in OP_MODULES:
        if (root / "torch_utils" / "ops" / f"{name}.py").is_file():
            found[name] = importlib.import_module(f"torch_utils.ops.{name}")
    return found


def _set_reference(modules: dict[str, ModuleType], reference: bool) -> None:
    for module in modules.values():
        if "linkstyle_init" not in vars(module):
            module.linkstyle_init = module._init  # type: ignore[attr-defined]
        module._init = _reference_only if reference else module.linkstyle_init  # type: ignore


def _build_plugins(root: Path) -> tuple[dict[str, ModuleType], str | None]:
    """Patch ``get_plugin`` and build every plugin now; (modules, None) or (modules, why not)."""
    if not (root / "torch_utils" / "custom_ops.py").is_file():
        return {}, f"{root / 'torch_utils' / 'custom_ops.py'} does not exist"
    try:
        patch_get_plugin(importlib.import_module("torch_utils.custom_ops"))
        modules = _op_modules(root)
    except Exception as exc:
        return {}, f"importing torch_utils failed: {type(exc).__name__}: {exc}"
    if not modules:
        return modules, f"no op modules ({', '.join(OP_MODULES)}) in {root / 'torch_utils/ops'}"
    _set_reference(modules, False)
    for name, module in modules.items():
        try:
            built = module._init()
        except Exception as exc:
            last = str(exc).strip().splitlines()[-1:] or [""]
            return modules, f"building the {name} plugin failed: {type(exc).__name__}: {last[0]}"
        if not built:
            return modules, f"building the {name} plugin failed (see the warning above)"
    return modules, None


def configure_ops(source: str | Path, ops: str, device: torch.device) -> tuple[str, str]:
    """Put the custom ops of the StyleGAN-XL checkout ``source`` into mode ``ops`` for networks
    on ``device``; returns (ops_in_use: 'cuda' or 'ref', a note saying why).

    ``load_stylegan_xl`` calls this; it is public for tests and for notebooks that change the
    mode of an already loaded network (the op modules are shared by every network of a checkout).
    """
    root = check_checkout(source)
    import_checkout(root)
    return configure_checkout_ops(root, ops, device)


def check_ops(ops: str) -> None:
    if ops not in ("auto", "cuda", "ref"):
        raise ModelError(f"generator.ops must be auto, cuda or ref, got {ops!r}")


def configure_checkout_ops(root: Path, ops: str, device: torch.device) -> tuple[str, str]:
    check_ops(ops)
    if ops == "ref":
        try:
            _set_reference(_op_modules(root), True)
        except Exception as exc:
            raise ModelError(f"generator.source {str(root)!r}: importing torch_utils.ops "
                             f"failed ({type(exc).__name__}: {exc})") from exc
        return "ref", "generator.ops is 'ref'"
    reason: str | None
    if device.type != "cuda":
        reason = f"the device is {device.type}, not a CUDA device"
        if ops == "cuda":
            raise ModelError(
                f"generator.ops 'cuda' needs a CUDA device but {reason}; set runtime.device "
                f"to cuda, or generator.ops to auto or ref"
            )
    else:
        _, reason = _build_plugins(root)
        if reason is None:
            return "cuda", "CUDA plugins built and loaded"
        if ops == "cuda":
            raise ModelError(
                f"generator.ops 'cuda': StyleGAN-XL's CUDA plugins cannot be built: {reason}. "
                f"They need nvcc from a CUDA toolkit matching torch.version.cuda "
                f"({torch.version.cuda}), a C++ compiler and ninja; install those, or set "
                f"generator.ops to auto or ref ({SLOWDOWN})"
            )
    try:
        _set_reference(_op_modules(root), True)
    except Exception:  # no importable ops: the network cannot use plugins anyway
        pass
    note = f"using the reference ops: {reason}"
    warnings.warn(
        f"StyleGAN-XL custom CUDA ops unavailable ({reason}); using the pure-PyTorch reference "
        f"ops instead: {SLOWDOWN}. Set generator.ops to 'ref' to accept this silently or "
        f"'cuda' to make it an error",
        ReferenceOpsWarning,
        stacklevel=3,
    )
    return "ref", note
