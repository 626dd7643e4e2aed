"""The StyleGAN-XL custom-ops modes (``generator.ops``) against the stand-in checkout, with a
simulated plugin build: the patched plugin loader, cuda, ref and auto, and what the cache keys
record."""

from __future__ import annotations

import importlib
import shutil
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension

from linkstyle_core.models.errors import ModelError
from linkstyle_core.models.stylegan_ops import (
    OP_MODULES,
    ReferenceOpsWarning,
    configure_ops,
    patch_get_plugin,
)
from linkstyle_core.models.stylegan_xl import load_stylegan_xl
from tests.fixtures.stylegan_standin import (
    PLUGINS,
    Z_DIM,
    one_hot,
    op_module,
    write_checkout,
)

# ------------------------------------------------------------------ custom ops


def _fake_build(monkeypatch: pytest.MonkeyPatch, fail: str | None = None) -> list[str]:
    """Simulate torch.utils.cpp_extension.load: returns a module object (or raises), no compiler.

    The fake plugins compute with the stand-in's reference code, so results can be compared.
    """
    built: list[str] = []

    def load(name: str, sources: list[str], **kwargs) -> types.ModuleType:
        if fail:
            raise RuntimeError(f"Error building extension '{name}'\n{fail}")
        built.append(name)
        module = types.ModuleType(name)
        ops = {"bias_act_plugin": "bias_act", "upfirdn2d_plugin": "upfirdn2d",
               "filtered_lrelu_plugin": "filtered_lrelu"}
        ref = op_module(ops[name])
        module.bias_act = ref.__dict__.get("_bias_act_ref")
        module.upsample2d = ref.__dict__.get("_upsample2d_ref")
        module.filtered_lrelu = ref.__dict__.get("_filtered_lrelu_ref")
        return module

    monkeypatch.setattr(torch.utils.cpp_extension, "load", load)
    return built


