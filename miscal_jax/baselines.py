"""Confidence-only recalibration baselines, each a pure ``fit_*`` / ``apply_*`` pair.

These see only the confidence, never the input, so they cannot remove
miscalibration that depends on the input (the grouping loss). They are the
yardstick for the local correction and the global map it starts from.

References:
  Guo et al. (2017) temperature scaling; Platt (1999); Zadrozny & Elkan (2002)
  isotonic regression and histogram binning; Ayer et al. (1955) PAV.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from miscal_jax._types import Array

__all__ = [
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


def logit(p: ArrayLike) -> Array:
    """``log(p / (1 - p))`` with ``p`` clipped away from 0 and 1 (finite everywhere)."""
    p = jnp.clip(jnp.asarray(p, jnp.float32), LOGIT_EPS, 1.0 - LOGIT_EPS)
    return jnp.log(p) - jnp.log1p(-p)


def _bce(logits: Array, correct: Array, weight: Array | None = None) -> Array:
    losses = optax.sigmoid_binary_cross_entropy(logits, correct)
    if weight is None:
        return jnp.mean(losses)
    return jnp.sum(weight * losses) / jnp.sum(weight)


#: Inputs of the small L-BFGS fits are padded to a multiple of this (with zero
#: weight), so folds of slightly different sizes share compiled code.
FIT_PAD = 256


def _padded(*arrays) -> tuple:
    """Pads ``[n]`` arrays to a multiple of ``FIT_PAD``; returns them and a weight."""
    n = np.shape(arrays[0])[0]
    m = max(FIT_PAD, -(-n // FIT_PAD) * FIT_PAD)
    out = [
        jnp.asarray(np.pad(np.asarray(a, np.float32), (0, m - n), constant_values=0.5))
        for a in arrays
    ]
    return (*out, jnp.asarray(np.arange(m) < n, jnp.float32))


def _minimise(loss, init: Array, steps: int = 100) -> Array:
    """Minimises a smooth loss of a small parameter vector with L-BFGS."""
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (init, opt.init(init)), None, length=steps)
    return params


class TemperatureState(NamedTuple):
    """``p -> sigmoid(logit(p) / T)``; ``log_temperature`` is ``log T``."""

    log_temperature: Array


@jax.jit
def _fit_temperature(conf, correct, weight):
    z = logit(conf)
    loss = lambda t: _bce(z * jnp.exp(-t[0]), correct, weight)
    return TemperatureState(_minimise(loss, jnp.zeros(1))[0])


def fit_temperature(conf: ArrayLike, correct: ArrayLike) -> TemperatureState:
    """Fits one temperature on ``logit(conf)`` by minimising log-loss.

    Args:
      conf: ``[n]`` confidences in ``[0, 1]``.
      correct: ``[n]`` 0/1 outcomes.

    Returns:
      A :class:`TemperatureState`.

    Examples:
      >>> import numpy as np
      >>> s = fit_temperature(np.array([0.9, 0.9, 0.6, 0.6]), np.array([1, 0, 1, 0]))
      >>> float(apply_temperature(s, np.array([0.9]))[0]) < 0.9
      True
    """
    return _fit_temperature(*_padded(conf, correct))


def apply_temperature(state: TemperatureState, conf: ArrayLike) -> Array:
    """Applies a fitted temperature: ``[n]`` confidences to ``[n]``."""
    return jax.nn.sigmoid(logit(conf) * jnp.exp(-state.log_temperature))


class PlattState(NamedTuple):
    """``p -> sigmoid(slope * logit(p) + intercept)``."""

    slope: Array
    intercept: Array


@jax.jit
def _fit_platt(conf, correct, weight):
    z = logit(conf)
    loss = lambda ab: _bce(ab[0] * z + ab[1], correct, weight)
    ab = _minimise(loss, jnp.array([1.0, 0.0]))
    return PlattState(ab[0], ab[1])


def fit_platt(conf: ArrayLike, correct: ArrayLike) -> PlattState:
    """Fits Platt scaling (logistic regression on ``logit(conf)``).

    Args:
      conf: ``[n]`` confidences.
      correct: ``[n]`` 0/1 outcomes.

    Returns:
      A :class:`PlattState`.
    """
    return _fit_platt(*_padded(conf, correct))


def apply_platt(state: PlattState, conf: ArrayLike) -> Array:
    """Applies Platt scaling: ``[n]`` confidences to ``[n]``."""
    return jax.nn.sigmoid(state.slope * logit(conf) + state.intercept)


class IsotonicState(NamedTuple):
    """A non-decreasing piecewise-linear map through ``(knots_x, knots_y)``.

    Attributes:
      knots_x: ``[m]`` increasing confidences (float64 numpy, as fitted).
      knots_y: ``[m]`` non-decreasing calibrated values; constant beyond the ends.
    """

    knots_x: Array
    knots_y: Array


def _pav(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted pool-adjacent-violators: the non-decreasing least-squares fit."""
    means, weights, counts = [], [], []
    for yi, wi in zip(y, w, strict=True):
        means.append(yi)
        weights.append(wi)
        counts.append(1)
        while len(means) > 1 and means[-2] >= means[-1]:
            w_new = weights[-2] + weights[-1]
            m_new = (means[-2] * weights[-2] + means[-1] * weights[-1]) / w_new
            c_new = counts[-2] + counts[-1]
            del means[-1], weights[-1], counts[-1]
            means[-1], weights[-1], counts[-1] = m_new, w_new, c_new
    return np.repeat(means, counts)


