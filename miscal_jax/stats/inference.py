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
from jax.typing import ArrayLike

from miscal_jax._src.binning import bin_index
from miscal_jax._src.dtypes import as_float
from miscal_jax._types import Array, FieldEstimate, PRNGKey
from miscal_jax.geometry.spaces import embed_folds
from miscal_jax.kernels.moments import kernel_moments
from miscal_jax.metrics.calibration import grouping_loss
from miscal_jax.model.field_model import FieldModel, num_models, out_of_fold, per_model
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
    "within_bin_permutations",
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
    residuals = as_float(residuals)
    if residuals.ndim == 1:
        residuals = residuals[:, None]
    if ref_weights is None:
        values = residuals
    else:
        ref_weights = jnp.broadcast_to(as_float(ref_weights), residuals.shape)
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
    ref = as_float(ref)
    query = as_float(query)
    n, q = ref.shape[0], query.shape[0]
    w_rng, s_rng = jax.random.split(rng)
    weights = jax.random.exponential(w_rng, (n, num_samples))
    residual = as_float(ref_residual)
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
    """Result of :func:`heterogeneity_test` (arrays; a leading ``[m]`` axis for a batch).

    Attributes:
      statistic: observed out-of-fold reduction in squared error of the
        bin-centred residuals, ``mean(e^2 - (e - f)^2)``.
      p_value: permutation p-value ``(1 + #{T* >= T}) / (1 + B)``.
      null: ``[B]`` statistics under within-bin permutations.
    """

    statistic: Array
    p_value: Array
    null: Array


def within_bin_permutations(key: PRNGKey, bins: Array, columns: Array) -> Array:
    """``[b, n]`` permutations of ``n`` items that exchange items only within a bin.

    Column ``c`` is drawn from ``fold_in(key, columns[c])``, so a column's
    permutation does not depend on which other columns are drawn beside it
    (batches of any width give the same test). Each is a uniform draw among
    the permutations that keep every item in its bin: the items sorted by
    ``(bin, uniform)`` are matched, position by position, with the items
    sorted by bin alone.

    Args:
      key: PRNG key.
      bins: ``[n]`` integer bin of each item.
      columns: ``[b]`` integer column ids.

    Returns:
      ``[b, n]`` int32 indices ``perm``: item ``i`` takes the value of item
      ``perm[i]``, which lies in the same bin.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> bins = jnp.array([0, 1, 0, 1, 0])
      >>> perm = within_bin_permutations(jax.random.key(0), bins, jnp.arange(3))
      >>> bool(jnp.all(bins[perm] == bins)), perm.shape
      (True, (3, 5))
    """
    n = bins.shape[0]
    iota = jnp.arange(n, dtype=jnp.int32)
    by_bin = jax.lax.sort((bins, iota), num_keys=1, is_stable=True)[1]

    def one(column):
        u = jax.random.uniform(jax.random.fold_in(key, column), (n,))
        shuffled = jax.lax.sort((bins, u, iota), num_keys=2)[2]
        return jnp.zeros(n, jnp.int32).at[by_bin].set(shuffled)

    return jax.vmap(one)(columns)


