"""Statistical inference on the field: intervals, a heterogeneity test, grouping loss.

References:
  Efron (1979) bootstrap; Rubin (1981) Bayesian bootstrap; Good (2005)
  permutation tests; Perez-Lebel et al. (2023) grouping loss.
"""

import functools
from statistics import NormalDist
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from miscal_jax._src.binning import bin_index
from miscal_jax._types import Array, FieldEstimate, PRNGKey
from miscal_jax.geometry.spaces import embed_folds
from miscal_jax.kernels.moments import kernel_moments
from miscal_jax.metrics.calibration import grouping_loss
from miscal_jax.model.field_model import out_of_fold
from miscal_jax.smoothing.nadaraya_watson import PRIOR_VAR, field_from_moments, residual_values

__all__ = [
    "GroupingLossInterval",
    "HeterogeneityTest",
    "bootstrap_interval",
    "grouping_loss_interval",
    "heterogeneity_test",
    "normal_interval",
    "smooth_many",
    "undersmoothed_field",
]


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level: must be in (0, 1), got {level}.")
    return NormalDist().inv_cdf(0.5 + level / 2)


def normal_interval(value: ArrayLike, se: ArrayLike, *, level: float = 0.9):
    """Pointwise ``value -+ z * se`` intervals, clipped to the residual range ``[-1, 1]``.

    Args:
      value: ``[q]`` field estimates.
      se: ``[q]`` standard errors (the smoother's, never zero thanks to its prior).
      level: coverage, e.g. 0.9.

    Returns:
      ``(low, high)``, each ``[q]``.
    """
    z = _z(level)
    value, se = jnp.asarray(value), jnp.asarray(se)
    return jnp.clip(value - z * se, -1.0, 1.0), jnp.clip(value + z * se, -1.0, 1.0)


def smooth_many(
    query: ArrayLike,
    ref: ArrayLike,
    residuals: ArrayLike,
    log_bandwidth: ArrayLike,
    *,
    ref_weights: ArrayLike | None = None,
    ref_mask: ArrayLike | None = None,
    kernel: str = "gaussian",
    chunk_size: int = 512,
) -> Array:
    """Nadaraya-Watson values for ``b`` residual vectors (or reference weightings) at once.

    One pass of :func:`~miscal_jax.kernels.kernel_moments` with the
    ``b`` columns (and, with weights, the ``b`` weight columns) as values:
    permutation and bootstrap replicates cost one matmul per block.

    Args:
      query: ``[q, k]`` query points.
      ref: ``[n, k]`` reference points.
      residuals: ``[n, b]`` residual columns (or ``[n]``, broadcast).
      log_bandwidth: scalar log-bandwidth.
      ref_weights: optional ``[n, b]`` non-negative reference weights.
      ref_mask: optional ``[n]`` bools; ``False`` references are ignored.
      kernel: static kernel name.
      chunk_size: static queries per block.

    Returns:
      ``[q, b]`` values (0 where a query has no kernel mass).

    Examples:
      >>> import jax.numpy as jnp
      >>> z = jnp.array([[0.0], [1.0]])
      >>> smooth_many(z, z, jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.log(1e-3))
      Array([[1., 0.],
             [0., 1.]], dtype=float32)
    """
    residuals = jnp.asarray(residuals, jnp.float32)
    if residuals.ndim == 1:
        residuals = residuals[:, None]
    if ref_weights is None:
        values = residuals
    else:
        ref_weights = jnp.broadcast_to(jnp.asarray(ref_weights, jnp.float32), residuals.shape)
        values = jnp.concatenate([ref_weights * residuals, ref_weights], axis=1)
    m = kernel_moments(
        query, ref, values, log_bandwidth, ref_mask=ref_mask, kernel=kernel, query_block=chunk_size
    )
    b = residuals.shape[1]
    den = m.sum_w[:, None] if ref_weights is None else m.sum_wv[:, b:]
    return jnp.where(den > 0, m.sum_wv[:, :b] / jnp.where(den > 0, den, 1.0), 0.0)


