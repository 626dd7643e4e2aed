"""The bundled toy classifier: a small residual CNN that tells the toy world's species apart.

It satisfies the ``Classifier`` protocol (``linkstyle_core.models.protocols``) and is built like
a miniature ResNet (He et al. 2016): a stem, four stages of basic residual blocks (32, 64, 128,
192 channels), a final ReLU and global average pooling. That pooled vector is ``r``, 192
non-negative units, like ResNet-50's 2048-unit penultimate layer in the paper, and ``head`` is
a single linear layer from ``r`` to the species logits. The units come in twelve blocks of 16,
each assigned to a creature part (``unit_parts``: two blocks for each part but the small eye,
which has one, and a third for the body), which training makes part-selective.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from linkstyle_core.toyworld.factors import SPECIES
from linkstyle_core.toyworld.renderer import RESOLUTION


@dataclass(frozen=True)
class ToyClassifierConfig:
    """Architecture hyperparameters of ``ToyClassifier`` (stored with the weights).

    channels: output channels of the four stages; the last one is ``feature_dim``.
    blocks: residual blocks per stage.
    unit_parts: the part each block of penultimate units is trained to follow (empty: no
    groups); a part may own several blocks. The ``feature_dim`` units are split into
    ``len(unit_parts)`` contiguous, equal blocks; ``train_classifier`` makes block ``g``
    invariant to every part but ``unit_parts[g]`` (``ToyClassifier.unit_groups``). The
    architecture itself is the same.
    """

    num_classes: int = len(SPECIES)
    channels: tuple[int, ...] = (32, 64, 128, 192)
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    resolution: int = RESOLUTION
    unit_parts: tuple[str, ...] = ("body", "head", "ear", "leg", "tail", "eye",
                                   "body", "head", "ear", "leg", "tail", "body")

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.blocks) or not self.channels:
            raise ValueError(f"channels and blocks need one entry per stage: {self}")
        if self.num_classes < 2 or self.resolution < 8:
            raise ValueError(f"num_classes must be >= 2 and resolution >= 8: {self}")
        if self.unit_parts and self.channels[-1] % len(self.unit_parts):
            raise ValueError(
                f"channels[-1] = {self.channels[-1]} must split evenly into "
                f"{len(self.unit_parts)} unit_parts groups: {self}"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"], d["blocks"] = list(self.channels), list(self.blocks)
        d["unit_parts"] = list(self.unit_parts)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ToyClassifierConfig:
        d = dict(d)
        d["channels"], d["blocks"] = tuple(d["channels"]), tuple(d["blocks"])
        d["unit_parts"] = tuple(d.get("unit_parts", ()))
        return cls(**d)


class _BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with batch norm, identity or 1x1 projection shortcut.

    The block's output is *not* passed through a ReLU at the end of the last stage; the
    classifier applies one ReLU before pooling so that ``r`` is non-negative.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, final_relu: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.final_relu = final_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out) if self.final_relu else out


class ToyClassifier(nn.Module):
    """Species classifier for 64x64 toy images (``Classifier`` protocol).

    Attributes: ``num_classes`` (number of species), ``feature_dim`` (192), ``class_names``
    (the species, ``SPECIES``, when there are that many classes).
    ``features(preprocess(images))`` gives ``r: [N, feature_dim]``, non-negative (ReLU then average
    pooling), and ``head(r)`` the logits ``[N, num_classes]``.
    """

    def __init__(self, config: ToyClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ToyClassifierConfig()
        cfg = self.config
        self.num_classes = cfg.num_classes
        self.feature_dim = cfg.channels[-1]
        self.class_names = list(SPECIES) if cfg.num_classes == len(SPECIES) else None
        # Stride-2 stem: 64 -> 32 px. The creatures' thinnest parts (legs, tail) are ~3 px
        # wide, so 32 px keeps them, and it quarters the cost of every later layer.
        self.stem = nn.Sequential(
            nn.Conv2d(3, cfg.channels[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(cfg.channels[0]),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        c_in = cfg.channels[0]
        n_stages = len(cfg.channels)
        for stage, (c_out, n_blocks) in enumerate(zip(cfg.channels, cfg.blocks, strict=True)):
            for b in range(n_blocks):
                stride = 2 if (stage > 0 and b == 0) else 1
                last = stage == n_stages - 1 and b == n_blocks - 1
                blocks.append(_BasicBlock(c_in, c_out, stride, final_relu=not last))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(self.feature_dim, cfg.num_classes)

    def unit_groups(self) -> torch.Tensor:
        """[feature_dim] int64: the index into ``config.unit_parts`` of every unit's block
        (all zeros when the config has no groups)."""
        groups = max(1, len(self.config.unit_parts))
        return torch.arange(self.feature_dim) // (self.feature_dim // groups)

    def unit_part_index(self) -> tuple[tuple[str, ...], torch.Tensor]:
        """(the distinct parts of ``config.unit_parts`` in order of first appearance,
        [feature_dim] int64 the index into them of every unit's part)."""
        distinct = tuple(dict.fromkeys(self.config.unit_parts))
        of_block = torch.tensor([distinct.index(p) for p in self.config.unit_parts] or [0])
        return distinct, of_block[self.unit_groups()]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """images: [N, 3, H, W] in [-1, 1] -> [N, 3, 64, 64] in [-1, 1] (resized if H, W differ)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
        res = self.config.resolution
        if images.shape[-2:] != (res, res):
            images = F.interpolate(
                images, size=(res, res), mode="bilinear", antialias=True, align_corners=False
            )
        return images.float()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3, 64, 64] preprocessed -> r: [N, feature_dim] float32, non-negative."""
        h = self.blocks(self.stem(x))
        # ReLU then global average pooling: the penultimate layer, as in ResNet.
        return F.relu(h).mean(dim=(2, 3))

    def head(self, r: torch.Tensor) -> torch.Tensor:
        """r: [N, feature_dim] -> logits [N, num_classes]."""
        return self.fc(r)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: [N, 3, H, W] in [-1, 1] -> logits [N, num_classes]."""
        return self.head(self.features(self.preprocess(images)))
