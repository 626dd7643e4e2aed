"""The StyleGAN-XL adapter (DESIGN.md, "Adapters"): a user's network pickle, loaded through the
user's own checkout of the official StyleGAN-XL code.

The work is split in three modules: ``stylegan_checkout`` finds and imports the user's checkout
and unpickles ``G_ema`` with it, ``stylegan_ops`` puts the checkout's custom CUDA ops into the
mode ``generator.ops`` asks for, and this module wraps the network as a ``Generator``.

Feature maps. StyleGAN3-type layers (StyleGAN-XL's) compute on a canvas larger than the image:
a layer of sampling rate ``s`` outputs ``s + 2 * margin`` pixels per side, of which the centre
``s`` cover the image; only the last two layers are image-sized. ``features`` crops every map to
its image window, from the layer's own ``out_sampling_rate`` (``sampling_rate`` for the input
layer), so that the segmenter reads each map where the image is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from linkstyle_core.models.stylegan_checkout import (
    OpenURI,
    check_checkout,
    import_checkout,
    load_g_ema,
)
from linkstyle_core.models.stylegan_ops import check_ops, configure_checkout_ops

FEATURE_LAYOUT = "image-window"
"""How ``features`` lays out its maps (each cropped to the image); part of the cache keys."""

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
    check_ops(ops)
    device = torch.device(device)
    root = check_checkout(source)
    legacy = import_checkout(root)
    ops_in_use, note = configure_checkout_ops(root, ops, device)
    G = load_g_ema(legacy, str(network), root, open_uri)
    G = G.to(device)
    generator = StyleGANXLGenerator(G, ops_in_use=ops_in_use, ops_note=note,
                                    force_fp32=force_fp32)
    return generator
