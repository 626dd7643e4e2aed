"""Fixtures of the StyleGAN-XL tests: a stand-in checkout, a network snapshot of it, its
generator, and plugin builds that stay in the test's own folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from linkstyle_core.models.stylegan_xl import load_stylegan_xl
from tests.fixtures.stylegan_standin import PLUGINS, write_checkout, write_network


@pytest.fixture(autouse=True)
def _isolated_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Plugin builds go to tmp_path; fake plugin modules do not outlive the test."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    yield
    for name in PLUGINS:
        sys.modules.pop(name, None)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    return write_checkout(tmp_path / "stylegan-xl")


@pytest.fixture
def network(tmp_path: Path, checkout: Path) -> Path:
    return write_network(tmp_path / "imagenet16.pkl", checkout)


@pytest.fixture
def generator(checkout: Path, network: Path):
    return load_stylegan_xl(str(network), checkout, "cpu", ops="ref")
