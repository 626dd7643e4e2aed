"""The offline HTML report of a small toy-world run, opened in headless Chromium."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from flows.analysis import counterfactual_flow, validate_flow
from flows.stages import analysis_keys
from linkstyle_core.config import AnalysisConfig
from linkstyle_core.toyworld import SPECIES
from storage import ArtifactStore
from tasks.context import models_for
from tasks.report import VERDICT_TEXT, ranked_units
from tests.fixtures.cdp import chromium_or_skip

pytestmark = pytest.mark.usefixtures("prefect_harness")

SMALL_TOY: dict[str, Any] = {
    "data": {"samples_per_class": 60, "test_samples_per_class": 10},
    "tuning": {"units": "0-23", "samples_per_class": 1, "null_directions": 32,
               "null_samples_per_class": 1, "store_images": True},
    "counterfactual": {"samples": 2, "max_steps": 100},
    "runtime": {"device": "cpu", "batch_size": 256},
}


def rendered_dom(page: Path) -> str:
    """The page's DOM after its scripts ran, as headless Chromium sees it from disk."""
    result = subprocess.run(
        [chromium_or_skip(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
         page.as_uri()], capture_output=True, text=True, timeout=120, check=True)
    return result.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`linkstyle report` on the latest run of a small toy config (pages for the top units)."""
    import yaml

    from flows.cli import main

    root = tmp_path_factory.mktemp("report")
    config = {**SMALL_TOY, "artifact_root": str(root / "artifacts")}
    validate_flow(config)
    counterfactual_flow(config, origin=0, target=1, with_selectivity=True)
    config_file = root / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    assert main(["report", "--config", str(config_file), "--out", str(root / "report"),
                 "--pages", "top"]) == 0
    cfg = AnalysisConfig.from_dict(config)
    keys = analysis_keys(cfg, models_for(cfg))
    units = ArtifactStore(cfg.artifact_root).open("selectivity", keys["selectivity"]).table("units")
    out = {"index": str(root / "report" / "index.html"),
           "units_csv": str(root / "report" / "units.csv")}
    return {"out": out, "units": units, "dir": root / "report",
            "store": ArtifactStore(cfg.artifact_root), "keys": keys}


def test_report_opens_offline_and_shows_the_run(report: dict[str, Any]) -> None:
    index = Path(report["out"]["index"])
    text = index.read_text()
    assert "http://" not in text and "https://" not in text  # no CDN, nothing to fetch
    dom = rendered_dom(index)
    units = report["units"]
    # every unit is a row of the sortable table, linked to its page when it has one
    body = re.search(r'<table class="sortable" id="units">.*?<tbody>(.*?)</tbody>', dom, re.S)
    assert body is not None
    assert body.group(1).count("<tr>") == len(units) == 24
    for part in set(units["top_part"]):
        assert f"<h3>{part}</h3>" in dom
    # the top units of every part, each with its tuning strip, the strips on disk
    strips = re.findall(r'<img class="strip" src="(img/strip-(\d+)\.png)"', dom)
    expected = sum(min(5, n) for n in units["top_part"].value_counts())
    assert len(strips) == expected
    shown = [int(u) for _, u in strips]
    for _, group in ranked_units(units).groupby("top_part"):
        assert set(group["unit"][:5]) <= set(shown)
    assert all((report["dir"] / src).is_file() for src, _ in strips)
    # names, not only indices; validation and counterfactuals are there
    assert all(name in dom for name in SPECIES)
    assert "Validation against the toy world" in dom and "Counterfactuals" in dom
    # the verdict per part, every share beside its counts, one row per part and one for all
    verdict = re.search(r"The verdict per part</h3>(.*?)</table>", dom, re.S)
    assert verdict is not None and verdict.group(1).count("<tr>") == 1 + 6 + 1
    assert re.search(r'<td class="text">\d+ of \d+ \(\d+%\)</td>', verdict.group(1))
    assert "img/pair-0-1.png" in dom and (report["dir"] / "img" / "pair-0-1.png").is_file()


def test_unit_pages_and_units_csv(report: dict[str, Any]) -> None:
    units = report["units"]
    top = ranked_units(units).groupby("top_part").head(5)["unit"].tolist()
    pages = sorted(int(p.stem.removeprefix("unit-")) for p in (report["dir"] / "units").iterdir())
    assert pages == sorted(top)  # --pages top: the units shown per part, no others
    unit = top[0]
    dom = rendered_dom(report["dir"] / "units" / f"unit-{unit}.html")
    assert f"unit {unit}: responds to the" in dom and f'src="../img/unit-{unit}.png"' in dom
    assert (report["dir"] / "img" / f"unit-{unit}.png").stat().st_size > 10_000
    assert dom.count("<tr>") == 1 + 6  # the per-part table: a header and the six parts
    table = pd.read_csv(report["out"]["units_csv"])
    assert list(table.columns) == ["unit", "top_part", "verdict", "weak_label", "p", "q",
                                   "significant", "concentration", "closed_loop_gain",
                                   "description"]
    assert len(table) == 24 and table["description"].str.startswith("unit ").all()
    assert (table.set_index("unit")["top_part"] == units.set_index("unit")["top_part"]).all()
    # three verdicts, each consistent with its p- and q-value, each described in words
    assert set(table["verdict"]) <= {"significant", "leaning", "none"}
    assert (table["significant"] == (table["verdict"] == "significant")).all()
    leaning = table[table["verdict"] == "leaning"]
    assert ((leaning["p"] < 0.05) & (leaning["q"] >= 0.05)).all()
    assert (table.loc[table["verdict"] == "none", "p"] >= 0.05).all()
    for verdict, description in zip(table["verdict"], table["description"], strict=True):
        assert VERDICT_TEXT[verdict] in description
    assert not (table["weak_label"] & table["significant"]).any()
    # weak: a part random read-outs favour, or a profile no more concentrated than theirs
    weak = units[units["weak_label"]]
    assert ((weak["null_top_share"] >= 1.5 / 6) | (weak["verdict"] == "none")).all()
    assert units.loc[units["verdict"] == "none", "weak_label"].all()
    assert table.loc[table["weak_label"], "description"].str.contains("a weak label").all()


def test_every_unit_gets_a_page_and_the_units_table_filters(report: dict[str, Any],
                                                             tmp_path: Path) -> None:
    """--pages all: the units the index shows get the full figure, every other unit a page
    with the same panels made without matplotlib; the units table filters by part, verdict
    and unit."""
    from PIL import Image

    from tasks.report import build_report
    from tests.fixtures.cdp import Browser

    units = report["units"]
    store, keys = report["store"], report["keys"]
    out = build_report(store, keys, tmp_path / "all", class_names=SPECIES, unit_pages="all")
    assert out["unit_pages"] == 24
    top = set(ranked_units(units).groupby("top_part").head(5)["unit"])
    light = sorted(set(units["unit"]) - top)
    assert light  # 24 units, at most 5 shown per part
    for unit in light[:3]:
        dom = rendered_dom(tmp_path / "all" / "units" / f"unit-{unit}.html")
        assert "figure strips" in dom and f"linkstyle unit {unit}" in dom
        # the closed loop (a line per sample), a bar per part and the significance line, as
        # inline SVG; the top part's bar coloured exactly when the unit is significant
        svg = dom[dom.index("<svg"):dom.index("</svg>")]
        assert svg.count("<polyline") == 4 and svg.count("<rect") == 6
        assert svg.count('stroke-dasharray="4 2"') == 1
        significant = bool(units.set_index("unit").loc[unit, "significant"])
        assert len(re.findall(r'<rect[^>]*fill="#c44e52"', svg)) == int(significant)
        strips = Image.open(tmp_path / "all" / "img" / f"unit-{unit}.png")
        # 4 samples x (3 steps and the difference), 64 px tiles 2 px apart, shown twice
        assert strips.size == (2 * (4 * 64 + 3 * 2), 2 * (4 * 64 + 3 * 2))
    # the full figure only where the index shows the unit
    assert not any((tmp_path / "all" / "units" / f"unit-{u}.html").read_text().count(
        "figure strips") for u in top)

    with Browser(chromium_or_skip()) as browser:
        browser.navigate((tmp_path / "all" / "index.html").as_uri())
        count = "document.getElementById('filter-count').textContent"
        visible = ("Array.from(document.querySelectorAll('#units tbody tr'))"
                   ".filter(r => r.style.display !== 'none').map(r => r.cells[0].textContent)")
        assert browser.evaluate(count) == "24 of 24 units"

        def choose(control: str, value: str) -> list[int]:
            browser.evaluate(f"(() => {{ const el = document.getElementById('filter-{control}');"
                             f" el.value = {value!r}; el.dispatchEvent(new Event('input')); }})()")
            return sorted(int(u) for u in browser.evaluate(visible))

        part = str(units["top_part"].value_counts().index[0])
        assert choose("part", part) == sorted(units.loc[units["top_part"] == part, "unit"])
        verdict = str(units["verdict"].iloc[0])
        both = units[(units["top_part"] == part) & (units["verdict"] == verdict)]
        assert choose("verdict", verdict) == sorted(both["unit"])
        choose("part", "")
        choose("verdict", "")
        assert choose("units", "3, 10-12") == [3, 10, 11, 12]
        assert browser.evaluate(count) == "4 of 24 units"


def test_units_are_never_ranked_above_a_stronger_verdict() -> None:
    units = pd.DataFrame({"unit": [1, 2, 3, 4, 5, 6],
                          "verdict": ["none", "significant", "significant", "none", "leaning",
                                      "leaning"],
                          "specificity_p": [0.5, 0.001, 0.0001, 0.9, 0.04, 0.01],
                          "specificity_q": [1.0, 0.04, 0.01, 1.0, 0.2, 0.1],
                          "concentration": [0.99, 0.5, 0.4, 0.3, 0.9, 0.2], "top_part": ["a"] * 6})
    assert ranked_units(units)["unit"].tolist() == [3, 2, 6, 5, 1, 4]