def _fold_rows(train_mask: Array):
    """Each fold's held-out and training rows: ``(test, train)``, ``(index, valid)`` pairs.

    Folds hold out ``ceil(n / K)`` or one fewer items (see
    :class:`~miscal_jax.model.FieldModel`), which fixes the widths:
    ``[K, ceil(n / K)]`` held-out and ``[K, n - floor(n / K)]`` training rows.
    """
    folds, n = train_mask.shape

    def rows(mask, width):
        index = jnp.nonzero(mask, size=width, fill_value=0)[0]
        return index, jnp.arange(width) < jnp.sum(mask)

    test = jax.vmap(lambda m: rows(~m, -(-n // folds)))(train_mask)
    train = jax.vmap(lambda m: rows(m, n - n // folds))(train_mask)
    return test, train


def _fold_statistics(spaces, log_bandwidth, cols, test, train, *, kernel, chunk_size):
    """``[b]`` statistic numerators ``sum(2 e f - f^2)`` over every fold's held-out rows.

    Args:
      spaces: ``[K, n, z_dim]`` the items in each fold's space.
      log_bandwidth: ``[K]`` each fold's bandwidth.
      cols: ``[n, b]`` centred residual columns.
      test, train: ``(index, valid)`` pairs of ``[K, m]`` arrays (see
        :func:`_fold_rows`): each fold's held-out and training rows.
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


@functools.partial(jax.jit, static_argnames=("num_permutations", "num_bins", "batch", "chunk_size"))
def heterogeneity_test(
    key: PRNGKey,
    model: FieldModel,
    *,
    num_permutations: int = 200,
    num_bins: int = 10,
    batch: int = 50,
    chunk_size: int = 128,
) -> HeterogeneityTest:
    """Tests whether the miscalibration depends on the input beyond confidence.

    Residuals ``r = correct - conf`` of the fitted items are centred within
    equal-mass confidence bins (``e = r - mean_bin(r)``), which removes
    everything a confidence-only recalibration could explain. The statistic
    is the out-of-fold reduction in squared error when each fold's smoother,
    in that fold's fitted geometry and bandwidth, predicts ``e`` of held-out
    items from the fold's training items: ``T = mean(e^2 - (e - f)^2)``.

    Null: ``e`` permuted *within confidence bins* (keeping the
    confidence-only calibration curve, destroying any input dependence),
    ``num_permutations`` times. The fold geometries and bandwidths are **not**
    refitted under the null: they were fitted to the observed residuals of
    the training folds, which can only make the observed ``f`` noisier under
    the null (the ``-f^2`` penalty), so the test is conservative rather than
    anti-conservative; simulations in ``benchmarks/`` report its size.

    Pure and jittable, on the device: the permutations are drawn there
    (:func:`within_bin_permutations`) in batches of at most ``batch`` columns,
    the observed column first, so memory stays ``O(n * batch)``. A batch of
    models from ``jax.vmap(fit)`` is tested model by model, with split keys.

    Args:
      key: PRNG key of the permutations.
      model: a fitted :class:`~miscal_jax.model.FieldModel` (or a batch).
      num_permutations: static ``B``.
      num_bins: static number of confidence bins within which residuals are exchanged.
      batch: static columns per vectorised pass.
      chunk_size: static query chunk size.

    Returns:
      A :class:`HeterogeneityTest` of arrays.

    Examples:
      >>> import jax
      >>> from miscal_jax.model import FitConfig, fit
      >>> from miscal_jax.synthetic.planted import make_planted
      >>> d = make_planted(300, seed=0, amplitude=0.3)
      >>> model, _ = jax.jit(fit)(jax.random.key(0), d.embeddings, d.conf, d.correct,
      ...                         FitConfig(folds=3, candidates=("raw",)))
      >>> het = jax.jit(heterogeneity_test)(jax.random.key(1), model)
      >>> het.null.shape, bool(het.p_value < 0.05)
      ((200,), True)
    """
    options = dict(
        num_permutations=num_permutations, num_bins=num_bins, batch=batch, chunk_size=chunk_size
    )
    if num_models(model) is not None:
        return per_model(lambda k, m: heterogeneity_test(k, m, **options), key, model)
    if num_permutations < 1 or batch < 1:
        raise ValueError(
            f"num_permutations, batch: expected at least 1, got {num_permutations}, {batch}."
        )
    p = model.ref_conf
    r = model.ref_correct - p
    n = r.shape[0]
    k = min(num_bins, n)
    bins = bin_index(p, k, "mass")
    count = jax.ops.segment_sum(jnp.ones_like(r), bins, k)
    e = r - (jax.ops.segment_sum(r, bins, k) / jnp.maximum(count, 1.0))[bins]
    test, train = _fold_rows(model.train_mask)
    geometry = model.geometry
    spaces = embed_folds(geometry, model.ref_x, p)
    # equal batches of at most `batch` columns; column 0 is the observed one
    total = 1 + num_permutations
    width = -(-total // -(-total // batch))

    def one_batch(step):
        columns = step * width + jnp.arange(width)
        perm = within_bin_permutations(key, bins, columns)
        cols = jnp.where(columns[:, None] == 0, e[None, :], e[perm]).T  # [n, width]
        return _fold_statistics(
            spaces,
            geometry.log_bandwidth,
            cols,
            test,
            train,
            kernel=geometry.kernel,
            chunk_size=chunk_size,
        )

    steps = jnp.arange(-(-total // width))
    stats = jax.lax.map(one_batch, steps).reshape(-1)[:total] / n
    observed, null = stats[0], stats[1:]
    p_value = (1.0 + jnp.sum(null >= observed)) / (1.0 + num_permutations)
    return HeterogeneityTest(observed, p_value, null)


class GroupingLossInterval(NamedTuple):
    """Bias-corrected grouping loss with a bootstrap percentile interval (arrays)."""

    estimate: Array
    low: Array
    high: Array


@functools.partial(jax.jit, static_argnames=("level", "num_samples", "num_bins"))
def grouping_loss_interval(
    key: PRNGKey,
    model: FieldModel,
    *,
    estimate: FieldEstimate | None = None,
    level: float = 0.9,
    num_samples: int = 500,
    num_bins: int = 15,
) -> GroupingLossInterval:
    """Grouping loss ``E[Var(delta | P)]`` of the model's out-of-fold field, with an interval.

    The estimate is :func:`~miscal_jax.metrics.grouping_loss` of the fitted
    items' out-of-fold field; the interval is the percentile interval of an
    item bootstrap (multinomial weights, ``num_samples`` replicates in
    batches of 50). Pure and jittable; a batch of models gets one interval
    per model.

    Args:
      key: PRNG key of the bootstrap.
      model: a fitted :class:`~miscal_jax.model.FieldModel` (or a batch).
      estimate: its :func:`~miscal_jax.model.out_of_fold` field when already
        computed (saves one smoothing pass); ``None`` computes it.
      level: static coverage.
      num_samples: static bootstrap replicates.
      num_bins: static equal-mass confidence bins.

    Returns:
      A :class:`GroupingLossInterval`; estimate and bounds clipped at 0.
    """
    _z(level)
    options = dict(level=level, num_samples=num_samples, num_bins=num_bins)
    if num_models(model) is not None:
        run = lambda k, m, e: grouping_loss_interval(k, m, estimate=e, **options)
        return per_model(run, key, model, estimate)
    if estimate is None:
        estimate = out_of_fold(model)[0]
    conf, field, se = model.ref_conf, estimate.value, estimate.se
    n = conf.shape[0]
    idx = bin_index(conf, num_bins, "mass")

    def weighted(w):
        counts = jax.ops.segment_sum(w, idx, num_segments=num_bins)
        mean = jax.ops.segment_sum(w * field, idx, num_segments=num_bins)
        mean = mean / jnp.maximum(counts, 1e-12)
        raw = jnp.sum(w * (field - mean[idx]) ** 2) / jnp.sum(w)
        return raw - jnp.sum(w * se**2) / jnp.sum(w)

    keys = jax.random.split(key, num_samples)
    draw = lambda k: jnp.bincount(jax.random.randint(k, (n,), 0, n), length=n).astype(field.dtype)
    boots = jax.lax.map(lambda k: weighted(draw(k)), keys, batch_size=50)
    alpha = (1 - level) / 2
    low, high = jnp.quantile(boots, jnp.array([alpha, 1 - alpha]))
    point = grouping_loss(conf, field, se, num_bins=num_bins).estimate
    return GroupingLossInterval(*(jnp.maximum(v, 0.0) for v in (point, low, high)))


def undersmoothed_field(model: FieldModel, *, factor: ArrayLike = 0.5) -> FieldEstimate:
    """Out-of-fold field at ``factor`` times each fold's bandwidth, for intervals.

    The cross-validated bandwidth balances bias and variance for estimation, so
    intervals built on it are centred on a smoothed (biased) field and
    under-cover; shrinking the bandwidth trades a wider interval for less bias
    (undersmoothing). Pass the result to :func:`normal_interval`. Pure and
    jittable (``factor`` may be traced).

    Args:
      model: a fitted :class:`~miscal_jax.model.FieldModel` (or a batch).
      factor: bandwidth multiplier in ``(0, 1]``.

    Returns:
      A :class:`~miscal_jax.FieldEstimate` of ``[n]`` arrays, out-of-fold.
    """
    if isinstance(factor, (int, float)) and not 0 < factor <= 1:
        raise ValueError(f"factor: must be in (0, 1], got {factor}.")
    geometry = model.geometry.replace(log_bandwidth=model.geometry.log_bandwidth + jnp.log(factor))
    return out_of_fold(model.replace(geometry=geometry))[0]
