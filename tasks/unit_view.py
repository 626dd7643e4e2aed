"""Everything needed to show one unit: its tuning strips, closed loop and part profile, read
from a finished run's artifacts (whatever tuning shard holds the unit)."""

from __future__ import annotations

from typing import Any

import numpy as np

from storage import ArtifactStore


def unit_view(store: ArtifactStore, keys: dict[str, str], unit: int,
              samples: int = 4) -> dict[str, Any]:
    """One unit of a run: images [n, S, 3, H, W] and parts [n, S, H, W] of its first ``samples``
    samples (one per class first), set values and re-encoded values [n, S], its row of the
    ``units`` table, the scored part names, its profile (``scores``), each part's share of it
    (``shares``), the null directions' 95th percentile of that share (``null_threshold``) and
    whether the unit is significant and its share beyond that (``highlighted``)."""
    for stage in ("tune", "null", "selectivity"):
        if not store.exists(stage, keys[stage]):
            raise FileNotFoundError(
                f"no finished analysis for this config under {store.root} (the {stage} stage "
                "is missing); run `linkstyle run` with the same config first")
    tuned = store.open("tune", keys["tune"])
    selectivity = store.open("selectivity", keys["selectivity"])
    units = selectivity.table("units")
    if unit not in set(units["unit"].tolist()):
        raise ValueError(f"unit {unit} was not tuned in this run; tuned units: "
                         f"{units['unit'].min()}-{units['unit'].max()} ({len(units)} units)")
    if "images" not in tuned.array_names:
        raise ValueError("this run did not keep its tuning images (tuning.store_images: false); "
                         "rerun with store_images: true to see them")
    classes = tuned.load_common("sample_class")
    # spread the shown samples over the classes: one per class, then the next one of each
    order = np.argsort(np.array([np.sum(classes[:i] == c) for i, c in enumerate(classes)]),
                       kind="stable")[:samples]
    parts = selectivity.info["scored_parts"]
    null = selectivity.table("null_profiles")
    row = units.set_index("unit").loc[unit]
    scores = np.array([row[f"score_{p}"] for p in parts])
    null_scores = null[[f"score_{p}" for p in parts]].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = scores / scores.sum()
        null_shares = null_scores / null_scores.sum(1, keepdims=True)
    threshold = np.nanquantile(null_shares, 0.95, axis=0)
    shard, (row_index,) = tuned.locate("unit", unit)

    def of_unit(name: str) -> np.ndarray:  # only the unit's row, from the shard holding it
        return np.asarray(shard.array(name)[int(row_index)])[order]

    return {
        "images": of_unit("images"),
        "parts": of_unit("parts"),
        "set_value": of_unit("set_value"),
        "response": of_unit("response"),
        "sample_class": classes[order],
        "row": row,
        "part_names": parts,
        "scores": scores,
        "shares": shares,
        "null_threshold": threshold,
        "highlighted": bool(row["significant"]) & (shares > threshold),
    }
