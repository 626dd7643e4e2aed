"""Artifact store: content-addressed stage outputs (Zarr arrays, Parquet tables) on any fsspec URI.

Knows nothing of torch models or Prefect; ``tasks`` use it to read inputs and commit outputs.
Modules, each importing only those before it: ``errors``, ``keys`` (content keys), ``layout``
(names under a root, the stage names), ``manifest``, ``integrity`` (file sizes and checksums),
``links``, ``lease``, ``root`` (the on-disk format of one root: what is committed, valid,
stale), ``runfiles`` (the catalog's files), ``artifact`` (reading), ``writer`` (writing and
commit), ``listing`` (status and clean-up), ``store`` (``ArtifactStore``, the façade), and
above it ``catalog`` (the runs).
"""

from storage.artifact import Artifact
from storage.errors import ArtifactNotFound, CorruptArtifact, IncompleteArtifact, NotAnArtifactRoot
from storage.keys import canonical, canonical_json, content_key
from storage.layout import ROOT_MARKER, STAGE_NAMES
from storage.listing import ArtifactInfo
from storage.manifest import Manifest
from storage.store import ArtifactStore
from storage.writer import ArtifactWriter, ShardedWriter

__all__ = [
    "ROOT_MARKER", "STAGE_NAMES",
    "Artifact", "ArtifactInfo", "ArtifactNotFound", "ArtifactStore", "ArtifactWriter",
    "CorruptArtifact", "IncompleteArtifact", "Manifest", "NotAnArtifactRoot", "ShardedWriter",
    "canonical", "canonical_json", "content_key",
]
