"""The StyleGAN-XL adapter against a stand-in checkout (tests/fixtures/stylegan_standin.py):
loading G_ema from a training snapshot whose D cannot load, truncation, synthesis switches,
feature hooks and their image windows, and every failure path of loading."""

from __future__ import annotations

import importlib
import logging
import sys
import types
from pathlib import Path

import fsspec
import pytest
import torch
import torch.utils.cpp_extension

from linkstyle_core.models.errors import ModelError
from linkstyle_core.models.registry import check_protocol
from linkstyle_core.models.stylegan_checkout import missing_package_hint
from linkstyle_core.models.stylegan_xl import load_stylegan_xl
from tests.fixtures.stylegan_standin import (
    C_DIM,
    D_PACKAGE,
    LAYER_NAMES,
    MARGIN,
    NUM_WS,
    RES,
    W_DIM,
    Z_DIM,
    one_hot,
    op_module,
    write_checkout,
    write_network,
)

# ------------------------------------------------------------------ loading


def test_loads_g_ema_from_a_snapshot_whose_discriminator_cannot_load(
    generator, checkout: Path, network: Path, caplog: pytest.LogCaptureFixture
) -> None:
    check_protocol(generator, "generator")
    dims = (generator.z_dim, generator.c_dim, generator.w_dim, generator.num_ws,
            generator.resolution)
    assert dims == (Z_DIM, C_DIM, W_DIM, NUM_WS, RES)
    # D's code needs a package that is not installed here: D is left out, G_ema loads anyway
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(D_PACKAGE)
    with pytest.raises(ModuleNotFoundError, match=D_PACKAGE):
        importlib.import_module("pg_modules.discriminator")
    with caplog.at_level(logging.INFO, logger="linkstyle_core.models.stylegan_checkout"):
        again = load_stylegan_xl(str(network), checkout, ops="ref")
    assert "left D unloaded (only G_ema is used)" in caplog.text
    # the network's classes were rebuilt from the source in the pickle, and that source
    # imports the checkout on disk (not a copy in this project)
    source = (checkout / "training" / "networks_standin.py").read_text()
    assert type(generator.G)._orig_module_src == source
    assert Path(sys.modules["legacy"].__file__).is_relative_to(checkout.resolve())
    assert Path(op_module("bias_act").__file__).is_relative_to(checkout.resolve())
    assert generator.ops_in_use == "ref"
    assert not any(p.requires_grad for p in generator.parameters())
    ws = generator.mapping(torch.randn(2, Z_DIM), one_hot([0, 1]))
    torch.testing.assert_close(again.synthesis(ws), generator.synthesis(ws))


def test_g_ema_needing_a_missing_package_names_it_and_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_checkout(tmp_path / "needs", network_imports=["tinyfilters"])
    net = write_network(tmp_path / "needs.pkl", source, installed=["tinyfilters"])
    with pytest.raises(ModelError, match=r"G_ema \(Generator\) cannot be rebuilt "
                                         r"\(ModuleNotFoundError: No module named 'tinyfilters'\); "
                                         r"the package 'tinyfilters' is not installed: "
                                         r"pip install tinyfilters"):
        load_stylegan_xl(str(net), source, ops="ref")
    # dill wrote the snapshot and stores G_ema's numpy arrays through its own functions
    net = write_network(tmp_path / "dill.pkl", write_checkout(tmp_path / "sg"))
    monkeypatch.setitem(sys.modules, "dill", None)
    monkeypatch.setitem(sys.modules, "dill._dill", None)
    with pytest.raises(ModelError, match=r"G_ema\.synthesis\.input\.size "
                                         r"\(dill\._dill\._create_array\) cannot be rebuilt .*"
                                         r"the package 'dill' is not installed: "
                                         r"pip install 'linkstyle\[stylegan-xl\]'"):
        load_stylegan_xl(str(net), tmp_path / "sg", ops="ref")


class _DillType:
    """An object of a type dill writes as ``dill._dill._load_type(...)`` and then calls, as it
    does for some of a real snapshot's D (torch and timm internals)."""

    def __reduce__(self) -> tuple:
        return (types.ModuleType, ("placeholder",))


