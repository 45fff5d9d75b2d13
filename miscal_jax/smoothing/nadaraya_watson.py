"""Nadaraya-Watson smoothing of residuals, built on :func:`~miscal_jax.kernels.kernel_moments`.

The estimate at a query ``q`` from references ``z_j`` with residuals ``r_j``::

    value(q) = sum_j K(|q - z_j|^2 / h^2) r_j / sum_j K(...)

comes from the kernel moments with values ``[r, r^2]``: blocked over queries
and references, accumulated online with a running maximum, so the ``[q, n]``
kernel matrix never exists and far queries give a finite answer. The bandwidth
``h = exp(log_bandwidth)`` is a traced array, so it can be learned by gradient
descent; reverse mode recomputes blocks, in bounded memory.

Effective sample size: with absolute weights ``w_j = K(...)`` in ``[0, 1]``,
``n_eff = (sum w)^2 / (sum w^2 + eps^2)`` (``eps = N_EFF_EPS``). Where some
reference lies within a few bandwidths this is Kish's ``(sum w)^2 / sum w^2``;
a query far from every reference gets ``n_eff -> 0`` and a finite value, never
NaN. The standard error is ``sqrt(s2 / (n_eff + s2))`` where ``s2`` is the
kernel-weighted residual variance shrunk toward ``PRIOR_VAR`` by one
pseudo-observation; it tends to 1 (the residual range) as ``n_eff -> 0``.

References:
  Nadaraya (1964), Watson (1964); Kish (1965) for the effective sample size.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from miscal_jax._src.dtypes import as_float
from miscal_jax._types import Array, FieldEstimate
from miscal_jax.kernels.moments import KernelMoments, kernel_moments

__all__ = [
    "N_EFF_EPS",
    "PRIOR_VAR",
    "bandwidth_grid",
    "field_from_moments",
    "loo_errors",
    "loo_field",
    "nw_field",
    "residual_values",
    "select_bandwidth",
]

#: Absolute kernel mass below which a query counts as having no neighbours.
N_EFF_EPS = 1e-3
#: Residual variance assumed before seeing data (Bernoulli at p = 1/2).
PRIOR_VAR = 0.25


def field_from_moments(moments: KernelMoments) -> FieldEstimate:
    """Value, se and n_eff from moments whose values are ``[r, r^2]``.

    Args:
      moments: :class:`~miscal_jax.kernels.KernelMoments` with
        ``sum_wv[..., 0] = sum w r`` and ``sum_wv[..., 1] = sum w r^2``.

    Returns:
      A :class:`FieldEstimate` of ``[..., q]`` arrays.

    Examples:
      >>> import jax.numpy as jnp
      >>> from miscal_jax.kernels.moments import kernel_moments
      >>> r = jnp.array([0.5, -0.5])
      >>> m = kernel_moments(jnp.zeros((1, 1)), jnp.zeros((2, 1)), jnp.stack([r, r**2], 1), 0.0)
      >>> est = field_from_moments(m)
      >>> float(est.value[0]), round(float(est.n_eff[0]), 3)
      (0.0, 2.0)
    """
    log_scale, sw, swv, sw2 = moments
    has_mass = jnp.isfinite(log_scale) & (sw > 0)
    sw_safe = jnp.where(has_mass, sw, 1.0)
    sw2_safe = jnp.where(has_mass, sw2, 1.0)
    value = jnp.where(has_mass, swv[..., 0] / sw_safe, 0.0)
    var = jnp.maximum(jnp.where(has_mass, swv[..., 1] / sw_safe, 0.0) - value**2, 0.0)
    # the absolute sum of squared weights, relative to eps^2, in log space
    scale = jnp.where(has_mass, log_scale, 0.0)
    log_ratio = jnp.log(sw2_safe) + 2.0 * scale - 2.0 * jnp.log(N_EFF_EPS)
    n_eff = jnp.where(has_mass, sw**2 / sw2_safe * jax.nn.sigmoid(log_ratio), 0.0)
    s2 = (n_eff * var + PRIOR_VAR) / (n_eff + 1.0)
    se = jnp.sqrt(s2 / (n_eff + s2))
    return FieldEstimate(value, se, n_eff)


def residual_values(residual: ArrayLike) -> Array:
    """``[n, 2]`` value columns ``[r, r^2]`` whose moments give :func:`field_from_moments`."""
    residual = as_float(residual)
    return jnp.stack([residual, residual * residual], axis=-1)


def _check(query: Array, ref: Array, ref_residual: Array, chunk_size: int) -> None:
    if query.ndim != 2 or ref.ndim != 2 or query.shape[1] != ref.shape[1]:
        raise ValueError(
            f"query/ref: expected [q, k] and [n, k] with the same k, got {query.shape} and "
            f"{ref.shape}."
        )
    if ref_residual.shape != (ref.shape[0],):
        raise ValueError(
            f"ref_residual: expected shape [{ref.shape[0]}], got {ref_residual.shape}."
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size: must be a positive int, got {chunk_size}.")


def nw_field(
    query: ArrayLike,
    ref: ArrayLike,
    ref_residual: ArrayLike,
    log_bandwidth: ArrayLike,
    *,
    query_index: ArrayLike | None = None,
    ref_mask: ArrayLike | None = None,
    kernel: str = "gaussian",
    chunk_size: int = 512,
    ref_block: int = 2048,
    impl: str = "xla",
) -> FieldEstimate:
    """Nadaraya-Watson estimate of the residual field at query points.

    Args:
      query: ``[q, k]`` points where the field is wanted.
      ref: ``[n, k]`` reference points.
      ref_residual: ``[n]`` residuals ``correct - conf`` at the references.
      log_bandwidth: scalar log of the bandwidth, or ``[g]`` candidates
        (traced, differentiable).
      query_index: optional ``[q]`` ints; reference ``query_index[i]`` is left
        out of query ``i`` (leave-one-out). ``-1`` leaves nothing out.
      ref_mask: optional ``[n]`` bools; ``False`` references are ignored.
      kernel: static kernel name, see :mod:`miscal_jax.kernels.shapes`.
      chunk_size: static queries per block.
      ref_block: static references per block; memory is ``O(chunk_size * ref_block)``.
      impl: ``"xla"``, ``"pallas"`` or ``"dense"`` (:mod:`miscal_jax.kernels.moments`).

    Returns:
      A :class:`FieldEstimate` of ``[q]`` arrays (``[g, q]`` for ``g`` bandwidths).

    Examples:
      >>> import jax.numpy as jnp
      >>> z = jnp.array([[0.0], [0.1], [5.0]])
      >>> est = nw_field(jnp.array([[0.05]]), z, jnp.array([0.2, 0.4, -1.0]), jnp.log(0.1))
      >>> round(float(est.value[0]), 3)
      0.3
    """
    query, ref, ref_residual = as_float(query), as_float(ref), as_float(ref_residual)
    _check(query, ref, ref_residual, chunk_size)
    moments = kernel_moments(
        query,
        ref,
        residual_values(ref_residual),
        log_bandwidth,
        kernel=kernel,
        query_index=query_index,
        ref_mask=ref_mask,
        query_block=chunk_size,
        ref_block=ref_block,
        impl=impl,
    )
    return field_from_moments(moments)


def loo_field(
    ref: ArrayLike,
    ref_residual: ArrayLike,
    log_bandwidth: ArrayLike,
    *,
    ref_mask: ArrayLike | None = None,
    kernel: str = "gaussian",
    chunk_size: int = 512,
    ref_block: int = 2048,
    impl: str = "xla",
) -> FieldEstimate:
    """Leave-one-out field at every reference point (its own residual excluded).

    Args:
      ref: ``[n, k]`` points.
      ref_residual: ``[n]`` residuals.
      log_bandwidth: scalar log-bandwidth (or ``[g]`` candidates).
      ref_mask: optional ``[n]`` bools; ``False`` rows are not used as
        references (their own estimates are still returned).
      kernel, chunk_size, ref_block, impl: as in :func:`nw_field`.

    Returns:
      A :class:`FieldEstimate` of ``[n]`` arrays.

    Examples:
      >>> import jax.numpy as jnp
      >>> est = loo_field(jnp.array([[0.0], [10.0]]), jnp.array([1.0, -1.0]), jnp.log(100.0))
      >>> [round(float(v), 3) for v in est.value]
      [-1.0, 1.0]
    """
    ref = as_float(ref)
    return nw_field(
        ref,
        ref,
        ref_residual,
        log_bandwidth,
        query_index=jnp.arange(ref.shape[0]),
        ref_mask=ref_mask,
        kernel=kernel,
        chunk_size=chunk_size,
        ref_block=ref_block,
        impl=impl,
    )


def bandwidth_grid(
    ref: ArrayLike,
    *,
    num: int = 24,
    max_points: int = 512,
    ref_mask: ArrayLike | None = None,
    shifts: int = 16,
) -> Array:
    """A log-spaced grid of candidate bandwidths scaled to the data (traceable).

    The scale is the median nonzero distance between about ``max_points``
    evenly spaced rows (``ref_mask`` rows excluded) and ``shifts`` partners
    each at offsets spread evenly over that subsample, about 8k pairs; the
    grid spans 1/50 to 2 times it. With no nonzero distance the scale is 1.
    (A median over all pairs of the subsample would sort 260k numbers per
    call and cost more than the smoothing it prepares.)

    Args:
      ref: ``[n, k]`` points.
      num: static grid size.
      max_points: static subsample size for the scale.
      ref_mask: optional ``[n]`` bools.
      shifts: static number of partners per subsampled row.

    Returns:
      ``[num]`` log-bandwidths.

    Examples:
      >>> import jax.numpy as jnp
      >>> grid = bandwidth_grid(jnp.array([[0.0], [1.0], [2.0]]), num=3)
      >>> [round(float(jnp.exp(g)), 3) for g in grid]  # median distance 1
      [0.02, 0.2, 2.0]
    """
    ref = as_float(ref)
    n = ref.shape[0]
    step = max(1, n // max_points)
    sub = ref[::step]
    valid = jnp.ones(n, bool) if ref_mask is None else jnp.asarray(ref_mask).astype(bool)
    valid = valid[::step]
    sub = sub - jnp.sum(sub * valid[:, None], 0) / jnp.maximum(jnp.sum(valid), 1)
    # float32 cancellation leaves ~1e-3 relative noise at zero distance
    noise = 1e-3 * jnp.sqrt(jnp.max(jnp.where(valid, jnp.sum(sub * sub, 1), 0.0)))
    m, k = sub.shape[0], min(shifts, sub.shape[0] - 1)
    # partners spread over the whole subsample, so rows grouped by topic do not
    # pair only with their own group
    offsets = jnp.maximum(jnp.arange(1, k + 1) * m // (k + 1), 1)
    partner = (jnp.arange(m)[:, None] + offsets[None, :]) % m  # [m, k]
    dist = jnp.sqrt(jnp.sum((sub[:, None, :] - sub[partner]) ** 2, axis=-1))
    keep = valid[:, None] & valid[partner] & (dist > noise)
    median = jnp.nanmedian(jnp.where(keep, dist, jnp.nan))
    scale = jnp.where(jnp.any(keep), median, 1.0)
    return jnp.log(scale) + jnp.log(jnp.geomspace(0.02, 2.0, num))


def loo_errors(
    ref: ArrayLike,
    ref_residual: ArrayLike,
    log_bandwidths: ArrayLike,
    *,
    ref_mask: ArrayLike | None = None,
    kernel: str = "gaussian",
    chunk_size: int = 256,
) -> Array:
    """Mean leave-one-out squared error for each candidate, from one distance pass.

    Args:
      ref: ``[n, k]`` points.
      ref_residual: ``[n]`` residuals.
      log_bandwidths: ``[g]`` candidates.
      ref_mask: optional ``[n]`` bools; only ``True`` rows are references and
        only their errors are averaged.
      kernel, chunk_size: as in :func:`nw_field`.

    Returns:
      ``[g]`` errors.

    Examples:
      >>> import jax.numpy as jnp
      >>> z = jnp.array([[0.0], [0.1], [5.0], [5.1]])
      >>> errs = loo_errors(z, jnp.array([1.0, 1.0, -1.0, -1.0]), jnp.log(jnp.array([0.5, 50.0])))
      >>> [round(float(e), 1) for e in errs]  # local smoothing wins
      [0.0, 1.8]
    """
    ref, ref_residual = as_float(ref), as_float(ref_residual)
    valid = jnp.ones(ref_residual.shape, bool) if ref_mask is None else jnp.asarray(ref_mask)
    est = loo_field(
        ref, ref_residual, log_bandwidths, ref_mask=valid, kernel=kernel, chunk_size=chunk_size
    )
    errs = (ref_residual - est.value) ** 2
    return jnp.sum(errs * valid, axis=-1) / jnp.maximum(jnp.sum(valid), 1)


def select_bandwidth(
    ref: ArrayLike,
    ref_residual: ArrayLike,
    *,
    log_bandwidths: ArrayLike | None = None,
    ref_mask: ArrayLike | None = None,
    kernel: str = "gaussian",
    chunk_size: int = 256,
) -> tuple[Array, Array]:
    """Chooses the bandwidth minimising leave-one-out squared error (traceable).

    All candidates share one distance pass (:func:`loo_errors`).

    Args:
      ref: ``[n, k]`` points.
      ref_residual: ``[n]`` residuals.
      log_bandwidths: ``[g]`` candidates; :func:`bandwidth_grid` by default.
      ref_mask: optional ``[n]`` bools selecting the rows to use.
      kernel: static kernel name.
      chunk_size: static queries per block.

    Returns:
      ``(best_log_bandwidth, loo_errors)``: a scalar and the ``[g]`` errors.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> z = jnp.linspace(0, 1, 50)[:, None]
      >>> best, errs = jax.jit(select_bandwidth)(z, jnp.sin(6 * z[:, 0]))
      >>> errs.shape
      (24,)
    """
    if log_bandwidths is None:
        log_bandwidths = bandwidth_grid(ref, ref_mask=ref_mask)
    log_bandwidths = jnp.asarray(log_bandwidths)
    errs = loo_errors(
        ref,
        ref_residual,
        log_bandwidths,
        ref_mask=ref_mask,
        kernel=kernel,
        chunk_size=chunk_size,
    )
    return log_bandwidths[jnp.argmin(errs)], errs
