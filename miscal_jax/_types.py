"""Type aliases and the small pytrees shared between stages."""

from typing import Any, NamedTuple

import jax
from jax.typing import ArrayLike

Array = jax.Array
PRNGKey = jax.Array
Params = Any

__all__ = ["Array", "ArrayLike", "FieldEstimate", "PRNGKey", "Params"]


class FieldEstimate(NamedTuple):
    """A smoothed residual field evaluated at query points.

    Attributes:
      value: ``[q]`` estimate of ``E[correct - conf | x]`` at each query.
      se: ``[q]`` standard error of ``value`` (kernel-weighted residual variance
        over the effective sample size, never below a one-pseudo-point floor).
      n_eff: ``[q]`` effective sample size; tends to 0 for queries with no
        reference point within a few bandwidths.
    """

    value: Array
    se: Array
    n_eff: Array