def test_a_snapshot_whose_d_needs_dill_names_dill_when_it_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dill missing: the objects dill rebuilds by calling what ``_load_type`` returns made the
    unpickling fail with "'Unloadable__load_type' object is not callable"; the placeholders are
    callable now, the whole snapshot loads, and the message names dill and the extra."""
    net = write_network(tmp_path / "d.pkl", write_checkout(tmp_path / "sg"),
                        replace={"D": [_DillType(), _DillType()]})
    monkeypatch.setitem(sys.modules, "dill", None)
    monkeypatch.setitem(sys.modules, "dill._dill", None)
    with pytest.raises(ModelError) as raised:
        load_stylegan_xl(str(net), tmp_path / "sg", ops="ref")
    message = str(raised.value)
    assert "not callable" not in message
    assert "the package 'dill' is not installed: pip install 'linkstyle[stylegan-xl]'" in message


def test_legacy_needing_a_missing_package_names_it(tmp_path: Path, network: Path) -> None:
    source = write_checkout(tmp_path / "needs", legacy_imports=["tinyfilters"])
    with pytest.raises(ModelError, match=r"importing its legacy.py failed \(ModuleNotFoundError: "
                                         r"No module named 'tinyfilters'\); the package "
                                         r"'tinyfilters' is not installed: pip install "
                                         r"tinyfilters"):
        load_stylegan_xl(str(network), source, ops="ref")


def test_missing_package_hints(tmp_path: Path) -> None:
    def hint(name: str) -> str:
        return missing_package_hint(ModuleNotFoundError(f"No module named {name!r}", name=name),
                                    tmp_path)

    assert hint("click") == "the package 'click' is not installed: " \
                            "pip install 'linkstyle[stylegan-xl]'"
    assert hint("PIL.Image").endswith("pip install pillow")
    assert "the checkout" in hint("torch_utils.ops") and "incomplete" in hint("training.x")
    assert missing_package_hint(ValueError("bad"), tmp_path) == ""


def test_network_can_come_from_a_uri_through_an_opener(checkout: Path, network: Path) -> None:
    with fsspec.open("memory://nets/imagenet16.pkl", "wb") as f:
        f.write(network.read_bytes())
    g = load_stylegan_xl("memory://nets/imagenet16.pkl", checkout, ops="ref", open_uri=fsspec.open)
    assert g.c_dim == C_DIM
    with pytest.raises(ModelError, match="'memory://nets/gone.pkl' does not exist"):
        load_stylegan_xl("memory://nets/gone.pkl", checkout, ops="ref", open_uri=fsspec.open)
    with pytest.raises(ModelError, match="is a URI, but no URI opener was given"):
        load_stylegan_xl("memory://nets/imagenet16.pkl", checkout, ops="ref")


def test_a_second_checkout_replaces_the_first(tmp_path: Path, generator) -> None:
    other = write_checkout(tmp_path / "other-checkout")
    g2 = load_stylegan_xl(str(write_network(tmp_path / "seed1.pkl", other, seed=1)), other,
                          ops="ref")
    assert Path(sys.modules["legacy"].__file__).is_relative_to(other.resolve())
    assert str((tmp_path / "stylegan-xl").resolve()) not in sys.path
    z, c = torch.randn(2, Z_DIM), one_hot([0, 1])
    assert not torch.equal(g2.mapping(z, c), generator.mapping(z, c))
    # the first network still works: it holds its own modules
    assert generator.synthesis(generator.mapping(z, c)).shape == (2, 3, RES, RES)


# ------------------------------------------------------------------ mapping and truncation


def test_mapping_truncates_towards_the_class_average(generator) -> None:
    z, labels = torch.randn(6, Z_DIM), [0, 1, 2, 2, 1, 0]
    c = one_hot(labels)
    raw = generator.G.mapping(z, c, truncation_psi=1)
    torch.testing.assert_close(generator.mapping(z, c), raw)
    w_avg = generator.G.mapping.w_avg  # [c_dim, w_dim], one average per class
    assert w_avg.shape == (C_DIM, W_DIM)
    avg = w_avg[labels].unsqueeze(1)
    torch.testing.assert_close(generator.mapping(z, c, 0.5), avg + 0.5 * (raw - avg))
    torch.testing.assert_close(generator.mapping(z, c, 0.0), avg.expand(-1, NUM_WS, -1))


def test_mapping_handles_a_single_w_avg(tmp_path: Path, checkout: Path) -> None:
    net = write_network(tmp_path / "single.pkl", checkout, per_class_w_avg=False)
    g = load_stylegan_xl(str(net), checkout, ops="ref")
    assert g.G.mapping.w_avg.shape == (W_DIM,)
    z, c = torch.randn(3, Z_DIM), one_hot([0, 1, 2])
    raw = g.mapping(z, c)
    expected = g.G.mapping.w_avg + 0.7 * (raw - g.G.mapping.w_avg)
    torch.testing.assert_close(g.mapping(z, c, 0.7), expected)


def test_mapping_stays_fp32_under_autocast(generator) -> None:
    z, c = torch.randn(2, Z_DIM), one_hot([0, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ws = generator.mapping(z, c, 0.7)
    assert ws.dtype == torch.float32
    torch.testing.assert_close(ws, generator.mapping(z, c, 0.7))


# ------------------------------------------------------------------ synthesis and features


def test_synthesis_uses_constant_noise_and_the_fp32_switch(generator) -> None:
    ws = generator.mapping(torch.randn(2, Z_DIM), one_hot([0, 2]), 0.7)
    calls = generator.G.synthesis.calls
    images = generator.synthesis(ws)
    assert images.shape == (2, 3, RES, RES) and images.dtype == torch.float32
    assert calls[-1] == {"noise_mode": "const", "force_fp32": True}  # runtime.precision fp32
    torch.testing.assert_close(generator.synthesis(ws), images, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # runtime.precision fp16/bf16
        mixed = generator.synthesis(ws)
        assert calls[-1] == {"noise_mode": "const", "force_fp32": False}
        generator.force_fp32 = True
        generator.synthesis(ws)
        assert calls[-1]["force_fp32"] is True
    # autocast is off inside: mixed precision is only the network's own fp16 layers (CUDA)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, images)


def test_features_are_every_synthesis_layer_in_order_cropped_to_the_image(generator) -> None:
    ws = generator.mapping(torch.randn(2, Z_DIM), one_hot([1, 2]), 0.7)
    maps = generator.features(ws)
    synthesis = generator.G.synthesis
    assert synthesis.layer_names == LAYER_NAMES
    # the layers compute on canvases 2 * MARGIN wider than the image, up to the last two
    assert [int(layer.out_size[0]) for layer in generator.synthesis_layers()[1:]] == \
        [16 + 2 * MARGIN, 16 + 2 * MARGIN, 16, 16]
    assert [tuple(m.shape) for m in maps] == [
        (2, 16, 8, 8), (2, 16, 16, 16), (2, 16, 16, 16), (2, 16, 16, 16), (2, 3, 16, 16)
    ]
    torch.testing.assert_close(maps[-1] * synthesis.output_scale, generator.synthesis(ws))
    layers = list(synthesis.children())
    assert all(not layer._forward_hooks for layer in layers)  # hooks removed afterwards


def _whole_maps(generator, ws: torch.Tensor) -> list[torch.Tensor]:
    maps: list[torch.Tensor] = []
    handles = [layer.register_forward_hook(lambda m, i, out: maps.append(out.float()))
               for layer in generator.synthesis_layers()]
    try:
        generator.synthesis(ws)
    finally:
        for handle in handles:
            handle.remove()
    return maps


def _read_out_r2(maps: torch.Tensor, images: torch.Tensor) -> float:
    """R² on held-out images of a per-pixel linear read-out of the image from ``maps``,
    resized to the image as the segmenter does."""
    x = torch.nn.functional.interpolate(maps, size=images.shape[-2:], mode="bilinear",
                                        align_corners=False)
    x = torch.cat([x, torch.ones_like(x[:, :1])], 1).permute(0, 2, 3, 1).flatten(1, 2)
    y = images.permute(0, 2, 3, 1).flatten(1, 2)
    half = len(images) // 2
    a, b = x[:half].flatten(0, 1).double(), y[:half].flatten(0, 1).double()
    coef = torch.linalg.solve(a.T @ a + 1e-3 * torch.eye(a.shape[1], dtype=a.dtype), a.T @ b)
    test_x, test_y = x[half:].flatten(0, 1).double(), y[half:].flatten(0, 1).double()
    residual = (test_y - test_x @ coef).square().sum()
    return float(1 - residual / (test_y - test_y.mean(0)).square().sum())


def test_aligned_feature_maps_read_out_the_image_better_than_whole_ones(generator) -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(96) % C_DIM
    ws = generator.mapping(torch.randn(96, Z_DIM, generator=g), one_hot(labels.tolist()), 0.7)
    images, aligned = generator.synthesis_with_features(ws)
    whole = _whole_maps(generator, ws)
    compared = 0
    for crop, full in zip(aligned, whole, strict=True):
        if crop.shape == full.shape:  # image-sized layers: nothing to align
            torch.testing.assert_close(crop, full)
            continue
        assert full.shape[-1] - crop.shape[-1] == 2 * MARGIN
        r2_aligned, r2_whole = _read_out_r2(crop, images), _read_out_r2(full, images)
        assert r2_aligned > r2_whole + 0.1, (tuple(full.shape), r2_aligned, r2_whole)
        compared += 1
    assert compared == 3  # the input layer and the two layers with margins


def test_stage_3_renders_images_and_features_in_one_synthesis_pass(generator, monkeypatch) -> None:
    from linkstyle_core.tuning import render_with_features

    ws = generator.mapping(torch.randn(3, Z_DIM), one_hot([0, 1, 2]), 0.7)
    expected_images, expected_maps = generator.synthesis(ws), generator.features(ws)
    calls = []
    forward = generator.G.synthesis.forward
    monkeypatch.setattr(generator.G.synthesis, "forward",
                        lambda *a, **k: calls.append(1) or forward(*a, **k))
    images, maps = render_with_features(generator, ws)  # what stage 3 runs per batch
    assert len(calls) == 1
    torch.testing.assert_close(images, expected_images.clamp(-1, 1))
    assert len(maps) == len(expected_maps)
    for got, want in zip(maps, expected_maps, strict=True):
        torch.testing.assert_close(got, want)
    assert all(not layer._forward_hooks for layer in generator.G.synthesis.children())


# ------------------------------------------------------------------ failures


def test_no_checkout(tmp_path: Path, network: Path) -> None:
    with pytest.raises(ModelError, match="is not a folder: it must be the path of your "
                                         "StyleGAN-XL code checkout") as err:
        load_stylegan_xl(str(network), tmp_path / "nowhere", ops="ref")
    assert "nowhere" in str(err.value) and "autonomousvision/stylegan-xl" in str(err.value)


def test_checkout_without_the_loader(tmp_path: Path, network: Path, generator) -> None:
    # a complete checkout was imported before: its legacy module must not be reused
    broken = write_checkout(tmp_path / "no-loader", loader=False)
    with pytest.raises(ModelError, match="has no legacy.py, so it is not a StyleGAN-XL checkout"):
        load_stylegan_xl(str(network), broken, ops="ref")


def test_checkout_without_dnnlib(tmp_path: Path, network: Path) -> None:
    broken = write_checkout(tmp_path / "no-dnnlib", dnnlib=False)
    with pytest.raises(ModelError, match=r"has no dnnlib package \(dnnlib/__init__.py\)"):
        load_stylegan_xl(str(network), broken, ops="ref")


def test_missing_pickle(tmp_path: Path, checkout: Path) -> None:
    missing = tmp_path / "nets" / "imagenet256.pkl"
    with pytest.raises(ModelError, match="does not exist; point it at your StyleGAN-XL network "
                                         "pickle") as err:
        load_stylegan_xl(str(missing), checkout, ops="ref")
    assert str(missing) in str(err.value)


def test_pickle_without_g_ema(tmp_path: Path, checkout: Path) -> None:
    net = write_network(tmp_path / "no-ema.pkl", checkout, g_ema=False)
    with pytest.raises(ModelError, match=r"holds no 'G_ema' network \(found: \['D', 'G', "
                                         r"'augment_pipe', 'progress', "
                                         r"'training_set_kwargs'\]\)"):
        load_stylegan_xl(str(net), checkout, ops="ref")


def test_unreadable_pickle(tmp_path: Path, checkout: Path) -> None:
    net = tmp_path / "corrupt.pkl"
    net.write_bytes(b"\x80\x04 not a network")
    with pytest.raises(ModelError, match=r"could not be unpickled with the code in .*stylegan-xl"
                                         r"' \(.*\); is it a StyleGAN-XL network pickle"):
        load_stylegan_xl(str(net), checkout, ops="ref")


def test_unknown_ops_mode(checkout: Path, network: Path) -> None:
    with pytest.raises(ModelError, match="generator.ops must be auto, cuda or ref, got 'fast'"):
        load_stylegan_xl(str(network), checkout, ops="fast")
