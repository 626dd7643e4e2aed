"""The user's StyleGAN-XL checkout, and ``G_ema`` unpickled with it (for ``stylegan_xl``).

StyleGAN-XL pickles hold classes of the official code base (``dnnlib``, ``torch_utils``,
``training``), so they only unpickle with that code on ``sys.path``; nothing of it is copied
here. Their generator classes are "persistent": the pickle carries their module's source, which
runs on load and imports ``torch_utils``, ``dnnlib`` and ``legacy`` from the checkout.

Only ``G_ema`` is needed. Released pickles and training snapshots also hold the discriminator
``D`` (whose code needs timm 0.4.12, ftfy, regex and pretrained feature networks), the
augmentation pipe and the training state. The pickle is read with an unpickler derived from the
checkout's own (``legacy._LegacyUnpickler``) in which every class or rebuild function that
cannot be imported or run becomes an inert placeholder (``Unloadable``). Afterwards ``G_ema`` is
searched for placeholders: if it holds one, the load fails with the missing package and the
command that installs it; placeholders elsewhere (D, ...) are dropped with the rest.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import logging
import pickle
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import torch
from torch import nn

from linkstyle_core.models.errors import ModelError

_CHECKOUT_LAYOUT = "expected legacy.py, dnnlib/ and torch_utils/ at its top"
_GET_CODE = "clone https://github.com/autonomousvision/stylegan-xl there"
_REQUIRED_ATTRS = ("z_dim", "c_dim", "w_dim", "num_ws", "img_resolution", "mapping", "synthesis")

EXTRA = "pip install 'linkstyle[stylegan-xl]'"
"""Installs what G_ema's code imports besides torch: the ``stylegan-xl`` extra of pyproject."""
EXTRA_MODULES = {"dill", "click", "requests", "ninja"}
CHECKOUT_MODULES = {"legacy", "dnnlib", "torch_utils", "training", "pg_modules",
                    "feature_networks", "metrics", "gui_utils", "viz"}
"""Top-level modules of the StyleGAN-XL code base: missing ones mean an incomplete checkout."""
PIP_NAMES = {"PIL": "pillow", "cv2": "opencv-python", "sklearn": "scikit-learn",
             "skimage": "scikit-image", "yaml": "pyyaml", "psutil": "psutil"}

log = logging.getLogger(__name__)

_ACTIVE_CHECKOUTS: set[Path] = set()
_IMPORT_LOCK = threading.RLock()


OpenURI = Callable[[str], contextlib.AbstractContextManager[IO[bytes]]]
"""Opens a URI (s3://, gs://, ...) for binary reading, e.g. ``fsspec.open``; supplied by the
edge (tasks), since ``linkstyle_core`` itself reads only local files."""


def check_checkout(source: str | Path) -> Path:
    root = Path(source).expanduser()
    if not root.is_dir():
        raise ModelError(
            f"generator.source {str(source)!r} is not a folder: it must be the path of your "
            f"StyleGAN-XL code checkout, which the network pickle needs to unpickle "
            f"({_GET_CODE})"
        )
    root = root.resolve()
    if not (root / "legacy.py").is_file():
        raise ModelError(
            f"generator.source {str(root)!r} has no legacy.py, so it is not a StyleGAN-XL "
            f"checkout ({_CHECKOUT_LAYOUT}); point it at your checkout or {_GET_CODE}"
        )
    if not (root / "dnnlib" / "__init__.py").is_file():
        raise ModelError(
            f"generator.source {str(root)!r} has no dnnlib package (dnnlib/__init__.py), which "
            f"StyleGAN-XL pickles need ({_CHECKOUT_LAYOUT}); use a complete checkout"
        )
    return root


def _top_level_names(root: Path) -> set[str]:
    names = {p.stem for p in root.glob("*.py")}
    names |= {p.parent.name for p in root.glob("*/__init__.py")}
    return names


def import_checkout(root: Path) -> ModuleType:
    """Put ``root`` first on ``sys.path`` and import its ``legacy`` (and ``dnnlib``).

    Modules of another checkout loaded earlier in this process, and modules of the same names
    from elsewhere, are dropped from ``sys.modules`` first, so the pickle finds this checkout's
    classes (already loaded networks keep working: they hold their own module references).
    """
    with _IMPORT_LOCK:
        others = [p for p in _ACTIVE_CHECKOUTS if p != root]
        for other in others:
            while str(other) in sys.path:
                sys.path.remove(str(other))
        names = _top_level_names(root)
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if not file:
                continue
            path = Path(file).resolve()
            stale = any(path.is_relative_to(o) for o in others)
            shadowing = name.partition(".")[0] in names and not path.is_relative_to(root)
            if stale or shadowing:
                del sys.modules[name]
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        _ACTIVE_CHECKOUTS.add(root)
        importlib.invalidate_caches()
        try:
            importlib.import_module("dnnlib")
            return importlib.import_module("legacy")
        except Exception as exc:
            hint = missing_package_hint(exc, root) or (
                "the checkout is incomplete or needs packages that are not installed (see its "
                "environment.yml)")
            raise ModelError(
                f"generator.source {str(root)!r}: importing its legacy.py failed "
                f"({type(exc).__name__}: {exc}); {hint}"
            ) from exc