def bootstrap_interval(
    rng: PRNGKey,
    query: ArrayLike,
    ref: ArrayLike,
    ref_residual: ArrayLike,
    log_bandwidth: ArrayLike,
    *,
    level: float = 0.9,
    num_samples: int = 400,
    kernel: str = "gaussian",
    chunk_size: int = 64,
) -> tuple[Array, Array]:
    """Bayesian-bootstrap percentile intervals for the field, for small samples.

    Each replicate reweights the references with ``Exp(1)`` draws and adds one
    prior pseudo-observation per query whose residual is ``+-sqrt(PRIOR_VAR)``
    with equal odds, weighted as one average neighbour. The pseudo-observation
    keeps intervals from collapsing to zero width where a neighbourhood is all
    right or all wrong, and its influence fades as neighbours accumulate.

    Args:
      rng: PRNG key.
      query: ``[q, k]``; ref: ``[n, k]``; ref_residual: ``[n]``.
      log_bandwidth: scalar log-bandwidth.
      level: coverage.
      num_samples: bootstrap replicates ``b``.
      kernel: static kernel name.
      chunk_size: static chunk size.

    Returns:
      ``(low, high)``, each ``[q]``.
    """
    _z(level)
    ref = jnp.asarray(ref, jnp.float32)
    query = jnp.asarray(query, jnp.float32)
    n, q = ref.shape[0], query.shape[0]
    w_rng, s_rng = jax.random.split(rng)
    weights = jax.random.exponential(w_rng, (n, num_samples))
    residual = jnp.asarray(ref_residual, jnp.float32)
    # one pass: sum(g w r) and sum(g w) per replicate, and the plain [r, r^2] moments
    values = jnp.concatenate([residual[:, None] * weights, weights, residual_values(residual)], 1)
    m = kernel_moments(query, ref, values, log_bandwidth, kernel=kernel, query_block=chunk_size)
    num, den = m.sum_wv[:, :num_samples], m.sum_wv[:, num_samples : 2 * num_samples]
    plain = field_from_moments(m._replace(sum_wv=m.sum_wv[:, 2 * num_samples :]))
    # num and den are relative to the plain kernel sum; the pseudo-point enters with
    # weight sum_w / n_eff (one average neighbour).
    rel = jnp.where(m.sum_w > 0, m.sum_w / jnp.maximum(plain.n_eff, 1e-3), 1.0)[:, None]
    sign = jnp.where(jax.random.bernoulli(s_rng, 0.5, (q, num_samples)), 1.0, -1.0)
    pseudo = sign * jnp.sqrt(PRIOR_VAR)
    draws = (num + rel * pseudo) / jnp.maximum(den + rel, 1e-30)
    alpha = (1 - level) / 2
    low, high = jnp.quantile(draws, jnp.array([alpha, 1 - alpha]), axis=1)
    return low, high


class HeterogeneityTest(NamedTuple):
    """Result of :func:`heterogeneity_test`.

    Attributes:
      statistic: observed out-of-fold reduction in squared error of the
        bin-centred residuals, ``mean(e^2 - (e - f)^2)``.
      p_value: permutation p-value ``(1 + #{T* >= T}) / (1 + B)``.
      null: ``[B]`` statistics under within-bin permutations.
    """

    statistic: float
    p_value: float
    null: np.ndarray


