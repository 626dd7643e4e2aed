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

import math

import torch
import torch.nn.functional as F

from linkstyle_core.models.protocols import Classifier, Generator
from linkstyle_core.toyworld.generator import model_device, one_hot
from linkstyle_core.toyworld.renderer import (
    FACTOR_PARTS,
    FACTORS,
    PARTS,
    SPECIES,
    factors_from_latent,
    infer_labels,
    render,
)

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


def _rgb_to_hue(rgb: torch.Tensor) -> torch.Tensor:
    """rgb [..., 3] in [0, 1] -> hue [...] in [0, 1) (HSV)."""
    r, g, b = rgb.unbind(-1)
    mx, _ = rgb.max(dim=-1)
    mn, _ = rgb.min(dim=-1)
    delta = (mx - mn).clamp_min(1e-6)
    h = torch.where(
        mx == r,
        ((g - b) / delta) % 6.0,
        torch.where(mx == g, (b - r) / delta + 2.0, (r - g) / delta + 4.0),
    )
    return h / 6.0


def _moments(mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """mask [N, H, W] float -> area, centroid (cx, cy) and central second moments, each [N].

    Empty masks give NaN centroids and moments (the statistic is undefined there).
    """
    n, h, w = mask.shape
    ys = torch.arange(h, dtype=mask.dtype, device=mask.device).view(1, h, 1) + 0.5
    xs = torch.arange(w, dtype=mask.dtype, device=mask.device).view(1, 1, w) + 0.5
    area = mask.sum(dim=(1, 2))
    safe = torch.where(area > 0, area, torch.full_like(area, float("nan")))
    cx = (mask * xs).sum(dim=(1, 2)) / safe
    cy = (mask * ys).sum(dim=(1, 2)) / safe
    dx, dy = xs - cx.view(n, 1, 1), ys - cy.view(n, 1, 1)
    cxx = (mask * dx * dx).sum(dim=(1, 2)) / safe
    cyy = (mask * dy * dy).sum(dim=(1, 2)) / safe
    cxy = (mask * dx * dy).sum(dim=(1, 2)) / safe
    return {"area": area, "cx": cx, "cy": cy, "cxx": cxx, "cyy": cyy, "cxy": cxy}


def _eig(m: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Largest and smallest eigenvalue of the 2x2 moment matrix, and the major axis angle."""
    mean = 0.5 * (m["cxx"] + m["cyy"])
    rad = torch.sqrt((0.5 * (m["cxx"] - m["cyy"])).square() + m["cxy"].square())
    angle = 0.5 * torch.atan2(2.0 * m["cxy"], m["cxx"] - m["cyy"])
    return mean + rad, (mean - rad).clamp_min(0.0), angle


def _circular_mean_hue(hue: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hue, mask [N, H, W] -> masked circular mean hue [N] in (-0.5, 0.5] (NaN if empty)."""
    ang = 2.0 * math.pi * hue
    s = (mask * torch.sin(ang)).sum(dim=(1, 2))
    c = (mask * torch.cos(ang)).sum(dim=(1, 2))
    out = torch.atan2(s, c) / (2.0 * math.pi)
    return torch.where(mask.sum(dim=(1, 2)) > 0, out, torch.full_like(out, float("nan")))


def _hue_near(hue: torch.Tensor, centre: float) -> torch.Tensor:
    """Hues [N] (mod 1) unwrapped into the window ``centre +- 0.5`` (centre: the factor's mean)."""
    return torch.remainder(hue - centre + 0.5, 1.0) - 0.5 + centre


def factor_statistics(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One image statistic per factor, computed from pixels and a part label map.

    images: [N, 3, H, W] in [-1, 1]; labels: [N, H, W] int64 (true or inferred).
    Returns stats: [N, F] float32, column i tracking ``FACTORS[i]`` (NaN where undefined, e.g.
    a part that is not visible). The statistics (px units, y pointing down):

    - body_length, body_height: sqrt of the major and minor second moments of the body;
    - head_size: sqrt(head + eye area); eye_size: sqrt(eye area);
    - ear_length: distance from the head's centroid to the farthest ear pixel (stray pixels
      removed); ear_width: ear area over the visible ear length (tip distance minus the
      head's radius);
    - leg_length: sqrt of the vertical second moment of the legs; leg_width: leg area over it;
    - tail_length: tail area; tail_angle: angle between the tail's and the body's major axes;
    - *_hue: circular mean hue of the part's pixels (head: head without eye);
    - scale: sqrt of the creature's area; brightness: mean HSV value of background pixels;
    - pose: direction from the body's centroid to the head's (nose up positive); pos_x, pos_y:
      body centroid.
    """
    from linkstyle_core.toyworld.renderer import species_means

    centre = species_means().mean(dim=0)  # [F], where each hue statistic is unwrapped
    rgb01 = ((images.float() + 1.0) * 0.5).clamp(0.0, 1.0).permute(0, 2, 3, 1)  # [N, H, W, 3]
    hue = _rgb_to_hue(rgb01)
    value = rgb01.max(dim=-1).values

    def mask(*parts: str) -> torch.Tensor:
        m = torch.zeros_like(labels, dtype=torch.float32)
        for p in parts:
            m = m + (labels == PARTS.index(p)).float()
        return m

    def hue_of(part: str, factor: str) -> torch.Tensor:
        return _hue_near(_circular_mean_hue(hue, mask(part)), float(centre[FACTORS.index(factor)]))

    body, ear = mask("body"), mask("ear")
    # Second moments are sensitive to stray pixels (an edge blend read as ear colour far from
    # the head); keep ear pixels with at least two ear neighbours in their 3x3 neighbourhood.
    ear = ear * (F.avg_pool2d(ear.unsqueeze(1), 3, stride=1, padding=1).squeeze(1) * 9.0 >= 3.0)
    mb = _moments(body)
    major, minor, angle = _eig(mb)

    xs = torch.arange(labels.shape[-1], device=labels.device).view(1, 1, -1) + 0.5

    # Ear tips: the farthest ear pixel from the head's centroid.
    mh = _moments(mask("head", "eye"))
    ys = torch.arange(labels.shape[-2], device=labels.device).view(1, -1, 1) + 0.5
    ear_dist = torch.sqrt(
        (xs - mh["cx"].view(-1, 1, 1)).square() + (ys - mh["cy"].view(-1, 1, 1)).square()
    )
    ear_tip = (ear_dist * ear).amax(dim=(1, 2))
    head_radius = torch.sqrt(mh["area"] / math.pi)
    ear_tip = torch.where(ear.sum(dim=(1, 2)) > 0, ear_tip, torch.full_like(ear_tip, float("nan")))

    mt = _moments(mask("tail"))
    _, _, tail_axis = _eig(mt)
    # The tail's axis relative to the body's axis (removes the pose), as an axis angle
    # (mod pi) in a window centred on the factor's typical value 0.5 rad.
    tail_angle = torch.remainder(tail_axis - angle - 0.5 + math.pi / 2, math.pi) + 0.5 - math.pi / 2
    ml = _moments(mask("leg"))
    leg_extent = ml["cyy"].sqrt()
    bg = mask("background")
    brightness = (bg * value).sum(dim=(1, 2)) / bg.sum(dim=(1, 2)).clamp_min(1.0)
    h, w = labels.shape[-2:]
    stats = {
        "body_length": major.sqrt(),
        "body_height": minor.sqrt(),
        "body_hue": hue_of("body", "body_hue"),
        "head_size": mask("head", "eye").sum(dim=(1, 2)).sqrt(),
        "head_hue": hue_of("head", "head_hue"),
        "ear_length": ear_tip,
        "ear_width": ear.sum(dim=(1, 2)) / (ear_tip - head_radius).clamp_min(1.0),
        "ear_hue": hue_of("ear", "ear_hue"),
        "leg_length": leg_extent,
        "leg_width": ml["area"] / leg_extent,
        "tail_length": mt["area"],
        "tail_angle": tail_angle,
        "tail_hue": hue_of("tail", "tail_hue"),
        "eye_size": mask("eye").sum(dim=(1, 2)).sqrt(),
        "eye_hue": hue_of("eye", "eye_hue"),
        "scale": (1.0 - bg).sum(dim=(1, 2)).sqrt(),
        "brightness": brightness,
        # direction from the body's centroid to the head's (fixed in the creature's frame);
        # image y points down, so a nose-up tilt has a negative image angle
        "pose": -torch.atan2(mh["cy"] - mb["cy"], mh["cx"] - mb["cx"]),
        "pos_x": mb["cx"] - w / 2,
        "pos_y": mb["cy"] - h / 2,
    }
    return torch.stack([stats[name] for name in FACTORS], dim=1)


def _rank(x: torch.Tensor) -> torch.Tensor:
    return torch.argsort(torch.argsort(x)).double()


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two [N] tensors over the rows where both are finite."""
    ok = torch.isfinite(x) & torch.isfinite(y)
    if int(ok.sum()) < 3:
        return float("nan")
    rx, ry = _rank(x[ok]), _rank(y[ok])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / torch.sqrt((rx * rx).sum() * (ry * ry).sum()).clamp_min(1e-12))


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
