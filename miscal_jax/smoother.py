"""Nadaraya-Watson smoothing of residuals, chunked over queries.

The estimate at a query ``q`` from references ``z_j`` with residuals ``r_j``::

    value(q) = sum_j K(|q - z_j|^2 / h^2) r_j / sum_j K(...)

is computed one query at a time from log-weights, stabilised by their maximum
(the log-sum-exp trick), vmapped over a chunk of queries and mapped over chunks
with ``jax.lax.map(batch_size=chunk_size)``: the ``[q, n]`` kernel matrix never
exists, only ``[chunk_size, n]`` inside a chunk. The bandwidth ``h = exp(log_bandwidth)``
is a traced array, so it can be learned by gradient descent.

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

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from miscal_jax._types import Array, FieldEstimate
from miscal_jax.kernels import get_log_kernel

__all__ = ["N_EFF_EPS", "PRIOR_VAR", "bandwidth_grid", "loo_field", "nw_field", "select_bandwidth"]

#: Absolute kernel mass below which a query counts as having no neighbours.
N_EFF_EPS = 1e-3
#: Residual variance assumed before seeing data (Bernoulli at p = 1/2).
PRIOR_VAR = 0.25


def _weighted_stats(log_w: Array, residual: Array) -> FieldEstimate:
    """Value, se and n_eff from ``[n]`` log-weights (``-inf`` = excluded)."""
    m = jnp.max(log_w)
    any_mass = jnp.isfinite(m)
    m_safe = jnp.where(any_mass, m, 0.0)
    w = jnp.exp(log_w - m_safe)  # relative weights, max 1; exactly 0 where excluded
    sw = jnp.sum(w)
    sw2 = jnp.sum(w * w)
    sw_safe = jnp.where(sw > 0, sw, 1.0)
    sw2_safe = jnp.where(sw2 > 0, sw2, 1.0)
    value = jnp.where(sw > 0, jnp.sum(w * residual) / sw_safe, 0.0)
    var = jnp.sum(w * (residual - value) ** 2) / sw_safe
    kish = sw**2 / sw2_safe
    # sum of absolute squared weights, relative to eps^2, in log space.
    log_ratio = jnp.log(sw2_safe) + 2.0 * m_safe - 2.0 * jnp.log(N_EFF_EPS)
    n_eff = jnp.where(any_mass & (sw > 0), kish * jax.nn.sigmoid(log_ratio), 0.0)
    s2 = (n_eff * var + PRIOR_VAR) / (n_eff + 1.0)
    se = jnp.sqrt(s2 / (n_eff + s2))
    return FieldEstimate(value, se, n_eff)


def _sq_dist(query: Array, ref: Array, ref_sq: Array) -> Array:
    """``[n]`` squared distances from one ``[d]`` query to ``[n, d]`` references."""
    return jnp.maximum(jnp.sum(query * query) + ref_sq - 2.0 * (ref @ query), 0.0)


#: Array lengths are padded up to a multiple of this, so that data sets of
#: slightly different sizes (cross-fitting folds) share compiled code.
PAD_MULTIPLE = 128


def _pad_rows(a: Array, rows: int, value=0) -> Array:
    extra = rows - a.shape[0]
    if extra == 0:
        return a
    if isinstance(a, jax.core.Tracer):
        return jnp.concatenate([a, jnp.full((extra, *a.shape[1:]), value, a.dtype)])
    # concrete arrays are padded on the host: no compilation per shape
    a = np.asarray(a)
    return jnp.asarray(np.concatenate([a, np.full((extra, *a.shape[1:]), value, a.dtype)]))


def _padded_length(n: int, multiple: int = PAD_MULTIPLE) -> int:
    return max(multiple, -(-n // multiple) * multiple)


@functools.partial(jax.jit, static_argnames=("kernel", "chunk_size"))
def _nw_field(
    query, query_index, ref, ref_residual, ref_valid, log_bandwidth, *, kernel, chunk_size
):
    log_kernel = get_log_kernel(kernel)
    ref_sq = jnp.sum(ref * ref, axis=1)
    ref_index = jnp.arange(ref.shape[0])
    inv_h2 = jnp.exp(-2.0 * log_bandwidth)

    def one(args):
        q, qi = args
        log_w = log_kernel(_sq_dist(q, ref, ref_sq) * inv_h2)
        log_w = jnp.where((ref_index == qi) | ~ref_valid, -jnp.inf, log_w)
        return _weighted_stats(log_w, ref_residual)

    return jax.lax.map(one, (query, query_index), batch_size=chunk_size)


def nw_field(
    query: ArrayLike,
    ref: ArrayLike,
    ref_residual: ArrayLike,
    log_bandwidth: ArrayLike,
    *,
    query_index: ArrayLike | None = None,
    kernel: str = "gaussian",
    chunk_size: int = 256,
) -> FieldEstimate:
    """Nadaraya-Watson estimate of the residual field at query points.

    Args:
      query: ``[q, k]`` points where the field is wanted.
      ref: ``[n, k]`` reference points.
      ref_residual: ``[n]`` residuals ``correct - conf`` at the references.
      log_bandwidth: scalar log of the bandwidth (traced, differentiable).
      query_index: optional ``[q]`` ints; reference ``query_index[i]`` is left
        out of query ``i`` (leave-one-out). ``-1`` leaves nothing out.
      kernel: static kernel name, see :mod:`miscal_jax.kernels`.
      chunk_size: static number of queries per chunk; memory is
        ``O(chunk_size * n)``.

    Returns:
      A :class:`FieldEstimate` of ``[q]`` arrays.

    Examples:
      >>> import jax.numpy as jnp
      >>> z = jnp.array([[0.0], [0.1], [5.0]])
      >>> est = nw_field(jnp.array([[0.05]]), z, jnp.array([0.2, 0.4, -1.0]), jnp.log(0.1))
      >>> round(float(est.value[0]), 3)
      0.3
    """
    query = jnp.asarray(query, jnp.float32)
    ref = jnp.asarray(ref, jnp.float32)
    ref_residual = jnp.asarray(ref_residual, jnp.float32)
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
    if query_index is None:
        query_index = jnp.full(query.shape[0], -1, jnp.int32)
    query_index = jnp.asarray(query_index, jnp.int32)
    q, n = query.shape[0], ref.shape[0]
    q_pad = _padded_length(q, min(PAD_MULTIPLE, int(chunk_size)))
    n_pad = _padded_length(n)
    est = _nw_field(
        _pad_rows(query, q_pad),
        _pad_rows(query_index, q_pad, -1),
        _pad_rows(ref, n_pad),
        _pad_rows(ref_residual, n_pad),
        jnp.arange(n_pad) < n,
        jnp.asarray(log_bandwidth, jnp.float32),
        kernel=kernel,
        chunk_size=int(chunk_size),
    )
    return FieldEstimate(*(a[:q] for a in est))


def loo_field(
    ref: ArrayLike,
    ref_residual: ArrayLike,
    log_bandwidth: ArrayLike,
    *,
    kernel: str = "gaussian",
    chunk_size: int = 256,
) -> FieldEstimate:
    """Leave-one-out field at every reference point (its own residual excluded).

    Args:
      ref: ``[n, k]`` points.
      ref_residual: ``[n]`` residuals.
      log_bandwidth: scalar log-bandwidth.
      kernel: static kernel name.
      chunk_size: static chunk size.

    Returns:
      A :class:`FieldEstimate` of ``[n]`` arrays.
    """
    ref = jnp.asarray(ref, jnp.float32)
    n = ref.shape[0]
    return nw_field(
        ref,
        ref,
        ref_residual,
        log_bandwidth,
        query_index=jnp.arange(n),
        kernel=kernel,
        chunk_size=chunk_size,
    )


def bandwidth_grid(ref: ArrayLike, *, num: int = 24, max_points: int = 512) -> np.ndarray:
    """A log-spaced grid of candidate bandwidths scaled to the data.

    The scale is the median nonzero pairwise distance over at most
    ``max_points`` evenly spaced rows; the grid spans 1/50 to 2 times it.

    Returns:
      ``[num]`` float32 log-bandwidths.
    """
    ref = np.asarray(ref, np.float64)
    sub = ref[:: max(1, ref.shape[0] // max_points)]
    d2 = np.maximum((sub**2).sum(1)[:, None] + (sub**2).sum(1)[None, :] - 2 * sub @ sub.T, 0.0)
    dist = np.sqrt(d2[np.triu_indices(sub.shape[0], 1)])
    dist = dist[dist > 0]
    scale = float(np.median(dist)) if dist.size else 1.0
    return np.log(scale * np.geomspace(0.02, 2.0, num)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("kernel", "chunk_size"))
def _loo_errors(ref, ref_residual, ref_valid, log_bandwidths, *, kernel, chunk_size):
    """``[g]`` mean LOO squared error over valid rows for each of ``g`` log-bandwidths."""
    log_kernel = get_log_kernel(kernel)
    ref_sq = jnp.sum(ref * ref, axis=1)
    n = ref.shape[0]
    ref_index = jnp.arange(n)

    def one(args):
        q, qi, rq = args
        d2 = _sq_dist(q, ref, ref_sq)

        def at(log_bw):
            log_w = log_kernel(d2 * jnp.exp(-2.0 * log_bw))
            log_w = jnp.where((ref_index == qi) | ~ref_valid, -jnp.inf, log_w)
            return (rq - _weighted_stats(log_w, ref_residual).value) ** 2

        return jax.vmap(at)(log_bandwidths)

    errs = jax.lax.map(one, (ref, ref_index, ref_residual), batch_size=chunk_size)
    return jnp.sum(errs * ref_valid[:, None], axis=0) / jnp.sum(ref_valid)


def select_bandwidth(
    ref: ArrayLike,
    ref_residual: ArrayLike,
    *,
    log_bandwidths: ArrayLike | None = None,
    kernel: str = "gaussian",
    chunk_size: int = 128,
) -> tuple[Array, Array]:
    """Chooses the bandwidth minimising leave-one-out squared error.

    Distances are computed once per query chunk and reused for every candidate.

    Args:
      ref: ``[n, k]`` points.
      ref_residual: ``[n]`` residuals.
      log_bandwidths: ``[g]`` candidates; :func:`bandwidth_grid` by default.
      kernel: static kernel name.
      chunk_size: static chunk size.

    Returns:
      ``(best_log_bandwidth, loo_errors)``: a scalar and the ``[g]`` errors.
    """
    ref = jnp.asarray(ref, jnp.float32)
    if log_bandwidths is None:
        log_bandwidths = bandwidth_grid(ref)
    log_bandwidths = jnp.asarray(log_bandwidths, jnp.float32)
    n = ref.shape[0]
    n_pad = _padded_length(n)
    errs = _loo_errors(
        _pad_rows(ref, n_pad),
        _pad_rows(jnp.asarray(ref_residual, jnp.float32), n_pad),
        jnp.arange(n_pad) < n,
        log_bandwidths,
        kernel=kernel,
        chunk_size=int(chunk_size),
    )
    return log_bandwidths[jnp.argmin(errs)], errs