def _opener(network: str, open_uri: OpenURI | None) -> Callable[[], Any]:
    """A no-argument opener of the pickle; ``ModelError`` if it does not exist."""
    missing = ModelError(
        f"generator.network {network!r} does not exist; point it at your StyleGAN-XL network "
        f"pickle (e.g. imagenet256.pkl): a local path or a URI such as s3://bucket/imagenet256.pkl"
    )
    scheme, sep, rest = network.partition("://")
    if not sep or scheme == "file":
        path = Path(rest if sep else network).expanduser()
        if not path.is_file():
            raise missing
        return lambda: open(path, "rb")
    if open_uri is None:
        raise ModelError(
            f"generator.network {network!r} is a URI, but no URI opener was given "
            f"(load_generator(..., open_uri=fsspec.open)); copy the pickle to a local path"
        )

    def open_remote() -> Any:
        try:
            return open_uri(network)
        except FileNotFoundError:
            raise missing from None

    return open_remote


class Unloadable:
    """An inert stand-in for an object of the pickle that cannot be rebuilt here: its class or
    rebuild function does not import (``D``'s timm classes, a missing module) or fails.

    Unpickling treats it as a class and as a function alike (it accepts any arguments and any
    state), and what it makes is callable too (dill rebuilds a type with one call and an
    object with a call of that type), so the whole pickle loads and the check of ``G_ema``
    names what is missing. It keeps what failed: ``missing`` (``module.name``) and ``error``
    (the exception).
    """

    missing = "?"
    error: BaseException | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Unloadable:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Unloadable:
        return type(self)()

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<unloadable {self.missing}: {self.error!r}>"

    @classmethod
    def of(cls, missing: str, error: BaseException) -> type[Unloadable]:
        return type(f"Unloadable_{missing.rpartition('.')[2]}", (cls,),
                    {"missing": missing, "error": error})


