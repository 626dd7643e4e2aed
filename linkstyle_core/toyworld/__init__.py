"""The bundled toy world: procedural creatures with known parts and factors (DESIGN.md).

- ``factors``: the world's parts, species and factors (``PARTS``, ``SPECIES``, ``FACTORS``) and
  how factors follow from latents;
- ``renderer``: batched, anti-aliased rendering of creatures with part label maps;
- ``generator``: ``ToyGenerator``, a small style-based generator trained to reproduce it;
- ``classifier``: ``ToyClassifier``, a small ResNet that tells the species apart;
- ``footprint``: where each factor's change lands in the image (the renderer's ground truth);
- ``ground_truth``: the interventional ground truth of the classifier's units, shipped with
  its weights;
- ``train``, ``evaluate`` (with ``image_statistics``), ``sheet``: training, quality figures
  and a contact sheet, as used by
  ``linkstyle toy ...``. The trained weights ship in ``weights/`` and load with
  ``linkstyle_core.models.toy.load_toy_generator`` / ``load_toy_classifier``.
"""

from linkstyle_core.toyworld.checkpoint import (
    load_classifier,
    load_generator,
    read_ground_truth,
    save_checkpoint,
)
from linkstyle_core.toyworld.classifier import ToyClassifier, ToyClassifierConfig
from linkstyle_core.toyworld.evaluate import THRESHOLDS, check, evaluate, format_report
from linkstyle_core.toyworld.factors import (
    FACTOR_PARTS,
    FACTORS,
    LATENT_DIM,
    NUISANCE_FACTORS,
    PARTS,
    SPECIES,
    factor_index,
    factor_ranges,
    factors_from_latent,
    sample_factors,
    sample_latent,
    species_means,
    species_stds,
)
from linkstyle_core.toyworld.footprint import factor_footprints
from linkstyle_core.toyworld.generator import ToyGenerator, ToyGeneratorConfig, one_hot
from linkstyle_core.toyworld.ground_truth import (
    GROUND_TRUTH_PARTS,
    MIXED_CONCENTRATION,
    SELECTIVE_CONCENTRATION,
    ground_truth_table,
    load_ground_truth,
    measure_ground_truth,
    summarize_ground_truth,
)
from linkstyle_core.toyworld.image_statistics import factor_statistics
from linkstyle_core.toyworld.renderer import (
    RESOLUTION,
    RenderOutput,
    infer_labels,
    part_palette,
    render,
    render_species,
)
from linkstyle_core.toyworld.sheet import PART_COLOURS, colour_labels, write_sheet
from linkstyle_core.toyworld.train import augment, train_classifier, train_generator

__all__ = [
    "FACTORS",
    "FACTOR_PARTS",
    "GROUND_TRUTH_PARTS",
    "SELECTIVE_CONCENTRATION",
    "LATENT_DIM",
    "MIXED_CONCENTRATION",
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
    "factor_footprints",
    "factor_index",
    "factor_ranges",
    "factor_statistics",
    "factors_from_latent",
    "format_report",
    "ground_truth_table",
    "infer_labels",
    "load_classifier",
    "load_generator",
    "load_ground_truth",
    "measure_ground_truth",
    "one_hot",
    "part_palette",
    "read_ground_truth",
    "render",
    "render_species",
    "sample_factors",
    "sample_latent",
    "save_checkpoint",
    "species_means",
    "species_stds",
    "summarize_ground_truth",
    "train_classifier",
    "train_generator",
    "write_sheet",
]
