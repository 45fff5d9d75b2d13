"""Confidence-only recalibration baselines, each a pure ``fit_*`` / ``apply_*`` pair.

These see only the confidence, never the input, so they cannot remove
miscalibration that depends on the input (the grouping loss). They are the
yardstick for the local correction and the global map it starts from.

Every ``fit_*`` is a pure JAX function of ``[n]`` arrays: it runs under
``jax.jit`` and ``jax.vmap`` (e.g. ``jax.vmap(fit_isotonic)(conf, correct)``
with ``conf`` and ``correct`` of shape ``[m, n]`` fits ``m`` maps at once), and
returns a state of fixed, static size. Each takes an optional ``weight``
``[n]``: 0/1 selects rows (a fold by mask instead of boolean slicing) and
non-negative values weight them; a row with weight ``<= 0`` does not influence
the fit at all. Static configuration (``num_bins``, ``max_knots``) is a
keyword-only Python value.

Inputs are padded to a multiple of :data:`FIT_PAD` rows (with zero weight)
before fitting, so data sets of slightly different sizes (cross-fitting folds)
share compiled code.

References:
  Guo et al. (2017) temperature scaling; Platt (1999); Zadrozny & Elkan (2002)
  isotonic regression and histogram binning; Ayer et al. (1955) PAV.
"""

import functools
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from miscal_jax._src.dtypes import as_float
from miscal_jax._src.fitting import FIT_PAD, bce, minimise, pad_fit_inputs
from miscal_jax._types import Array

__all__ = [
    "FIT_PAD",
    "MAX_KNOTS",
    "HistogramState",
    "IsotonicState",
    "PlattState",
    "TemperatureState",
    "apply_histogram",
    "apply_isotonic",
    "apply_platt",
    "apply_temperature",
    "fit_histogram",
    "fit_isotonic",
    "fit_platt",
    "fit_temperature",
    "logit",
]

#: Confidences are clipped to ``[LOGIT_EPS, 1 - LOGIT_EPS]`` before a logit.
LOGIT_EPS = 1e-4


#: Default static bound on the number of isotonic knots (see :func:`fit_isotonic`).
MAX_KNOTS = 4096


def logit(p: ArrayLike) -> Array:
    """``log(p / (1 - p))`` with ``p`` clipped away from 0 and 1 (finite everywhere).

    Args:
      p: ``[...]`` probabilities; computed in the library's float dtype.

    Returns:
      ``[...]`` logits, finite for every ``p`` in ``[0, 1]``.

    Examples:
      >>> import numpy as np
      >>> [round(float(v), 2) for v in logit(np.array([0.5, 0.0, 1.0]))]
      [0.0, -9.21, 9.21]
    """
    p = jnp.clip(as_float(p), LOGIT_EPS, 1.0 - LOGIT_EPS)
    return jnp.log(p) - jnp.log1p(-p)


def _static_int(name: str, value) -> int:
    """A positive static integer (Python or NumPy int) as a Python int, else ``ValueError``."""
    try:
        out = operator.index(value)
    except TypeError:
        out = None
    if out is None or isinstance(value, bool) or out < 1:
        raise ValueError(f"{name}: expected a positive Python int, got {value!r}.")
    return out


class TemperatureState(NamedTuple):
    """``p -> sigmoid(logit(p) / T)``.

    Attributes:
      log_temperature: ``[]`` ``log T``.
    """

    log_temperature: Array


@jax.jit
def _fit_temperature(conf, correct, weight):
    z = logit(conf)
    loss = lambda t: bce(z * jnp.exp(-t[0]), correct, weight)
    return TemperatureState(minimise(loss, jnp.zeros(1))[0])


def fit_temperature(
    conf: ArrayLike, correct: ArrayLike, weight: ArrayLike | None = None
) -> TemperatureState:
    """Fits one temperature on ``logit(conf)`` by minimising (weighted) log-loss.

    Pure and traceable: works under ``jax.jit`` and ``jax.vmap``.

    Args:
      conf: ``[n]`` confidences in ``[0, 1]``.
      correct: ``[n]`` 0/1 outcomes.
      weight: optional ``[n]`` 0/1 mask or non-negative weights; rows with
        weight ``<= 0`` are ignored.

    Returns:
      A :class:`TemperatureState` (``log_temperature`` 0 when every weight is 0).

    Examples:
      >>> import numpy as np
      >>> s = fit_temperature(np.array([0.9, 0.9, 0.6, 0.6]), np.array([1, 0, 1, 0]))
      >>> float(apply_temperature(s, np.array([0.9]))[0]) < 0.9
      True
      >>> conf = np.tile([0.9, 0.9, 0.6, 0.6], (3, 1))  # three models, vmapped
      >>> jax.vmap(fit_temperature)(conf, np.ones_like(conf)).log_temperature.shape
      (3,)
    """
    return _fit_temperature(*pad_fit_inputs(("conf", "correct"), (conf, correct), weight))