def _load_from_bytes(data: bytes) -> Any:
    """``torch.storage._load_from_bytes`` onto the CPU: pickles saved on a GPU hold storages
    tagged ``cuda:N``; the network is moved to the configured device afterwards."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def _tolerant(rebuild: Callable[..., Any], missing: str) -> Callable[..., Any]:
    """``rebuild`` (a function the pickle calls to make an object), with failures turned into
    ``Unloadable`` objects; a persistent class whose source does not import is one."""

    @functools.wraps(rebuild)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return rebuild(*args, **kwargs)
        except Exception as exc:
            meta = args[0] if args and isinstance(args[0], dict) else {}
            return Unloadable.of(str(meta.get("class_name", missing)), exc)()

    return call


def _unpickler(legacy: ModuleType) -> type[pickle.Unpickler]:
    """An unpickler derived from the checkout's own (``legacy._LegacyUnpickler``, whose
    mappings it keeps) that makes ``Unloadable`` placeholders of what cannot be loaded."""
    base = getattr(legacy, "_LegacyUnpickler", pickle.Unpickler)
    if not (isinstance(base, type) and issubclass(base, pickle.Unpickler)):
        base = pickle.Unpickler

    class NetworkUnpickler(base):  # type: ignore[misc, valid-type]
        #: what could not be imported, in order (names the missing package if the pickle
        #: still fails to load)
        import_errors: list[BaseException]

        def find_class(self, module: str, name: str) -> Any:
            if (module, name) == ("torch.storage", "_load_from_bytes"):
                return _load_from_bytes
            try:
                found = super().find_class(module, name)
            except Exception as exc:
                self.__dict__.setdefault("import_errors", []).append(exc)
                return Unloadable.of(f"{module}.{name}", exc)
            if isinstance(found, type):
                return found
            return _tolerant(found, f"{module}.{name}") if callable(found) else found

    return NetworkUnpickler


def unloadable_parts(obj: Any, path: str = "G_ema") -> list[tuple[str, Unloadable]]:
    """(attribute path, placeholder) for every ``Unloadable`` inside ``obj``: its submodules,
    parameters, buffers and attributes, and the items of its lists and dicts."""
    found: list[tuple[str, Unloadable]] = []
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [(path, obj)]
    while stack:
        where, x = stack.pop()
        if id(x) in seen or isinstance(x, str | bytes | int | float | bool | torch.Tensor):
            continue
        seen.add(id(x))
        if isinstance(x, Unloadable):
            found.append((where, x))
            continue
        if isinstance(x, dict):
            items = [(f"{where}[{k!r}]", v) for k, v in x.items()]
        elif isinstance(x, list | tuple | set | frozenset):
            items = [(f"{where}[{i}]", v) for i, v in enumerate(x)]
        elif isinstance(getattr(x, "__dict__", None), dict) and not isinstance(x, type):
            items = []
            for k, v in vars(x).items():
                if k in ("_modules", "_parameters", "_buffers"):
                    items += [(f"{where}.{name}", child) for name, child in v.items()]
                else:
                    items.append((f"{where}.{k}", v))
        else:
            continue
        stack.extend(reversed(items))
    return found


def missing_package_hint(exc: BaseException | None, root: Path) -> str:
    """What to do about ``exc``: the pip command for a missing package, or the checkout to use
    for a module the checkout lacks; '' when ``exc`` is no missing module."""
    name = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    if not name:
        return ""
    top = name.partition(".")[0]
    if top in CHECKOUT_MODULES | _top_level_names(root) or top.startswith("_imported_module"):
        return (f"the checkout {str(root)!r} has no module {name!r}: it is incomplete, or not "
                f"the code the network was made with; set generator.source to a complete "
                f"StyleGAN-XL checkout")
    if top in EXTRA_MODULES:
        return f"the package {top!r} is not installed: {EXTRA}"
    package = PIP_NAMES.get(top, top)
    return f"the package {package!r} is not installed: pip install {package}"


def load_g_ema(legacy: ModuleType, network: str, root: Path,
                open_uri: OpenURI | None) -> Any:
    opener = _opener(network, open_uri)
    failed: list[BaseException] = []
    try:
        with opener() as f:
            unpickler = _unpickler(legacy)(f)
            try:
                data = unpickler.load()
            finally:
                failed = list(unpickler.__dict__.get("import_errors", []))
    except ModelError:
        raise
    except FileNotFoundError as exc:
        raise ModelError(f"generator.network {network!r} does not exist ({exc}); point it at "
                         f"your StyleGAN-XL network pickle") from exc
    except Exception as exc:
        # the error itself, else the first import that failed on the way (dill, a package
        # of the checkout) is the likely cause
        hint = next((h for e in (exc, *failed) if (h := missing_package_hint(e, root))), "")
        raise ModelError(
            f"generator.network {network!r} could not be unpickled with the code in "
            f"{str(root)!r} ({type(exc).__name__}: {exc}); "
            + (hint or "is it a StyleGAN-XL network pickle, and is generator.source the code "
                       "it was made with?")
        ) from exc
    if not isinstance(data, dict) or "G_ema" not in data:
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ModelError(
            f"generator.network {network!r} holds no 'G_ema' network (found: {found}); use a "
            f"StyleGAN-XL training snapshot or released network pickle, which store G_ema"
        )
    G = data["G_ema"]
    broken = unloadable_parts(G)
    if broken:
        where, part = broken[0]
        error = part.error
        hint = missing_package_hint(error, root) or (
            "is generator.source the StyleGAN-XL code the network was made with?")
        raise ModelError(
            f"generator.network {network!r}: {where} ({part.missing}) cannot be rebuilt "
            f"({type(error).__name__}: {error}); {hint}"
            + (f" ({len(broken) - 1} more parts of G_ema fail the same way)"
               if len(broken) > 1 else "")
        )
    skipped = sorted(k for k, v in data.items() if k != "G_ema" and unloadable_parts(v, k))
    if skipped:
        log.info("%s: left %s unloaded (only G_ema is used)", network, ", ".join(skipped))
    missing = [a for a in _REQUIRED_ATTRS if not hasattr(G, a)]
    if not isinstance(G, nn.Module) or missing:
        raise ModelError(
            f"generator.network {network!r}: its G_ema ({type(G).__name__}) is not a "
            f"StyleGAN-XL generator: missing {', '.join(missing) or 'torch.nn.Module'}"
        )
    _check_w_avg(G, network)
    return G


def _check_w_avg(G: Any, network: str) -> None:
    w_avg = getattr(G.mapping, "w_avg", None)
    shapes = {(int(G.w_dim),), (int(G.c_dim), int(G.w_dim))}
    if not isinstance(w_avg, torch.Tensor) or tuple(w_avg.shape) not in shapes:
        got = tuple(w_avg.shape) if isinstance(w_avg, torch.Tensor) else type(w_avg).__name__
        raise ModelError(
            f"generator.network {network!r}: G_ema.mapping.w_avg has shape {got}, expected "
            f"[c_dim, w_dim] = [{G.c_dim}, {G.w_dim}] or [w_dim] = [{G.w_dim}]"
        )
