"""Differentiable training losses: the local calibration penalty."""

from miscal_jax.losses.penalty import (
    ESTIMATORS,
    local_calibration_penalty,
)

__all__ = (
    "ESTIMATORS",
    "local_calibration_penalty",
)
