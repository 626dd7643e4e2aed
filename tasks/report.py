"""A static, offline HTML report of a finished run: summary, link metrics, validation, the top
units of every part with their tuning strips, one page per unit, a sortable units table, the
counterfactual figures, and ``units.csv``.

Everything is written under one folder and opens from disk: no server, no CDN, the pictures
are PNG files beside the pages and the table sorts with a few lines of inline JavaScript.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from linkstyle_core.selectivity import VERDICTS
from linkstyle_core.validation import part_table_cells
from storage import ArtifactStore
from storage.catalog import stage_of
from tasks.unit_view import VERDICT_TEXT, RunView, weak_label_text

_STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #eee; cursor: pointer; }
td.text, th.text { text-align: left; }
img.strip { height: 64px; image-rendering: pixelated; vertical-align: middle; }
img.figure { max-width: 100%; }
.note { color: #555; font-size: 0.9em; }
.top { display: flex; align-items: center; gap: 0.8em; margin: 0.3em 0; }
.filters { display: flex; gap: 1em; align-items: center; margin: 0.5em 0; font-size: 0.9em; }
"""

# sorts a table when a header cell is clicked: numbers as numbers, the rest as text
_SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th, col) => {
  th.addEventListener("click", () => {
    const body = th.closest("table").tBodies[0];
    const rows = Array.from(body.rows);
    const up = th.dataset.order !== "asc";
    th.dataset.order = up ? "asc" : "desc";
    const key = r => { const t = r.cells[col].dataset.value ?? r.cells[col].textContent;
                       const n = parseFloat(t); return isNaN(n) ? t : n; };
    rows.sort((a, b) => { const x = key(a), y = key(b);
                          return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1); });
    rows.forEach(r => body.appendChild(r));
  });
});
"""


# filters the units table (id "units") by part, verdict and unit numbers; counts what is shown
_FILTER_SCRIPT = """
(() => {
  const table = document.getElementById("units");
  if (!table) return;
  const head = Array.from(table.tHead.rows[0].cells).map(c => c.textContent);
  const col = name => head.indexOf(name);
  const part = document.getElementById("filter-part"), verdict =
    document.getElementById("filter-verdict"), which = document.getElementById("filter-units");
  const shown = document.getElementById("filter-count");
  const wanted = text => {
    const sets = text.split(",").map(t => t.trim()).filter(t => t).map(t => {
      const [a, b] = t.split("-").map(Number); return [a, isNaN(b) ? a : b]; });
    return sets.length ? u => sets.some(([a, b]) => u >= a && u <= b) : () => true; };
  const apply = () => {
    const keep = wanted(which.value);
    let n = 0;
    for (const row of table.tBodies[0].rows) {
      const ok = (!part.value || row.cells[col("top_part")].textContent === part.value)
        && (!verdict.value || row.cells[col("verdict")].textContent === verdict.value)
        && keep(Number(row.cells[col("unit")].textContent));
      row.style.display = ok ? "" : "none";
      n += ok;
    }
    shown.textContent = `${n} of ${table.tBodies[0].rows.length} units`;
  };
  [part, verdict, which].forEach(el => el.addEventListener("input", apply));
  apply();
})();
"""


def _filters(units: pd.DataFrame) -> str:
    """The controls of ``_FILTER_SCRIPT``."""
    def select(name: str, values: Sequence[str]) -> str:
        options = "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>'
                          for v in values)
        return (f'<label>{name} <select id="filter-{name}"><option value="">all</option>'
                f"{options}</select></label>")

    return ('<div class="filters">' + select("part", sorted(units["top_part"].astype(str).unique()))
            + select("verdict", [v for v in VERDICTS if (units["verdict"] == v).any()])
            + '<label>units <input id="filter-units" size="14" placeholder="e.g. 12, 40-47">'
            '</label><span id="filter-count"></span></div>')


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "–" if not math.isfinite(float(value)) else f"{float(value):.{digits}g}"
    return html.escape(str(value))


def _table(frame: pd.DataFrame, sortable: bool = False,
           links: dict[str, Callable[[Any], str]] | None = None, table_id: str = "") -> str:
    """An HTML table of ``frame``; ``links`` maps a column to a function giving each cell's
    link target."""
    links = links or {}
    text = [c for c in frame.columns if pd.api.types.is_string_dtype(frame[c])]
    head = "".join(f'<th class="{"text" if c in text else ""}">{html.escape(str(c))}</th>'
                   for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, record, strict=True):
            shown = _fmt(value)
            if column in links:
                shown = f'<a href="{html.escape(links[column](value))}">{shown}</a>'
            sort_value = "" if not isinstance(value, (float, np.floating)) or math.isfinite(
                float(value)) else ' data-value="Infinity"'
            cells.append(f'<td class="{"text" if column in text else ""}"{sort_value}>'
                         f"{shown}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    cls = (' class="sortable"' if sortable else "") + (f' id="{table_id}"' if table_id else "")
    return (f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
            "</table>")


def _page(title: str, body: str, script: str = "") -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>"
            f"{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n{body}\n"
            + (f"<script>{script}</script>" if script else "") + "</body></html>\n")


def describe_unit(row: pd.Series) -> str:
    """One line on what a unit does, from its row of the ``units`` table."""
    weak = f"; {weak_label_text(row)}" if row["weak_label"] else ""
    return (f"unit {int(row['unit'])}: responds to the {row['top_part']} most "
            f"({row['concentration']:.0%} of its sensitivity, p {row['specificity_p']:.2g}, "
            f"q {row['specificity_q']:.2g}; {VERDICT_TEXT[row['verdict']]}{weak}); closed-loop "
            f"gain {row['closed_loop_gain']:.2f}, pixel change {row['pixel_change']:.3f}")


def ranked_units(units: pd.DataFrame) -> pd.DataFrame:
    """Units ordered for showing: significant ones first (by q, then concentration), then the
    leaning ones (by p), then the rest by concentration: a unit is never ranked above one with
    a stronger verdict."""
    by = {"significant": (["specificity_q", "concentration"], [True, False]),
          "leaning": (["specificity_p", "concentration"], [True, False]),
          "none": (["concentration"], [False])}
    return pd.concat([units[units["verdict"] == v].sort_values(cols, ascending=asc)
                      for v, (cols, asc) in by.items()])


def _strip_png(images: np.ndarray) -> bytes:
    """One sample's tuning steps side by side, then |last - first| in grey levels:
    images [S, 3, H, W] uint8 -> a PNG."""
    from io import BytesIO

    from PIL import Image

    diff = np.abs(images[-1].astype(np.int16) - images[0].astype(np.int16)).mean(0)
    scale = 255.0 / max(float(diff.max()), 1.0)
    diff_rgb = np.repeat((diff * scale).clip(0, 255).astype(np.uint8)[None], 3, axis=0)
    strip = np.concatenate([t.transpose(1, 2, 0) for t in [*images, diff_rgb]], axis=1)
    buffer = BytesIO()
    Image.fromarray(strip).save(buffer, format="PNG")
    return buffer.getvalue()


def build_report(store: ArtifactStore, keys: dict[str, str], out: str | Path, *,
                 class_names: Sequence[str], title: str = "linkstyle report",
                 per_part: int = 5, unit_pages: Sequence[int] | str = "all") -> dict[str, Any]:
    """Write the report of the run whose stage keys are ``keys`` into folder ``out``.

    keys: at least train, test, link, tune, null, selectivity; validation and counterfactual
    when those stages ran. unit_pages: the units that get a page: ``all``, ``top`` (the top
    units shown per part) or a list of units.
    Returns {"index": path of index.html, "units_csv": path, "unit_pages": count}.
    """
    from linkstyle_core.figures import unit_charts_svg, unit_figure, unit_strips_png

    out = Path(out)
    (out / "units").mkdir(parents=True, exist_ok=True)
    (out / "img").mkdir(exist_ok=True)
    selectivity = store.open("selectivity", keys["selectivity"])
    units = selectivity.table("units")
    parts_long = selectivity.table("unit_parts") if "unit_parts" in selectivity.table_names \
        else None
    link = store.open("link", keys["link"]).table("metrics")

    units_csv = pd.DataFrame({
        "unit": units["unit"], "top_part": units["top_part"], "verdict": units["verdict"],
        "weak_label": units["weak_label"], "p": units["specificity_p"], "q": units["specificity_q"],
        "significant": units["significant"], "concentration": units["concentration"],
        "closed_loop_gain": units["closed_loop_gain"],
        "description": [describe_unit(r) for _, r in units.iterrows()],
    })
    units_csv.to_csv(out / "units.csv", index=False)

    shown_top: dict[str, list[int]] = {}
    for part, group in ranked_units(units).groupby("top_part", sort=True):
        shown_top[str(part)] = [int(u) for u in group["unit"][:per_part]]
    if isinstance(unit_pages, str):
        if unit_pages not in ("all", "top"):
            raise ValueError(f"unit_pages must be 'all', 'top' or a list of units, got "
                             f"{unit_pages!r}")
        pages = (list(units["unit"]) if unit_pages == "all"
                 else [u for us in shown_top.values() for u in us])
    else:
        pages = list(unit_pages)
    run = RunView(store, keys)
    parts_by_unit = ({int(u): g.drop(columns="unit") for u, g in parts_long.groupby("unit")}
                     if parts_long is not None else {})
    figured = {u for us in shown_top.values() for u in us}
    for unit in sorted(set(pages) | figured):
        view = run.unit(int(unit))
        if unit in figured:
            (out / "img" / f"strip-{unit}.png").write_bytes(_strip_png(view["images"][0]))
        if unit not in pages:
            continue
        row = view["row"].copy()
        row["unit"] = unit
        labels = [f"{class_names[c]} (class {c})" for c in view["sample_class"]]
        if unit in figured:  # the units the index shows: the full figure (about 1 s each)
            picture = unit_figure(
                view["images"], view["parts"], view["set_value"], view["response"],
                view["shares"], view["part_names"], view["highlighted"],
                view["line"], describe_unit(row), row_labels=labels)
            image, caption = 'class="figure"', ""
        else:  # every other unit: the same panels without matplotlib, in milliseconds
            picture = unit_strips_png(view["images"], view["parts"])
            image = 'class="figure strips"'
            caption = (f"<p class=\"note\">One row per sample ({html.escape(', '.join(labels))}"
                       "): the tuning steps with the part outlines, then |last - first| "
                       "scaled to the unit's largest difference; <code>linkstyle unit "
                       f"{unit}</code> draws the same as one figure.</p>" + unit_charts_svg(
                           view["set_value"], view["response"], view["shares"],
                           view["part_names"], view["highlighted"], view["line"]))
        (out / "img" / f"unit-{unit}.png").write_bytes(picture)
        per_part_rows = parts_by_unit.get(int(unit), pd.DataFrame({
            "part": view["part_names"], "share": view["shares"]}))
        body = (f'<p><a href="../index.html">back to the report</a></p>'
                f"<p>{html.escape(describe_unit(row))}"
                f'</p><img {image} src="../img/unit-{unit}.png" alt="unit {unit}">'
                + caption
                + "<h2>Per part</h2><p class=\"note\">share: the part's share of the unit's "
                "sensitivity; z: that share against random read-outs' shares of the same "
                "part; q: the specificity test, on the top part's row.</p>"
                + _table(per_part_rows))
        (out / "units" / f"unit-{unit}.html").write_text(_page(f"Unit {unit}", body))

    sections = [_summary_section(store, keys, selectivity, units, class_names)]
    sections.append("<h2>Link</h2>" + _table(link))
    if keys.get("validation") and store.exists("validation", keys["validation"]):
        sections.append(_validation_section(store.open("validation", keys["validation"])))
    sections.append(_parts_section(units, shown_top, set(pages)))
    table = units[["unit", "top_part", "verdict", "weak_label", "specificity_p", "specificity_q",
                   "concentration",
                   "closed_loop_gain", "pixel_change", "label_change"]]
    sections.append("<h2>All units</h2><p class=\"note\">Click a column to sort; choose a part "
                    "or a verdict, or type unit numbers (e.g. 12, 40-47), to filter.</p>"
                    + _filters(units) + _table(
                        table, sortable=True, table_id="units",
                        links={"unit": lambda u: f"units/unit-{u}.html"} if pages else None))
    sections.append(_counterfactual_section(store, keys, out))
    index = out / "index.html"
    index.write_text(_page(title, "\n".join(sections), _SORT_SCRIPT + _FILTER_SCRIPT))
    return {"index": str(index), "units_csv": str(out / "units.csv"),
            "unit_pages": len(pages)}


def _summary_section(store: ArtifactStore, keys: dict[str, str], selectivity: Any,
                     units: pd.DataFrame, class_names: Sequence[str]) -> str:
    info = selectivity.info
    counts = units["verdict"].value_counts()
    # the classes the run analysed (its tuning's), not every class the classifier knows
    analysed = store.open("tune", keys["tune"]).manifest.params.get("classes") or []
    classes = [f"{class_names[c]} ({c})" if c < len(class_names) else str(c) for c in analysed]
    rows = pd.DataFrame({"figure": [
        "units tuned", "significant units: specific to their top part (specificity q < 0.05)",
        "leaning units: their own p < 0.05, not significant among all units",
        "units no more concentrated on a part than random read-outs",
        "median closed-loop gain (1: the re-encoded unit follows)",
        "median pixel change, first to last step (in [0, 1])",
        "median share of part labels changed", "null directions (probes)",
        "classes analysed"],
        "value": [str(len(units)), *(str(int(counts.get(v, 0))) for v in VERDICTS),
                  f"{info['median_closed_loop_gain']:.2f}", f"{info['median_pixel_change']:.3f}",
                  f"{info['median_label_change']:.1%}", str(info["null_directions"]),
                  f"{len(classes)}: {', '.join(classes)}"]})
    paths = pd.DataFrame({"stage": list(keys), "key": list(keys.values()),
                          "folder": [f"{store.root_uri}/{stage_of(k)}/{v}"
                                     for k, v in keys.items()]})
    warnings = "".join(f"<p><b>Warning:</b> {html.escape(w)}</p>" for w in info["warnings"])
    return "<h2>Run</h2>" + warnings + _table(rows) + "<h3>Artifacts</h3>" + _table(paths)


def _validation_section(validation: Any) -> str:
    m = validation.info
    parts = [k.removeprefix("auc_") for k in m if k.startswith("auc_")]
    overall = pd.DataFrame({
        "units": ["all evaluated", "strongly tuned", "part-selective (ground truth)"],
        "count": [int(m[k]) for k in ("n_units", "n_strong", "n_selective")],
        "match": [m["match_rate_all"], m["match_rate"], m["match_rate_selective"]],
        "chance": [m["chance_all"], m["chance"], m["chance_selective"]]})
    per_part = pd.DataFrame({
        "part": [*parts, "all"],
        "match": [*(m[f"match_{p}"] for p in parts), m["match_rate_all"]],
        "chance": [*(m[f"chance_{p}"] for p in parts), m["chance_all"]],
        "AUC": [*(m[f"auc_{p}"] for p in parts), m["mean_auc"]]})
    verdict = part_table_cells(validation.table("parts"))
    return ("<h2>Validation against the toy world's ground truth</h2><p class=\"note\">match: "
            "share of units whose top part is their ground-truth part; chance: the same with "
            "the top parts shuffled; AUC: how well a part's share ranks its ground-truth units "
            "above the others; wrong part: significant units whose top part is not their "
            "ground-truth part (per part: among those called significant for it); mixed: "
            "significant units that no part moves more than all others together (ground-truth "
            "concentration below 0.5); power: part-selective units (ground-truth concentration "
            "at least 0.6) called significant with the right part.</p>"
            + _table(overall) + _table(per_part) + "<h3>The verdict per part</h3>"
            + _table(verdict))


def _parts_section(units: pd.DataFrame, shown: dict[str, list[int]], pages: set[int]) -> str:
    by_unit = units.set_index("unit")
    out = ["<h2>Top units per part</h2><p class=\"note\">Significant units first (by q), then "
           "the leaning ones (by p), then the others by concentration. p: the unit's own "
           "test against random read-outs; q: the two-stage false discovery rate over all "
           "units, which passes units with p above 0.05 when most units have an effect. Each "
           "strip: one sample's tuning steps, then |last - first| scaled to its maximum.</p>"]
    for part, unit_list in shown.items():
        out.append(f"<h3>{html.escape(part)}</h3>")
        for unit in unit_list:
            row = by_unit.loc[unit]
            name = (f'<a href="units/unit-{unit}.html">unit {unit}</a>' if unit in pages
                    else f"unit {unit}")
            out.append(f'<div class="top"><img class="strip" src="img/strip-{unit}.png" '
                       f'alt="tuning strip of unit {unit}"><span>{name}: concentration '
                       f"{row['concentration']:.2f}, p {row['specificity_p']:.2g}, q "
                       f"{row['specificity_q']:.2g}, {row['verdict']}"
                       f"{', weak label' if row['weak_label'] else ''}</span></div>")
    return "\n".join(out)


def _counterfactual_section(store: ArtifactStore, keys: dict[str, str], out: Path) -> str:
    """The counterfactual figures of the newest counterfactual artifact built on this run's
    link, copied beside the report."""
    found = []
    for info in store.list_artifacts("counterfactual"):
        if info.status != "complete":
            continue
        art = store.open("counterfactual", info.key)
        if art.manifest.inputs.get("link") == keys["link"]:
            found.append((info.created or "", art))
    if not found:
        return ("<h2>Counterfactuals</h2><p class=\"note\">None for this run (`linkstyle "
                "counterfactual` makes them).</p>")
    art = max(found, key=lambda f: f[0])[1]
    summary = art.table("summary")
    figures = []
    for row in summary.itertuples():
        name = f"pair-{row.origin}-{row.target}.png"
        (out / "img" / name).write_bytes(art.read_file(name))
        figures.append(f'<h3>{html.escape(str(row.origin_name))} → '
                       f"{html.escape(str(row.target_name))}</h3>"
                       f'<img class="figure" src="img/{name}" alt="counterfactuals {name}">')
    columns = [c for c in ("origin_name", "target_name", "n", "flip_rate", "median_steps")
               if c in summary.columns]
    return ("<h2>Counterfactuals</h2>" + _table(summary[columns]) + "".join(figures))
