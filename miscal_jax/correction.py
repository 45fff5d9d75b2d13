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
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from miscal_jax._types import Array
from miscal_jax.baselines import (
    LOGIT_EPS,
    IsotonicState,
    TemperatureState,
    _bce,
    _minimise,
    _padded,
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


def fit_global(conf: ArrayLike, correct: ArrayLike, *, method: str = "isotonic"):
    """Fits the first, confidence-only map (``"isotonic"`` or ``"temperature"``)."""
    if method == "isotonic":
        return fit_isotonic(conf, correct)
    if method == "temperature":
        return fit_temperature(conf, correct)
    raise ValueError(f"global_method: expected 'isotonic' or 'temperature', got {method!r}.")


def apply_global(state: IsotonicState | TemperatureState, conf: ArrayLike) -> Array:
    """Applies a map from :func:`fit_global`: ``[n]`` to ``[n]``."""
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
    """
    p_global = jnp.asarray(p_global, jnp.float32)
    base = logit(p_global)
    target = jnp.clip(p_global + jnp.asarray(field, jnp.float32), LOGIT_EPS, 1 - LOGIT_EPS)
    shift = logit(target) - base
    n_eff = jnp.asarray(n_eff, jnp.float32)
    weight = n_eff / (n_eff + jnp.exp(params.log_shrinkage))
    return jax.nn.sigmoid(base + jnp.exp(params.log_strength) * weight * shift)


@jax.jit
def _fit_params(p_global, field, n_eff, correct, weight):
    def loss(v):
        params = CorrectionParams(v[0], v[1])
        return _bce(logit(local_confidence(params, p_global, field, n_eff)), correct, weight)

    v = _minimise(loss, jnp.array([0.0, jnp.log(10.0)]), steps=60)
    return CorrectionParams(v[0], v[1])


def fit_correction_params(
    p_global: ArrayLike, field: ArrayLike, n_eff: ArrayLike, correct: ArrayLike
) -> CorrectionParams:
    """Fits strength and shrinkage by log-loss.

    Pass *leave-one-out* field values of the training items: with in-sample
    values each item would see its own outcome and the fit would overshoot.

    Args:
      p_global: ``[n]`` globally recalibrated confidences.
      field: ``[n]`` leave-one-out field values.
      n_eff: ``[n]`` their effective sample sizes.
      correct: ``[n]`` outcomes.

    Returns:
      :class:`CorrectionParams`.
    """
    return _fit_params(*_padded(p_global, field, n_eff, correct))
