"""The configuration's error and the bounds its counts are checked against."""

from __future__ import annotations


class ConfigError(ValueError):
    """An analysis configuration that cannot be used; the message says which field and why."""


# Upper bounds that no real analysis reaches; they catch typos (an extra zero, 10**30) before
# anything is computed. Seeds must fit every RNG they feed (numpy, torch).
MAX_SEED = 2**32 - 1
MAX_SAMPLES = 100_000  # samples per class (stage 1 pairs, held-out, counterfactual)
MAX_COUNT = 1_000_000  # optimisation steps and the like
