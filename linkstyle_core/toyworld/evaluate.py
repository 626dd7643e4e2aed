"""Quality figures of the bundled toy models, measured on fresh seeds (``linkstyle toy evaluate``).

Four questions, each answered by numbers that ``check`` compares with ``THRESHOLDS``:

1. Does the classifier know the species? Accuracy on renderer images.
2. Does the generator draw the species it is asked for? The classifier's accuracy on
   class-conditional generator images at truncation 0.7 (as the pipeline samples them).
3. Does the generator reproduce the renderer? For the same ``(z, c)`` at truncation 1: mean
   absolute pixel error, and agreement of part label maps. The generator has no label output,
   so its labels are inferred by nearest part colour per pixel (``renderer.infer_labels``,
   which knows each image's palette from its factors); the same inference on the renderer's
   own images gives the ceiling (it only misses anti-aliased edge pixels).
4. Does every factor survive in the generator's images (no collapse)? Per factor, an image
   statistic that tracks it (``factor_statistics``) is computed on renderer and generator
   images of the same latents; we report its Spearman correlation with the true factor on
   generator images and the ratio of its spread (std) on generator vs renderer images.
5. Is the world a ground truth? Every part factor must change its own part's pixels
   (``footprint.factor_footprints``: own-part share per factor), and the classifier's units must
   be part-selective by intervention (``ground_truth``: share of units with concentration >=
   0.6, units per part).
"""

from __future__ import annotations

import torch

from linkstyle_core.models.protocols import Classifier, Generator
from linkstyle_core.toyworld.factors import (
    FACTOR_PARTS,
    FACTORS,
    PARTS,
    SPECIES,
    factors_from_latent,
)
from linkstyle_core.toyworld.generator import model_device, one_hot
from linkstyle_core.toyworld.image_statistics import factor_statistics, spearman
from linkstyle_core.toyworld.renderer import infer_labels, render

# Pass/fail thresholds of ``check``. The accuracy bounds are the project's requirements; the
# others sit at about half the distance between the bundled models' measured figures and
# failure, so that a retrained model that is clearly worse fails while sampling noise in a
# 400-image test does not (docs/toyworld.md, "Quality", gives the measured figures).
THRESHOLDS: dict[str, float] = {
    "classifier_accuracy_renderer": 0.95,
    "classifier_accuracy_generator": 0.90,
    # mean |G - R| at truncation 1 in [-1, 1] units; bundled: 0.0075, a blurry generator that
    # only gets the layout right scores about 0.03
    "reproduction_l1_max": 0.015,
    # share of pixels whose colour-inferred label matches the renderer's; bundled: 0.990 (all),
    # 0.960 (creature pixels); the colour inference itself reaches 0.999 / 0.995
    "label_agreement": 0.95,
    "label_agreement_foreground": 0.90,
    # non-collapse, per factor: the statistic must rank generator images like the true factor
    # (Spearman) and vary about as much as on renderer images (std ratio)
    "factor_spearman": 0.5,
    # ear_width alone: its statistic reaches only 0.73-0.77 even on renderer images (the ears
    # are about 3 px wide where they leave the head and +-1 std moves each side by 0.35 px);
    # the bundled generator scores 0.41-0.42 on it. Set after that measurement (docs/toyworld.md,
    # "Why these thresholds"): moving ear_width's latent by +-1.5 changes the generator's pixels
    # in the renderer's direction (median cosine 0.69, gain 0.70), so the factor is not lost.
    "factor_spearman_ear_width": 0.35,
    "factor_std_ratio_min": 0.5,
    "factor_std_ratio_max": 2.0,
    # the world as ground truth (issue 11): each part factor's pixel change lies on its own
    # part, at least 40% of the classifier's units are part-selective (concentration >= 0.6)
    # and every part is the ground-truth part of at least 8 units
    "own_part_share": 0.8,
    "part_selective_share": 0.4,
    "units_per_part": 8.0,
}


