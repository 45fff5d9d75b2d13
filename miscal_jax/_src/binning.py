"""Confidence binning shared by the binned metrics and the grouping-loss interval."""

import jax.numpy as jnp

from miscal_jax._types import Array

__all__ = ["bin_index"]


def bin_index(conf: Array, num_bins: int, strategy: str) -> Array:
    """``[n]`` bin ids in ``[0, num_bins)`` by equal width or equal mass."""
    if strategy == "width":
        return jnp.clip(jnp.floor(conf * num_bins).astype(jnp.int32), 0, num_bins - 1)
    if strategy == "mass":
        ranks = jnp.argsort(jnp.argsort(conf, stable=True), stable=True)
        return (ranks * num_bins // conf.shape[0]).astype(jnp.int32)
    raise ValueError(f"strategy: expected 'width' or 'mass', got {strategy!r}.")
