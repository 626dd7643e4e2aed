"""runtime.compile: the classifier is torch.compiled on request, its results are cached apart
from the eager classifier's, and (slow) the compiled classifier computes the same activations."""

from __future__ import annotations

import pytest
import torch

from linkstyle_core.config import AnalysisConfig
from linkstyle_core.render import encode
from tasks.context import models_for


def _config(compile_: bool) -> AnalysisConfig:
    return AnalysisConfig(runtime={"device": "cpu", "compile": compile_})


def test_compile_is_off_by_default_and_keys_the_classifier_apart() -> None:
    assert AnalysisConfig().runtime.compile is False
    eager, compiled = models_for(_config(False)), models_for(_config(True))
    assert not hasattr(eager.classifier.features, "_torchdynamo_orig_callable")
    assert hasattr(compiled.classifier.features, "_torchdynamo_orig_callable")
    assert compiled.classifier_key != eager.classifier_key
    assert compiled.generator_key == eager.generator_key  # only the classifier is compiled


@pytest.mark.slow
def test_compiled_classifier_computes_the_same_activations() -> None:
    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    r_eager, logits_eager = encode(models_for(_config(False)).classifier, images)
    r, logits = encode(models_for(_config(True)).classifier, images)
    torch.testing.assert_close(r, r_eager, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, logits_eager, rtol=1e-4, atol=1e-4)