@torch.no_grad()
def _predict(classifier: Classifier, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """images [N, 3, H, W] in [-1, 1] -> predicted class [N] int64."""
    device = model_device(classifier)
    preds = []
    for chunk in torch.split(images, batch):
        x = classifier.preprocess(chunk.to(device))
        preds.append(classifier.head(classifier.features(x)).argmax(dim=1).cpu())
    return torch.cat(preds)


@torch.no_grad()
def _generate(
    generator: Generator, z: torch.Tensor, c: torch.Tensor, truncation: float, batch: int = 256
) -> torch.Tensor:
    """z [N, z_dim], c [N, c_dim] on the generator's device -> images [N, 3, H, W] on the CPU."""
    out = []
    for zc, cc in zip(torch.split(z, batch), torch.split(c, batch), strict=True):
        images = generator.synthesis(generator.mapping(zc, cc, truncation=truncation))
        out.append(images.float().clamp(-1.0, 1.0).cpu())
    return torch.cat(out)


def _nanstd(x: torch.Tensor) -> float:
    x = x[torch.isfinite(x)]
    return float(x.std()) if x.numel() > 1 else float("nan")


@torch.no_grad()
def evaluate(
    generator: Generator,
    classifier: Classifier,
    n_per_class: int = 200,
    seed: int = 12345,
    truncation: float = 0.7,
    ground_truth: dict | None = None,
) -> dict[str, float]:
    """All quality figures of a toy generator/classifier pair, on fresh seeds. Flat dict of floats.

    Keys: ``classifier_accuracy_renderer``, ``classifier_accuracy_generator`` (truncation
    ``truncation``), ``classifier_accuracy_generator_t1``, ``reproduction_l1`` (mean |G - R| in
    [-1, 1] units at truncation 1), ``label_agreement`` (all pixels) and
    ``label_agreement_foreground`` (pixels the renderer labels as a creature part), the same two
    for the renderer itself (``renderer_label_agreement*``, the ceiling of the colour
    inference), ``part_iou_<part>``, and per factor ``factor_spearman_<f>`` (statistic vs true
    factor on generator images), ``factor_spearman_renderer_<f>`` and ``factor_std_ratio_<f>``
    (std on generator / std on renderer images). ``n_images`` per measurement is
    ``n_per_class * len(SPECIES)``.

    The world as ground truth: per part factor ``own_part_share_<f>``, ``changed_px_<f>`` and
    ``colour_change_<f>`` (``factor_footprints``, ``n_per_class // 4`` images per species) and
    their minimum ``own_part_share_min``; from the classifier's interventional ground truth
    (``ground_truth``, the dict stored in its weight file, or measured here with
    ``n_per_class // 4`` images per species if None) ``part_selective_share``,
    ``concentration_median``, ``units_dead`` and ``units_per_part_<part>``, and their minimum
    ``units_per_part_min``.
    """
    from linkstyle_core.toyworld.footprint import factor_footprints
    from linkstyle_core.toyworld.ground_truth import (
        GROUND_TRUTH_PARTS,
        measure_ground_truth,
        summarize_ground_truth,
    )

    device = model_device(generator)
    gen = torch.Generator().manual_seed(seed)
    n_classes = len(SPECIES)
    species = torch.arange(n_classes).repeat_interleave(n_per_class)
    c = one_hot(species, n_classes)
    metrics: dict[str, float] = {"n_images": float(species.numel())}

    # 1. classifier on renderer images (fresh latents)
    z_r = torch.randn(species.numel(), generator.z_dim, generator=gen)
    real = render(factors_from_latent(z_r, species))
    metrics["classifier_accuracy_renderer"] = float(
        (_predict(classifier, real.images) == species).float().mean()
    )

    # 2. classifier on class-conditional generator images at the analysis truncation
    z_g = torch.randn(species.numel(), generator.z_dim, generator=gen)
    fake_t = _generate(generator, z_g.to(device), c.to(device), truncation)
    metrics["classifier_accuracy_generator"] = float(
        (_predict(classifier, fake_t) == species).float().mean()
    )

    # 3. reproduction at truncation 1: same (z, c) through renderer and generator
    fake = _generate(generator, z_r.to(device), c.to(device), 1.0)
    metrics["classifier_accuracy_generator_t1"] = float(
        (_predict(classifier, fake) == species).float().mean()
    )
    metrics["reproduction_l1"] = float((fake - real.images).abs().mean())
    fg = real.labels != 0
    for prefix, images in (("", fake), ("renderer_", real.images)):
        inferred = infer_labels(images, real.factors)
        agree = inferred == real.labels
        metrics[f"{prefix}label_agreement"] = float(agree.float().mean())
        metrics[f"{prefix}label_agreement_foreground"] = float(agree[fg].float().mean())
        if prefix == "":
            fake_labels = inferred
    for k, part in enumerate(PARTS):
        inter = ((fake_labels == k) & (real.labels == k)).sum()
        union = ((fake_labels == k) | (real.labels == k)).sum()
        metrics[f"part_iou_{part}"] = float(inter / union.clamp_min(1))

    # 4. non-collapse: every factor's statistic varies on generator images as on renderer images
    stats_real = factor_statistics(real.images, real.labels)
    stats_fake = factor_statistics(fake, fake_labels)
    for i, name in enumerate(FACTORS):
        truth = real.factors[:, i]
        metrics[f"factor_spearman_{name}"] = spearman(stats_fake[:, i], truth)
        metrics[f"factor_spearman_renderer_{name}"] = spearman(stats_real[:, i], truth)
        metrics[f"factor_std_ratio_{name}"] = _nanstd(stats_fake[:, i]) / _nanstd(stats_real[:, i])

    # 5. the world as ground truth
    footprints = factor_footprints(n_per_class=max(1, n_per_class // 4), seed=seed + 1)
    for name in FACTOR_PARTS:
        row = footprints[name]
        metrics[f"own_part_share_{name}"] = row["own_part_share"]
        metrics[f"own_part_share_strict_{name}"] = row["own_part_share_strict"]
        metrics[f"changed_px_{name}"] = row["changed_px"]
        metrics[f"colour_change_{name}"] = row["colour_change"]
    metrics["own_part_share_min"] = min(footprints[f]["own_part_share"] for f in FACTOR_PARTS)
    if ground_truth is None:
        ground_truth = measure_ground_truth(
            classifier, n_per_class=max(1, n_per_class // 4), seed=seed + 2
        )
    metrics.update(summarize_ground_truth(ground_truth))
    metrics["units_per_part_min"] = min(
        metrics[f"units_per_part_{part}"] for part in GROUND_TRUTH_PARTS
    )
    return metrics


def check(metrics: dict[str, float], thresholds: dict[str, float] | None = None) -> list[str]:
    """The figures of ``evaluate`` that miss ``THRESHOLDS``, as readable lines (empty: all pass)."""
    t = THRESHOLDS if thresholds is None else thresholds
    failures = []

    def at_least(key: str, bound: float) -> None:
        value = metrics[key]
        if not value >= bound:  # also catches NaN
            failures.append(f"{key} = {value:.4f} < {bound}")

    at_least("classifier_accuracy_renderer", t["classifier_accuracy_renderer"])
    at_least("classifier_accuracy_generator", t["classifier_accuracy_generator"])
    at_least("label_agreement", t["label_agreement"])
    at_least("label_agreement_foreground", t["label_agreement_foreground"])
    if not metrics["reproduction_l1"] <= t["reproduction_l1_max"]:
        failures.append(
            f"reproduction_l1 = {metrics['reproduction_l1']:.4f} > {t['reproduction_l1_max']}"
        )
    for name in FACTOR_PARTS:
        at_least(f"own_part_share_{name}", t["own_part_share"])
    at_least("part_selective_share", t["part_selective_share"])
    at_least("units_per_part_min", t["units_per_part"])
    for name in FACTORS:
        at_least(f"factor_spearman_{name}", t.get(f"factor_spearman_{name}", t["factor_spearman"]))
        ratio = metrics[f"factor_std_ratio_{name}"]
        if not t["factor_std_ratio_min"] <= ratio <= t["factor_std_ratio_max"]:
            failures.append(
                f"factor_std_ratio_{name} = {ratio:.3f} outside "
                f"[{t['factor_std_ratio_min']}, {t['factor_std_ratio_max']}]"
            )
    return failures


def format_report(metrics: dict[str, float]) -> str:
    """A plain-text report of ``evaluate``'s figures with pass/fail marks against ``THRESHOLDS``."""
    t = THRESHOLDS
    lines = [f"Toy world quality ({int(metrics.get('n_images', 0))} images per measurement)", ""]

    def row(label: str, key: str, bound: str = "") -> None:
        lines.append(f"  {label:<44} {metrics[key]:8.4f}   {bound}")

    row(
        "classifier accuracy, renderer images",
        "classifier_accuracy_renderer",
        f">= {t['classifier_accuracy_renderer']}",
    )
    row(
        "classifier accuracy, generator images",
        "classifier_accuracy_generator",
        f">= {t['classifier_accuracy_generator']}",
    )
    row("classifier accuracy, generator, truncation 1", "classifier_accuracy_generator_t1")
    row(
        "reproduction mean |G - R| ([-1, 1] units)",
        "reproduction_l1",
        f"<= {t['reproduction_l1_max']}",
    )
    row("label agreement, all pixels", "label_agreement", f">= {t['label_agreement']}")
    row(
        "label agreement, creature pixels",
        "label_agreement_foreground",
        f">= {t['label_agreement_foreground']}",
    )
    row("  (renderer's own, all pixels)", "renderer_label_agreement")
    row("  (renderer's own, creature pixels)", "renderer_label_agreement_foreground")
    lines.append("  part IoU, generator vs renderer labels:")
    lines.append("    " + "  ".join(f"{p} {metrics[f'part_iou_{p}']:.3f}" for p in PARTS))
    lines.append("")
    lines.append(
        f"  {'factor':<12} {'spearman G':>10} {'spearman R':>10} {'std G/R':>8}"
        f"   (need spearman G >= {t['factor_spearman']}, "
        f"{t['factor_std_ratio_min']} <= std G/R <= {t['factor_std_ratio_max']})"
    )
    for name in FACTORS:
        lines.append(
            f"  {name:<12} {metrics[f'factor_spearman_{name}']:10.3f} "
            f"{metrics[f'factor_spearman_renderer_{name}']:10.3f} "
            f"{metrics[f'factor_std_ratio_{name}']:8.3f}"
        )
    lines.append("")
    lines.append(
        f"  {'factor':<12} {'own part':>8} {'strict':>7} {'changed px':>10} {'colour':>7}"
        f"   (need own part >= {t['own_part_share']})"
    )
    for name in FACTOR_PARTS:
        lines.append(
            f"  {name:<12} {metrics[f'own_part_share_{name}']:8.3f} "
            f"{metrics[f'own_part_share_strict_{name}']:7.3f} "
            f"{metrics[f'changed_px_{name}']:10.1f} {metrics[f'colour_change_{name}']:7.3f}"
        )
    lines.append("")
    row(
        "classifier units with concentration >= 0.6",
        "part_selective_share",
        f">= {t['part_selective_share']}",
    )
    row("  median concentration", "concentration_median")
    row("  dead units", "units_dead")
    lines.append(
        "  units per ground-truth part: "
        + "  ".join(
            f"{k.removeprefix('units_per_part_')} {int(v)}"
            for k, v in metrics.items()
            if k.startswith("units_per_part_") and k != "units_per_part_min"
        )
        + f"   (need each >= {int(t['units_per_part'])})"
    )
    failures = check(metrics)
    lines.append("")
    lines.append(
        "PASS: all figures meet their thresholds"
        if not failures
        else "FAIL:\n  " + "\n  ".join(failures)
    )
    return "\n".join(lines)