def apply_temperature(state: TemperatureState, conf: ArrayLike) -> Array:
    """Applies a fitted temperature: ``[n]`` confidences to ``[n]``.

    Examples:
      >>> import numpy as np
      >>> s = TemperatureState(jnp.log(2.0))  # T = 2 halves every logit
      >>> round(float(apply_temperature(s, np.array([0.8]))[0]), 4)
      0.6667
    """
    return jax.nn.sigmoid(logit(conf) * jnp.exp(-state.log_temperature))


class PlattState(NamedTuple):
    """``p -> sigmoid(slope * logit(p) + intercept)``.

    Attributes:
      slope: ``[]`` multiplier on ``logit(p)``.
      intercept: ``[]`` offset in logit space.
    """

    slope: Array
    intercept: Array


@jax.jit
def _fit_platt(conf, correct, weight):
    z = logit(conf)
    loss = lambda ab: bce(ab[0] * z + ab[1], correct, weight)
    ab = minimise(loss, jnp.array([1.0, 0.0]))
    return PlattState(ab[0], ab[1])


def fit_platt(conf: ArrayLike, correct: ArrayLike, weight: ArrayLike | None = None) -> PlattState:
    """Fits Platt scaling (logistic regression on ``logit(conf)``).

    Pure and traceable: works under ``jax.jit`` and ``jax.vmap``.

    Args:
      conf: ``[n]`` confidences.
      correct: ``[n]`` 0/1 outcomes.
      weight: optional ``[n]`` 0/1 mask or non-negative weights; rows with
        weight ``<= 0`` are ignored.

    Returns:
      A :class:`PlattState`.

    Examples:
      >>> import numpy as np
      >>> conf = np.array([0.2, 0.4, 0.6, 0.8, 0.8])
      >>> s = fit_platt(conf, np.array([0, 1, 0, 1, 1]))
      >>> bool(s.slope > 0)
      True
      >>> s2 = fit_platt(np.r_[conf, 0.5], np.r_[0, 1, 0, 1, 1, 1], np.r_[np.ones(5), 0])
      >>> bool(abs(s2.slope - s.slope) < 1e-4)  # a zero-weight row changes nothing
      True
    """
    return _fit_platt(*pad_fit_inputs(("conf", "correct"), (conf, correct), weight))


def apply_platt(state: PlattState, conf: ArrayLike) -> Array:
    """Applies Platt scaling: ``[n]`` confidences to ``[n]``.

    Examples:
      >>> import numpy as np
      >>> s = PlattState(jnp.float32(1.0), jnp.float32(0.0))  # the identity
      >>> round(float(apply_platt(s, np.array([0.7]))[0]), 4)
      0.7
    """
    return jax.nn.sigmoid(state.slope * logit(conf) + state.intercept)


class IsotonicState(NamedTuple):
    """A non-decreasing piecewise-linear map through ``(knots_x, knots_y)``.

    The knot arrays have a static length ``k`` (see :func:`fit_isotonic`); only
    the first ``num_knots`` are distinct, the rest repeat the last knot, so
    states of fits on equally long inputs stack and vmap.

    Attributes:
      knots_x: ``[k]`` non-decreasing confidences (strictly increasing over the
        first ``num_knots``).
      knots_y: ``[k]`` non-decreasing calibrated values; constant beyond the ends.
      num_knots: ``[]`` int32, the number of distinct knots.
    """

    knots_x: Array
    knots_y: Array
    num_knots: Array


