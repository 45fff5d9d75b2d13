"""Nadaraya-Watson smoothing of residuals: the field, leave-one-out, bandwidth choice."""

from miscal_jax.smoothing.nadaraya_watson import (
    N_EFF_EPS,
    PRIOR_VAR,
    bandwidth_grid,
    field_from_moments,
    loo_errors,
    loo_field,
    nw_field,
    residual_values,
    select_bandwidth,
)

__all__ = (
    "N_EFF_EPS",
    "PRIOR_VAR",
    "bandwidth_grid",
    "field_from_moments",
    "loo_errors",
    "loo_field",
    "nw_field",
    "residual_values",
    "select_bandwidth",
)
