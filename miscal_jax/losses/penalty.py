"""A differentiable local-calibration penalty for training loops.

With residuals ``r_i = correct_i - conf_i`` and a kernel ``K_ij`` on a fixed
geometry ``z`` (an embedding of the inputs), the penalty is one of

- ``"ustat"``: the unbiased U-statistic
  ``sum_{i != j} r_i r_j K_ij / (n (n - 1))``. Its expectation is
  ``E[delta(X) delta(X') K(X, X')]`` with ``delta(x) = E[correct - conf | x]``,
  which for a characteristic kernel (the Gaussian) is zero exactly when the
  model is locally calibrated, and the estimate is unbiased on every
  mini-batch, so stochastic gradients are unbiased too. A single batch may
  give a negative value.
- ``"loo"``: ``mean_i r_i delta_hat_{-i}(z_i)``, each residual times the
  leave-one-out Nadaraya-Watson field at its own point. It is the U-statistic
  with each row normalised by its kernel mass, so sparse regions weigh as
  much as dense ones; it is biased (a ratio) but scale-free in the bandwidth.

Gradients flow to ``conf`` (the user's model). The geometry ``z`` and the
bandwidth are wrapped in :func:`jax.lax.stop_gradient` unless
``stop_geometry=False``. Small batches use a dense ``[n, n]`` kernel matrix;
above ``dense_max`` items the sums go through
:func:`miscal_jax.kernels.kernel_moments`, whose memory is bounded by its
block sizes in both the forward and the reverse pass.
"""

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from miscal_jax._types import Array
from miscal_jax.kernels.moments import kernel_moments
from miscal_jax.kernels.shapes import get_log_kernel

__all__ = ["ESTIMATORS", "local_calibration_penalty"]

#: Estimator names accepted by :func:`local_calibration_penalty`.
ESTIMATORS = ("ustat", "loo")


def _dense_moments(z: Array, values: Array, log_bandwidth: Array, valid: Array, kernel: str):
    """``(log_scale, sum_w, sum_wv)`` of :func:`kernel_moments` with leave-one-out, dense.

    ``z`` is ``[n, d]``, ``values`` ``[n]``, ``valid`` ``[n]`` bool. Same
    per-row shift as the blocked primitive: the row maximum of the log-weights
    (stop-gradient-ed), so that relative weights are at most 1.
    """
    n = z.shape[0]
    centre = jnp.sum(jnp.where(valid[:, None], z, 0.0), 0) / jnp.maximum(jnp.sum(valid), 1)
    centred = z - centre
    sq = jnp.sum(centred * centred, axis=1)
    gram = jnp.matmul(centred, centred.T, precision=jax.lax.Precision.HIGHEST)
    dist2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    excluded = jnp.eye(n, dtype=bool) | ~valid[None, :]
    log_w = get_log_kernel(kernel)(jnp.where(excluded, 0.0, dist2) * jnp.exp(-2.0 * log_bandwidth))
    log_w = jnp.where(excluded, -jnp.inf, log_w)
    row_max = jax.lax.stop_gradient(jnp.max(log_w, axis=1))
    log_scale = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    w = jnp.exp(log_w - log_scale[:, None])
    return log_scale, jnp.sum(w, axis=1), w @ values


def _check(z: Array, conf: Array, correct: Array, log_bandwidth: Array, mask, estimator, kernel):
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"estimator: unknown estimator {estimator!r}; choose one of {list(ESTIMATORS)}."
        )
    get_log_kernel(kernel)  # raises for an unknown kernel name
    if z.ndim != 2:
        raise ValueError(
            f"z: expected a [n, d] array of points, got shape {z.shape}; "
            "reshape one-dimensional coordinates with z[:, None]."
        )
    n = z.shape[0]
    for name, a in (("conf", conf), ("correct", correct)):
        if a.shape != (n,):
            raise ValueError(
                f"{name}: expected shape ({n},) to match z's {n} rows, got {a.shape}; "
                "pass one value per item (top-label confidence for multiclass models)."
            )
    if mask is not None and jnp.shape(mask) != (n,):
        raise ValueError(f"mask: expected shape ({n},) to match z, got {jnp.shape(mask)}.")
    if log_bandwidth.shape != ():
        raise ValueError(
            f"log_bandwidth: expected a scalar, got shape {log_bandwidth.shape}; "
            "pass jnp.log(h) for one bandwidth h (vmap for several)."
        )
    if n < 2:
        raise ValueError(f"z: the penalty needs at least 2 items, got {n}.")