def test_unpatched_plugin_loader_fails_and_the_patch_returns_the_built_module(
    generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_build(monkeypatch)
    custom_ops = importlib.import_module("torch_utils.custom_ops")
    assert not getattr(custom_ops.get_plugin, "linkstyle_patched", False)  # ops: ref
    with pytest.raises(ModuleNotFoundError, match="No module named 'bias_act_plugin'"):
        custom_ops.get_plugin("bias_act_plugin", sources=["bias_act.cpp"])

    patch_get_plugin(custom_ops)
    patched = custom_ops.get_plugin
    patch_get_plugin(custom_ops)  # idempotent
    assert custom_ops.get_plugin is patched
    plugin = custom_ops.get_plugin(module_name="bias_act_plugin", sources=["bias_act.cpp"])
    assert isinstance(plugin, types.ModuleType) and plugin.__name__ == "bias_act_plugin"
    assert sys.modules["bias_act_plugin"] is plugin
    assert torch.utils.cpp_extension.load.__name__ == "load"  # the wrapper is gone again
    assert custom_ops._cached_plugins["bias_act_plugin"] is plugin


def test_ops_cuda_builds_every_plugin(checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = _fake_build(monkeypatch)
    ops_in_use, note = configure_ops(checkout, "cuda", torch.device("cuda"))
    assert (ops_in_use, note) == ("cuda", "CUDA plugins built and loaded")
    assert built == PLUGINS
    for name in OP_MODULES:
        assert op_module(name)._init() is True
        assert op_module(name)._plugin is sys.modules[f"{name}_plugin"]


def test_ops_ref_forces_the_reference_path_and_can_be_undone(
    checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = _fake_build(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ref is a choice: no warning
        assert configure_ops(checkout, "ref", torch.device("cuda"))[0] == "ref"
    assert all(op_module(name)._init() is False for name in OP_MODULES) and built == []
    assert configure_ops(checkout, "auto", torch.device("cuda"))[0] == "cuda"
    assert all(op_module(name)._init() is True for name in OP_MODULES) and built == PLUGINS


def test_ops_auto_falls_back_with_the_expected_slowdown_when_building_fails(
    checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_build(monkeypatch, fail="nvcc: command not found")
    with pytest.warns(ReferenceOpsWarning, match=r"building the bias_act plugin failed: "
                                                 r"RuntimeError: nvcc: command not found.*"
                                                 r"about 8-11x slower"):
        ops_in_use, note = configure_ops(checkout, "auto", torch.device("cuda"))
    assert ops_in_use == "ref" and "nvcc" in note
    assert all(op_module(name)._init() is False for name in OP_MODULES)


def test_ops_cuda_is_an_error_when_building_fails(
    checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_build(monkeypatch, fail="nvcc: command not found")
    with pytest.raises(ModelError, match=r"generator.ops 'cuda': StyleGAN-XL's CUDA plugins cannot "
                                         r"be built: building the bias_act plugin failed.*nvcc.*"
                                         r"set generator.ops to auto or ref"):
        configure_ops(checkout, "cuda", torch.device("cuda"))


def test_incomplete_checkout(tmp_path: Path, network: Path) -> None:
    bare = write_checkout(tmp_path / "no-torch-utils", ops=False)
    with pytest.raises(ModelError, match=r"importing its legacy.py failed \(ModuleNotFoundError: "
                                         r"No module named 'torch_utils'\); the checkout .* has "
                                         r"no module 'torch_utils': it is incomplete"):
        load_stylegan_xl(str(network), bare, ops="ref")


def test_ops_auto_without_a_cuda_device_warns_and_uses_the_reference_ops(
    checkout: Path, network: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = _fake_build(monkeypatch)
    with pytest.warns(ReferenceOpsWarning, match=r"the device is cpu, not a CUDA device\); "
                                                 r"using the pure-PyTorch reference ops instead: "
                                                 r"synthesis with the reference ops is about "
                                                 r"8-11x slower"):
        g = load_stylegan_xl(str(network), checkout, "cpu", ops="auto")
    assert g.ops_in_use == "ref" and built == []
    before = dict(op_module("bias_act").CALLS)
    g.synthesis(g.mapping(torch.randn(2, Z_DIM), one_hot([0, 1])))
    assert op_module("bias_act").CALLS["ref"] > before["ref"]
    assert op_module("bias_act").CALLS["cuda"] == before["cuda"] == 0


def test_ops_cuda_without_a_cuda_device(checkout: Path, network: Path) -> None:
    with pytest.raises(ModelError, match="generator.ops 'cuda' needs a CUDA device but the device "
                                         "is cpu, not a CUDA device; set runtime.device to cuda"):
        load_stylegan_xl(str(network), checkout, "cpu", ops="cuda")


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("c++") and shutil.which("ninja")),
                    reason="needs a C++ compiler and ninja")
def test_real_extension_build_imports_only_when_patched(
    tmp_path: Path, checkout: Path, generator
) -> None:
    """A real (C++) torch extension built through the stand-in get_plugin on this PyTorch:
    importing it by name fails, as with StyleGAN-XL's plugins; patched, the module works."""
    src = tmp_path / "probe"
    src.mkdir()
    (src / "probe.cpp").write_text(
        "#include <torch/extension.h>\n"
        "torch::Tensor twice(torch::Tensor x) { return x * 2; }\n"
        "PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def(\"twice\", &twice); }\n"
    )
    custom_ops = importlib.import_module("torch_utils.custom_ops")
    with pytest.raises(ModuleNotFoundError, match="No module named 'linkstyle_probe_plugin'"):
        custom_ops.get_plugin("linkstyle_probe_plugin", sources=["probe.cpp"],
                              source_dir=str(src))
    patch_get_plugin(custom_ops)
    try:
        plugin = custom_ops.get_plugin("linkstyle_probe_plugin", sources=["probe.cpp"],
                                       source_dir=str(src))
        assert torch.equal(plugin.twice(torch.ones(3)), torch.full((3,), 2.0))
    finally:
        sys.modules.pop("linkstyle_probe_plugin", None)


@pytest.mark.gpu
def test_ops_cuda_runs_synthesis_on_the_plugins(
    checkout: Path, network: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = load_stylegan_xl(str(network), checkout, "cuda", ops="ref")
    z, c = torch.randn(4, Z_DIM, device="cuda"), one_hot([0, 1, 2, 0]).cuda()
    expected = reference.synthesis(reference.mapping(z, c, 0.7))
    built = _fake_build(monkeypatch)
    g = load_stylegan_xl(str(network), checkout, "cuda", ops="cuda")
    assert g.ops_in_use == "cuda" and built == PLUGINS
    before = op_module("bias_act").CALLS["cuda"]
    torch.testing.assert_close(g.synthesis(g.mapping(z, c, 0.7)), expected)
    assert op_module("bias_act").CALLS["cuda"] > before


def test_cache_keys_follow_the_ops_that_run_not_the_ops_asked_for(generator) -> None:
    import json

    from linkstyle_core.config import GeneratorConfig
    from linkstyle_core.models.registry import fingerprint
    from tasks.context import key_spec

    def key(ops: str, used: str) -> str:
        spec = GeneratorConfig(kind="stylegan-xl", network="net.pkl", source="checkout",
                               ops=ops).model_dump_json()
        generator.ops_in_use = used
        return fingerprint(generator, key_spec(spec, generator))

    try:
        assert key("auto", "ref") == key("ref", "ref")  # a CPU: the reference ops either way
        assert key("auto", "cuda") != key("ref", "ref")  # a GPU: the plugins differ
    finally:
        generator.ops_in_use = "ref"
    toy = GeneratorConfig().model_dump_json()
    assert key_spec(toy, object()) == toy  # other generators: the config as it is
    assert json.loads(key_spec(toy, generator)).get("ops", "ref") == "ref"
