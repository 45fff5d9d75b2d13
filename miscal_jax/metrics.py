"""Calibration and accuracy metrics. Evaluate them on held-out data only.

All functions take ``[n]`` arrays and return a scalar ``jax.Array``
(or a small NamedTuple), and are jit-compatible for static bin counts.

References:
  Naeini et al. (2015) ECE; Kumar et al. (2019) equal-mass bins;
  Perez-Lebel et al. (2023) grouping loss; Hebert-Johnson et al. (2018)
  multicalibration (regional error).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from miscal_jax._types import Array
from miscal_jax.baselines import LOGIT_EPS
from miscal_jax.smoother import loo_field

__all__ = [
    "GroupingLoss",
    "auroc",
    "brier",
    "ece",
    "grouping_loss",
    "local_calibration_error",
    "nll",
    "regional_error",
]


def _f32(x: ArrayLike) -> Array:
    return jnp.asarray(x, jnp.float32)


def _bin_index(conf: Array, num_bins: int, strategy: str) -> Array:
    """``[n]`` bin ids in ``[0, num_bins)`` by equal width or equal mass."""
    if strategy == "width":
        return jnp.clip(jnp.floor(conf * num_bins).astype(jnp.int32), 0, num_bins - 1)
    if strategy == "mass":
        ranks = jnp.argsort(jnp.argsort(conf, stable=True), stable=True)
        return (ranks * num_bins // conf.shape[0]).astype(jnp.int32)
    raise ValueError(f"strategy: expected 'width' or 'mass', got {strategy!r}.")


def ece(conf: ArrayLike, correct: ArrayLike, *, num_bins: int = 15, strategy: str = "width"):
    """Expected calibration error: bin-weighted mean of ``|accuracy - confidence|``.

    Args:
      conf: ``[n]`` confidences.
      correct: ``[n]`` 0/1 outcomes.
      num_bins: static number of bins.
      strategy: ``"width"`` (equal-width) or ``"mass"`` (equal-count bins;
        ties are split by position so every bin holds ``n / num_bins`` items).

    Returns:
      Scalar ECE in ``[0, 1]``.

    Examples:
      >>> round(float(ece([0.9, 0.9], [1.0, 0.0])), 6)
      0.4
    """
    conf, correct = _f32(conf), _f32(correct)
    idx = _bin_index(conf, num_bins, strategy)
    gap = jax.ops.segment_sum(correct - conf, idx, num_segments=num_bins)
    return jnp.sum(jnp.abs(gap)) / conf.shape[0]


def brier(conf: ArrayLike, correct: ArrayLike) -> Array:
    """Mean squared error of the confidence: ``mean((conf - correct)^2)``."""
    return jnp.mean((_f32(conf) - _f32(correct)) ** 2)


def nll(conf: ArrayLike, correct: ArrayLike) -> Array:
    """Mean negative log-likelihood, confidences clipped to ``[1e-4, 1 - 1e-4]``."""
    p = jnp.clip(_f32(conf), LOGIT_EPS, 1 - LOGIT_EPS)
    y = _f32(correct)
    return -jnp.mean(y * jnp.log(p) + (1 - y) * jnp.log1p(-p))


def auroc(conf: ArrayLike, correct: ArrayLike) -> Array:
    """Area under the ROC curve of ``conf`` for ``correct`` (ties count 1/2).

    Computed from mid-ranks (Mann-Whitney U). Returns 0.5 when only one class
    is present, where AUROC is undefined.
    """
    conf, y = _f32(conf), _f32(correct)
    order = jnp.argsort(conf)
    sorted_conf = conf[order]
    # mid-rank of each sorted value = mean of first and last position of its tie block
    first = jnp.searchsorted(sorted_conf, sorted_conf, side="left")
    last = jnp.searchsorted(sorted_conf, sorted_conf, side="right") - 1
    ranks = jnp.zeros_like(conf).at[order].set(0.5 * (first + last).astype(jnp.float32) + 1.0)
    n_pos = jnp.sum(y)
    n_neg = y.shape[0] - n_pos
    u = jnp.sum(ranks * y) - n_pos * (n_pos + 1) / 2
    ok = (n_pos > 0) & (n_neg > 0)
    return jnp.where(ok, u / jnp.where(ok, n_pos * n_neg, 1.0), 0.5)


def regional_error(
    conf: ArrayLike,
    correct: ArrayLike,
    groups: ArrayLike,
    *,
    num_groups: int | None = None,
    weighted: bool = False,
) -> Array:
    """Regional calibration error: mean over groups of ``|mean residual in group|``.

    Args:
      conf: ``[n]`` confidences.
      correct: ``[n]`` 0/1 outcomes.
      groups: ``[n]`` integer group ids in ``[0, num_groups)``; negative ids
        are ignored.
      num_groups: static number of groups (``max(groups) + 1`` by default).
      weighted: weight groups by size (else every non-empty group counts once).

    Returns:
      Scalar error.

    Examples:
      >>> float(regional_error([0.5, 0.5], [1.0, 0.0], [0, 1]))
      0.5
    """
    groups = jnp.asarray(groups, jnp.int32)
    if num_groups is None:
        num_groups = int(jnp.max(groups)) + 1
    keep = groups >= 0
    residual = jnp.where(keep, _f32(correct) - _f32(conf), 0.0)
    ids = jnp.where(keep, groups, 0)
    sums = jax.ops.segment_sum(residual, ids, num_segments=num_groups)
    counts = jax.ops.segment_sum(keep.astype(jnp.float32), ids, num_segments=num_groups)
    present = counts > 0
    gap = jnp.abs(sums) / jnp.where(present, counts, 1.0)
    if weighted:
        return jnp.sum(gap * counts) / jnp.maximum(jnp.sum(counts), 1.0)
    return jnp.sum(jnp.where(present, gap, 0.0)) / jnp.maximum(jnp.sum(present), 1)


def local_calibration_error(
    points: ArrayLike,
    conf: ArrayLike,
    correct: ArrayLike,
    log_bandwidth: ArrayLike,
    *,
    kernel: str = "gaussian",
    chunk_size: int = 256,
) -> Array:
    """Kernel-weighted local calibration error: ``mean_i |LOO field at x_i|``.

    Each item's own residual is left out of its neighbourhood average, so
    pure noise does not count as miscalibration at the item itself.

    Args:
      points: ``[n, k]`` representation in which neighbourhoods are taken.
      conf: ``[n]`` confidences.
      correct: ``[n]`` outcomes.
      log_bandwidth: scalar log-bandwidth.
      kernel: static kernel name.
      chunk_size: static chunk size.

    Returns:
      Scalar error.
    """
    est = loo_field(
        points, _f32(correct) - _f32(conf), log_bandwidth, kernel=kernel, chunk_size=chunk_size
    )
    return jnp.mean(jnp.abs(est.value))


class GroupingLoss(NamedTuple):
    """A grouping-loss estimate ``E[Var(delta(X) | P)]``.

    Attributes:
      estimate: bias-corrected estimate (clipped at 0).
      raw: plug-in ``E[Var(field | P bin)]`` before the correction.
      noise: mean squared standard error subtracted as the bias correction.
    """

    estimate: Array
    raw: Array
    noise: Array


def grouping_loss(
    conf: ArrayLike,
    field: ArrayLike,
    field_se: ArrayLike,
    *,
    num_bins: int = 15,
) -> GroupingLoss:
    """Estimates the grouping loss from an out-of-fold field.

    Within equal-mass confidence bins, the variance of the estimated field
    over-states the variance of the true field by about the mean squared
    standard error; that bias is subtracted.

    Args:
      conf: ``[n]`` confidences.
      field: ``[n]`` out-of-fold field estimates.
      field_se: ``[n]`` their standard errors.
      num_bins: static number of confidence bins.

    Returns:
      A :class:`GroupingLoss`.
    """
    conf, field, se = _f32(conf), _f32(field), _f32(field_se)
    idx = _bin_index(conf, num_bins, "mass")
    counts = jax.ops.segment_sum(jnp.ones_like(field), idx, num_segments=num_bins)
    safe = jnp.maximum(counts, 1.0)
    mean = jax.ops.segment_sum(field, idx, num_segments=num_bins) / safe
    within = jax.ops.segment_sum((field - mean[idx]) ** 2, idx, num_segments=num_bins)
    raw = jnp.sum(within) / field.shape[0]
    noise = jnp.mean(se**2)
    return GroupingLoss(jnp.maximum(raw - noise, 0.0), raw, noise)
