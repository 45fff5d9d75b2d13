"""Kernel shapes and the blocked kernel-sum primitive every smoother is built on.

:func:`kernel_moments` is the one primitive (``"xla"``, ``"pallas"`` and
``"dense"`` implementations); :func:`kernel_moments_sharded` and
:func:`kernel_moments_ring` run it across devices. The Pallas kernels
(:mod:`miscal_jax.kernels.pallas_gpu`, :mod:`miscal_jax.kernels.pallas_tpu`)
are imported only when a program uses them.
"""

from miscal_jax.kernels.moments import (
    IMPLEMENTATIONS,
    KernelMoments,
    combine,
    kernel_moments,
)
from miscal_jax.kernels.shapes import (
    KERNELS,
    get_log_kernel,
)
from miscal_jax.kernels.sharded import (
    kernel_moments_ring,
    kernel_moments_sharded,
)

__all__ = (
    "IMPLEMENTATIONS",
    "KERNELS",
    "KernelMoments",
    "combine",
    "get_log_kernel",
    "kernel_moments",
    "kernel_moments_ring",
    "kernel_moments_sharded",
)
