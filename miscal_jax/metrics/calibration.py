"""Calibration and accuracy metrics. Evaluate them on held-out data only.

All functions take ``[n]`` arrays and return a scalar ``jax.Array``
(or a small NamedTuple), and are jit-compatible for static bin counts.

References:
  Naeini et al. (2015) ECE; Kumar et al. (2019) equal-mass bins;
  Blasiok & Nakkiran (2023) smooth ECE; Arrieta-Ibarra et al. (2022) ECCE;
  Perez-Lebel et al. (2023) grouping loss; Hebert-Johnson et al. (2018)
  multicalibration (regional error).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from miscal_jax._src.binning import bin_index
from miscal_jax._src.dtypes import as_float, float_dtype
from miscal_jax._types import Array
from miscal_jax.calibrators.global_maps import LOGIT_EPS
from miscal_jax.smoothing.nadaraya_watson import loo_field

__all__ = [
    "GroupingLoss",
    "auroc",
    "brier",
    "ece",
    "ece_floor",
    "ecce",
    "grouping_loss",
    "local_calibration_error",
    "nll",
    "regional_error",
    "smooth_ece",
    "smooth_ece_bandwidth",
    "smooth_ece_sigma",
]


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
    conf, correct = as_float(conf), as_float(correct)
    idx = bin_index(conf, num_bins, strategy)
    gap = jax.ops.segment_sum(correct - conf, idx, num_segments=num_bins)
    return jnp.sum(jnp.abs(gap)) / conf.shape[0]


def ece_floor(conf: ArrayLike, *, num_bins: int = 15, strategy: str = "width") -> Array:
    """Expected :func:`ece` of a perfectly calibrated forecaster with these confidences.

    Binned ECE is biased upward by sampling noise alone: were each outcome
    drawn ``Bernoulli(conf_i)``, a bin's summed gap would be noise with
    variance ``sum conf (1 - conf)`` over the bin, whose expected absolute
    value is ``sqrt(2 / pi)`` times its standard deviation (normal
    approximation; within a few percent of simulation once bins hold some
    tens of items). The bias grows with the number of occupied bins, so a
    forecaster with a few distinct values (isotonic regression on verbalised
    confidence) has a lower floor than one that gives every item its own
    value, however well calibrated both are. Compare ECE minus its floor, or
    :func:`smooth_ece`.

    Args:
      conf: ``[n]`` confidences.
      num_bins: static number of bins (as in :func:`ece`).
      strategy: ``"width"`` or ``"mass"`` (as in :func:`ece`).

    Returns:
      Scalar expected ECE under perfect calibration.

    Examples:
      >>> round(float(ece_floor([0.5] * 100)), 4)  # sqrt(2 / pi) * sqrt(25) / 100
      0.0399
    """
    conf = as_float(conf)
    idx = bin_index(conf, num_bins, strategy)
    var = jax.ops.segment_sum(conf * (1 - conf), idx, num_segments=num_bins)
    return jnp.sqrt(2 / jnp.pi) * jnp.sum(jnp.sqrt(var)) / conf.shape[0]


def _check_pair(conf: Array, correct: Array, name: str) -> None:
    """Static shape checks shared by the binning-free metrics."""
    if conf.ndim != 1 or correct.shape != conf.shape:
        raise ValueError(
            f"{name}: conf and correct must be 1-D arrays of the same length, got shapes "
            f"{conf.shape} and {correct.shape}; flatten them first."
        )
    if conf.shape[0] == 0:
        raise ValueError(f"{name}: conf is empty; a calibration error needs at least one item.")


def _grid_masses(conf: Array, correct: Array, num_grid: int) -> Array:
    """``[num_grid, 2]`` residual and item masses, linearly binned onto ``a / (num_grid - 1)``.

    Column 0 holds ``sum_i w_ia (correct_i - conf_i) / n``, column 1
    ``sum_i w_ia / n``, where ``w_ia`` are the linear-interpolation weights of
    ``conf_i`` on the two nearest grid nodes (they sum to 1 per item).
    """
    n = conf.shape[0]
    pos = jnp.clip(conf, 0.0, 1.0) * (num_grid - 1)
    left = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, num_grid - 2)
    frac = pos - left
    per_item = jnp.stack([correct - conf, jnp.ones_like(conf)], axis=1) / n  # [n, 2]
    ids = jnp.concatenate([left, left + 1])
    vals = jnp.concatenate([(1.0 - frac)[:, None] * per_item, frac[:, None] * per_item])
    return jax.ops.segment_sum(vals, ids, num_segments=num_grid)


def _smooth_ece_from_masses(masses: Array, sigma: Array) -> Array:
    """smECE at bandwidth ``sigma`` from :func:`_grid_masses` output.

    Each column is reflected at 0 and 1 (a node on the boundary is its own
    mirror image, so its mass counts twice there), convolved with a Gaussian
    of standard deviation ``sigma`` sampled on the grid, and the ratio
    ``int |smoothed residual| / int smoothed density`` is taken with the
    trapezoid rule. The kernel's normalising constant cancels in the ratio.
    """
    m = masses.shape[0]
    h = 1.0 / (m - 1)
    ext = jnp.concatenate([masses[:0:-1], masses, masses[-2::-1]])  # [3m - 2, 2] on [-1, 2]
    ext = ext.at[m - 1].add(masses[0]).at[2 * m - 2].add(masses[-1])
    offsets = jnp.arange(-(m - 1), m, dtype=masses.dtype) * h
    kernel = jnp.exp(-0.5 * (offsets / sigma) ** 2)  # [2m - 1]
    conv = jax.vmap(
        lambda col: jnp.convolve(col, kernel, mode="valid", precision=jax.lax.Precision.HIGHEST),
        in_axes=1,
        out_axes=1,
    )
    smoothed = conv(ext)  # [m, 2]
    weight = jnp.ones(m, masses.dtype).at[0].set(0.5).at[-1].set(0.5)
    resid_mass = jnp.sum(weight * jnp.abs(smoothed[:, 0]))
    density_mass = jnp.sum(weight * smoothed[:, 1])
    return resid_mass / jnp.maximum(density_mass, jnp.finfo(density_mass.dtype).tiny)


def _check_grid(num_grid: int) -> None:
    if num_grid < 3:
        raise ValueError(f"num_grid: need at least 3 grid points, got {num_grid}.")


@functools.partial(jax.jit, static_argnames=("num_grid",))
def smooth_ece_sigma(
    conf: ArrayLike, correct: ArrayLike, sigma: ArrayLike, *, num_grid: int = 2049
) -> Array:
    """Smooth ECE at a fixed bandwidth: kernel-smoothed residuals, integrated.

    ``smECE_sigma = int_0^1 |r_sigma(t)| dt``, where ``r_sigma(t) = (1/n)
    sum_i K_sigma(t, conf_i) (correct_i - conf_i)`` and ``K_sigma`` is the
    Gaussian kernel reflected at 0 and 1 (so it integrates to 1 over
    ``[0, 1]`` for every centre). Equivalently, the density-weighted mean of
    the absolute Nadaraya-Watson smoothed residual. The confidences are first
    linearly binned onto ``num_grid`` equally spaced nodes (error of order
    ``(1 / num_grid)^2 / sigma^2``), so the cost is ``O(n + num_grid^2)``.

    Args:
      conf: ``[n]`` confidences in ``[0, 1]`` (values outside are clipped).
      correct: ``[n]`` 0/1 outcomes (or probabilities).
      sigma: scalar bandwidth, in confidence units.
      num_grid: static number of grid nodes on ``[0, 1]``.

    Returns:
      Scalar in ``[0, 1]``.

    Raises:
      ValueError: if the shapes differ, are not 1-D, or are empty.

    Examples:
      >>> round(float(smooth_ece_sigma([0.9, 0.9], [1.0, 0.0], 0.1)), 4)
      0.4
      >>> round(float(smooth_ece_sigma([0.2, 0.8], [1.0, 0.0], 0.05)), 4)
      0.8
    """
    conf, correct = as_float(conf), as_float(correct)
    _check_pair(conf, correct, "smooth_ece_sigma")
    _check_grid(num_grid)
    return _smooth_ece_from_masses(_grid_masses(conf, correct, num_grid), as_float(sigma))


def _fixed_point(masses: Array, num_bisections: int, min_sigma: float) -> Array:
    """Smallest grid-of-bisection ``sigma`` with ``smECE_sigma <= sigma`` (or ``min_sigma``)."""

    def step(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = (mid < min_sigma) | (mid < _smooth_ece_from_masses(masses, mid))
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    _, hi = jax.lax.fori_loop(
        0, num_bisections, step, (jnp.zeros((), masses.dtype), jnp.ones((), masses.dtype))
    )
    return jax.lax.stop_gradient(hi)


def _check_search(num_bisections: int, min_sigma: float) -> None:
    if num_bisections < 1:
        raise ValueError(f"num_bisections: need at least 1, got {num_bisections}.")
    if not 0.0 < min_sigma < 1.0:
        raise ValueError(f"min_sigma: expected a value in (0, 1), got {min_sigma}.")


@functools.partial(jax.jit, static_argnames=("num_grid", "num_bisections", "min_sigma"))
def smooth_ece_bandwidth(
    conf: ArrayLike,
    correct: ArrayLike,
    *,
    num_grid: int = 2049,
    num_bisections: int = 16,
    min_sigma: float = 1e-3,
) -> Array:
    """The self-consistent bandwidth ``sigma*`` of smooth ECE: ``smECE_sigma* = sigma*``.

    ``smECE_sigma`` does not increase with ``sigma`` while ``sigma`` does, so
    the fixed point is unique; it is found by bisection on ``[0, 1]`` and the
    upper end of the final interval is returned (``smECE_sigma <= sigma``
    there), never below ``min_sigma``. The result carries no gradient.

    Args:
      conf: ``[n]`` confidences in ``[0, 1]``.
      correct: ``[n]`` 0/1 outcomes.
      num_grid: static number of grid nodes (see :func:`smooth_ece_sigma`).
      num_bisections: static number of halvings; the bandwidth is within
        ``2^-num_bisections`` above the fixed point.
      min_sigma: static floor on the bandwidth (a perfectly calibrated
        infinite sample has ``sigma* = 0``).

    Returns:
      Scalar bandwidth in ``[min_sigma, 1]``.

    Examples:
      >>> conf = [0.1, 0.3, 0.5, 0.7, 0.9] * 20
      >>> correct = [0.0, 0.0, 1.0, 1.0, 1.0] * 20
      >>> sigma = smooth_ece_bandwidth(conf, correct)
      >>> bool(abs(float(smooth_ece_sigma(conf, correct, sigma)) - float(sigma)) < 1e-3)
      True
    """
    conf, correct = as_float(conf), as_float(correct)
    _check_pair(conf, correct, "smooth_ece_bandwidth")
    _check_grid(num_grid)
    _check_search(num_bisections, min_sigma)
    return _fixed_point(_grid_masses(conf, correct, num_grid), num_bisections, min_sigma)


@functools.partial(jax.jit, static_argnames=("num_grid", "num_bisections", "min_sigma"))
def smooth_ece(
    conf: ArrayLike,
    correct: ArrayLike,
    *,
    num_grid: int = 2049,
    num_bisections: int = 16,
    min_sigma: float = 1e-3,
) -> Array:
    """Smooth ECE (smECE): binning-free ECE at its self-consistent bandwidth.

    ``smECE = smECE_sigma*`` with ``sigma*`` from :func:`smooth_ece_bandwidth`
    and ``smECE_sigma`` from :func:`smooth_ece_sigma` (reflected Gaussian
    kernel). Unlike binned ECE it is continuous in the confidences, needs no
    bin count, and is within constant factors of the distance to the nearest
    perfectly calibrated predictor. Gradients with respect to ``conf`` and
    ``correct`` flow through the kernel sums at the chosen bandwidth.

    Args:
      conf: ``[n]`` confidences in ``[0, 1]`` (values outside are clipped).
      correct: ``[n]`` 0/1 outcomes.
      num_grid: static number of grid nodes on ``[0, 1]``.
      num_bisections: static number of bisection steps for ``sigma*``.
      min_sigma: static floor on the bandwidth.

    Returns:
      Scalar in ``[0, 1]``.

    Raises:
      ValueError: if the shapes differ, are not 1-D, or are empty, or a
        static option is out of range.

    Examples:
      >>> round(float(smooth_ece([0.9, 0.9], [1.0, 0.0])), 4)
      0.4
      >>> conf = [0.1, 0.3, 0.5, 0.7, 0.9] * 20
      >>> correct = [0.0, 0.0, 1.0, 1.0, 1.0] * 20
      >>> 0.0 < float(smooth_ece(conf, correct)) < float(ece(conf, correct))
      True

    References:
      Blasiok & Nakkiran (2023), Smooth ECE: Principled Reliability Diagrams
      via Kernel Smoothing, arXiv:2309.12236.
    """
    conf, correct = as_float(conf), as_float(correct)
    _check_pair(conf, correct, "smooth_ece")
    _check_grid(num_grid)
    _check_search(num_bisections, min_sigma)
    masses = _grid_masses(conf, correct, num_grid)
    return _smooth_ece_from_masses(masses, _fixed_point(masses, num_bisections, min_sigma))


@jax.jit
def ecce(conf: ArrayLike, correct: ArrayLike) -> Array:
    """Estimated cumulative calibration error (ECCE, range form): binning-free.

    Sort the items by confidence and follow the cumulative residual
    ``C(s) = (1/n) sum_{i: conf_i <= s} (correct_i - conf_i)`` from ``C = 0``
    below every confidence; ECCE is its range ``max_s C(s) - min_s C(s)``
    (the Kuiper statistic of Arrieta-Ibarra et al., the form MCGrad reports
    as ``ecce``). ``C`` is read only at the end of each block of tied
    confidences, so the value does not depend on the order of the items.
    Under perfect calibration it is of order ``sqrt(sum p(1-p)) / n``.

    Args:
      conf: ``[n]`` confidences.
      correct: ``[n]`` 0/1 outcomes.

    Returns:
      Scalar in ``[0, 1]``.

    Raises:
      ValueError: if the shapes differ, are not 1-D, or are empty.

    Examples:
      >>> round(float(ecce([0.2, 0.4, 0.6], [1.0, 0.0, 0.0])), 4)
      0.3333
      >>> round(float(ecce([0.9, 0.9], [1.0, 0.0])), 4)  # one tie block
      0.4

    References:
      Arrieta-Ibarra, Gujral, Tannen, Tygert & Xu (2022), Metrics of
      calibration for probabilistic predictions, JMLR 23(351).
    """
    conf, correct = as_float(conf), as_float(correct)
    _check_pair(conf, correct, "ecce")
    order = jnp.argsort(conf, stable=True)
    sorted_conf = conf[order]
    cumulative = jnp.cumsum((correct - conf)[order]) / conf.shape[0]
    block_end = jnp.append(sorted_conf[1:] != sorted_conf[:-1], True)
    at_ends = jnp.where(block_end, cumulative, 0.0)  # 0 is always on the curve
    return jnp.maximum(jnp.max(at_ends), 0.0) - jnp.minimum(jnp.min(at_ends), 0.0)


def brier(conf: ArrayLike, correct: ArrayLike) -> Array:
    """Mean squared error of the confidence: ``mean((conf - correct)^2)``."""
    return jnp.mean((as_float(conf) - as_float(correct)) ** 2)


def nll(conf: ArrayLike, correct: ArrayLike) -> Array:
    """Mean negative log-likelihood, confidences clipped to ``[1e-4, 1 - 1e-4]``."""
    p = jnp.clip(as_float(conf), LOGIT_EPS, 1 - LOGIT_EPS)
    y = as_float(correct)
    return -jnp.mean(y * jnp.log(p) + (1 - y) * jnp.log1p(-p))


def auroc(conf: ArrayLike, correct: ArrayLike) -> Array:
    """Area under the ROC curve of ``conf`` for ``correct`` (ties count 1/2).

    Computed from mid-ranks (Mann-Whitney U). Returns 0.5 when only one class
    is present, where AUROC is undefined.
    """
    conf, y = as_float(conf), as_float(correct)
    order = jnp.argsort(conf)
    sorted_conf = conf[order]
    # mid-rank of each sorted value = mean of first and last position of its tie block
    first = jnp.searchsorted(sorted_conf, sorted_conf, side="left")
    last = jnp.searchsorted(sorted_conf, sorted_conf, side="right") - 1
    ranks = jnp.zeros_like(conf).at[order].set(0.5 * (first + last).astype(conf.dtype) + 1.0)
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
    residual = jnp.where(keep, as_float(correct) - as_float(conf), 0.0)
    ids = jnp.where(keep, groups, 0)
    sums = jax.ops.segment_sum(residual, ids, num_segments=num_groups)
    counts = jax.ops.segment_sum(keep.astype(float_dtype()), ids, num_segments=num_groups)
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
        points,
        as_float(correct) - as_float(conf),
        log_bandwidth,
        kernel=kernel,
        chunk_size=chunk_size,
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
    conf, field, se = as_float(conf), as_float(field), as_float(field_se)
    idx = bin_index(conf, num_bins, "mass")
    counts = jax.ops.segment_sum(jnp.ones_like(field), idx, num_segments=num_bins)
    safe = jnp.maximum(counts, 1.0)
    mean = jax.ops.segment_sum(field, idx, num_segments=num_bins) / safe
    within = jax.ops.segment_sum((field - mean[idx]) ** 2, idx, num_segments=num_bins)
    raw = jnp.sum(within) / field.shape[0]
    noise = jnp.mean(se**2)
    return GroupingLoss(jnp.maximum(raw - noise, 0.0), raw, noise)