def _pav(sum_wy: Array, sum_w: Array, count: Array) -> Array:
    """Weighted pool-adjacent-violators over ``count`` groups, in fixed-size arrays.

    A stack of pooled blocks (sums of ``w * y`` and ``w``, last group index)
    lives in ``[k]`` arrays; one ``lax.while_loop`` step either pools the two
    top blocks, when they violate monotonicity, or pushes the next group, so it
    ends after at most ``2 * count`` steps. Block sums, not means, are pooled:
    with 0/1 outcomes and unit weights they stay exact integers.

    Args:
      sum_wy: ``[k]`` per-group sums of ``weight * correct`` (first ``count`` used).
      sum_w: ``[k]`` per-group sums of weights, positive for the first ``count``.
      count: ``[]`` number of groups.

    Returns:
      ``[k]`` the non-decreasing least-squares fit of each group (garbage
      beyond ``count``).
    """
    k = sum_w.shape[0]
    index = jnp.int32

    def violated(top, bwy, bw):
        a, b = jnp.maximum(top - 2, 0), jnp.maximum(top - 1, 0)
        return (top >= 2) & (bwy[a] / bw[a] >= bwy[b] / bw[b])

    def cond(state):
        i, top, bwy, bw, _ = state
        return (i < count) | violated(top, bwy, bw)

    def body(state):
        i, top, bwy, bw, bend = state
        pool = violated(top, bwy, bw)
        a, b = jnp.maximum(top - 2, 0), jnp.maximum(top - 1, 0)
        j = jnp.minimum(i, k - 1)
        pos = jnp.where(pool, a, top)
        bwy = bwy.at[pos].set(jnp.where(pool, bwy[a] + bwy[b], sum_wy[j]))
        bw = bw.at[pos].set(jnp.where(pool, bw[a] + bw[b], sum_w[j]))
        bend = bend.at[pos].set(jnp.where(pool, bend[b], i))
        return i + (~pool).astype(index), top + jnp.where(pool, -1, 1), bwy, bw, bend

    zeros = jnp.zeros_like(sum_w)
    init = (index(0), index(0), zeros, zeros, jnp.zeros(k, index))
    _, top, bwy, bw, bend = jax.lax.while_loop(cond, body, init)
    live = jnp.arange(k) < top
    means = bwy / jnp.where(live, bw, 1.0)
    # group g belongs to the first block that ends at or after g
    block = jnp.searchsorted(jnp.where(live, bend, k), jnp.arange(k), side="left")
    return means[jnp.minimum(block, k - 1)]


@functools.partial(jax.jit, static_argnames=("max_knots",))
def _fit_isotonic(conf, correct, weight, *, max_knots):
    n = conf.shape[0]
    k = min(n, max_knots)
    valid = weight > 0
    order = jnp.argsort(jnp.where(valid, conf, jnp.inf))  # used rows first, by conf
    x, y, w, used = conf[order], correct[order], weight[order], valid[order]
    first = jnp.arange(n) == 0
    starts = used & (first | (x != jnp.roll(x, 1)))  # first row of each distinct conf
    group = jnp.cumsum(starts) - 1
    binned = jnp.asarray(False)
    if n > k:  # static: more rows than knots, so possibly more distinct values too
        binned = jnp.sum(starts) > k
        below = jnp.cumsum(w) - w  # weight of the rows before each row
        start_below = jax.lax.cummax(jnp.where(starts, below, 0.0))
        bins = jnp.floor(start_below / jnp.sum(w) * k).astype(group.dtype)
        raw = jnp.where(binned, jnp.minimum(bins, k - 1), group)
        starts = used & (first | (raw != jnp.roll(raw, 1)))
        group = jnp.cumsum(starts) - 1
    count = jnp.sum(starts).astype(jnp.int32)
    ids = jnp.where(used, group, k)  # out of range: dropped by the segment sums
    sum_w = jax.ops.segment_sum(w, ids, k)
    sum_wy = jax.ops.segment_sum(w * y, ids, k)
    knots_x = jax.ops.segment_min(x, ids, k)  # the tied value itself when not binned
    if n > k:
        mean_x = jax.ops.segment_sum(w * x, ids, k) / jnp.where(sum_w > 0, sum_w, 1.0)
        knots_x = jnp.where(binned, mean_x, knots_x)
    knots_y = _pav(sum_wy, sum_w, count)
    last = jnp.maximum(count - 1, 0)
    inside = jnp.arange(k) < count
    knots_x = jnp.where(inside, knots_x, knots_x[last])
    knots_y = jnp.where(inside, knots_y, knots_y[last])
    empty = count == 0  # every weight zero: the constant map 0.5
    return IsotonicState(jnp.where(empty, 0.5, knots_x), jnp.where(empty, 0.5, knots_y), count)


