"""Training of the bundled toy generator and toy classifier (``linkstyle toy train-*``).

Both train on fresh renderer samples every step (the renderer is fast and the world is
infinite, so there is no data set and no overfitting to one). Both are deterministic on a CPU
for a given seed and thread count: weights are initialised after ``torch.manual_seed(seed)``
and all sampling goes through a ``torch.Generator`` seeded from ``seed``.

The weight files store the training figures (loss, training accuracy); held-out quality is
measured by ``toyworld.evaluate`` on other seeds.

On a CPU shared with other busy processes, start Python with ``OMP_WAIT_POLICY=PASSIVE``
(it must be set before torch is imported): OpenMP threads that spin while waiting made a
2-thread training step 18x slower next to one other busy process in our measurements.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from linkstyle_core.toyworld.checkpoint import save_checkpoint
from linkstyle_core.toyworld.classifier import ToyClassifier, ToyClassifierConfig
from linkstyle_core.toyworld.factors import (
    FACTOR_PARTS,
    FACTORS,
    PARTS,
    SPECIES,
    factors_from_latent,
    sample_factors,
    sample_latent,
)
from linkstyle_core.toyworld.generator import ToyGenerator, ToyGeneratorConfig, one_hot
from linkstyle_core.toyworld.renderer import render

# Seeds used for training sampling streams are derived from the user's seed with these
# offsets so that generator and classifier never share a stream with evaluation (which uses
# its own seed, 12345 by default).
_INIT_OFFSET = 0
_DATA_OFFSET = 1_000_003

# Per-pixel weight of the generator's L1 loss, by the target's part label. An unweighted L1
# is minimised by the per-pixel median, which leaves out thin parts (ears, tail, eye) for as
# long as their position is uncertain; weighting them up makes them appear early in training
# and be drawn sharply by the end.
GENERATOR_PART_WEIGHTS: dict[str, float] = {
    "background": 1.0,
    "body": 1.0,
    "head": 2.0,
    "ear": 4.0,
    "leg": 2.0,
    "tail": 3.0,
    "eye": 4.0,
}


def _cosine_lr(step: int, steps: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 2% of ``base_lr``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return base_lr * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * t)))


class _Progress:
    """Optional tqdm bar; silent when ``progress`` is False, tqdm is missing or stderr is not a
    terminal (a log file gets the ``log`` lines instead of a redrawn bar)."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        from linkstyle_core.progress import on_terminal

        self.bar = None
        if enabled and on_terminal():
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True)
            except ImportError:  # pragma: no cover - tqdm is a dependency
                self.bar = None

    def update(self, postfix: dict[str, float] | None = None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4f}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _with_threads(num_threads: int | None) -> Callable[[], None]:
    """Set torch's intra-op threads for a training run; returns a function that restores them."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    return lambda: torch.set_num_threads(previous)


def train_generator(
    out_path: str | os.PathLike[str],
    steps: int = 4000,
    batch_size: int = 32,
    seed: int = 0,
    log_every: int = 200,
    progress: bool = True,
    *,
    lr: float = 2e-3,
    warmup: int = 200,
    config: ToyGeneratorConfig | None = None,
    device: str = "cpu",
    num_threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the toy generator to reproduce the renderer and save it to ``out_path``.

    Each step draws ``z ~ N(0, I)`` [B, z_dim] and species ``c``, renders the target
    ``render(factors_from_latent(z, c)).images`` and minimises the L1 distance of
    ``synthesis_raw(mapping(z, c))`` to it, weighted per pixel by the target's part
    (``GENERATOR_PART_WEIGHTS``), with Adam, warm-up then cosine decay. Afterwards
    ``w_avg`` is set to the per-class mean of ``w`` for truncation.

    Returns the training metrics (also stored in the weight file): ``loss_l1`` (mean weighted
    L1 over the last ``log_every`` steps, in [-1, 1] pixel units), ``wall_time_s``, ``images_seen``,
    ``steps``, ``batch_size``, ``seed``, ``lr``.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    restore_threads = _with_threads(num_threads)
    try:
        torch.manual_seed(seed + _INIT_OFFSET)
        model = ToyGenerator(config).to(device).train()
        data_gen = torch.Generator().manual_seed(seed + _DATA_OFFSET)
        opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
        part_weights = torch.tensor([GENERATOR_PART_WEIGHTS[p] for p in PARTS])
        bar = _Progress(steps, "toy generator", progress)
        window: list[float] = []
        history: list[float] = []
        t0 = time.perf_counter()
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = _cosine_lr(step, steps, lr, warmup)
            species = torch.randint(len(SPECIES), (batch_size,), generator=data_gen)
            z = sample_latent(batch_size, data_gen)
            with torch.no_grad():
                target = render(factors_from_latent(z, species))
                weight = part_weights[target.labels].unsqueeze(1).to(device)  # [B, 1, 64, 64]
            z, c = z.to(device), one_hot(species, model.c_dim).to(device)
            pred = model.synthesis_raw(model.mapping(z, c))
            loss = ((pred - target.images.to(device)).abs() * weight).mean() / weight.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            window.append(float(loss.detach()))
            if len(window) > log_every:
                window.pop(0)
            if (step + 1) % log_every == 0 or step + 1 == steps:
                mean = sum(window) / len(window)
                history.append(mean)
                if log is not None:
                    log(f"generator step {step + 1}/{steps}: L1 {mean:.4f}")
            bar.update({"l1": window[-1]})
        bar.close()
        model.eval()
        model.update_w_avg(n_per_class=4096, seed=seed + _DATA_OFFSET + 1)
        check_finite(model, "lower the learning rate")
        metrics: dict[str, Any] = {
            "loss_l1": sum(window) / len(window),
            "loss_l1_history": history,
            "wall_time_s": time.perf_counter() - t0,
            "images_seen": steps * batch_size,
            "steps": steps,
            "batch_size": batch_size,
            "seed": seed,
            "lr": lr,
        }
        save_checkpoint(model, out_path, seed=seed, metrics=metrics)
        return metrics
    finally:
        restore_threads()


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light, random photometric augmentation, per image: images [N, 3, H, W] in [-1, 1].

    Gaussian blur (sigma 0 to 1.2 px, half the images), contrast/brightness jitter (+-8%),
    colour-channel gain jitter (+-4%) and pixel noise (std 0 to 0.04). It imitates how the
    generator's reproductions differ from the renderer (softer edges, small colour and
    brightness errors, faint artefacts) so that the classifier reads both equally well.
    """
    n = images.shape[0]
    device = images.device

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(device)

    # Blur: one separable 5-tap Gaussian per image, sigma drawn per image (0 -> identity).
    sigma = torch.where(u(n) < 0.5, torch.zeros(n, device=device), 0.3 + 0.9 * u(n))
    taps = torch.arange(-2, 3, device=device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (taps[None] / sigma.clamp_min(1e-3)[:, None]).square())
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [N, 5]
    padded = F.pad(images, (2, 2, 2, 2), mode="replicate")  # [N, 3, H + 4, W + 4]
    height, width = images.shape[-2:]
    rows = kernel[:, 0, None, None, None] * padded[..., :, 0:width]
    for k in range(1, 5):
        rows = rows + kernel[:, k, None, None, None] * padded[..., :, k : k + width]
    x = kernel[:, 0, None, None, None] * rows[..., 0:height, :]
    for k in range(1, 5):
        x = x + kernel[:, k, None, None, None] * rows[..., k : k + height, :]
    contrast = 1.0 + 0.16 * (u(n, 1, 1, 1) - 0.5)
    shift = 0.16 * (u(n, 1, 1, 1) - 0.5)
    gain = 1.0 + 0.08 * (u(n, 3, 1, 1) - 0.5)
    x = x * contrast * gain + shift
    noise = torch.randn(x.shape, generator=generator).to(device) * (0.04 * u(n, 1, 1, 1))
    return (x + noise).clamp(-1.0, 1.0)


