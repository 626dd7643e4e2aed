"""Everything needed to show one unit: its tuning strips, closed loop and part profile, read
from a finished run's artifacts (whatever tuning shard holds the unit).

``RunView`` reads what all units share once (the units table, the null's profiles, the
samples, which shard holds which unit); ``RunView.unit(u)`` then reads only that unit's rows.
A report of thousands of units opens the run once, not once per unit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from linkstyle_core.selectivity import significance_line
from storage import Artifact, ArtifactStore

VERDICT_TEXT = {
    "significant": "significant: specific to it among all units (q < 0.05)",
    "leaning": "leaning to it: its own p < 0.05, not significant among all units",
    "none": "no part: not more concentrated than random read-outs of r",
}
"""What each of the ``verdict`` values of the units table says, in words (the keys are
``linkstyle_core.selectivity.VERDICTS``; kept here, away from the modules that need torch, so
that ``linkstyle unit`` starts fast)."""


def weak_label_text(row: Any) -> str:
    """What a unit's ``weak_label`` means, in words, from its row of the ``units`` table."""
    if row["verdict"] == "none":
        return (f"a weak label: the {row['top_part']} only leads near-equal parts (the profile "
                "is no more concentrated than random read-outs')")
    return (f"a weak label: random read-outs make the {row['top_part']} their top part "
            f"{row['null_top_share']:.0%} of the time")


class RunView:
    """A finished run's tuning and selectivity, opened once.

    keys: the run's stage keys (at least tune, null and selectivity). ``FileNotFoundError``
    naming the missing stage if the run did not tune and score its units; ``ValueError`` if it
    kept no images (``tuning.store_images: false``) and ``images`` is True (with False,
    ``has_images`` says whether ``unit`` shows them).
    """

    def __init__(self, store: ArtifactStore, keys: dict[str, str], samples: int = 4,
                 images: bool = True) -> None:
        for stage in ("tune", "null", "selectivity"):
            if not store.exists(stage, keys[stage]):
                raise FileNotFoundError(
                    f"no finished analysis for this config under {store.root} (the {stage} "
                    "stage is missing); run `linkstyle run` with the same config first")
        self.tuned = store.open("tune", keys["tune"])
        selectivity = store.open("selectivity", keys["selectivity"])
        self.units = selectivity.table("units")
        self.has_images = "images" in self.tuned.array_names
        if images and not self.has_images:
            raise ValueError("this run did not keep its tuning images (tuning.store_images: "
                             "false); rerun with store_images: true to see them")
        classes = self.tuned.load_common("sample_class")
        # spread the shown samples over the classes: one per class, then the next one of each
        self.order = np.argsort(np.array([np.sum(classes[:i] == c)
                                          for i, c in enumerate(classes)]), kind="stable")[:samples]
        self.sample_class = classes[self.order]
        self.part_names = list(selectivity.info["scored_parts"])
        self.line = significance_line(
            selectivity.table("null_profiles")["concentration"].to_numpy(dtype=np.float64),
            self.units["specificity_p"].to_numpy(), self.units["specificity_q"].to_numpy())
        self._rows = self.units.set_index("unit")
        # which shard holds which unit, from each shard's small unit index
        pieces = [self.tuned] if not self.tuned.shards else [self.tuned.shard(s)
                                                              for s in self.tuned.shards]
        self._where: dict[int, tuple[Artifact, int]] = {}
        for piece in pieces:
            for row, unit in enumerate(piece.load("unit").tolist()):
                self._where[int(unit)] = (piece, row)
        self._arrays: dict[tuple[int, str], Any] = {}

    def _array(self, piece: Artifact, name: str) -> Any:
        key = (id(piece), name)
        if key not in self._arrays:
            self._arrays[key] = piece.array(name)
        return self._arrays[key]

    def unit(self, unit: int) -> dict[str, Any]:
        """One unit: images [n, S, 3, H, W] and parts [n, S, H, W] of the shown samples (one per
        class first; None where the run kept no images), set values and re-encoded values
        [n, S], its row of the ``units`` table, the scored part names, its profile
        (``scores``), each part's share of it (``shares``), the run's significance line
        (``line``: ``selectivity.significance_line``, the share the top part must exceed to be
        significant) and which shares exceed it (``highlighted``: the top part of a significant
        unit, nothing otherwise)."""
        if unit not in self._where or unit not in self._rows.index:
            raise ValueError(f"unit {unit} was not tuned in this run; tuned units: "
                             f"{self.units['unit'].min()}-{self.units['unit'].max()} "
                             f"({len(self.units)} units)")
        piece, row_index = self._where[unit]
        row = self._rows.loc[unit]
        scores = np.array([row[f"score_{p}"] for p in self.part_names])
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = scores / scores.sum()

        def of_unit(name: str) -> np.ndarray:  # only the unit's row, from the shard holding it
            return np.asarray(self._array(piece, name)[row_index])[self.order]

        return {
            "images": of_unit("images") if self.has_images else None,
            "parts": of_unit("parts") if self.has_images else None,
            "set_value": of_unit("set_value"),
            "response": of_unit("response"),
            "sample_class": self.sample_class,
            "row": row,
            "part_names": self.part_names,
            "scores": scores,
            "shares": shares,
            "line": self.line,
            "highlighted": shares > self.line,
        }


def unit_view(store: ArtifactStore, keys: dict[str, str], unit: int,
              samples: int = 4) -> dict[str, Any]:
    """One unit of a run (``RunView.unit``), for a single look such as ``linkstyle unit``."""
    return RunView(store, keys, samples).unit(unit)