def fit_isotonic(
    conf: ArrayLike,
    correct: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    max_knots: int = MAX_KNOTS,
) -> IsotonicState:
    """Fits isotonic regression of ``correct`` on ``conf`` (pool adjacent violators).

    Tied confidences are merged into their weighted mean outcome first, then
    PAV runs over the distinct values weighted by their total weight; the map
    interpolates linearly between distinct confidences and is flat beyond the
    ends. Without binning this is scikit-learn's
    ``IsotonicRegression(out_of_bounds="clip").fit(conf, correct, weight)``
    (equal to 1e-6 in float64; zero-weight rows dropped as scikit-learn does).

    Pure and traceable (sort, segment sums and a ``lax.while_loop`` PAV over a
    fixed-size stack), so it works under ``jax.jit`` and ``jax.vmap``.

    Static sizes and binning: the input is padded to ``m``, ``n`` rounded up to
    a multiple of :data:`FIT_PAD`; the knots have static length
    ``k = min(m, max_knots)``. When the used rows hold more than ``k`` distinct
    confidences (only possible when ``m > max_knots``), they are first pooled
    into ``k`` equal-weight quantile bins of consecutive distinct values (a
    tied value is never split; a bin starts where the weight before it crosses
    a multiple of ``total / k``), and the regression runs on the bins' weighted
    mean confidence and outcome. Otherwise the fit is exact.

    Args:
      conf: ``[n]`` confidences.
      correct: ``[n]`` outcomes in ``[0, 1]``.
      weight: optional ``[n]`` 0/1 mask or non-negative weights; rows with
        weight ``<= 0`` are ignored.
      max_knots: static bound on the number of knots (default :data:`MAX_KNOTS`).

    Returns:
      An :class:`IsotonicState` with ``[k]`` knots.

    Examples:
      >>> import numpy as np
      >>> s = fit_isotonic(np.array([0.2, 0.4, 0.4, 0.8]), np.array([1, 0, 1, 1]))
      >>> int(s.num_knots), s.knots_x.shape  # 3 distinct confidences, padded to 256
      (3, (256,))
      >>> [round(float(v), 4) for v in s.knots_y[:3]]  # 0.2 and 0.4 pooled
      [0.6667, 0.6667, 1.0]
      >>> conf = np.random.default_rng(0).random((8, 100))  # 8 models, vmapped
      >>> jax.vmap(fit_isotonic)(conf, conf > 0.5).knots_y.shape
      (8, 256)
    """
    max_knots = _static_int("max_knots", max_knots)
    return _fit_isotonic(
        *pad_fit_inputs(("conf", "correct"), (conf, correct), weight), max_knots=max_knots
    )


def apply_isotonic(state: IsotonicState, conf: ArrayLike) -> Array:
    """Applies a fitted isotonic map: ``[n]`` confidences to ``[n]``.

    Interpolates linearly between knots and clips outside them (scikit-learn's
    ``out_of_bounds="clip"``). Computes in JAX's default float precision
    (float64 when ``jax_enable_x64``).

    Examples:
      >>> import numpy as np
      >>> s = fit_isotonic(np.array([0.2, 0.6]), np.array([0, 1]))
      >>> [round(float(v), 4) for v in apply_isotonic(s, np.array([0.0, 0.4, 0.9]))]
      [0.0, 0.5, 1.0]
    """
    dtype = jnp.result_type(float)
    return jnp.interp(
        jnp.asarray(conf).astype(dtype),
        jnp.asarray(state.knots_x, dtype),
        jnp.asarray(state.knots_y, dtype),
    )


class HistogramState(NamedTuple):
    """Histogram binning.

    Attributes:
      bin_edges: ``[b + 1]`` non-decreasing edges from 0 to 1.
      bin_values: ``[b]`` the calibrated value of each bin.
    """

    bin_edges: Array
    bin_values: Array


