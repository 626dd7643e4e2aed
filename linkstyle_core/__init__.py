"""linkstyle_core: the Linking-in-Style method as pure functions over torch and numpy.

It knows nothing of Prefect or of where artifacts live, so it can be used in a notebook.
"""

from linkstyle_core.config import AnalysisConfig, ConfigError

__all__ = ["AnalysisConfig", "ConfigError"]
