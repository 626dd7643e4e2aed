"""The StyleGAN-XL adapter (DESIGN.md, "Adapters"): a user's network pickle, loaded through the
user's own checkout of the official StyleGAN-XL code.

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

Feature maps. StyleGAN3-type layers (StyleGAN-XL's) compute on a canvas larger than the image:
a layer of sampling rate ``s`` outputs ``s + 2 * margin`` pixels per side, of which the centre
``s`` cover the image; only the last two layers are image-sized. ``features`` crops every map to
its image window, from the layer's own ``out_sampling_rate`` (``sampling_rate`` for the input
layer), so that the segmenter reads each map where the image is.

Custom CUDA ops (``generator.ops``). The official code builds its CUDA plugins (``bias_act``,
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

import contextlib
import functools
import importlib
import io
import logging
import pickle
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import torch
from torch import nn

from linkstyle_core.models.errors import ModelError

OP_MODULES = ("bias_act", "upfirdn2d", "filtered_lrelu")
"""The op modules of ``torch_utils/ops/`` that build CUDA plugins (StyleGAN3/StyleGAN-XL)."""

SLOWDOWN = (
    "synthesis with the reference ops is about 8-11x slower (measured on an H200 for a 256-px "
    "StyleGAN-XL layout: ~12 instead of 98-137 images/s)"
)

_CHECKOUT_LAYOUT = "expected legacy.py, dnnlib/ and torch_utils/ at its top"
_GET_CODE = "clone https://github.com/autonomousvision/stylegan-xl there"
_REQUIRED_ATTRS = ("z_dim", "c_dim", "w_dim", "num_ws", "img_resolution", "mapping", "synthesis")

FEATURE_LAYOUT = "image-window"
"""How ``features`` lays out its maps (each cropped to the image); part of the cache keys."""

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
_BUILD_LOCK = threading.RLock()


class ReferenceOpsWarning(UserWarning):
    """StyleGAN-XL runs on its slow pure-PyTorch reference ops instead of its CUDA plugins."""


class StyleGANXLGenerator(nn.Module):
    """A StyleGAN-XL ``G_ema`` as a ``Generator`` (``linkstyle_core.models.protocols``).

    ``G``: the unpickled network. ``force_fp32``: None (default) follows the caller's
    precision: under autocast (``runtime.precision`` fp16/bf16) the network's own fp16 layers
    are used, otherwise it runs in full fp32 (``force_fp32=True``); True/False force either.
    ``ops_in_use``: 'cuda' or 'ref', the custom-ops implementation synthesis runs on;
    ``feature_layout``: how ``features`` crops its maps. Both enter the cache keys.
    """

    G: Any  # the official network: duck-typed, its classes live in the user's checkout

    def __init__(self, G: Any, *, ops_in_use: str, ops_note: str = "",
                 force_fp32: bool | None = None) -> None:
        super().__init__()
        self.G = G.eval().requires_grad_(False)
        self.z_dim = int(G.z_dim)
        self.c_dim = int(G.c_dim)
        self.w_dim = int(G.w_dim)
        self.num_ws = int(G.num_ws)
        self.resolution = int(G.img_resolution)
        self.ops_in_use = ops_in_use
        self.ops_note = ops_note
        self.feature_layout = FEATURE_LAYOUT
        self.force_fp32 = force_fp32

    def mapping(self, z: torch.Tensor, c: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """z: [N, z_dim], c: [N, c_dim] one-hot -> ws: [N, num_ws, w_dim] float32.

        The network maps with ``truncation_psi=1``; truncation is applied here, towards the
        class average as StyleGAN-XL's ``gen_images.py`` does:
        ``w = w_avg[c] + truncation * (w - w_avg[c])`` with ``w_avg`` [c_dim, w_dim], or the
        single [w_dim] average of networks that keep one. Always fp32 (w is the recorded latent).
        """
        with torch.autocast(device_type=z.device.type, enabled=False):
            ws = self.G.mapping(z.float(), c.float(), truncation_psi=1).float()
            if truncation != 1:
                w_avg = self.G.mapping.w_avg.float()
                avg = c.float() @ w_avg if w_avg.ndim == 2 else w_avg.expand(len(ws), -1)
                avg = avg.unsqueeze(1)
                ws = avg + truncation * (ws - avg)
        return ws

    def _use_fp32(self, device_type: str) -> bool:
        if self.force_fp32 is not None:
            return self.force_fp32
        return not torch.is_autocast_enabled(device_type)

    def synthesis(self, ws: torch.Tensor) -> torch.Tensor:
        """ws: [N, num_ws, w_dim] -> images [N, 3, resolution, resolution] float32, ~[-1, 1].

        Constant noise (``noise_mode='const'``), so an image is a function of ``ws`` alone.
        Autocast is switched off inside: mixed precision is the network's own fp16 layers.
        """
        force_fp32 = self._use_fp32(ws.device.type)
        with torch.autocast(device_type=ws.device.type, enabled=False):
            images = self.G.synthesis(ws.float(), noise_mode="const", force_fp32=force_fp32)
        return images.float()

    def synthesis_layers(self) -> list[nn.Module]:
        """The synthesis layers in the order they run: ``input`` and ``layer_names`` as in
        StyleGAN3/StyleGAN-XL's ``SynthesisNetwork``, else its children."""
        synthesis = self.G.synthesis
        names = getattr(synthesis, "layer_names", None)
        if names and isinstance(getattr(synthesis, "input", None), nn.Module):
            return [synthesis.input, *(getattr(synthesis, name) for name in names)]
        return list(synthesis.children())

    def synthesis_with_features(self, ws: torch.Tensor
                                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Images and feature maps of ``ws`` from one synthesis pass (``synthesis`` and
        ``features`` together): forward hooks on the synthesis layers keep every layer's
        output, cropped to the image (``image_window``), [N, C_i, H_i, W_i] float32 each, in
        the order they run."""
        maps: list[torch.Tensor] = []

        def keep(module: nn.Module, inputs: Any, output: Any) -> None:
            x = output[0] if isinstance(output, tuple | list) else output
            if isinstance(x, torch.Tensor) and x.ndim == 4:
                rows, cols = image_window(module, x.shape[-2], x.shape[-1])
                maps.append(x[..., rows, cols].float())

        handles = [layer.register_forward_hook(keep) for layer in self.synthesis_layers()]
        try:
            images = self.synthesis(ws)
        finally:
            for handle in handles:
                handle.remove()
        return images, maps

    def features(self, ws: torch.Tensor) -> list[torch.Tensor]:
        """ws: [N, num_ws, w_dim] -> the output of every synthesis layer, in the order they
        run, each cropped to the part that covers the image, [N, C_i, H_i, W_i] float32
        (``synthesis_with_features``)."""
        return self.synthesis_with_features(ws)[1]


def image_window(layer: nn.Module, height: int, width: int) -> tuple[slice, slice]:
    """The rows and columns of a layer's [.., height, width] output that cover the image.

    A StyleGAN3 layer samples the image at ``out_sampling_rate`` (the input layer:
    ``sampling_rate``) pixels per image side and adds a margin of equal width on every side,
    so the image is the centred ``rate x rate`` window. Maps without a margin, and layers
    without a sampling rate (other architectures), are kept whole.
    """
    rate = getattr(layer, "out_sampling_rate", getattr(layer, "sampling_rate", None))
    try:
        side = int(round(float(rate)))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return slice(None), slice(None)

    def window(n: int) -> slice:
        margin = (n - side) // 2
        return slice(margin, margin + side) if 0 < side < n else slice(None)

    return window(height), window(width)


OpenURI = Callable[[str], contextlib.AbstractContextManager[IO[bytes]]]
"""Opens a URI (s3://, gs://, ...) for binary reading, e.g. ``fsspec.open``; supplied by the
edge (tasks), since ``linkstyle_core`` itself reads only local files."""


def load_stylegan_xl(network: str | Path, source: str | Path, device: torch.device | str = "cpu",
                     ops: str = "auto", force_fp32: bool | None = None,
                     open_uri: OpenURI | None = None) -> StyleGANXLGenerator:
    """Load ``G_ema`` of the pickle ``network`` with the StyleGAN-XL checkout ``source``.

    ``network``: a local path, or a URI (``s3://...``) opened with ``open_uri``. The rest of
    the pickle (D, ...) may need packages that are not installed: it is left unloaded. Raises
    ``ModelError`` naming the fix when the checkout or the pickle is missing, the pickle holds
    no ``G_ema``, G_ema's code needs a package that is not installed, or ``ops='cuda'`` cannot
    be honoured. Warns
    (``ReferenceOpsWarning``) when ``ops='auto'`` falls back to the reference ops.
    """
    _check_ops(ops)
    device = torch.device(device)
    root = _check_checkout(source)
    legacy = _import_checkout(root)
    ops_in_use, note = _configure_ops(root, ops, device)
    G = _load_g_ema(legacy, str(network), root, open_uri)
    G = G.to(device)
    generator = StyleGANXLGenerator(G, ops_in_use=ops_in_use, ops_note=note,
                                    force_fp32=force_fp32)
    return generator


def _check_checkout(source: str | Path) -> Path:
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


def _import_checkout(root: Path) -> ModuleType:
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


def _load_g_ema(legacy: ModuleType, network: str, root: Path,
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


# ------------------------------------------------------------------ custom ops


def patch_get_plugin(custom_ops: ModuleType) -> None:
    """Make ``custom_ops.get_plugin`` return the module ``torch.utils.cpp_extension.load`` built.

    The checkout's own ``get_plugin`` still runs (its source hashing and build cache); while it
    does, ``load`` is wrapped to register the returned module in ``sys.modules`` under its name,
    so the ``importlib.import_module(module_name)`` that follows finds it, as older PyTorch did.
    In memory only; idempotent.
    """
    original = custom_ops.get_plugin
    if getattr(original, "_linkstyle_patched", False):
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

    get_plugin._linkstyle_patched = True  # type: ignore[attr-defined]
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
        if "_linkstyle_init" not in vars(module):
            module._linkstyle_init = module._init  # type: ignore[attr-defined]
        module._init = _reference_only if reference else module._linkstyle_init  # type: ignore


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
    root = _check_checkout(source)
    _import_checkout(root)
    return _configure_ops(root, ops, device)


def _check_ops(ops: str) -> None:
    if ops not in ("auto", "cuda", "ref"):
        raise ModelError(f"generator.ops must be auto, cuda or ref, got {ops!r}")


def _configure_ops(root: Path, ops: str, device: torch.device) -> tuple[str, str]:
    _check_ops(ops)
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
