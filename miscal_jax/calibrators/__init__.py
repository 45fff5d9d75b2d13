"""Global recalibration maps: temperature, Platt, isotonic, histogram binning."""

from miscal_jax.calibrators.global_maps import (
    FIT_PAD,
    MAX_KNOTS,
    HistogramState,
    IsotonicState,
    PlattState,
    TemperatureState,
    apply_histogram,
    apply_isotonic,
    apply_platt,
    apply_temperature,
    fit_histogram,
    fit_isotonic,
    fit_platt,
    fit_temperature,
    logit,
)

__all__ = (
    "FIT_PAD",
    "HistogramState",
    "IsotonicState",
    "MAX_KNOTS",
    "PlattState",
    "TemperatureState",
    "apply_histogram",
    "apply_isotonic",
    "apply_platt",
    "apply_temperature",
    "fit_histogram",
    "fit_isotonic",
    "fit_platt",
    "fit_temperature",
    "logit",
)
