"""Part-local probes from the generator's Jacobian, against the toy world's ground truth.

    python benchmarks/part_probes.py --root DIR [--config FILE] [--weights NAME] [--seed N]
                                     [--probes 384] [--subspace 8] [--refine N]
                                     [--natural VAR] [--mahalanobis] [--sd-step F]
                                     [--all-units] [--save FILE.npz] [--json]
    python benchmarks/part_probes.py --factors

The sensitivity profile of docs/tuning.md regresses a unit's response along random probes on
the parts those probes change, and random probes move the parts together (each part's columns
of the design are explained at R² 0.77-0.96 by the others'). This asks whether probes that
change one part at a time give every part's units the same share. It reads a finished toy
analysis under ``--root`` (the link, segmenter, directions and null of ``linkstyle run`` with
the same config; ``--weights`` and ``--seed`` set ``classifier.weights`` and ``data.seed`` =
``tuning.seed`` on top of ``--config``) and:

1. For each part, the ``--subspace`` latent directions that change its pixels most against
   the other pixels (``part_probes.part_subspaces``, on the null's samples and their
   segmentation); with ``--natural VAR``, only among the principal axes of the paired
   latents' spread within classes that hold VAR of it (``part_probes.natural_basis``). With
   ``--refine N``: N such directions per part, each rendered, and the ``--subspace``
   combinations of them whose change in the profile's measures is largest on the part
   against the other parts (a generalized eigenproblem on the rendered changes).
2. ``--probes`` probes, the parts in turn, each a random combination of its part's
   directions (of unit length, or with ``--mahalanobis`` one SD of that spread), at a median
   latent length of the null probes' (``--sd-step F``: F times their own), rendered on the
   null's samples as the null is (first and last step).
3. Locality: per probe part, the median share of the probe's squared part change (the
   profile's measures in null SDs) that falls on its own part; random probes for comparison.
4. A unit's direct profile: per part, its mean squared re-encoded change (training SDs) along
   that part's probes; its share of the sum. Printed per part: the median share of the
   part-selective units (ground-truth concentration >= 0.6), the mixed units' (< 0.5) 90th
   percentile, and the verdict "share >= tau" per part with counts (``validation.part_table``),
   beside the run's own verdict, and the verdict "share above tau given the probes drawn"
   (``part_probes.share_test``, two-stage q < 0.05 over the units), and today's question on
   the direct profile: the top share ranked among the random read-outs' (``RANDOM_READOUTS``
   unit-norm mixtures of every unit, profiled from the same probes). The same against a
   ground truth from the pixel-local factors alone (``local_factors``: at least 90% of their
   pixel change, among the parts, on their own part): the correlation of the top share with
   its concentration, and the called units it calls mixed. ``--all-units`` profiles every
   unit of the classifier, not only those the run tuned; ``--save`` writes the probes, their
   responses and the ground truth. Also per part, how much more its probes move the units
   than one-SD moves of its factors do (the ground truth's squared sensitivities; log10,
   each unit's scale removed, relative to the parts' mean): a bias the same on every
   classifier is the probes', not the units'.
5. With ``--curve N,N,...``: the share test's discoveries on ``--draws`` random subsets of N
   of the probes each (``probe_curve``), the probe curve of more probes against fewer.

``--factors`` measures instead how local the ground truth's own interventions are: for each
factor of the toy renderer (moved by one within-species SD either way, as
``toyworld.ground_truth`` moves it), the share of the squared pixel change that falls on each
part's pixels (half by the label of either version of the image).
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

TAUS = (0.5, 0.6, 0.7, 0.8)
TESTED = (0.65, 0.7, 0.75)
CURVE_TAU = 0.7


def factor_locality(n_per_class: int = 20, seed: int = 4242) -> dict[str, dict[str, float]]:
    """factor -> part (background included) -> share of the factor's squared pixel change."""
    from linkstyle_core.toyworld.factors import factor_interventions
    from linkstyle_core.toyworld.renderer import PARTS, render

    out = {}
    for _, name, low, high in factor_interventions(n_per_class, seed):
        a, b = render(low), render(high)
        change = ((a.images - b.images) ** 2).sum(1)
        total = float(change.sum())
        out[name] = {part: float((change * ((a.labels == k).float() + (b.labels == k).float())
                                  / 2).sum()) / total for k, part in enumerate(PARTS)}
    return out


