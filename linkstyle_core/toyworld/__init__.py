"""The bundled toy world: procedural creatures with known parts and factors (DESIGN.md).

- ``renderer``: batched, anti-aliased rendering of creatures with part label maps and
  ground-truth factors (``PARTS``, ``FACTORS``, ``SPECIES``);
- ``generator``: ``ToyGenerator``, a small style-based generator trained to reproduce it;
- ``classifier``: ``ToyClassifier``, a small ResNet that tells the species apart;
- ``train``, ``evaluate``, ``sheet``: training, quality figures and a contact sheet, as used by
  ``linkstyle toy ...``. The trained weights ship in ``weights/`` and load with
  ``linkstyle_core.models.toy.load_toy_generator`` / ``load_toy_classifier``.
"""

from linkstyle_core.toyworld.checkpoint import load_classifier, load_generator, save_checkpoint
from linkstyle_core.toyworld.classifier import ToyClassifier, ToyClassifierConfig
from linkstyle_core.toyworld.evaluate import (
    THRESHOLDS,
    check,
    evaluate,
    factor_statistics,
    format_report,
)
from linkstyle_core.toyworld.generator import ToyGenerator, ToyGeneratorConfig, one_hot
from linkstyle_core.toyworld.renderer import (
    FACTORS,
    LATENT_DIM,
    NUISANCE_FACTORS,
    PARTS,
    RESOLUTION,
    SPECIES,
    RenderOutput,
    factor_index,
    factor_ranges,
    factors_from_latent,
    infer_labels,
    part_palette,
    render,
    render_species,
    sample_factors,
    sample_latent,
    species_means,
    species_stds,
)
from linkstyle_core.toyworld.sheet import PART_COLOURS, colour_labels, write_sheet
from linkstyle_core.toyworld.train import augment, train_classifier, train_generator

__all__ = [
    "FACTORS",
    "LATENT_DIM",
    "NUISANCE_FACTORS",
    "PARTS",
    "PART_COLOURS",
    "RESOLUTION",
    "SPECIES",
    "THRESHOLDS",
    "RenderOutput",
    "ToyClassifier",
    "ToyClassifierConfig",
    "ToyGenerator",
    "ToyGeneratorConfig",
    "augment",
    "check",
    "colour_labels",
    "evaluate",
    "factor_index",
    "factor_ranges",
    "factor_statistics",
    "factors_from_latent",
    "format_report",
    "infer_labels",
    "load_classifier",
    "load_generator",
    "one_hot",
    "part_palette",
    "render",
    "render_species",
    "sample_factors",
    "sample_latent",
    "save_checkpoint",
    "species_means",
    "species_stds",
    "train_classifier",
    "train_generator",
    "write_sheet",
]
