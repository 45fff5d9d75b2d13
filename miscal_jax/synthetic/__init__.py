"""Synthetic data with a planted miscalibration field, and confounded nulls."""

from miscal_jax.synthetic.planted import (
    ConfoundedPanel,
    PlantedData,
    make_confounded_null,
    make_confounded_panel,
    make_planted,
)

__all__ = (
    "ConfoundedPanel",
    "PlantedData",
    "make_confounded_null",
    "make_confounded_panel",
    "make_planted",
)