def fit_isotonic(conf: ArrayLike, correct: ArrayLike) -> IsotonicState:
    """Fits isotonic regression of ``correct`` on ``conf`` (pool adjacent violators).

    Tied confidences are merged into their mean outcome first, then PAV runs
    over the distinct values weighted by their counts; the map interpolates
    linearly between distinct confidences and is flat beyond the ends (as
    scikit-learn's ``IsotonicRegression(out_of_bounds="clip")``).

    Args:
      conf: ``[n]`` confidences.
      correct: ``[n]`` outcomes in ``[0, 1]``.

    Returns:
      An :class:`IsotonicState`.
    """
    x = np.asarray(conf, np.float64)
    y = np.asarray(correct, np.float64)
    ux, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=y, minlength=ux.size)
    fitted = _pav(sums / counts, counts.astype(np.float64))
    return IsotonicState(ux, fitted)


def apply_isotonic(state: IsotonicState, conf: ArrayLike) -> Array:
    """Applies a fitted isotonic map: ``[n]`` confidences to ``[n]``.

    Computes in JAX's default float precision (float64 when ``jax_enable_x64``).
    """
    conf = jnp.asarray(conf)
    dtype = jnp.result_type(float)
    return jnp.interp(
        conf.astype(dtype), jnp.asarray(state.knots_x, dtype), jnp.asarray(state.knots_y, dtype)
    )


class HistogramState(NamedTuple):
    """Histogram binning: ``bin_edges`` ``[b + 1]`` and ``bin_values`` ``[b]``."""

    bin_edges: Array
    bin_values: Array


def fit_histogram(conf: ArrayLike, correct: ArrayLike, *, num_bins: int = 15) -> HistogramState:
    """Fits histogram binning on equal-mass confidence bins.

    Each bin maps to its mean outcome; an empty bin (possible with many ties)
    maps to its mid-point.

    Args:
      conf: ``[n]`` confidences.
      correct: ``[n]`` 0/1 outcomes.
      num_bins: static number of bins.

    Returns:
      A :class:`HistogramState`.
    """
    x = np.asarray(conf, np.float64)
    y = np.asarray(correct, np.float64)
    edges = np.quantile(x, np.linspace(0, 1, num_bins + 1))
    edges[0], edges[-1] = 0.0, 1.0
    edges = np.maximum.accumulate(edges)
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, num_bins - 1)
    counts = np.bincount(idx, minlength=num_bins)
    sums = np.bincount(idx, weights=y, minlength=num_bins)
    mids = 0.5 * (edges[:-1] + edges[1:])
    values = np.where(counts > 0, sums / np.maximum(counts, 1), mids)
    return HistogramState(jnp.asarray(edges, jnp.float32), jnp.asarray(values, jnp.float32))


def apply_histogram(state: HistogramState, conf: ArrayLike) -> Array:
    """Applies histogram binning: ``[n]`` confidences to ``[n]``."""
    num_bins = state.bin_values.shape[0]
    idx = jnp.searchsorted(state.bin_edges, jnp.asarray(conf, jnp.float32), side="right") - 1
    return state.bin_values[jnp.clip(idx, 0, num_bins - 1)]