@functools.partial(jax.jit, static_argnames=("num_bins",))
def _fit_histogram(conf, correct, weight, *, num_bins):
    n = conf.shape[0]
    valid = weight > 0
    order = jnp.argsort(jnp.where(valid, conf, jnp.inf))
    x, w, used = conf[order], weight[order], valid[order]
    count = jnp.sum(used)
    total = jnp.sum(w)
    # weighted rank of each used row (its index for unit weights), increasing,
    # scaled by num_bins so that the quantile targets j * rank[last] need no
    # division (exact for integer ranks, as NumPy's float64 virtual indexes)
    rank = jnp.where(used, jnp.cumsum(w) - w, total + jnp.arange(n))
    last = jnp.maximum(count - 1, 0)
    target = jnp.arange(num_bins + 1) * rank[last]
    rank = rank * num_bins
    lo = jnp.clip(jnp.searchsorted(rank, target, side="right") - 1, 0, jnp.maximum(count - 2, 0))
    hi = jnp.minimum(lo + 1, last)
    gap = rank[hi] - rank[lo]
    t = jnp.where(gap > 0, (target - rank[lo]) / jnp.where(gap > 0, gap, 1.0), 0.0)
    diff = x[hi] - x[lo]
    edges = jnp.where(t >= 0.5, x[hi] - diff * (1 - t), x[lo] + diff * t)  # as np.quantile
    edges = jnp.where(count > 0, edges, jnp.linspace(0.0, 1.0, num_bins + 1))
    edges = jax.lax.cummax(edges.at[0].set(0.0).at[-1].set(1.0))
    idx = jnp.clip(jnp.searchsorted(edges, conf, side="right") - 1, 0, num_bins - 1)
    ids = jnp.where(valid, idx, num_bins)
    counts = jax.ops.segment_sum(weight, ids, num_bins)
    sums = jax.ops.segment_sum(weight * correct, ids, num_bins)
    mids = 0.5 * (edges[:-1] + edges[1:])
    values = jnp.where(counts > 0, sums / jnp.where(counts > 0, counts, 1.0), mids)
    return HistogramState(edges, values)


def fit_histogram(
    conf: ArrayLike, correct: ArrayLike, weight: ArrayLike | None = None, *, num_bins: int = 15
) -> HistogramState:
    """Fits histogram binning on equal-mass confidence bins.

    The inner edges are the ``j / num_bins`` quantiles of the used
    confidences (NumPy's default linear interpolation; with weights, the rank
    of a row is the weight before it, so 0/1 weights equal slicing); the outer
    edges are 0 and 1. Each bin maps to its (weighted) mean outcome; an empty
    bin (possible with many ties) maps to its mid-point.

    Pure and traceable: works under ``jax.jit`` and ``jax.vmap``.

    Args:
      conf: ``[n]`` confidences.
      correct: ``[n]`` 0/1 outcomes.
      weight: optional ``[n]`` 0/1 mask or non-negative weights; rows with
        weight ``<= 0`` are ignored.
      num_bins: static number of bins ``b``.

    Returns:
      A :class:`HistogramState` with ``[b + 1]`` edges and ``[b]`` values.

    Examples:
      >>> import numpy as np
      >>> p = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 0.95])
      >>> s = fit_histogram(p, np.array([0, 0, 1, 1, 1, 0]), num_bins=2)
      >>> [round(float(v), 4) for v in s.bin_edges]
      [0.0, 0.55, 1.0]
      >>> [round(float(v), 4) for v in apply_histogram(s, np.array([0.15, 0.9]))]
      [0.3333, 0.6667]
    """
    num_bins = _static_int("num_bins", num_bins)
    return _fit_histogram(
        *pad_fit_inputs(("conf", "correct"), (conf, correct), weight), num_bins=num_bins
    )


def apply_histogram(state: HistogramState, conf: ArrayLike) -> Array:
    """Applies histogram binning: ``[n]`` confidences to ``[n]``.

    Examples:
      >>> import numpy as np
      >>> s = HistogramState(jnp.array([0.0, 0.5, 1.0]), jnp.array([0.2, 0.7]))
      >>> [round(float(v), 4) for v in apply_histogram(s, np.array([0.1, 0.5, 1.0]))]
      [0.2, 0.7, 0.7]
    """
    edges = state.bin_edges
    num_bins = state.bin_values.shape[-1]
    idx = jnp.searchsorted(edges, jnp.asarray(conf).astype(edges.dtype), side="right") - 1
    return state.bin_values[jnp.clip(idx, 0, num_bins - 1)]
