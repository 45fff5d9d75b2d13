"""Statistics on the field: heterogeneity test, intervals, regime discovery."""

from miscal_jax.stats.inference import (
    GroupingLossInterval,
    HeterogeneityTest,
    bootstrap_interval,
    grouping_loss_interval,
    heterogeneity_test,
    normal_interval,
    smooth_many,
    undersmoothed_field,
    within_bin_permutations,
)
from miscal_jax.stats.regimes import (
    Regime,
    Regimes,
    assign_regimes,
    benjamini_hochberg,
    discover_regimes,
    kmeans,
)

__all__ = (
    "GroupingLossInterval",
    "HeterogeneityTest",
    "Regime",
    "Regimes",
    "assign_regimes",
    "benjamini_hochberg",
    "bootstrap_interval",
    "discover_regimes",
    "grouping_loss_interval",
    "heterogeneity_test",
    "kmeans",
    "normal_interval",
    "smooth_many",
    "undersmoothed_field",
    "within_bin_permutations",
)
