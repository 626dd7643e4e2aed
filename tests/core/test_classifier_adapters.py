"""torchvision and timm classifiers split at the input of their last nn.Linear, with random
weights from local files (nothing is downloaded): the split reproduces the model's output on
several architectures, preprocessing follows the weights' metadata, and every error says what
to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

from linkstyle_core.models.classifiers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    SplitClassifier,
    last_linear,
)
from linkstyle_core.models.errors import ModelError
from linkstyle_core.models.pretrained import (
    load_timm,
    load_torchvision,
    preprocessing_of,
    torchvision_cache_file,
)
from linkstyle_core.models.registry import check_protocol, class_names

# (model, where its last Linear sits, units of the penultimate layer, test input side)
TORCHVISION = [
    ("resnet18", "fc", 512, 32),
    ("vgg11", "classifier.6", 4096, 32),
    ("densenet121", "classifier", 1024, 32),
    ("convnext_tiny", "classifier.2", 768, 32),
    ("vit_b_16", "heads.head", 768, 224),  # ViT needs its own input size
]


def _save_random(name: str, path: Path, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    torch.save(model.state_dict(), path)
    return model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these models run hundreds of tiny ops on small inputs, where a
    second thread gains little and, on a busy shared CPU, costs seconds in thread barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache in tmp_path (TORCH_HOME)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path / "torch" / "hub"


@pytest.mark.parametrize(("name", "head_name", "units", "side"), TORCHVISION)
def test_torchvision_split_reproduces_the_model(tmp_path: Path, name: str, head_name: str,
                                                units: int, side: int) -> None:
    path = tmp_path / f"{name}.pth"
    reference = _save_random(name, path)
    clf = load_torchvision(name, str(path))
    check_protocol(clf, "classifier")
    assert (clf.head_name, clf.feature_dim, clf.num_classes) == (head_name, units, 1000)
    assert isinstance(clf.head, nn.Linear) and isinstance(clf.body.get_submodule(head_name),
                                                          nn.Identity)
    assert clf.preprocessing == Preprocessing()  # a state-dict file: the ImageNet defaults
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        r = clf.features(x)
        assert r.shape == (2, units)
        torch.testing.assert_close(clf.head(r), reference(x), rtol=1e-4, atol=1e-4)


def test_preprocess_matches_torchvision_transforms() -> None:
    weights = [torchvision.models.ResNet50_Weights.IMAGENET1K_V2,  # resize 232, crop 224
               torchvision.models.ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1]  # bicubic 384
    images = torch.rand(2, 3, 96, 128) * 2 - 1  # non-square: the shorter side is resized
    for w in weights:
        p = preprocessing_of(w)
        t = w.transforms()
        assert (p.resize_size, p.crop_size) == (t.resize_size[0], t.crop_size[0])
        clf = SplitClassifier(nn.Sequential(nn.Flatten(), nn.Linear(3, 4)), p, check=False)
        ours = clf.preprocess(images)
        theirs = t((images + 1) / 2)
        assert ours.shape == (2, 3, p.crop_size, p.crop_size)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_torchvision_weights_come_from_the_hub_cache(hub: Path) -> None:
    enum = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = torchvision_cache_file(enum.url)
    assert cached == hub / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    reference = _save_random("resnet18", cached)
    clf = load_torchvision("resnet18", "IMAGENET1K_V1")
    assert clf.preprocessing == Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(clf.head(clf.features(x)), reference(x))
    # no weights name: torchvision's DEFAULT, which is IMAGENET1K_V1 for resnet18
    default = load_torchvision("resnet18", None)
    torch.testing.assert_close(default.head.weight, reference.fc.weight)
    # the weights' metadata names the ImageNet classes
    assert class_names(clf)[:2] == ["tench", "goldfish"] and len(class_names(clf)) == 1000


def test_the_hub_can_never_download() -> None:
    from linkstyle_core.models.pretrained import build_without_download

    def builder() -> None:
        torch.hub.download_url_to_file("https://example.org/w.pth", "/tmp/w.pth")

    original = torch.hub.download_url_to_file
    with pytest.raises(ModelError, match="refusing to download https://example.org/w.pth to "
                                         "/tmp/w.pth: weights are never downloaded here"):
        build_without_download(builder)
    assert torch.hub.download_url_to_file is original


def test_missing_torchvision_weights_say_where_they_were_looked_for(hub: Path) -> None:
    expected = hub / "checkpoints" / "resnet50-11ad3fa6.pth"
    with pytest.raises(ModelError) as err:
        load_torchvision("resnet50", "IMAGENET1K_V2")
    message = str(err.value)
    assert f"torchvision weights resnet50 IMAGENET1K_V2 not found: looked for {expected}" in message
    assert "never downloaded" in message
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message
    assert "TORCH_HOME" in message and "local state-dict file" in message
    assert not expected.exists()


def test_unknown_torchvision_names() -> None:
    with pytest.raises(ModelError, match=r"'resnt50' is not a torchvision model; did you mean "
                                         r"resnet50.*list_models\(\)"):
        load_torchvision("resnt50", None)
    with pytest.raises(ModelError, match=r"'IMAGENET1K_V3' is not a weights name of torchvision "
                                         r"resnet50; did you mean IMAGENET1K_V2, IMAGENET1K_V1\? "
                                         r"\(available: IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT"):
        load_torchvision("resnet50", "IMAGENET1K_V3")


def test_missing_or_unfitting_state_dict_files(tmp_path: Path) -> None:
    missing = tmp_path / "weights" / "resnet18.pth"
    with pytest.raises(ModelError, match=f"classifier.weights file '{missing}' does not exist; "
                                         f"give the path of a local state-dict file"):
        load_torchvision("resnet18", str(missing))
    other = tmp_path / "resnet18.pth"
    _save_random("resnet18", other)
    with pytest.raises(ModelError, match=r"does not fit torchvision resnet34: missing keys "
                                         r"\['layer1.2.conv1.weight'"):
        load_torchvision("resnet34", str(other))
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ModelError, match="is not a readable state dict"):
        load_torchvision("resnet18", str(junk))


def test_class_count_and_wrapped_checkpoints(tmp_path: Path) -> None:
    """A fine-tuned model: 10 classes, saved inside {'state_dict': ...} with 'module.' keys."""
    torch.manual_seed(0)
    reference = torchvision.models.get_model("resnet18", weights=None, num_classes=10).eval()
    path = tmp_path / "finetuned.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v
                                           for k, v in reference.state_dict().items()}}, path)
    clf = load_torchvision("resnet18", str(path))
    assert (clf.num_classes, clf.feature_dim) == (10, 512)
    assert class_names(clf) == [str(i) for i in range(10)]  # the file names no classes
    named = tmp_path / "named.pt"
    birds = [f"bird {i}" for i in range(10)]
    torch.save({"state_dict": reference.state_dict(), "class_names": birds}, named)
    assert class_names(load_torchvision("resnet18", str(named))) == birds
    torch.save({"state_dict": reference.state_dict(), "class_names": birds[:3]}, named)
    assert class_names(load_torchvision("resnet18", str(named)))[:3] == ["0", "1", "2"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(clf.head(clf.features(x)), reference(x))


def test_generic_split_errors() -> None:
    identity = Preprocessing(resize_size=2, crop_size=2, mean=(0.5,) * 3, std=(0.5,) * 3)
    no_linear = nn.Sequential(nn.Conv2d(3, 4, 2), nn.Flatten())
    with pytest.raises(ModelError, match="Sequential has no nn.Linear layer, so its penultimate "
                                         "layer cannot be found"):
        SplitClassifier(no_linear, identity)
    squashed = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Tanh())
    with pytest.raises(ModelError, match=r"cannot split at its last nn.Linear \(1\): the model "
                                         r"computes more after it"):
        SplitClassifier(squashed, identity)
    with pytest.raises(ModelError, match="resize_size 2 is smaller than crop_size 4"):
        Preprocessing(resize_size=2, crop_size=4)


def test_last_linear_is_found_by_walking_modules() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.ReLU(), nn.Linear(8, 3)))
    name, linear = last_linear(model)
    assert name == "1.1" and linear is model[1][1]


def test_preprocess_runs_batched_on_the_images_device_and_dtype() -> None:
    clf = SplitClassifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)),
                          Preprocessing(resize_size=10, crop_size=8), check=False)
    images = torch.zeros(5, 3, 16, 16)  # mid-grey in [-1, 1]
    x = clf.preprocess(images)
    assert x.shape == (5, 3, 8, 8) and x.dtype == torch.float32
    expected = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[:, :, 3, 3], expected.expand(5, 3))
    # the normalisation constants live beside the model, on whatever device it is
    elsewhere = SplitClassifier(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)).to("meta"),
                                check=False)
    assert elsewhere.mean.is_meta and elsewhere.std.is_meta


@pytest.mark.gpu
def test_torchvision_classifier_on_cuda(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    reference = _save_random("resnet18", path)
    clf = load_torchvision("resnet18", str(path), device="cuda")
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        expected = reference(clf.preprocess(images.cuda()).cpu())
        logits = clf.head(clf.features(clf.preprocess(images.cuda())))
    assert logits.device.type == "cuda"
    torch.testing.assert_close(logits.cpu(), expected, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------ timm

# timm is the project's `timm` extra; CI installs it (these tests must not skip there)


def test_timm_resnet_from_a_local_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    clf = load_timm("resnet18", str(path))
    check_protocol(clf, "classifier")
    assert (clf.head_name, clf.num_classes, clf.feature_dim) == ("fc", 10, 512)
    cfg = timm.data.resolve_data_config({}, model=reference)
    assert clf.preprocessing.crop_size == cfg["input_size"][-1] == 224
    assert clf.preprocessing.resize_size == int(224 / cfg["crop_pct"])
    assert clf.preprocessing.interpolation == cfg["interpolation"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(clf.head(clf.features(x)), reference(x))


def test_timm_vit_from_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    path = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    clf = load_timm("vit_tiny_patch16_224", str(path))
    assert (clf.head_name, clf.num_classes, clf.feature_dim) == ("head", 1000, 192)
    p = clf.preprocessing
    assert (p.resize_size, p.crop_size, p.mean, p.interpolation) == (248, 224, (0.5,) * 3,
                                                                      "bicubic")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(clf.head(clf.features(x)), reference(x), rtol=1e-4, atol=1e-4)


def test_timm_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"'resnet19' is not a timm model; did you mean "
                                         r"resnet18.*timm.list_models\(\)"):
        load_timm("resnet19", str(tmp_path / "x.pth"))
    with pytest.raises(ModelError, match=r"classifier.kind 'timm' \(resnet18\) needs "
                                         r"classifier.weights: the path of a local checkpoint"):
        load_timm("resnet18", None)
    with pytest.raises(ModelError, match="does not exist; give the path of a local state-dict"):
        load_timm("resnet18", str(tmp_path / "missing.pth"))


class _WithScale(nn.Module):
    """A model with a non-persistent buffer: no state dict holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.full((4,), 2.0), persistent=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)[:, :4] * self.scale)


def test_loading_skips_random_init_unless_the_model_keeps_unsaved_tensors() -> None:
    from linkstyle_core.models.pretrained import build_and_load

    state = {k: v.half() for k, v in nn.Sequential(nn.Linear(4, 3)).state_dict().items()}
    skipped = build_and_load(lambda: nn.Sequential(nn.Linear(4, 3)), state, "file", "seq")
    assert skipped[0].weight.dtype == torch.float32  # cast to the model's dtype
    torch.testing.assert_close(skipped[0].weight, state["0.weight"].float())
    source = _WithScale()
    rebuilt = build_and_load(_WithScale, source.state_dict(), "file", "with-scale")
    assert not rebuilt.scale.is_meta and torch.equal(rebuilt.scale, torch.full((4,), 2.0))
    torch.testing.assert_close(rebuilt.fc.weight, source.fc.weight)
