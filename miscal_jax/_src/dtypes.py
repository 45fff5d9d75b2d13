"""The one dtype policy of the core.

Every routine computes in JAX's default float dtype: float32, or float64 when
``jax_enable_x64`` is on. Lower-precision inputs (bfloat16, float16) are
raised to it on entry, so sums and fits never accumulate in half precision;
integer and boolean inputs (outcomes, masks) are converted to it. The kernel
primitive (:func:`~miscal_jax.kernels.kernel_moments`) alone keeps bfloat16
operands for speed, with float32 accumulators.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = ["as_float", "float_dtype"]


def float_dtype() -> np.dtype:
    """float32, or float64 under ``jax_enable_x64``.

    Examples:
      >>> float_dtype()
      dtype('float32')
    """
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def as_float(x: ArrayLike) -> jax.Array:
    """``x`` as an array of :func:`float_dtype` (any shape).

    Examples:
      >>> import jax.numpy as jnp
      >>> as_float(jnp.array([1, 0], jnp.int32)).dtype, as_float(jnp.ones(2, jnp.bfloat16)).dtype
      (dtype('float32'), dtype('float32'))
    """
    return jnp.asarray(x, float_dtype())
