"""The adapter registry: every kind loads through the config, entry points are checked against
the protocol with a message that lists what is missing, and models that do not fit each other
or the stored data are refused before any work is done (``check_compatible``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
import torchvision

from linkstyle_core.config import ClassifierConfig, GeneratorConfig
from linkstyle_core.models.classifiers import SplitClassifier
from linkstyle_core.models.registry import (
    CLASSIFIERS,
    GENERATORS,
    ModelError,
    check_compatible,
    check_protocol,
    fingerprint,
    load_classifier,
    load_generator,
)
from linkstyle_core.models.stylegan_xl import StyleGANXLGenerator
from tests.fixtures.stylegan_standin import write_checkout, write_network
from tests.fixtures.tiny_models import TinyClassifier, TinyGenerator

CPU = torch.device("cpu")
HERE = "tests.core.test_registry"


# entry-point factories used below through `kind: python`
def half_generator(device: torch.device) -> SimpleNamespace:
    return SimpleNamespace(z_dim=8, c_dim="3", mapping=lambda z, c, t=1.0: z, synthesis=None)


def no_device_argument() -> TinyGenerator:
    return TinyGenerator()


def tiny_generator(device: torch.device) -> TinyGenerator:
    return TinyGenerator().to(device)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: small models on small inputs, robust to a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_kind_of_the_config_is_registered() -> None:
    assert set(GENERATORS) == set(GeneratorConfig.model_fields["kind"].annotation.__args__)
    assert set(CLASSIFIERS) == set(ClassifierConfig.model_fields["kind"].annotation.__args__)


def test_stylegan_xl_through_the_config(tmp_path: Path) -> None:
    source = write_checkout(tmp_path / "stylegan-xl")
    cfg = GeneratorConfig(kind="stylegan-xl", ops="ref", source=str(source),
                          network=str(write_network(tmp_path / "net.pkl", source)))
    generator = load_generator(cfg, CPU)
    assert isinstance(generator, StyleGANXLGenerator) and generator.ops_in_use == "ref"
    again = load_generator(cfg, CPU)
    # the content fingerprint depends on the weights: equal on reload, different for a new seed
    spec = cfg.model_dump_json()
    assert fingerprint(generator, spec) == fingerprint(again, spec)
    other = load_generator(cfg.model_copy(update={
        "network": str(write_network(tmp_path / "seed1.pkl", source, seed=1))}), CPU)
    assert fingerprint(other, spec) != fingerprint(generator, spec)


def test_torchvision_through_the_config(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=7).state_dict(), path)
    classifier = load_classifier(ClassifierConfig(kind="torchvision", name="resnet18",
                                                  weights=str(path)), CPU)
    assert isinstance(classifier, SplitClassifier)
    assert (classifier.num_classes, classifier.feature_dim) == (7, 512)


def test_timm_through_the_config(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=5).state_dict(), path)
    classifier = load_classifier(ClassifierConfig(kind="timm", name="resnet18",
                                                  weights=str(path)), CPU)
    assert (classifier.num_classes, classifier.feature_dim) == (5, 512)


# ------------------------------------------------------------------ entry points


def test_entry_point_loads_a_protocol_object() -> None:
    cfg = GeneratorConfig(kind="python", target=f"{HERE}:tiny_generator")
    assert isinstance(load_generator(cfg, CPU), TinyGenerator)


def test_entry_point_protocol_check_lists_everything_missing() -> None:
    cfg = GeneratorConfig(kind="python", target=f"{HERE}:half_generator")
    with pytest.raises(ModelError) as err:
        load_generator(cfg, CPU)
    assert str(err.value) == (
        "the generator (SimpleNamespace) does not satisfy the Generator protocol: missing "
        "w_dim, num_ws, resolution, features; not callable: synthesis; not a non-negative int: "
        "c_dim='3' (see linkstyle_core/models/protocols.py)"
    )


def test_classifier_protocol_check() -> None:
    check_protocol(TinyClassifier(), "classifier")
    with pytest.raises(ModelError, match=r"the classifier \(TinyGenerator\) does not satisfy the "
                                         r"Classifier protocol: missing num_classes, feature_dim, "
                                         r"preprocess, head"):
        check_protocol(TinyGenerator(), "classifier")


def test_entry_point_import_errors() -> None:
    with pytest.raises(ModelError, match=r"generator.target 'no_such_pkg.models:make': cannot "
                                         r"import module 'no_such_pkg.models'.*installed or on "
                                         r"PYTHONPATH"):
        load_generator(GeneratorConfig(kind="python", target="no_such_pkg.models:make"), CPU)
    with pytest.raises(ModelError, match=r"tests.core.test_registry has no 'tiny_generatr'; did "
                                         r"you mean tiny_generator"):
        load_generator(GeneratorConfig(kind="python", target=f"{HERE}:tiny_generatr"), CPU)
    with pytest.raises(ModelError, match=r"the factory must accept a keyword argument device "
                                         r"\(factory\(device=torch.device\) -> generator\), its "
                                         r"signature is no_device_argument\(\)"):
        load_generator(GeneratorConfig(kind="python", target=f"{HERE}:no_device_argument"), CPU)


def test_unknown_kind_suggests_the_registered_ones() -> None:
    cfg = GeneratorConfig.model_construct(kind="stylegan_xl")
    with pytest.raises(ModelError, match=r"generator.kind 'stylegan_xl' is not available in this "
                                         r"version \(did you mean 'stylegan-xl'\?\); available: "
                                         r"python, stylegan-xl, toy"):
        load_generator(cfg, CPU)


# ------------------------------------------------------------------ compatibility


def _models(c_dim=3, w_dim=6, num_classes=3, feature_dim=16):
    return (SimpleNamespace(c_dim=c_dim, w_dim=w_dim),
            SimpleNamespace(num_classes=num_classes, feature_dim=feature_dim))


def test_compatible_models_pass() -> None:
    check_compatible(*_models(num_classes=1000), link_coef_shape=(6, 16), paired_r_dim=16,
                     paired_w_dim=6)
    check_compatible(TinyGenerator(), TinyClassifier(), link_coef_shape=(6, 16))


def test_more_generator_classes_than_classifier_classes() -> None:
    with pytest.raises(ModelError, match=r"the generator has 1000 classes but the classifier only "
                                         r"10: pair models trained on the same label set"):
        check_compatible(*_models(c_dim=1000, num_classes=10))


def test_stored_link_of_other_models() -> None:
    with pytest.raises(ModelError) as err:
        check_compatible(*_models(w_dim=512, feature_dim=2048), link_coef_shape=(512, 1024))
    message = str(err.value)
    assert ("the stored link maps r of 1024 units to w of 512 dims (coef shape (512, 1024)), "
            "but the classifier has 2048 units and the generator w_dim 512 (expected coef shape "
            "(512, 2048))") in message
    assert "rerun the stage with these models" in message


def test_stored_paired_data_of_other_models() -> None:
    with pytest.raises(ModelError) as err:
        check_compatible(*_models(), paired_r_dim=2048, paired_w_dim=512)
    message = str(err.value)
    assert "the stored paired data has r of 2048 units but the classifier has 16" in message
    assert "the stored paired data has w of 512 dims but the generator has w_dim 6" in message
    assert message.count("rerun the stage with these models") == 2


# ------------------------------------------------------------------ example configs

GROUPS = {
    "dogs": ([232, 254, 151, 197, 178],
             ["leg", "body", "tail", "tongue", "eye", "nose", "snout", "ear", "head"]),
    "fungi": ([992, 993, 994, 997], ["cap", "stem"]),
    "birds": ([10, 12, 14, 92, 95, 96], ["beak", "eye", "head", "leg", "wing", "body", "tail"]),
    "cars": ([468, 609, 627, 717, 779, 817], ["shell", "tire", "window"]),
}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_example_configs_are_valid_and_name_the_papers_groups(group: str) -> None:
    from linkstyle_core.config import AnalysisConfig

    path = Path(__file__).resolve().parents[2] / "configs" / f"resnet50-stylegan-xl-{group}.yaml"
    cfg = AnalysisConfig.from_yaml(path)
    classes, parts = GROUPS[group]
    assert cfg.data.classes == classes
    assert cfg.segment.parts == ["background", *parts]
    assert (cfg.generator.kind, cfg.generator.ops) == ("stylegan-xl", "auto")
    assert cfg.generator.kind in GENERATORS and cfg.classifier.kind in CLASSIFIERS
    assert (cfg.classifier.name, cfg.classifier.weights) == ("resnet50", "IMAGENET1K_V2")
    assert (cfg.runtime.device, cfg.runtime.precision) == ("cuda", "fp16")
    # the weights name exists for resnet50 (checked offline against torchvision's enum)
    names = [w.name for w in torchvision.models.get_model_weights("resnet50")]
    assert cfg.classifier.weights in names
    # the commands at the head of the config are those of docs/real-models.md, section 5
    root = Path(__file__).resolve().parents[2]
    header = [line.removeprefix("#   ") for line in path.read_text().splitlines()
              if line.startswith("#   linkstyle ")]
    doc = (root / "docs" / "real-models.md").read_text()
    steps = doc[doc.index("Step by step, for the dogs group:"):]
    steps = steps[steps.index("```bash"):steps.index("```", steps.index("```bash") + 3)]
    documented = [line.split("#")[0].rstrip().replace("dogs", group)
                  for line in steps.splitlines() if line.startswith("linkstyle ")]
    assert header == documented
