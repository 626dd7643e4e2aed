"""The bundled toy models (DESIGN.md, "The bundled toy world"): load them from the package.

The weight files live in ``linkstyle_core/toyworld/weights/`` and are read through
``importlib.resources``, so they work from a source checkout, an installed wheel or a zip
without any download. ``linkstyle toy train-generator`` / ``train-classifier`` rebuild them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from linkstyle_core.toyworld.checkpoint import load_classifier, load_generator
from linkstyle_core.toyworld.classifier import ToyClassifier
from linkstyle_core.toyworld.generator import ToyGenerator

GENERATOR_FILE = "generator.pt"
CLASSIFIER_FILE = "classifier.pt"
BUNDLED_CLASSIFIERS = {"mixed": ("classifier-mixed.pt", 0.1),
                       "ordinary": ("classifier-ordinary.pt", 0.0)}
"""Other toy classifiers that ship with the package, by the name ``classifier.weights`` gives
them, with the invariance they were trained with (800 steps, seed 7): ``mixed`` (0.1), of whose
units only about a quarter follow one part, and ``ordinary`` (0), trained without any pull
towards part-selective units, none of whose units is part-selective (docs/toyworld.md)."""
_WEIGHTS_PACKAGE = "linkstyle_core.toyworld"


def bundled_weights_path(name: str) -> Path:
    """Where bundled weight file ``name`` lives (whether or not it exists yet)."""
    # The package is a plain folder in every supported install, so the traversable is a path.
    return Path(str(resources.files(_WEIGHTS_PACKAGE).joinpath("weights", name)))


def bundled_file(name: str, command: str) -> Path:
    """Path of bundled weight file ``name``; a clear error naming the fix if it is missing."""
    path = bundled_weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"bundled toy weights not found: {path}. Rebuild them with `{command}` "
            "(writes linkstyle_core/toyworld/weights/)."
        )
    return path


def toy_generator_path() -> Path:
    """Path of the bundled toy generator weights (raises ``FileNotFoundError`` if missing)."""
    return bundled_file(GENERATOR_FILE, "linkstyle toy train-generator")


def toy_classifier_path() -> Path:
    """Path of the bundled toy classifier weights (raises ``FileNotFoundError`` if missing)."""
    return bundled_file(CLASSIFIER_FILE, "linkstyle toy train-classifier")


def toy_classifier_file(weights: str | None) -> Path:
    """The toy classifier weight file ``classifier.weights`` names: the bundled classifier
    (None), a bundled variant by name (``BUNDLED_CLASSIFIERS``) or a file path."""
    if not weights:
        return toy_classifier_path()
    if weights in BUNDLED_CLASSIFIERS:
        name, invariance = BUNDLED_CLASSIFIERS[weights]
        return bundled_file(name, f"linkstyle toy train-classifier --invariance {invariance} "
                        f"--seed 7 --out {name}")
    return Path(weights).expanduser()


def load_toy_generator(device: str | torch.device = "cpu") -> ToyGenerator:
    """The bundled ``ToyGenerator`` (``Generator`` protocol), eval mode, no gradients."""
    return load_generator(toy_generator_path(), device=device)


def load_toy_classifier(device: str | torch.device = "cpu") -> ToyClassifier:
    """The bundled ``ToyClassifier`` (``Classifier`` protocol), eval mode, no gradients."""
    return load_classifier(toy_classifier_path(), device=device)
