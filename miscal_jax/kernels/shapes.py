"""Smoothing kernels, written as log-weights of a squared scaled distance.

Each kernel maps ``u2 = |q - z|^2 / h^2`` to ``log K`` with ``K(0) = 1``, so a
reference point at the query counts as one whole observation. Compactly
supported kernels return ``-inf`` outside their support; the double-``where``
keeps gradients finite there and at the boundary's inside.
"""

from collections.abc import Callable

import jax.numpy as jnp

from miscal_jax._types import Array

__all__ = ["KERNELS", "get_log_kernel"]


def gaussian(u2: Array) -> Array:
    """``log K = -u2 / 2``: infinite support, the default."""
    return -0.5 * u2


def epanechnikov(u2: Array) -> Array:
    """``log K = log(1 - u2)`` on ``u2 < 1``, ``-inf`` outside (compact support)."""
    inside = u2 < 1.0
    safe = jnp.where(inside, u2, 0.0)
    return jnp.where(inside, jnp.log1p(-safe), -jnp.inf)


def triweight(u2: Array) -> Array:
    """``log K = 3 log(1 - u2)`` on ``u2 < 1``: compact and smooth at the edge."""
    return 3.0 * epanechnikov(u2)


KERNELS: dict[str, Callable[[Array], Array]] = {
    "gaussian": gaussian,
    "epanechnikov": epanechnikov,
    "triweight": triweight,
}


def get_log_kernel(name: str) -> Callable[[Array], Array]:
    """Returns the log-kernel called ``name``; raises ``ValueError`` for others."""
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(
            f"kernel: unknown kernel {name!r}; choose one of {sorted(KERNELS)}."
        ) from None
