"""docs/real-models.md followed literally (issue 35, cases 11-14): its image tables are what
``linkstyle config cost`` computes from the resolved configs, and its step-by-step commands
run in order, with its CPU values, on the StyleGAN-XL stand-in (tests/fixtures/
stylegan_standin.py) at the places the dogs config names. Where the guide has a person paint
masks (`labels open`), the test paints them; the classifier is the stand-in's (ResNet-50's
weights cannot be had offline), and the classes are the stand-in's."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from flows.cli import main
from linkstyle_core.labels import image_count, read_parts, save_mask
from tests.fixtures.stylegan_standin import NETWORK_ENV, SOURCE_ENV, write_checkout, write_network

pytestmark = pytest.mark.usefixtures("prefect_harness")
REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "real-models.md").read_text()
DOGS = REPO / "configs" / "resnet50-stylegan-xl-dogs.yaml"


def _block(after: str, fence: str) -> str:
    """The first ``fence`` code block after the text ``after`` in the guide."""
    start = DOC.index(f"```{fence}\n", DOC.index(after)) + len(fence) + 4
    return DOC[start:DOC.index("```", start)]


def _cost_block(name: str) -> tuple[list[str], str]:
    """(the command, the table) of the guide's ``<!-- name: command -->`` ... ``<!-- end -->``."""
    match = re.search(rf"<!-- {name}: (.*?) -->\n(.*?)<!-- end -->", DOC, re.S)
    assert match, name
    return match.group(1).split()[1:], match.group(2).strip()


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def _cpu_copy() -> dict[str, Any]:
    """The dogs config with the guide's CPU values, as a reader would make it."""
    return _merge(yaml.safe_load(DOGS.read_text()), yaml.safe_load(_block("**On a CPU**", "yaml")))


def test_the_guides_image_tables_are_computed_from_the_configs(tmp_path, capsys) -> None:
    argv, table = _cost_block("gpu-cost")
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == table
    copy_file = tmp_path / "dogs-cpu.yaml"
    copy_file.write_text(yaml.safe_dump(_cpu_copy()))
    argv, table = _cost_block("cpu-cost")
    assert main([str(copy_file) if a == "COPY" else a for a in argv]) == 0
    assert capsys.readouterr().out.strip() == table
    # what the CPU values promise: a run of minutes at 3 images/s, test pairs below training
    total = int(re.search(r"\| in all \| .* \| ([\d,]+) \|", table).group(1).replace(",", ""))
    assert total / 3 < 15 * 60
    data = _cpu_copy()["data"]
    assert data["test_samples_per_class"] <= data["samples_per_class"] / 2


def _paint(folder: Path) -> None:
    """What a person does on the labelling page: paint every exported image. Here the parts
    are the image's luminance bands, so that every part shows in every mask."""
    parts = read_parts(folder)
    for i in range(image_count(folder)):
        image = np.asarray(Image.open(folder / "images" / f"{i:04d}.png").convert("L"), float)
        edges = np.quantile(image, np.linspace(0, 1, len(parts) + 1)[1:-1])
        save_mask(folder, i, np.digitize(image, edges).astype(np.uint8))


def test_the_step_by_step_commands_run_in_order_on_the_stand_in(tmp_path, capsys,
                                                                monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = _cpu_copy()
    # the files where the guide puts them, relative to the folder linkstyle runs from
    source = write_checkout(Path(config["generator"]["source"]))
    network = write_network(Path(config["generator"]["network"]), source)
    monkeypatch.setenv(SOURCE_ENV, str(source.resolve()))
    monkeypatch.setenv(NETWORK_ENV, str(network.resolve()))
    config["classifier"] = {"kind": "python",
                            "target": "tests.fixtures.stylegan_standin:standin_classifier"}
    config["data"]["classes"] = [0, 2]  # two of the stand-in's three classes
    Path("dogs-cpu.yaml").write_text(yaml.safe_dump(config))

    commands = [line.split("#")[0].split() for line in
                _block("Step by step, for the dogs group:", "bash").splitlines()
                if line.startswith("linkstyle ")]
    assert [c[1] for c in commands] == ["config", "run", "labels", "labels", "labels", "run",
                                        "status", "report"]
    outputs = []
    for command in commands:
        argv = ["dogs-cpu.yaml" if a == str(DOGS.relative_to(REPO)) else a for a in command[1:]]
        if argv[:2] == ["labels", "open"]:
            _paint(Path(argv[-1]))  # the person, on the page
            continue
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 0, (argv, err[-3000:])
        outputs.append(out)
    validated = outputs[0]
    assert "holds no imported labels yet" in validated and "renders at least" in validated
    assert Path("labels/dogs/labels.npz").is_file()
    assert "complete" in outputs[-2] and "partial" not in outputs[-2]  # status
    report = next(Path(".").glob("linkstyle-report-*/index.html")).read_text()
    row = re.search(r"classes analysed</td><td[^>]*>([^<]*)<", report)
    assert row and row.group(1).startswith("2: ") and "(0)" in row.group(1) \
        and "(2)" in row.group(1) and "(1)" not in row.group(1), row
