"""The analysis config: toy-world defaults, YAML loading, and messages that name the field."""

from __future__ import annotations

import pytest

from linkstyle_core.config import AnalysisConfig, ConfigError, resolve_units


def test_defaults_describe_the_toy_world() -> None:
    c = AnalysisConfig()
    assert (c.generator.kind, c.classifier.kind) == ("toy", "toy")
    assert c.data.classes == "all" and c.tuning.units == "all" and c.tuning.steps == 3
    assert c.link.type == "ridge" and 0 < c.data.truncation <= 1


def test_yaml_round_trip_and_partial_files(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("link:\n  type: lr\ntuning:\n  units: '0-9,20'\n")
    c = AnalysisConfig.from_yaml(path)
    assert c.link.type == "lr" and c.tuning.units == "0-9,20"
    assert c.data == AnalysisConfig().data  # untouched sections keep their defaults
    path.write_text(c.to_yaml())
    assert AnalysisConfig.from_yaml(path) == c


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"link": {"type": "lasso"}},
         r"link\.type: Input should be 'lr', 'ridge' or 'elasticnet' \(got 'lasso'\)"),
        ({"data": {"smaples_per_class": 3}},
         r"data\.smaples_per_class: unknown field; did you mean 'samples_per_class'\?"),
        ({"runtime": {"precision": "fp8"}},
         r"runtime\.precision: Input should be 'fp32', 'fp16' or 'bf16'"),
        ({"runtime": {"device": "gpu"}},
         r"runtime\.device: device must be auto, cpu, cuda, cuda:N or mps \(got 'gpu'\)"),
        ({"data": {"truncation": 1.5}},
         r"data\.truncation: Input should be less than or equal to 1 \(got 1\.5\)"),
        ({"tuning": {"steps": 1}}, r"tuning\.steps: Input should be greater than or equal to 2"),
        ({"tuning": {"units": "0-5,x"}},
         r"tuning\.units: unit item 'x' is neither an index nor a range"),
        ({"tuning": {"units": "9-3"}}, r"tuning\.units: unit range '9-3' ends before it starts"),
        ({"tuning": {"percentiles": [60, 10]}}, r"tuning\.percentiles: .*0 <= low < high <= 100"),
        ({"data": {"classes": [2, 2]}}, r"data\.classes: class indices must not repeat"),
        ({"generator": {"kind": "stylegan-xl"}},
         r"generator: .*needs generator\.network .* and generator\.source"),
        ({"generator": {"kind": "python", "target": "no_colon"}},
         r"generator\.target as 'package\.module:factory'"),
        ({"classifier": {"kind": "torchvision"}},
         r"classifier\.kind 'torchvision' needs classifier"),
        ({"link": {"alpha": -1}}, r"link\.alpha: Input should be greater than or equal to 0"),
        ({"colour": "red"}, r"colour: unknown field \(allowed: generator, classifier"),
    ],
)
def test_invalid_values_name_the_field_and_the_fix(raw: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        AnalysisConfig.from_dict(raw)


def test_yaml_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        AnalysisConfig.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("link: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        AnalysisConfig.from_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        AnalysisConfig.from_yaml(listy)
    typo = tmp_path / "typo.yaml"
    typo.write_text("link:\n  typ: lr\n")
    expected = r"(?s)typo\.yaml: .*link\.typ: unknown field; did you mean 'type'"
    with pytest.raises(ConfigError, match=expected):
        AnalysisConfig.from_yaml(typo)


def test_units_resolve_against_the_classifier() -> None:
    assert resolve_units("all", 4) == [0, 1, 2, 3]
    assert resolve_units("0-2, 7", 10) == [0, 1, 2, 7]
    assert resolve_units([5, "1-2", 5], 10) == [1, 2, 5]
    assert resolve_units(3, 10) == [3]
    with pytest.raises(ConfigError, match=r"unit 256 is out of range; the classifier has 256"):
        resolve_units("250-260", 256)


def test_config_is_immutable() -> None:
    c = AnalysisConfig()
    with pytest.raises(Exception, match="frozen"):
        c.link.type = "lr"  # type: ignore[misc]
