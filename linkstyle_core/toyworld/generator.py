"""The bundled toy generator: a small class-conditional style-based network (StyleGAN2 layout).

It satisfies the ``Generator`` protocol (``linkstyle_core.models.protocols``) and is trained by
regression to reproduce the toy renderer: for a latent ``z`` and species ``c`` its image should
equal ``render(factors_from_latent(z, c))`` (``toyworld.train.train_generator``).

Layout, following StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of
StyleGAN"):

- mapping: ``normalize(z)`` concatenated with ``normalize(embed(c))`` -> MLP -> ``w``; the
  truncation trick pulls ``w`` towards the per-class average ``w_avg[c]`` and broadcasts it to
  ``num_ws`` style inputs;
- synthesis: a learned 4x4 constant, then per resolution (4, 8, 16, 32, 64) one or two 3x3
  convolutions modulated by a style ``s = A(w)`` with weight demodulation, and a skip
  ``toRGB`` branch summed across resolutions.

Where it differs from StyleGAN2, so that it trains in minutes and runs fast on a CPU:

- Modulation scales the *activations* (``conv(x * s) * d``) instead of building one weight
  tensor per sample (grouped convolution). Mathematically the same (eq. 1-3 of the paper),
  but it runs as one ordinary convolution for the whole batch.
- Every convolution also receives three fixed channels, the pixel coordinates x, y and a
  constant 1 (CoordConv; cf. the Fourier-feature input of StyleGAN3). Modulated by the style,
  they let a layer place edges at style-dependent positions directly, which the renderer's
  position, size and length factors need, instead of learning positions through padding.
- No noise inputs: the target is a deterministic function of ``(z, c)``.
- On a CPU, large batches are synthesised in chunks of ``cpu_chunk`` images, which keeps the
  64 px activations in cache (3-7x faster per image than one batch of 256 in our measurements).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from linkstyle_core.toyworld.factors import LATENT_DIM, SPECIES, normalize_latent


@dataclass(frozen=True)
class ToyGeneratorConfig:
    """Architecture hyperparameters of ``ToyGenerator`` (stored with the weights).

    channels: feature channels per resolution 4, 8, 16, ..., ``resolution``; the number of
    entries fixes the output resolution (5 entries -> 64 px).
    """

    z_dim: int = LATENT_DIM
    c_dim: int = len(SPECIES)
    w_dim: int = 128
    mapping_layers: int = 4
    channels: tuple[int, ...] = (256, 128, 64, 32, 16)

    def __post_init__(self) -> None:
        if self.z_dim < 1 or self.c_dim < 1 or self.w_dim < 1 or self.mapping_layers < 1:
            raise ValueError(f"z_dim, c_dim, w_dim and mapping_layers must be >= 1: {self}")
        if len(self.channels) < 2 or any(ch < 1 for ch in self.channels):
            raise ValueError(f"channels needs >= 2 positive entries (4 px and up): {self.channels}")

    @property
    def resolution(self) -> int:
        return 4 * 2 ** (len(self.channels) - 1)

    @property
    def num_ws(self) -> int:
        # one conv at 4 px, two per higher resolution, one final toRGB
        return 1 + 2 * (len(self.channels) - 1) + 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ToyGeneratorConfig:
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        return cls(**d)


_COORD_CHANNELS = 3  # x, y, 1


def _coord_grid(res: int) -> torch.Tensor:
    """[1, 3, res, res]: pixel-centre x and y in [-1, 1], and ones."""
    t = (torch.arange(res, dtype=torch.float32) + 0.5) / res * 2.0 - 1.0
    ys, xs = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([xs, ys, torch.ones_like(xs)]).unsqueeze(0)


class _ModulatedConv(nn.Module):
    """3x3 (or 1x1) convolution modulated by a per-sample style, optionally demodulated.

    x: [N, C_in, H, W], w: [N, w_dim] -> [N, C_out, H, W]. Implements StyleGAN2's
    ``w'_ijk = s_i w_ijk / sqrt(sum_ik (s_i w_ijk)^2)`` as
    ``conv(x * s) * rsqrt((w^2 summed over k) @ s^2)``.
    """

    def __init__(self, c_in: int, c_out: int, w_dim: int, kernel: int, demodulate: bool) -> None:
        super().__init__()
        self.affine = nn.Linear(w_dim, c_in)
        # s starts around 1, plus a random direction so that styles matter from the first step
        nn.init.normal_(self.affine.weight, std=1.0 / math.sqrt(w_dim))
        nn.init.ones_(self.affine.bias)
        self.weight = nn.Parameter(
            torch.randn(c_out, c_in, kernel, kernel) / math.sqrt(c_in * kernel**2)
        )
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.demodulate = demodulate
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.affine(w)  # [N, C_in]
        out = F.conv2d(x * s[:, :, None, None], self.weight, padding=self.padding)
        if self.demodulate:
            wsq = self.weight.square().sum(dim=(2, 3))  # [C_out, C_in]
            d = torch.rsqrt(s.square() @ wsq.t() + 1e-8)  # [N, C_out]
            out = out * d[:, :, None, None]
        return out + self.bias[None, :, None, None]


class _SynthesisLayer(nn.Module):
    """Modulated 3x3 conv over [features, x, y, 1] followed by leaky ReLU."""

    coords: torch.Tensor  # [1, 3, res, res] buffer

    def __init__(self, c_in: int, c_out: int, w_dim: int, res: int) -> None:
        super().__init__()
        self.conv = _ModulatedConv(c_in + _COORD_CHANNELS, c_out, w_dim, kernel=3, demodulate=True)
        self.register_buffer("coords", _coord_grid(res), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        coords = self.coords.expand(x.shape[0], -1, -1, -1)
        x = self.conv(torch.cat([x, coords], dim=1), w)
        return F.leaky_relu(x, 0.2) * math.sqrt(2.0)


class ToyGenerator(nn.Module):
    """Class-conditional style-based generator of 64x64 toy creatures (``Generator`` protocol).

    Attributes: ``z_dim`` (32), ``c_dim`` (number of species), ``w_dim`` (128), ``num_ws``
    (10: one per modulated convolution plus the final toRGB), ``resolution`` (64).
    Buffer ``w_avg``: [c_dim, w_dim], the per-class mean of ``w`` used for truncation
    (set by ``update_w_avg`` after training).
    """

    w_avg: torch.Tensor  # [c_dim, w_dim] buffer

    def __init__(self, config: ToyGeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = config or ToyGeneratorConfig()
        cfg = self.config
        self.z_dim, self.c_dim, self.w_dim = cfg.z_dim, cfg.c_dim, cfg.w_dim
        self.num_ws, self.resolution = cfg.num_ws, cfg.resolution
        self.cpu_chunk = 32  # images per synthesis call on a CPU (see _chunks)

        self.embed = nn.Linear(cfg.c_dim, cfg.w_dim)
        layers: list[nn.Module] = []
        d_in = cfg.z_dim + cfg.w_dim
        for _ in range(cfg.mapping_layers):
            layers += [nn.Linear(d_in, cfg.w_dim), nn.LeakyReLU(0.2)]
            d_in = cfg.w_dim
        self.mapping_net = nn.Sequential(*layers)
        self.register_buffer("w_avg", torch.zeros(cfg.c_dim, cfg.w_dim))

        ch = cfg.channels
        self.const = nn.Parameter(torch.randn(1, ch[0], 4, 4))
        self.convs = nn.ModuleList([_SynthesisLayer(ch[0], ch[0], cfg.w_dim, 4)])
        self.to_rgbs = nn.ModuleList(
            [_ModulatedConv(ch[0], 3, cfg.w_dim, kernel=1, demodulate=False)]
        )
        for i in range(1, len(ch)):
            res = 4 * 2**i
            self.convs.append(_SynthesisLayer(ch[i - 1], ch[i], cfg.w_dim, res))
            self.convs.append(_SynthesisLayer(ch[i], ch[i], cfg.w_dim, res))
            self.to_rgbs.append(_ModulatedConv(ch[i], 3, cfg.w_dim, kernel=1, demodulate=False))

    # ---- mapping -----------------------------------------------------------------------

    def _check_c(self, c: torch.Tensor, n: int) -> None:
        if c.shape != (n, self.c_dim):
            raise ValueError(
                f"c must be one-hot [N, c_dim] = [{n}, {self.c_dim}], got {tuple(c.shape)}"
            )

    def mapping_w(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """z: [N, z_dim], c: [N, c_dim] one-hot -> w: [N, w_dim] (no truncation, no broadcast)."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [N, z_dim] = [N, {self.z_dim}], got {tuple(z.shape)}")
        self._check_c(c, z.shape[0])
        # Same normalisation as the renderer's factors_from_latent, so the target is a
        # function of what the network sees.
        x = torch.cat([normalize_latent(z), normalize_latent(self.embed(c.to(z.dtype)))], dim=1)
        return self.mapping_net(x)

    def mapping(self, z: torch.Tensor, c: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """z: [N, z_dim] float32, c: [N, c_dim] one-hot -> ws: [N, num_ws, w_dim].

        Truncation: ``w = w_avg[c] + truncation * (w - w_avg[c])`` (``truncation = 0`` gives the
        class average, 1 leaves ``w`` unchanged).
        """
        w = self.mapping_w(z, c)
        if truncation != 1.0:
            w_avg = c.to(w.dtype) @ self.w_avg  # [N, w_dim]; one-hot c picks its class row
            w = w_avg + truncation * (w - w_avg)
        return w.unsqueeze(1).expand(-1, self.num_ws, -1)

    @torch.no_grad()
    def update_w_avg(self, n_per_class: int = 4096, seed: int = 0) -> torch.Tensor:
        """Set ``w_avg`` [c_dim, w_dim] to the mean ``w`` of ``n_per_class`` latents per class."""
        gen = torch.Generator().manual_seed(seed)
        device = self.w_avg.device
        for k in range(self.c_dim):
            z = torch.randn(n_per_class, self.z_dim, generator=gen).to(device)
            c = (
                F.one_hot(torch.full((n_per_class,), k, dtype=torch.long), self.c_dim)
                .float()
                .to(device)
            )
            self.w_avg[k] = self.mapping_w(z, c).mean(dim=0)
        return self.w_avg

    # ---- synthesis ---------------------------------------------------------------------

    def _run(
        self, ws: torch.Tensor, keep_features: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(
                f"ws must be [N, num_ws, w_dim] = [N, {self.num_ws}, {self.w_dim}], "
                f"got {tuple(ws.shape)}"
            )
        n = ws.shape[0]
        x = self.const.expand(n, -1, -1, -1)
        x = self.convs[0](x, ws[:, 0])
        rgb = self.to_rgbs[0](x, ws[:, 1])
        feats = [x] if keep_features else []
        for i in range(1, len(self.to_rgbs)):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = self.convs[2 * i - 1](x, ws[:, 2 * i - 1])
            x = self.convs[2 * i](x, ws[:, 2 * i])
            # toRGB reads the style of the next layer, as in StyleGAN2; the last one has its own
            rgb = F.interpolate(rgb, scale_factor=2.0, mode="bilinear", align_corners=False)
            rgb = rgb + self.to_rgbs[i](x, ws[:, 2 * i + 1])
            if keep_features:
                feats.append(x)
        return rgb, feats

    def synthesis_raw(self, ws: torch.Tensor) -> torch.Tensor:
        """ws: [N, num_ws, w_dim] -> unclamped images [N, 3, 64, 64] (the training output)."""
        return torch.cat([self._run(chunk, keep_features=False)[0] for chunk in self._chunks(ws)])

    def _chunks(self, ws: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # On a CPU, a batch of 256 runs 3-7x slower per image than batches of 32 because the
        # 64 px activations no longer fit in cache; chunking keeps large batches fast.
        if ws.device.type == "cpu" and ws.shape[0] > self.cpu_chunk:
            return torch.split(ws, self.cpu_chunk)
        return (ws,)

    def synthesis(self, ws: torch.Tensor) -> torch.Tensor:
        """ws: [N, num_ws, w_dim] -> images [N, 3, 64, 64] float32 in [-1, 1]."""
        return self.synthesis_raw(ws).clamp(-1.0, 1.0)

    def features(self, ws: torch.Tensor) -> list[torch.Tensor]:
        """ws: [N, num_ws, w_dim] -> feature maps after each resolution block.

        Returns 5 tensors: [N, 256, 4, 4], [N, 128, 8, 8], [N, 64, 16, 16], [N, 32, 32, 32],
        [N, 16, 64, 64] (channels from ``config.channels``).
        """
        per_chunk = [self._run(chunk, keep_features=True)[1] for chunk in self._chunks(ws)]
        return [torch.cat(maps) for maps in zip(*per_chunk, strict=True)]

    def synthesis_with_features(self, ws: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``synthesis(ws)`` and ``features(ws)`` from one pass (tuning needs both)."""
        runs = [self._run(chunk, keep_features=True) for chunk in self._chunks(ws)]
        images = torch.cat([img for img, _ in runs]).clamp(-1.0, 1.0)
        return images, [torch.cat(maps) for maps in zip(*(f for _, f in runs), strict=True)]

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """z: [N, z_dim], c: [N, c_dim] -> images [N, 3, 64, 64] in [-1, 1]."""
        return self.synthesis(self.mapping(z, c, truncation))


def model_device(model: object) -> torch.device:
    """The device of ``model``'s first parameter or buffer; CPU for models without tensors."""
    if isinstance(model, nn.Module):
        for t in (*model.parameters(), *model.buffers()):
            return t.device
    return torch.device("cpu")


def one_hot(species: torch.Tensor, c_dim: int = len(SPECIES)) -> torch.Tensor:
    """species: [N] int64 -> c: [N, c_dim] float32 one-hot."""
    return F.one_hot(species.long(), c_dim).float()