def local_calibration_penalty(
    z: ArrayLike,
    conf: ArrayLike,
    correct: ArrayLike,
    log_bandwidth: ArrayLike,
    *,
    estimator: str = "ustat",
    kernel: str = "gaussian",
    stop_geometry: bool = True,
    mask: ArrayLike | None = None,
    dense_max: int = 1024,
) -> Array:
    """Differentiable local-calibration penalty of a batch of predictions.

    Args:
      z: ``[n, d]`` fixed geometry of the inputs (standardised features, PCA
        or another embedding); not the model's own logits.
      conf: ``[n]`` the model's probabilities of ``correct`` (of the positive
        class, or the top-label confidence); gradients flow here.
      correct: ``[n]`` 0/1 outcomes (or labels for a binary model).
      log_bandwidth: scalar log of the kernel bandwidth ``h``;
        ``K_ij = exp(log_kernel(|z_i - z_j|^2 / h^2))`` with ``K(0) = 1``.
      estimator: static, ``"ustat"`` (unbiased U-statistic, default) or
        ``"loo"`` (mean residual times leave-one-out field).
      kernel: static kernel name, see :mod:`miscal_jax.kernels.shapes`. The zero-iff-
        calibrated property needs a characteristic kernel (``"gaussian"``).
      stop_geometry: static; if True (default) no gradient reaches ``z`` or
        ``log_bandwidth``.
      mask: optional ``[n]`` bool, False for padding rows; the penalty is
        that of the True rows alone (for fixed-shape batches).
      dense_max: static; batches of at most this many items use one dense
        ``[n, n]`` matrix, larger ones the blocked
        :func:`~miscal_jax.kernels.kernel_moments` (bounded memory).

    Returns:
      Scalar penalty, in the dtype of ``conf`` and ``z`` (at least float32; the penalty is
      a loss term inside a caller's model, so it follows the caller's dtypes).

    Raises:
      ValueError: unknown estimator or kernel, mismatched shapes, a
        non-scalar bandwidth, or fewer than 2 items.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> z = jnp.array([[0.0], [0.1], [3.0], [3.1]])
      >>> correct = jnp.array([1.0, 1.0, 0.0, 0.0])
      >>> conf = jnp.full(4, 0.5)  # calibrated on average, not locally
      >>> pen = local_calibration_penalty(z, conf, correct, jnp.log(0.5))
      >>> round(float(pen), 4)
      0.0817
      >>> grad = jax.grad(local_calibration_penalty, argnums=1)(z, conf, correct, jnp.log(0.5))
      >>> bool(grad[0] < 0) and bool(grad[3] > 0)  # raise conf where right, lower it where wrong
      True

    References:
      Kumar, Sarawagi and Jain (2018), Trainable calibration measures for
      neural networks from kernel mean embeddings (MMCE), ICML.
      Widmann, Lindsten and Zachariah (2019), Calibration tests in multi-class
      classification: a unifying framework (unbiased kernel calibration
      error), NeurIPS.
      Luo et al. (2022), Local calibration: metrics and recalibration, UAI.
    """
    conf = jnp.asarray(conf)
    z = jnp.asarray(z)
    dtype = jnp.result_type(conf.dtype, z.dtype, jnp.float32)
    conf = conf.astype(dtype)
    z = z.astype(dtype)
    correct = jnp.asarray(correct).astype(dtype)
    log_bandwidth = jnp.asarray(log_bandwidth).astype(dtype)
    _check(z, conf, correct, log_bandwidth, mask, estimator, kernel)
    valid = jnp.ones(z.shape[0], bool) if mask is None else jnp.asarray(mask, bool)
    return _penalty(
        z,
        conf,
        correct,
        log_bandwidth,
        valid,
        estimator=estimator,
        kernel=kernel,
        stop_geometry=stop_geometry,
        dense_max=dense_max,
    )


@functools.partial(jax.jit, static_argnames=("estimator", "kernel", "stop_geometry", "dense_max"))
def _penalty(
    z, conf, correct, log_bandwidth, valid, *, estimator, kernel, stop_geometry, dense_max
):
    """The penalty on validated, same-dtype arrays; ``valid`` is the ``[n]`` mask."""
    dtype = conf.dtype
    n = z.shape[0]
    if stop_geometry:
        z = jax.lax.stop_gradient(z)
        log_bandwidth = jax.lax.stop_gradient(log_bandwidth)
    residual = jnp.where(valid, correct - conf, 0.0)
    # masked rows (padding) may hold anything: zero them so they move no centre
    z = jnp.where(valid[:, None], z, 0.0)

    if n <= dense_max:
        log_scale, sum_w, sum_wr = _dense_moments(z, residual, log_bandwidth, valid, kernel)
    else:
        m = kernel_moments(
            z,
            z,
            residual[:, None],
            log_bandwidth,
            kernel=kernel,
            query_index=jnp.arange(n),
            ref_mask=valid,
        )
        log_scale, sum_w, sum_wr = m.log_scale, m.sum_w, m.sum_wv[:, 0]

    count = jnp.sum(valid).astype(dtype)
    if estimator == "ustat":
        # each row's sum is relative to exp(log_scale); residual is 0 off the mask
        numerator = jnp.sum(residual * jnp.exp(log_scale) * sum_wr)
        return numerator / jnp.maximum(count * (count - 1.0), 1.0)
    has_mass = sum_w > 0
    field = jnp.where(has_mass, sum_wr / jnp.where(has_mass, sum_w, 1.0), 0.0)
    return jnp.sum(residual * field) / jnp.maximum(count, 1.0)
