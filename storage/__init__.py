"""Artifact store: content-addressed stage outputs (Zarr arrays, Parquet tables) on any fsspec URI.

Knows nothing of torch models or Prefect; ``tasks`` use it to read inputs and commit outputs.
"""

from storage.keys import canonical, canonical_json, content_key
from storage.manifest import CorruptArtifact, Manifest
from storage.store import (
    Artifact,
    ArtifactInfo,
    ArtifactNotFound,
    ArtifactStore,
    ArtifactWriter,
    IncompleteArtifact,
    ShardedWriter,
)

__all__ = [
    "Artifact", "ArtifactInfo", "ArtifactNotFound", "ArtifactStore", "ArtifactWriter",
    "CorruptArtifact", "IncompleteArtifact", "Manifest", "ShardedWriter",
    "canonical", "canonical_json", "content_key",
]