def _padded_rows(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of each ``[K, n]`` mask, padded to one length: ``(index, valid)``, ``[K, m]``."""
    rows = [np.flatnonzero(m) for m in masks]
    width = max(len(r) for r in rows)
    index = np.zeros((len(rows), width), np.int32)
    valid = np.zeros((len(rows), width), bool)
    for k, r in enumerate(rows):
        index[k, : len(r)], valid[k, : len(r)] = r, True
    return index, valid


@functools.partial(jax.jit, static_argnames=("kernel", "chunk_size"))
def _fold_statistics(spaces, log_bandwidth, cols, test, train, *, kernel, chunk_size):
    """``[b]`` statistic numerators ``sum(2 e f - f^2)`` over every fold's held-out rows.

    Args:
      spaces: ``[K, n, z_dim]`` the items in each fold's space.
      log_bandwidth: ``[K]`` each fold's bandwidth.
      cols: ``[n, b]`` centred residual columns.
      test, train: ``(index, valid)`` pairs of ``[K, m]`` arrays (see
        :func:`_padded_rows`): each fold's held-out and training rows.
    """

    def fold(args):
        z, log_bw, test_index, test_valid, train_index, train_valid = args
        f = smooth_many(
            z[test_index],
            z[train_index],
            cols[train_index],
            log_bw,
            ref_mask=train_valid,
            kernel=kernel,
            chunk_size=chunk_size,
        )
        e = cols[test_index]
        return jnp.sum(jnp.where(test_valid[:, None], 2 * e * f - f**2, 0.0), axis=0)

    return jnp.sum(jax.lax.map(fold, (spaces, log_bandwidth, *test, *train)), axis=0)


def heterogeneity_test(
    result,
    embeddings: ArrayLike,
    conf: ArrayLike,
    correct: ArrayLike,
    *,
    num_permutations: int = 200,
    num_bins: int = 10,
    seed: int = 0,
    batch: int = 50,
    chunk_size: int = 128,
) -> HeterogeneityTest:
    """Tests whether the miscalibration depends on the input beyond confidence.

    Residuals ``r = correct - conf`` are centred within equal-mass confidence
    bins (``e = r - mean_bin(r)``), which removes everything a confidence-only
    recalibration could explain. The statistic is the out-of-fold reduction
    in squared error when each fold's smoother, in that fold's fitted
    geometry and bandwidth, predicts ``e`` of held-out items from the
    training items: ``T = mean(e^2 - (e - f)^2)``.

    Null: ``e`` permuted *within confidence bins* (keeping the
    confidence-only calibration curve, destroying any input dependence),
    ``num_permutations`` times, all vectorised as matrix products over
    permutation columns. The fold geometries and bandwidths are **not**
    refitted under the null: they were fitted to the observed residuals of
    the training folds, which can only make the observed ``f`` noisier under
    the null (the ``-f^2`` penalty), so the test is conservative rather than
    anti-conservative; simulations in ``benchmarks/`` report its size.

    The observed residuals and the permutations go through one compiled
    program, in equal batches of at most ``batch`` columns (the observed
    column first, zero columns padding the last batch), every fold in one call.

    Args:
      result: a :class:`~miscal_jax.model.CrossFitResult`.
      embeddings: ``[n, d]``, conf ``[n]``, correct ``[n]``: the data it was fitted on.
      num_permutations: ``B``.
      num_bins: confidence bins within which residuals are exchanged.
      seed: permutation seed.
      batch: columns per vectorised pass (bounds device memory; the ``[n, 1 + B]``
        permuted columns are drawn on the host first).
      chunk_size: static query chunk size.

    Returns:
      A :class:`HeterogeneityTest`.
    """
    x = np.asarray(embeddings, np.float32)
    p = np.asarray(conf, np.float32)
    r = np.asarray(correct, np.float32) - p
    n = r.shape[0]
    bins = np.asarray(bin_index(jnp.asarray(p), min(num_bins, n), "mass"))
    means = np.bincount(bins, weights=r) / np.maximum(np.bincount(bins), 1)
    e = (r - means[bins]).astype(np.float32)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(bins == b) for b in np.unique(bins)]
    cols = np.empty((n, 1 + num_permutations), np.float32)
    cols[:, 0] = e
    for c in range(num_permutations):
        perm = np.arange(n)
        for idx in members:
            perm[idx] = rng.permutation(idx)
        cols[:, 1 + c] = e[perm]
    train_mask = np.asarray(result.model.train_mask)
    test, train = _padded_rows(~train_mask), _padded_rows(train_mask)
    # equal batches of at most `batch` columns, the last one padded with zeros
    width = -(-cols.shape[1] // -(-cols.shape[1] // batch))
    cols = np.pad(cols, [(0, 0), (0, -cols.shape[1] % width)])
    geometry = result.model.geometry
    spaces = jax.jit(embed_folds)(geometry, x, p)
    totals = [
        _fold_statistics(
            spaces,
            geometry.log_bandwidth,
            cols[:, s : s + width],
            test,
            train,
            kernel=geometry.kernel,
            chunk_size=chunk_size,
        )
        for s in range(0, cols.shape[1], width)
    ]
    stats = np.concatenate([np.asarray(t) for t in totals])[: 1 + num_permutations] / n
    observed, null = float(stats[0]), stats[1:]
    p_value = (1.0 + np.sum(null >= observed)) / (1.0 + null.size)
    return HeterogeneityTest(observed, float(p_value), null)


class GroupingLossInterval(NamedTuple):
    """Bias-corrected grouping loss with a bootstrap percentile interval."""

    estimate: float
    low: float
    high: float


def grouping_loss_interval(
    conf: ArrayLike,
    field: ArrayLike,
    field_se: ArrayLike,
    *,
    level: float = 0.9,
    num_samples: int = 500,
    num_bins: int = 15,
    seed: int = 0,
) -> GroupingLossInterval:
    """Grouping loss ``E[Var(delta | P)]`` (see :func:`~miscal_jax.metrics.grouping_loss`)
    with an item-bootstrap interval (vmapped over replicates, multinomial weights).

    Returns:
      A :class:`GroupingLossInterval`; the estimate is clipped at 0.
    """
    _z(level)
    boots, est = _grouping_loss_draws(
        jax.random.key(seed),
        jnp.asarray(conf, jnp.float32),
        jnp.asarray(field, jnp.float32),
        jnp.asarray(field_se, jnp.float32),
        num_bins=num_bins,
        num_samples=num_samples,
    )
    alpha = (1 - level) / 2
    low, high = np.quantile(np.asarray(boots), [alpha, 1 - alpha])
    return GroupingLossInterval(float(est), max(float(low), 0.0), max(float(high), 0.0))


@functools.partial(jax.jit, static_argnames=("num_bins", "num_samples"))
def _grouping_loss_draws(key, conf, field, se, *, num_bins, num_samples):
    """``([num_samples] bootstrap estimates, the estimate)`` of the grouping loss."""
    n = conf.shape[0]
    idx = bin_index(conf, num_bins, "mass")

    def weighted(w):
        counts = jax.ops.segment_sum(w, idx, num_segments=num_bins)
        safe = jnp.maximum(counts, 1e-12)
        mean = jax.ops.segment_sum(w * field, idx, num_segments=num_bins) / safe
        raw = jnp.sum(w * (field - mean[idx]) ** 2) / jnp.sum(w)
        return raw - jnp.sum(w * se**2) / jnp.sum(w)

    keys = jax.random.split(key, num_samples)
    draw = lambda k: jnp.bincount(jax.random.randint(k, (n,), 0, n), length=n).astype(jnp.float32)
    boots = jax.lax.map(lambda k: weighted(draw(k)), keys, batch_size=50)
    return boots, grouping_loss(conf, field, se, num_bins=num_bins).estimate


def undersmoothed_field(result, *, factor: float = 0.5) -> FieldEstimate:
    """Out-of-fold field at ``factor`` times each fold's bandwidth, for intervals.

    The cross-validated bandwidth balances bias and variance for estimation, so
    intervals built on it are centred on a smoothed (biased) field and
    under-cover; shrinking the bandwidth trades a wider interval for less bias
    (undersmoothing). Pass the result to :func:`normal_interval`.

    Args:
      result: a :class:`~miscal_jax.model.CrossFitResult`.
      factor: bandwidth multiplier in ``(0, 1]``.

    Returns:
      A :class:`~miscal_jax.FieldEstimate` of ``[n]`` arrays, out-of-fold.
    """
    if not 0 < factor <= 1:
        raise ValueError(f"factor: must be in (0, 1], got {factor}.")
    model = result.model
    geometry = model.geometry.replace(log_bandwidth=model.geometry.log_bandwidth + np.log(factor))
    est, _ = jax.jit(out_of_fold)(model.replace(geometry=geometry))
    return FieldEstimate(*(np.asarray(a) for a in est))
