"""Part probes as one-SD moves of the generator's prior z, against the toy world's ground truth.

    python benchmarks/prior_probes.py --root DIR [--config FILE] [--subspace 4] [--probes 384]
                                      [--sd 2] [--from paired|link] [--floor F] [--own-part N]
                                      [--factor-axes] [--per-class N] [--json]
                                      [--per-sample [--split [--drop-global N|auto] [--whiten]]]

``benchmarks/part_probes.py`` finds its probes in W and renders them over the null's median
latent step, about 200 of their own SDs on the 45 axes of the latents' spread; the ground truth
moves one factor of the renderer by one SD either way. This measures probes that move the
generator's own prior instead, each by a known number of its SDs. It reads a finished toy
analysis under ``--root`` (the paired data, link, segmenter and null of ``linkstyle run`` with
the same config) and:

1. Takes the null's samples (or ``--per-class`` per class of the same held-out data): their
   paired latents (``--from paired``, default) or the link's prediction of them (``--from
   link``, the latents the null itself renders from), and
   inverts each sample's paired latent to a z of the mapping at ``data.truncation`` (least
   squares, Adam).
2. Per part, the ``--subspace`` directions of z whose image change, through the synthesis at
   the sample and the mapping's Jacobian at its z, is largest per pixel on the part against
   the other pixels, pooled over the samples (the generalized eigenproblem of
   ``part_probes.part_subspaces``, in z instead of W; ``--floor`` raises the floor on its
   outside term, ``--own-part N`` keeps, of the N most local, the directions whose total pixel
   energy is largest on the part). ``--factor-axes`` takes each part's own
   factors instead (the toy renderer's factor i is z's coordinate i): a diagnosis that uses
   the ground truth, not a method.
3. ``--probes`` probes, the parts in turn, each a unit random combination of its part's
   directions, rendered per sample from -``--sd``/2 to +``--sd``/2 SDs of z through the
   mapping itself (its change added to the sample's latent).
   ``--per-sample`` (after its latent is scaled to the prior's norm, sqrt(z_dim), so that a
   unit move is one SD): each sample's own directions instead, from its own Jacobian, with
   the border pixels of a part enclosed by another (an eye in a head) counted as the enclosed
   part's (``part_probes.enclosed_borders``); of each part's ``--own-part`` most local, up to
   ``--subspace`` whose total pixel energy is largest on the part (the background
   competing). Directions found at one sample need not mean anything at another, so each is
   rendered at its own sample only, and the one profile is each part's sum over its
   directions of the mean absolute response over the samples (the ground truth's form: a
   sum over the part's factors of the mean absolute change).
   ``--split`` (with ``--per-sample``) adds a profile that needs no direction per part: at
   each sample, the image changes of one SD of z along its principal directions
   (``part_probes.image_change_basis``, above ``--rtol`` of the largest, less the
   ``--drop-global`` largest, or with ``auto`` as many as ``part_probes.global_move_count``
   finds; ``--whiten``: each at unit norm), and each unit's first-order response to each
   part's pixels of each (``part_probes.part_split_responses``); the profile is the root sum
   of squares over them, averaged over the samples. A change the generator spreads over the
   whole image still counts for the part whose pixels the unit reads. It is printed alone and
   averaged (shares) with the per-sample profile.
4. Two profiles per unit from each probe's per-sample response (training SDs): the direct
   profile (the mean response over samples, squared, averaged over the part's probes, times
   the part's number of directions: the sum over its axes, as the ground truth sums) and an
   amplitude profile (the mean absolute response over samples, squared, averaged, and its
   square root: nearer the ground truth's mean absolute change). Printed: the correlation of
   the top share with the ground truth's concentration, each part's energy bias against the
   factors' (``part_probes.part_energy_bias``), and the verdict "top share >= tau" per part
   (``validation.part_table``) at several lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LINES = {"direct": (0.6, 0.7, 0.8), "amplitude": (0.45, 0.5, 0.55),
         "per-sample": (0.45, 0.5, 0.55), "pixel-split": (0.45, 0.5, 0.55),
         "per-sample + pixel-split": (0.45, 0.5, 0.55)}


def invert(generator: Any, w: Any, c: Any, truncation: float, steps: int = 2000,
           seed: int = 0) -> Any:
    """w [N, w_dim], c [N, c_dim] -> (z [N, z_dim] whose mapping is nearest w, its relative
    residual [N]: distance to w over w's distance from its class average)."""
    import torch

    # from a random start: a mapping that normalizes z (as StyleGAN's does) is singular at 0
    start = torch.randn(len(w), generator.z_dim, generator=torch.Generator().manual_seed(seed))
    z = start.requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        ((generator.mapping(z, c, truncation)[:, 0] - w) ** 2).sum(1).mean().backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        avg = generator.mapping(torch.zeros_like(z), c, 0.0)[:, 0]
        residual = (generator.mapping(z, c, truncation)[:, 0] - w).norm(dim=1)
        return z.detach(), (residual / (w - avg).norm(dim=1)).numpy()


def owned(vectors: np.ndarray, energy: np.ndarray, j: int) -> list[np.ndarray]:
    """The columns of ``vectors`` [m, n] whose total pixel energy (``energy`` [parts, m, m])
    is largest on part ``j``, in their order."""
    return [v for v in vectors.T if int(np.argmax(np.einsum("i,qij,j->q", v, energy, v))) == j]


def part_directions(args: argparse.Namespace, gen: Any, mapped: Any, labels: Any,
                    fg: list[int], parts: list[str]) -> list[np.ndarray]:
    """Per part [z_dim, k] orthonormal directions of z, shared by the samples (step 2)."""
    import torch

    from linkstyle_core.part_probes import locality_grams, most_local
    from linkstyle_core.render import broadcast_w
    from linkstyle_core.toyworld.factors import FACTOR_PARTS, FACTORS

    m = gen.z_dim
    if args.factor_axes:
        return [np.eye(m)[:, [FACTORS.index(f) for f, q in FACTOR_PARTS.items() if q == p]]
                for p in parts]

    def image(i: int, a: torch.Tensor) -> torch.Tensor:
        return gen.synthesis(broadcast_w(mapped(i, a[None]), gen.num_ws))[0]

    inside, outside, energy = locality_grams(image, labels, fg, torch.zeros(m))
    subspaces = []
    for j in range(len(fg)):
        vectors = most_local(inside[j], outside[j], np.eye(m), args.own_part or args.subspace,
                             args.floor)
        if args.own_part:
            vectors = np.stack(owned(vectors, energy, j) or [vectors[:, 0]], 1)
        subspaces.append(np.linalg.qr(vectors[:, :args.subspace])[0])
    return subspaces


def per_sample_responses(args: argparse.Namespace, gen: Any, clf: Any, mapped: Any,
                         labels: Any, names: list[str], fg: list[int],
                         r_std: Any) -> np.ndarray:
    """``--per-sample``: each sample's own part directions of z, each rendered over ``--sd``
    SDs. -> [Ns, parts, --subspace, D] responses in training SDs (zero where a part has fewer
    directions at that sample)."""
    import torch

    from linkstyle_core.part_probes import enclosed_borders, locality_grams, most_local
    from linkstyle_core.render import broadcast_w

    m, k, background = gen.z_dim, args.subspace, names.index("background")
    out = np.zeros((len(labels), len(fg), k, r_std.shape[0]))
    for i in range(len(labels)):
        def image(_: int, a: torch.Tensor, i: int = i) -> torch.Tensor:   # the one sample i
            return gen.synthesis(broadcast_w(mapped(i, a[None]), gen.num_ws))[0]

        label = enclosed_borders(labels[i], fg, background)[None]
        inside, outside, energy = locality_grams(image, label, [*fg, background],
                                                 torch.zeros(m))
        dirs = np.zeros((len(fg), k, m))
        for j in range(len(fg)):
            kept = owned(most_local(inside[j], outside[j], np.eye(m), args.own_part,
                                    args.floor), energy, j)[:k]
            if kept:
                dirs[j, :len(kept)] = np.stack(kept)
        dz = torch.tensor(dirs.reshape(-1, m) * args.sd / 2, dtype=torch.float32)
        with torch.no_grad():
            r = clf.features(clf.preprocess(gen.synthesis(
                broadcast_w(mapped(i, torch.cat([dz, -dz])), gen.num_ws))))
        out[i] = ((r[:len(dz)] - r[len(dz):]) / r_std).numpy().reshape(len(fg), k, -1)
    return out


def split_profiles(args: argparse.Namespace, gen: Any, clf: Any, segmenter: Any, mapped: Any,
                   labels: Any, names: list[str], fg: list[int],
                   r_std: Any) -> tuple[np.ndarray, list[int]]:
    """``--split``: ``part_probes.split_profile`` at each sample (moves of its z), averaged
    over the samples -> ([D, parts] in training SDs, the changes left out per sample);
    ``--drop-global auto`` takes the parts' soft centroids from the run's segmenter."""
    import torch

    from linkstyle_core.part_probes import enclosed_borders, part_centroids, split_profile
    from linkstyle_core.render import broadcast_w
    from linkstyle_core.tuning import render_with_features

    def read(x: torch.Tensor) -> torch.Tensor:
        return clf.features(clf.preprocess(x)) / r_std

    out, dropped = [], []
    background = names.index("background")
    for i in range(len(labels)):
        def image(a: torch.Tensor, i: int = i) -> torch.Tensor:
            return gen.synthesis(broadcast_w(mapped(i, a[None]), gen.num_ws))[0]

        def centroids(moves: torch.Tensor, i: int = i) -> torch.Tensor:
            _, features = render_with_features(gen, broadcast_w(mapped(i, moves), gen.num_ws))
            return part_centroids(segmenter(features), fg)[..., :2]

        label = enclosed_borders(labels[i], fg, background)
        profile, drop = split_profile(image, read, label, fg, background, gen.z_dim, args.rtol,
                                      args.drop_global, args.whiten, centroids)
        out.append(profile)
        dropped.append(drop)
    return np.mean(out, 0).T, dropped


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from flows.stages import analysis_keys
    from linkstyle_core.config import AnalysisConfig
    from linkstyle_core.part_probes import part_energy_bias
    from linkstyle_core.render import broadcast_w
    from linkstyle_core.toyworld.factors import FACTOR_PARTS
    from linkstyle_core.tuning import render_with_features
    from linkstyle_core.validation import part_table, part_table_cells, validate
    from tasks.context import models_for, store_for
    from tasks.trajectories import tuning_inputs
    from tasks.validate import MIXED_CONCENTRATION, SELECTIVE_CONCENTRATION, ground_truth

    raw = AnalysisConfig.from_yaml(args.config).model_dump() if args.config else {}
    raw["artifact_root"] = args.root
    cfg = AnalysisConfig.from_dict(raw)
    models, store = models_for(cfg), store_for(cfg)
    keys = analysis_keys(cfg, models)
    if not store.exists("null", keys["null"]):
        sys.exit(f"no finished null for this config under {args.root}: run `linkstyle run` "
                 "with the same config first")
    t0 = time.perf_counter()
    gen, clf = models.generator, models.classifier
    inp = tuning_inputs(cfg, models, keys,
                        per_class=args.per_class or cfg.tuning.null_samples_per_class)
    paired = torch.from_numpy(store.open("paired", keys["test"]).load("w"))[inp["picks"]].float()
    c = torch.nn.functional.one_hot(inp["labels"].long().cpu(), gen.c_dim).float()
    psi = cfg.data.truncation
    z, residual = invert(gen, paired, c, psi)
    w0 = paired if args.source == "paired" else inp["w0"].float().cpu()
    names = list(inp["parts"])
    fg = [j for j, p in enumerate(names) if p != "background"]
    parts = [names[j] for j in fg]
    with torch.no_grad():
        _, features = render_with_features(gen, broadcast_w(w0, gen.num_ws))
        labels = inp["segmenter"].predict(features).cpu()

    m = gen.z_dim
    if args.per_sample:
        z = z * m ** 0.5 / z.norm(dim=1, keepdim=True)    # the prior's norm: a unit move is 1 SD

    def mapped(i: int, dz: torch.Tensor) -> torch.Tensor:      # w0[i] moved by each row of dz
        ci = c[i:i + 1].expand(len(dz), -1)
        return w0[i] + (gen.mapping(z[i:i + 1] + dz, ci, psi)[:, 0]
                        - gen.mapping(z[i:i + 1], c[i:i + 1], psi)[:, 0])

    r_std = inp["r_std"].cpu().clamp_min(1e-8)
    dropped: list[int] = []
    if args.per_sample:
        t_jac = time.perf_counter() - t0
        response = per_sample_responses(args, gen, clf, mapped, labels, names, fg, r_std)
        profiles = {"per-sample": np.abs(response).mean(0).sum(1).T ** 2}   # [D, parts]
        if args.split:
            split, dropped = split_profiles(args, gen, clf, inp["segmenter"], mapped, labels,
                                            names, fg, r_std)
            shares = [np.sqrt(p) / np.sqrt(p).sum(1, keepdims=True)
                      for p in (profiles["per-sample"], split ** 2)]
            profiles.update({"pixel-split": split ** 2,
                             "per-sample + pixel-split": ((shares[0] + shares[1]) / 2) ** 2})
    else:
        subspaces = part_directions(args, gen, mapped, labels, fg, parts)
        t_jac = time.perf_counter() - t0
        rng = np.random.default_rng(cfg.tuning.seed)
        which = np.arange(args.probes) % len(fg)
        moves = np.stack([subspaces[j] @ rng.standard_normal(subspaces[j].shape[1])
                          for j in which])
        dz = torch.tensor(moves / np.linalg.norm(moves, axis=1, keepdims=True),
                          dtype=torch.float32)
        per_sample = []
        with torch.no_grad():
            for k in range(args.probes):
                ends = [torch.cat([mapped(i, sign * args.sd / 2 * dz[k][None])
                                   for i in range(len(w0))]) for sign in (1, -1)]
                r = clf.features(clf.preprocess(gen.synthesis(broadcast_w(torch.cat(ends),
                                                                          gen.num_ws))))
                per_sample.append(((r[:len(w0)] - r[len(w0):]) / r_std).numpy())
        response = np.stack(per_sample)                                  # [K, Ns, D]
        stats = {"direct": response.mean(1) ** 2, "amplitude": np.abs(response).mean(1) ** 2}
        profiles = {name: np.stack([energy[which == j].mean(0) * subspaces[j].shape[1]  # summed
                                    for j in range(len(fg))], 1)          # over its axes
                    for name, energy in stats.items()}
    t_render = time.perf_counter() - t0 - t_jac

    truth, _ = ground_truth(cfg, models, store)
    truth["evaluated"] = truth["gt_sensitivity"] > 0
    units = np.arange(r_std.shape[0])
    gt = truth.set_index("unit").loc[units]
    evaluated = gt["evaluated"].to_numpy()
    factor_energy = np.stack([(gt[[f"sens_{f}" for f, q in FACTOR_PARTS.items() if q == p]]
                               .to_numpy() ** 2).sum(1) for p in parts], 1)
    out: dict[str, Any] = {
        "classifier": cfg.classifier.weights or cfg.classifier.target or "bundled",
        "samples": len(w0), "changes_left_out": dropped,
        "inversion_residual_median": float(np.median(residual)), "jacobian_s": t_jac,
        "render_s": t_render, "profiles": {}}
    for name, profile in profiles.items():
        scored = profile if name == "direct" else np.sqrt(profile)
        share = scored / scored.sum(1, keepdims=True)
        top, top_share = np.asarray(parts, dtype=object)[share.argmax(1)], share.max(1)
        bias = part_energy_bias(profile[evaluated], factor_energy[evaluated])
        verdicts = {}
        for tau in LINES[name]:
            rows = pd.DataFrame({"unit": units, "top_part": top, "significant": top_share >= tau,
                                 "concentration": top_share})
            _, table = validate(rows, truth, parts, SELECTIVE_CONCENTRATION, MIXED_CONCENTRATION)
            verdicts[f"top share >= {tau}"] = part_table_cells(
                part_table(table, parts)).to_dict("records")
        out["profiles"][name] = {
            "correlation": float(np.corrcoef(top_share[evaluated],
                                             gt["gt_concentration"].to_numpy()[evaluated])[0, 1]),
            "energy_bias_log10": dict(zip(parts, bias.tolist(), strict=True)),
            "verdicts": verdicts}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="the artifact root of a finished toy run")
    ap.add_argument("--config", help="the run's config file (default: the defaults)")
    ap.add_argument("--subspace", type=int, default=4, help="directions of z per part")
    ap.add_argument("--probes", type=int, default=384)
    ap.add_argument("--sd", type=float, default=2.0,
                    help="each probe's span in SDs of the prior (the ground truth's is 2)")
    ap.add_argument("--from", dest="source", choices=("paired", "link"), default="paired",
                    help="render from the samples' paired latents or the link's prediction")
    ap.add_argument("--floor", type=float, default=1e-6,
                    help="the locality eigenproblem's floor on the outside term, as a share of "
                         "its mean per direction (larger: fewer directions that barely move)")
    ap.add_argument("--own-part", type=int, default=0, metavar="N",
                    help="of each part's N most local directions keep those that move its "
                         "pixels more than any other part's (total energy)")
    ap.add_argument("--factor-axes", action="store_true",
                    help="each part's own factor axes of z (a diagnosis from the ground truth)")
    ap.add_argument("--per-sample", action="store_true",
                    help="each sample's own directions (of --own-part N candidates, up to "
                         "--subspace per part), enclosed parts owning their borders")
    ap.add_argument("--split", action="store_true",
                    help="with --per-sample: also split each unit's response to the image "
                         "changes the generator can make into the parts' pixels")
    ap.add_argument("--rtol", type=float, default=1e-3,
                    help="--split keeps the image changes above this share of the largest")
    ap.add_argument("--drop-global", default="0", metavar="N|auto",
                    help="--split leaves out each sample's N largest image changes (the "
                         "generator's global moves: pose, position, scale, lighting); auto: "
                         "as many as the sample has global moves")
    ap.add_argument("--whiten", action="store_true",
                    help="--split counts each image change once (unit norm), not per SD of z")
    ap.add_argument("--per-class", type=int, default=0, metavar="N",
                    help="samples per class (default: the config's tuning.null_samples_per_class)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.probes < 12 or args.sd <= 0 or args.floor <= 0 or args.per_class < 0:
        ap.error("--probes must be at least 12, --sd and --floor positive, --per-class not "
                 "negative")
    if args.per_sample and not args.own_part:
        ap.error("--per-sample needs --own-part N: the candidates each part's directions "
                 "are kept from")
    if args.split and not args.per_sample:
        ap.error("--split needs --per-sample: it splits each sample's own image changes")
    if args.drop_global != "auto":
        args.drop_global = int(args.drop_global) if args.drop_global.isdigit() else -1
    if not 0 < args.rtol < 1 or args.drop_global == -1:
        ap.error("--rtol must be in (0, 1) and --drop-global a count or auto")
    if args.own_part and args.own_part < args.subspace:
        ap.error("--own-part must be at least --subspace")
    out = measure(args)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{out['classifier']}: {out['samples']} samples (inversion residual, median "
          f"{out['inversion_residual_median']:.2f}), Jacobians {out['jacobian_s']:.0f} s, "
          f"rendering {out['render_s']:.0f} s")
    if out["changes_left_out"]:
        counts = np.bincount(out["changes_left_out"])
        print("largest image changes left out per sample: "
              + ", ".join(f"{n} at {c}" for n, c in enumerate(counts) if c))
    for name, p in out["profiles"].items():
        print(f"\n{name} profile: correlation of the top share with the ground truth's "
              f"concentration {p['correlation']:.2f}; energy bias (log10) "
              + " ".join(f"{q} {v:+.2f}" for q, v in p["energy_bias_log10"].items()))
        for line, cells in p["verdicts"].items():
            print(f"\n{name}, {line}")
            print(pd.DataFrame(cells).to_string(index=False))


if __name__ == "__main__":
    main()
