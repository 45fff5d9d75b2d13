"""Calibration and discrimination metrics, global and local."""

from miscal_jax.metrics.calibration import (
    GroupingLoss,
    auroc,
    brier,
    ecce,
    ece,
    ece_floor,
    grouping_loss,
    local_calibration_error,
    nll,
    regional_error,
    smooth_ece,
    smooth_ece_bandwidth,
    smooth_ece_sigma,
)

__all__ = (
    "GroupingLoss",
    "auroc",
    "brier",
    "ecce",
    "ece",
    "ece_floor",
    "grouping_loss",
    "local_calibration_error",
    "nll",
    "regional_error",
    "smooth_ece",
    "smooth_ece_bandwidth",
    "smooth_ece_sigma",
)
