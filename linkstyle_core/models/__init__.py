"""Model interfaces and adapters: the Generator and Classifier protocols and their loaders."""

from linkstyle_core.models.protocols import Classifier, Generator

__all__ = ["Classifier", "Generator"]
