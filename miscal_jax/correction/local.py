"""Local correction: a global recalibration plus a field term in logit space.

    p_local = sigmoid(logit(p_global) + strength * s(n_eff) * shift)
    shift   = logit(p_global + field) - logit(p_global)
    s(n_eff) = n_eff / (n_eff + shrinkage)

``p_global`` is a confidence-only map (isotonic or temperature) and ``field``
the smoothed residual ``correct - p_global`` in the chosen geometry, so the
term moves confidence by the local miscalibration, shrunk toward zero where few
neighbours support it. ``strength`` and ``shrinkage`` are a differentiable
pytree fitted by log-loss on leave-one-out field values. Adding a field term
can break global calibration, so a final isotonic map, fitted on the
leave-one-out corrected values of the training items, restores it.

Every fit here is a pure JAX function (``jax.jit`` and ``jax.vmap`` work; the
method name is static) and takes an optional ``weight`` ``[n]`` mask, so folds
can be selected by masks instead of boolean slicing.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from miscal_jax._src.dtypes import as_float
from miscal_jax._src.fitting import bce, minimise, pad_fit_inputs
from miscal_jax._types import Array
from miscal_jax.calibrators.global_maps import (
    LOGIT_EPS,
    MAX_KNOTS,
    IsotonicState,
    TemperatureState,
    apply_isotonic,
    apply_temperature,
    fit_isotonic,
    fit_temperature,
    logit,
)

__all__ = [
    "CorrectionParams",
    "CorrectionState",
    "apply_global",
    "fit_correction_params",
    "fit_global",
    "local_confidence",
]


class CorrectionParams(NamedTuple):
    """Differentiable correction parameters.

    Attributes:
      log_strength: log of the multiplier on the logit shift.
      log_shrinkage: log of the ``n_eff`` at which the shift is halved.
    """

    log_strength: Array
    log_shrinkage: Array


class CorrectionState(NamedTuple):
    """A fitted local correction (everything but the field itself).

    Attributes:
      global_map: the first, confidence-only map.
      params: :class:`CorrectionParams`.
      final_map: isotonic map applied last (restores global calibration), or
        ``None`` when disabled.
    """

    global_map: IsotonicState | TemperatureState
    params: CorrectionParams
    final_map: IsotonicState | None


def fit_global(
    conf: ArrayLike,
    correct: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    method: str = "isotonic",
    max_knots: int = MAX_KNOTS,
) -> IsotonicState | TemperatureState:
    """Fits the first, confidence-only map.

    Pure and traceable (``method`` is static): works under ``jax.jit`` and
    ``jax.vmap``.

    Args:
      conf: ``[n]`` confidences.
      correct: ``[n]`` 0/1 outcomes.
      weight: optional ``[n]`` 0/1 mask or non-negative weights; rows with
        weight ``<= 0`` are ignored.
      method: static, ``"isotonic"`` (:func:`~miscal_jax.calibrators.fit_isotonic`)
        or ``"temperature"`` (:func:`~miscal_jax.calibrators.fit_temperature`).
      max_knots: static knot bound of the isotonic map.

    Returns:
      An :class:`~miscal_jax.calibrators.IsotonicState` or a
      :class:`~miscal_jax.calibrators.TemperatureState`.

    Examples:
      >>> import numpy as np
      >>> conf, correct = np.array([0.3, 0.6, 0.9, 0.9]), np.array([0, 1, 1, 0])
      >>> type(fit_global(conf, correct, method="temperature")).__name__
      'TemperatureState'
      >>> s = jax.jit(fit_global, static_argnames="method")(conf, correct, method="isotonic")
      >>> [round(float(v), 4) for v in apply_global(s, np.array([0.3, 0.9]))]  # 0.6, 0.9 pooled
      [0.0, 0.6667]
    """
    if method == "isotonic":
        return fit_isotonic(conf, correct, weight, max_knots=max_knots)
    if method == "temperature":
        return fit_temperature(conf, correct, weight)
    raise ValueError(f"global_method: expected 'isotonic' or 'temperature', got {method!r}.")


def apply_global(state: IsotonicState | TemperatureState, conf: ArrayLike) -> Array:
    """Applies a map from :func:`fit_global`: ``[n]`` to ``[n]``.

    Dispatches on the Python type of ``state``, which is static under ``jit``.

    Examples:
      >>> import numpy as np
      >>> s = fit_global(np.array([0.2, 0.6]), np.array([0, 1]))
      >>> [round(float(v), 4) for v in apply_global(s, np.array([0.0, 0.4]))]
      [0.0, 0.5]
    """
    if isinstance(state, IsotonicState):
        return apply_isotonic(state, conf)
    return apply_temperature(state, conf)


def local_confidence(
    params: CorrectionParams, p_global: ArrayLike, field: ArrayLike, n_eff: ArrayLike
) -> Array:
    """The locally corrected confidence before the final map.

    Args:
      params: :class:`CorrectionParams`.
      p_global: ``[n]`` globally recalibrated confidences.
      field: ``[n]`` smoothed residuals ``correct - p_global`` at the items.
      n_eff: ``[n]`` effective sample sizes of ``field``.

    Returns:
      ``[n]`` corrected confidences in ``(0, 1)``.

    Examples:
      >>> import numpy as np
      >>> params = CorrectionParams(jnp.float32(0.0), jnp.log(10.0))  # strength 1
      >>> out = local_confidence(params, np.array([0.6, 0.6]), np.array([0.2, 0.2]),
      ...                        np.array([0.0, 1e6]))
      >>> [round(float(v), 3) for v in out]  # no support: unchanged; full: p + field
      [0.6, 0.8]
    """
    p_global = as_float(p_global)
    base = logit(p_global)
    target = jnp.clip(p_global + as_float(field), LOGIT_EPS, 1 - LOGIT_EPS)
    shift = logit(target) - base
    n_eff = as_float(n_eff)
    weight = n_eff / (n_eff + jnp.exp(params.log_shrinkage))
    return jax.nn.sigmoid(base + jnp.exp(params.log_strength) * weight * shift)


@jax.jit
def _fit_params(p_global, field, n_eff, correct, weight):
    def loss(v):
        params = CorrectionParams(v[0], v[1])
        return bce(logit(local_confidence(params, p_global, field, n_eff)), correct, weight)

    v = minimise(loss, jnp.array([0.0, jnp.log(10.0)]))
    return CorrectionParams(v[0], v[1])


def fit_correction_params(
    p_global: ArrayLike,
    field: ArrayLike,
    n_eff: ArrayLike,
    correct: ArrayLike,
    weight: ArrayLike | None = None,
) -> CorrectionParams:
    """Fits strength and shrinkage by (weighted) log-loss, with damped Newton steps.

    Pass *leave-one-out* field values of the training items: with in-sample
    values each item would see its own outcome and the fit would overshoot.
    Pure and traceable: works under ``jax.jit`` and ``jax.vmap``.

    Args:
      p_global: ``[n]`` globally recalibrated confidences.
      field: ``[n]`` leave-one-out field values.
      n_eff: ``[n]`` their effective sample sizes.
      correct: ``[n]`` outcomes.
      weight: optional ``[n]`` 0/1 mask or non-negative weights; rows with
        weight ``<= 0`` are ignored.

    Returns:
      :class:`CorrectionParams`.

    Examples:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> p = rng.uniform(0.3, 0.7, 2000)
      >>> field = np.where(rng.random(2000) < 0.5, 0.2, -0.2)
      >>> correct = rng.random(2000) < p + field  # the field is real
      >>> params = fit_correction_params(p, field, np.full(2000, 100.0), correct)
      >>> bool(0.7 < float(jnp.exp(params.log_strength)) < 1.3)
      True
    """
    names = ("p_global", "field", "n_eff", "correct")
    return _fit_params(*pad_fit_inputs(names, (p_global, field, n_eff, correct), weight))