def _part_twins(
    species: torch.Tensor, generator: torch.Generator, parts: tuple[str, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs of creatures that differ in one part only.

    species: [B] int64. Returns ``(factors [B, F], twin_factors [B, F], part [B] int64)``:
    ``twin_factors`` equals ``factors`` except the factors of ``parts[part[b]]``
    (``FACTOR_PARTS``), which are drawn afresh from the same species' distribution. The twin is
    built on the factors, not the latent, because ``factors_from_latent`` normalises the whole
    latent and a new latent column would move every factor a little.
    """
    n = species.shape[0]
    factors = factors_from_latent(sample_latent(n, generator), species)
    fresh = factors_from_latent(sample_latent(n, generator), species)
    part = torch.randint(len(parts), (n,), generator=generator)
    # [P, F] bool: which factor columns belong to which part
    owns = torch.tensor(
        [[FACTOR_PARTS.get(name) == p for name in FACTORS] for p in parts], dtype=torch.bool
    )
    twin = torch.where(owns[part], fresh, factors)
    return factors, twin, part


def invariance_loss(
    r: torch.Tensor, r_twin: torch.Tensor, part: torch.Tensor, groups: torch.Tensor
) -> torch.Tensor:
    """How much of each unit's change between twins comes from parts other than its own.

    r, r_twin: [B, D] penultimate units of a creature and of its twin that differs in part
    ``part`` [B] only; groups: [D] int64, the part index of every unit. For unit ``u`` the
    squared changes ``(r_u - r_twin_u)^2`` are summed over the pairs whose changed part is not
    the unit's and divided by the sum over all pairs (plus a small floor): the share of the
    unit's change that leaks from other parts, 0 for a perfectly part-selective unit and about
    5/6 for one that follows all six parts alike. This is the training-time counterpart of the
    ground truth's concentration (``ground_truth``), and unlike a change measured against the
    unit's whole spread it is not diluted by what the nuisances (pose, position, scale) do.
    Returns the mean over units.
    """
    change = (r - r_twin).square()  # [B, D]
    others = (groups.view(1, -1) != part.view(-1, 1)).float()  # [B, D]
    total = change.sum(dim=0)
    floor = 1e-3 * total.detach().mean() + 1e-8
    return ((change * others).sum(dim=0) / (total + floor)).mean()


def check_finite(model: torch.nn.Module, fix: str) -> None:
    """``FloatingPointError`` (nothing is saved) when training left non-finite weights."""
    bad = [name for name, value in model.state_dict().items()
           if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise FloatingPointError(f"training diverged: {len(bad)} weight tensors hold NaN or "
                                 f"infinite values (first: {bad[0]}); nothing was written; {fix}")


def train_classifier(
    out_path: str | os.PathLike[str],
    steps: int = 800,
    batch_size: int = 32,
    seed: int = 1,
    log_every: int = 200,
    progress: bool = True,
    *,
    lr: float = 2e-3,
    weight_decay: float = 5e-4,
    warmup: int = 100,
    invariance: float = 1.0,
    config: ToyClassifierConfig | None = None,
    device: str = "cpu",
    num_threads: int | None = None,
    ground_truth_images: int = 50,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the toy species classifier with part-selective units; save it to ``out_path``.

    Each step draws ``batch_size`` species uniformly and, for each, a creature and its twin
    that differs from it in the factors of one random part (``_part_twins``). Both are
    rendered and augmented alike (``augment``). The loss is the cross-entropy on all
    ``2 * batch_size`` images plus ``invariance`` times ``invariance_loss``: every block of
    penultimate units (``config.unit_parts``) must stay put when a part other than its own
    changes, so what the classifier knows about a part can only reach the logits through that
    part's block. AdamW, warm-up, cosine decay.

    After training the interventional ground truth (``ground_truth.measure_ground_truth``,
    ``ground_truth_images`` per species; 0 skips it) is stored in the weight file with the
    weights. Returns the training metrics (also stored): ``loss_ce``, ``loss_invariance`` and
    ``train_accuracy`` (means over the last ``log_every`` steps, augmented images),
    ``wall_time_s``, ``images_seen``, ``steps``, ``batch_size``, ``seed``, ``lr``,
    ``invariance``.
    """
    from linkstyle_core.toyworld.ground_truth import measure_ground_truth

    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    if not 0 <= invariance < float("inf"):  # also refuses NaN
        raise ValueError(f"invariance must be a finite number >= 0 (0: an ordinary "
                         f"classifier), got {invariance}")
    restore_threads = _with_threads(num_threads)
    try:
        torch.manual_seed(seed + _INIT_OFFSET)
        model = ToyClassifier(config).to(device).train()
        parts, groups = model.unit_part_index()
        groups = groups.to(device)
        data_gen = torch.Generator().manual_seed(seed + _DATA_OFFSET)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        bar = _Progress(steps, "toy classifier", progress)
        losses: list[float] = []
        inv_losses: list[float] = []
        accs: list[float] = []
        history: list[float] = []
        t0 = time.perf_counter()
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = _cosine_lr(step, steps, lr, warmup)
            species = torch.randint(len(SPECIES), (batch_size,), generator=data_gen)
            with torch.no_grad():
                if parts:
                    factors, twin, part = _part_twins(species, data_gen, parts)
                else:
                    factors = sample_factors(species, data_gen)
                    twin, part = factors, torch.zeros_like(species)
                twin_gen = torch.Generator().set_state(data_gen.get_state())
                images = augment(render(factors).images, data_gen)
                images_twin = augment(render(twin).images, twin_gen)  # same augmentation
                images = torch.cat([images, images_twin]).to(device)
            r = model.features(model.preprocess(images))
            logits = model.head(r)
            target = species.repeat(2).to(device)
            loss_ce = F.cross_entropy(logits, target)
            loss_inv = (
                invariance_loss(r[:batch_size], r[batch_size:], part.to(device), groups)
                if parts
                else torch.zeros((), device=device)
            )
            loss = loss_ce + invariance * loss_inv
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss_ce.detach()))
            inv_losses.append(float(loss_inv.detach()))
            accs.append(float((logits.argmax(dim=1) == target).float().mean()))
            if len(losses) > log_every:
                losses.pop(0)
                inv_losses.pop(0)
                accs.pop(0)
            if (step + 1) % log_every == 0 or step + 1 == steps:
                history.append(sum(accs) / len(accs))
                if log is not None:
                    log(
                        f"classifier step {step + 1}/{steps}: CE {sum(losses) / len(losses):.4f}, "
                        f"invariance {sum(inv_losses) / len(inv_losses):.4f}, "
                        f"train acc {history[-1]:.4f}"
                    )
            bar.update({"ce": losses[-1], "inv": inv_losses[-1]})
        bar.close()
        model.eval()
        check_finite(model, "lower --invariance or the learning rate")
        metrics: dict[str, Any] = {
            "loss_ce": sum(losses) / len(losses),
            "loss_invariance": sum(inv_losses) / len(inv_losses),
            "train_accuracy": sum(accs) / len(accs),
            "train_accuracy_history": history,
            "wall_time_s": time.perf_counter() - t0,
            "images_seen": 2 * steps * batch_size,
            "steps": steps,
            "batch_size": batch_size,
            "seed": seed,
            "lr": lr,
            "invariance": invariance,
        }
        ground_truth = (
            measure_ground_truth(model, n_per_class=ground_truth_images)
            if ground_truth_images > 0
            else None
        )
        save_checkpoint(model, out_path, seed=seed, metrics=metrics, ground_truth=ground_truth)
        return metrics
    finally:
        restore_threads()