def local_factors(min_share: float = 0.9) -> dict[str, list[str]]:
    """part -> its pixel-local factors: those whose squared pixel change, among the creature's
    parts (background left out), falls at least ``min_share`` on their own part."""
    from linkstyle_core.toyworld.factors import FACTOR_PARTS

    out: dict[str, list[str]] = {}
    for factor, shares in factor_locality().items():
        part = FACTOR_PARTS.get(factor)
        fg = {p: v for p, v in shares.items() if p != "background"}
        if part is not None and fg[part] >= min_share * sum(fg.values()):
            out.setdefault(part, []).append(factor)
    return out


def probe_curve(response: np.ndarray, which: np.ndarray, n_parts: int, evaluated: np.ndarray,
                selective: np.ndarray, gt_index: np.ndarray, counts: list[int], draws: int,
                seed: int) -> list[dict[str, float]]:
    """The share test's discoveries (line ``CURVE_TAU``) on random subsets of the probes:
    ``draws`` subsets of each count in ``counts``, the parts equally. Per count the mean, SD
    and range over the subsets of the evaluated units called, and of the part-selective units
    found with their ground-truth part (``gt_index``: its index among the probed parts)."""
    from linkstyle_core.part_probes import share_test
    from linkstyle_core.selectivity import two_stage_q

    rng = np.random.default_rng(seed)
    out = []
    for count in counts:
        called, found = [], []
        for draw in range(draws):
            rows = np.concatenate([rng.choice(np.flatnonzero(which == j), count // n_parts,
                                              replace=False) for j in range(n_parts)])
            share, p = share_test(response[rows], which[rows], n_parts, CURVE_TAU, seed=draw)
            hit = (two_stage_q(p) < 0.05) & evaluated
            called.append(int(hit.sum()))
            found.append(int((hit & selective & (share.argmax(1) == gt_index)).sum()))
        out.append({"probes": count, "called_mean": float(np.mean(called)),
                    "called_sd": float(np.std(called)), "called_min": min(called),
                    "called_max": max(called), "found_mean": float(np.mean(found)),
                    "found_min": min(found), "found_max": max(found),
                    "part_selective": int(selective.sum())})
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from flows.stages import analysis_keys
    from linkstyle_core.config import AnalysisConfig
    from linkstyle_core.part_probes import (
        direct_profiles,
        natural_basis,
        part_energy_bias,
        part_probe_directions,
        part_subspaces,
        refine_by_measured_change,
        sd_length,
        share_test,
    )
    from linkstyle_core.render import broadcast_w
    from linkstyle_core.selectivity import (
        ALL_MEASURES,
        SENSITIVITY_MEASURES,
        direction_means,
        first_last_change,
        mask_small_parts,
        null_reference,
        random_readouts,
        specificity_p,
        two_stage_q,
    )
    from linkstyle_core.toyworld.factors import FACTOR_PARTS
    from linkstyle_core.tuning import render_with_features
    from linkstyle_core.validation import part_table, part_table_cells, validate
    from tasks.context import models_for, store_for
    from tasks.score import stored_changes
    from tasks.trajectories import tune_directions, tuning_inputs
    from tasks.validate import MIXED_CONCENTRATION, SELECTIVE_CONCENTRATION, ground_truth

    raw = AnalysisConfig.from_yaml(args.config).model_dump() if args.config else {}
    raw["artifact_root"] = args.root
    if args.weights:
        raw.setdefault("classifier", {}).update({"kind": "toy", "weights": args.weights})
    if args.seed is not None:
        raw.setdefault("data", {})["seed"] = args.seed
        raw.setdefault("tuning", {})["seed"] = args.seed
    cfg = AnalysisConfig.from_dict(raw)
    models, store = models_for(cfg), store_for(cfg)
    keys = analysis_keys(cfg, models)
    for stage in ("null", "selectivity"):
        if not store.exists(stage, keys[stage]):
            sys.exit(f"no finished {stage} for this config under {args.root}: run "
                     "`linkstyle run` with the same config first")
    t0 = time.perf_counter()
    null = store.open("null", keys["null"])
    inp = tuning_inputs(cfg, models, keys, per_class=cfg.tuning.null_samples_per_class)
    names = list(inp["parts"])
    fg = [j for j, p in enumerate(names) if p != "background"]
    parts = [names[j] for j in fg]
    gen = models.generator
    with torch.no_grad():
        _, features = render_with_features(gen, broadcast_w(inp["w0"], gen.num_ws))
        labels = inp["segmenter"].predict(features)
    basis = None
    if args.natural:
        train = store.open("paired", keys["train"])
        basis = natural_basis(train.load("w"), train.load("label"), args.natural)
    null_means = direction_means(stored_changes(null, cfg.tuning.min_part_area))
    mean0, sd0 = null_reference(null_means)
    cols = [ALL_MEASURES.index(m) for m in SENSITIVITY_MEASURES]
    samples = len(inp["w0"])
    step = float(np.median(null.load("latent_step")))

    def render(directions: np.ndarray) -> Any:
        """directions [K, w_dim] at the null probes' median latent length, as the null, or
        with --sd-step F at F times their own length (one SD each with --mahalanobis)."""
        scaled = directions * (args.sd_step or step / np.median(np.linalg.norm(directions, 1)))
        offsets = torch.tensor([-0.5, 0.5]).expand(len(scaled), samples, 2).contiguous()
        return tune_directions(cfg, models, inp, torch.tensor(scaled, dtype=torch.float32),
                               torch.zeros(len(scaled), inp["r"].shape[1]), offsets,
                               lambda n: None)

    def change_means(result: Any) -> np.ndarray:              # each direction's mean change
        return direction_means(mask_small_parts(
            first_last_change(result.measures.numpy(), result.motion.numpy()),
            inp["base_area"].numpy(), cfg.tuning.min_part_area))

    def standard(means: np.ndarray) -> np.ndarray:           # [K, P, M] in null SDs
        return np.nan_to_num((means / sd0)[:, fg][..., cols])

    if args.refine:
        # each part's --refine most pixel-local directions, each rendered; the --subspace
        # combinations of them most local in the profile's measures
        cand = part_subspaces(gen, inp["w0"], labels, fg, args.refine, basis)
        if basis is not None:       # one SD of the spread each, as the probes
            cand = [c / sd_length(c.T, basis) for c in cand]
        change = standard(change_means(render(np.concatenate(cand, 1).T)))
        subspaces = refine_by_measured_change(
            cand, change.reshape(len(fg), args.refine, *change.shape[1:]), args.subspace)
    else:
        subspaces = part_subspaces(gen, inp["w0"], labels, fg, args.subspace, basis)
    t_jac = time.perf_counter() - t0
    dirs, which = part_probe_directions(subspaces, args.probes, cfg.tuning.seed,
                                        basis if args.mahalanobis else None)
    t1, res = time.perf_counter(), render(dirs)
    t_render = time.perf_counter() - t1
    own = (standard(change_means(res) - mean0) ** 2).sum(-1)      # [K, P] squared part change
    rand = (standard(null_means - mean0) ** 2).sum(-1)
    locality = {p: float(np.median(own[which == j, j] / own[which == j].sum(1)))
                for j, p in enumerate(parts)}
    locality_random = {p: float(np.median(rand[:, j] / rand.sum(1))) for j, p in enumerate(parts)}

    response = (res.reencoded_change / inp["r_std"].clamp_min(1e-8)).numpy()  # [K, D]
    profile = direct_profiles(response, which, len(fg))
    share = profile / profile.sum(1, keepdims=True)
    summary = store.open("selectivity", keys["selectivity"]).table("units")
    units = np.arange(response.shape[1]) if args.all_units else summary["unit"].to_numpy()
    truth, _ = ground_truth(cfg, models, store)
    truth = truth[truth["unit"].isin(units)].copy()
    truth["evaluated"] = truth["gt_sensitivity"] > 0
    top = np.asarray(parts, dtype=object)[share[units].argmax(1)]
    top_share = share[units].max(1)

    def verdict(significant: np.ndarray, top_part: np.ndarray) -> tuple[pd.DataFrame, str]:
        rows = pd.DataFrame({"unit": units, "top_part": top_part, "significant": significant,
                             "concentration": top_share})
        _, table = validate(rows, truth, parts, SELECTIVE_CONCENTRATION, MIXED_CONCENTRATION)
        evaluated = table[table["evaluated"]]
        others = evaluated[~evaluated["gt_selective"]]
        return part_table(table, parts), (f"{int(others['significant'].sum())} of "
                                           f"{len(others)} not part-selective called")

    gt = truth.set_index("unit").loc[units]
    evaluated = gt["evaluated"].to_numpy()
    selective = evaluated & (gt["gt_concentration"].to_numpy() >= SELECTIVE_CONCENTRATION)
    mixed = evaluated & (gt["gt_concentration"].to_numpy() < MIXED_CONCENTRATION)
    medians = {p: float(np.median(share[units][selective & (gt["gt_part"] == p).to_numpy(), j]))
               for j, p in enumerate(parts)
               if (selective & (gt["gt_part"] == p).to_numpy()).sum()}
    local = local_factors()
    part_sens = np.stack([gt[[f"sens_{f}" for f in local.get(p, [])]].sum(axis=1).to_numpy()
                          for p in parts], 1)
    local_conc = part_sens.max(1) / np.where(part_sens.sum(1) > 0, part_sens.sum(1), np.inf)
    runs = {} if args.all_units else {
        "the run's test": verdict(summary["significant"].to_numpy(bool),
                                  summary["top_part"].to_numpy())}
    for tau in TESTED:
        _, p = share_test(response[:, units], which, len(fg), tau, seed=cfg.tuning.seed)
        runs[f"share above {tau} given the probes drawn (q < 0.05)"] = verdict(
            two_stage_q(p) < 0.05, top)
    # today's question on the direct profile: the unit's top share ranked among random
    # read-outs of every unit (the null of ``selectivity.unit_summary``), profiled alike
    readouts = response @ random_readouts(response.shape[1], seed=cfg.tuning.seed)
    null_profile = direct_profiles(readouts, which, len(fg))
    p_rank = specificity_p(top_share, (null_profile / null_profile.sum(1, keepdims=True)).max(1))
    runs["top share ranked among random read-outs (q < 0.05)"] = verdict(
        two_stage_q(p_rank) < 0.05, top)
    for tau in TAUS:
        called = top_share >= tau
        table, other = verdict(called, top)
        local_mixed = int((called & (local_conc < MIXED_CONCENTRATION)).sum())
        runs[f"direct share >= {tau}"] = (table, f"{other}; {local_mixed} of {int(called.sum())} "
                                          "called mixed by the pixel-local factors")
    # each part's probe energy against one-SD moves of its factors (squared sensitivities)
    factor_energy = np.stack([(gt[[f"sens_{f}" for f, q in FACTOR_PARTS.items() if q == p]]
                               .to_numpy() ** 2).sum(1) for p in parts], 1)
    bias = part_energy_bias(profile[units][evaluated], factor_energy[evaluated])
    gt_index = np.array([parts.index(p) if p in parts else -1 for p in gt["gt_part"]])
    curve = probe_curve(response[:, units], which, len(fg), evaluated, selective, gt_index,
                        args.curve, args.draws, cfg.tuning.seed) if args.curve else []
    if args.save:
        np.savez(args.save, response=response, which=which, own=own, units=units,
                 parts=np.asarray(parts), gt_part=gt["gt_part"].to_numpy().astype(str),
                 gt_concentration=gt["gt_concentration"].to_numpy(), evaluated=evaluated,
                 sens=gt[[c for c in gt.columns if c.startswith("sens_")]].to_numpy(),
                 sens_names=np.asarray([c for c in gt.columns if c.startswith("sens_")]),
                 significant=np.isin(units, summary["unit"][summary["significant"]]),
                 run_top=summary.set_index("unit")["top_part"].reindex(units).fillna("")
                 .to_numpy().astype(str),
                 directions=dirs, basis=np.zeros((0, 0)) if basis is None else basis)
    return {
        "classifier": cfg.classifier.weights or cfg.classifier.target or "bundled",
        "seed": cfg.tuning.seed,
        "probes": args.probes, "subspace": args.subspace, "jacobian_s": t_jac, "render_s": t_render,
        "locality": locality, "locality_random": locality_random,
        "energy_bias_log10": dict(zip(parts, bias.tolist(), strict=True)),
        "median_share_selective": medians,
        "mixed_q90": float(np.quantile(top_share[mixed], 0.9)) if mixed.any() else None,
        "local_factors": local,
        "correlation": {
            "ground truth": float(np.corrcoef(top_share, gt["gt_concentration"])[0, 1]),
            "pixel-local factors": float(np.corrcoef(top_share, local_conc)[0, 1])},
        "curve": curve,
        "verdicts": {name: {"parts": part_table_cells(table).to_dict("records"), "others": other}
                     for name, (table, other) in runs.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", help="the artifact root of a finished toy run")
    ap.add_argument("--config", help="the run's config file (default: the defaults)")
    ap.add_argument("--weights", help="classifier.weights (bundled, mixed, ordinary, a file)")
    ap.add_argument("--seed", type=int, help="data.seed and tuning.seed")
    ap.add_argument("--probes", type=int, default=384)
    ap.add_argument("--subspace", type=int, default=8)
    ap.add_argument("--refine", type=int, default=0, metavar="N",
                    help="render N pixel-local directions per part; keep the --subspace "
                         "combinations of them most local in the profile's measures")
    ap.add_argument("--natural", type=float, default=0.0, metavar="VAR",
                    help="restrict the probes to the principal axes of the paired latents' "
                         "spread within classes that hold this share of it (default: all of W)")
    ap.add_argument("--mahalanobis", action="store_true",
                    help="with --natural: each probe one SD of the latents' spread long")
    ap.add_argument("--sd-step", type=float, default=0.0, metavar="F",
                    help="with --mahalanobis: render each probe from -F/2 to +F/2 SD, not over "
                         "the null's median latent step (about 200 SD on the 45-axis probes)")
    ap.add_argument("--save", help="write the probes' responses and the ground truth to this .npz")
    ap.add_argument("--all-units", action="store_true",
                    help="profile every unit of the classifier, not only the run's tuned ones "
                         "(the run's own verdict is then left out)")
    ap.add_argument("--curve", type=lambda v: [int(x) for x in v.split(",")], default=[],
                    metavar="N,N,...", help="the share test on random subsets of N probes each")
    ap.add_argument("--draws", type=int, default=8, help="subsets per count for --curve")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--factors", action="store_true",
                    help="how local the ground truth's factor interventions are (no run needed)")
    args = ap.parse_args()
    if args.factors:
        shares = pd.DataFrame(factor_locality()).T
        print(json.dumps(shares.to_dict("index"), indent=1) if args.json
              else shares.to_string(float_format=lambda v: f"{v:.2f}"))
        return
    if not args.root:
        ap.error("--root is required (or --factors)")
    if any(not 0 < n <= args.probes for n in args.curve):
        ap.error(f"--curve counts must lie between 1 and --probes ({args.probes})")
    if args.refine and args.refine < args.subspace:
        ap.error("--refine must be at least --subspace")
    if (args.mahalanobis or args.sd_step) and not (args.natural and args.mahalanobis):
        ap.error("--mahalanobis and --sd-step measure in the SDs of --natural: give all they need")
    out = measure(args)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{out['classifier']}, seed {out['seed']}: {out['probes']} probes, "
          f"Jacobians {out['jacobian_s']:.0f} s, rendering {out['render_s']:.0f} s")
    print("own part's share of a probe's squared part change (median): part-local "
          + " ".join(f"{p} {v:.2f}" for p, v in out["locality"].items()) + "; random "
          + " ".join(f"{p} {v:.2f}" for p, v in out["locality_random"].items()))
    print("median direct share of part-selective units: "
          + " ".join(f"{p} {v:.2f}" for p, v in out["median_share_selective"].items())
          + "; mixed units' 90th percentile: "
          + ("none" if out["mixed_q90"] is None else f"{out['mixed_q90']:.2f}"))
    print("correlation of the top share with the ground truth's concentration: "
          + ", ".join(f"{k} {v:.2f}" for k, v in out["correlation"].items())
          + " (pixel-local factors: " + ", ".join(f for fs in out["local_factors"].values()
                                                  for f in fs) + ")")
    print("each part's probe energy on the units against one-SD moves of its factors "
          "(log10, relative to the parts' mean): "
          + " ".join(f"{p} {v:+.2f}" for p, v in out["energy_bias_log10"].items()))
    if out["curve"]:
        print(f"\nthe share test (tau {CURVE_TAU}) on random subsets of the probes:")
        print(pd.DataFrame(out["curve"]).to_string(index=False, float_format=lambda v: f"{v:.0f}"))
    for name, v in out["verdicts"].items():
        print(f"\n{name} ({v['others']})")
        print(pd.DataFrame(v["parts"]).to_string(index=False))


if __name__ == "__main__":
    main()
