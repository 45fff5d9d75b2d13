"""Kernel shapes and the blocked kernel-sum primitive every smoother is built on."""

from miscal_jax.kernels.moments import (
    IMPLEMENTATIONS,
    KernelMoments,
    combine,
    kernel_moments,
    kernel_moments_sharded,
)
from miscal_jax.kernels.shapes import (
    KERNELS,
    get_log_kernel,
)

__all__ = (
    "IMPLEMENTATIONS",
    "KERNELS",
    "KernelMoments",
    "combine",
    "get_log_kernel",
    "kernel_moments",
    "kernel_moments_sharded",
)
