"""Where the residual's mean varies: a starting point for the low-rank metric.

The outer product of gradients (OPG, Xia et al. 2002) estimates the
directions along which ``delta(x) = E[r | x]`` changes: smooth the residuals
``r`` with Nadaraya-Watson at a leave-one-out-chosen bandwidth, take the
gradient of the smoothed field at every fitting item (autodiff through the
smoother, the item's own residual left out), and average the outer products
``M = mean g g^T``. The top eigenvectors of ``M`` span the field's
directions: a gradient is (up to noise) a combination of them, while the
noise's own contribution is spread over all ``d`` directions, so it lifts
every eigenvalue alike and mostly leaves the ordering to the signal.

:func:`initial_metric` turns the eigenvectors into the starting matrix of
:class:`~miscal_jax.geometry.LinearMetric`, with the rank chosen by
held-out smoother error. Everything is traceable: ranks are masks on a
fixed-width matrix (a zero column changes no distance and receives zero
gradient), so the choice runs under ``jit`` and ``vmap``.
"""

import jax
import jax.numpy as jnp

from miscal_jax._src.fitting import gather_rows, masked_mean
from miscal_jax._types import Array
from miscal_jax.smoothing.nadaraya_watson import bandwidth_grid, nw_field, select_bandwidth

__all__ = ["RANKS", "gradient_directions", "initial_metric"]

#: Ranks the starting metric chooses from (those at most the input width).
RANKS = (1, 2, 4, 8)


def gradient_directions(u: Array, residual: Array, mask: Array, *, kernel: str) -> tuple:
    """Eigen-decomposition of the outer product of the smoothed field's gradients.

    Args:
      u: ``[n, d]`` inputs (standardised columns).
      residual: ``[n]`` residuals.
      mask: ``[n]`` bools: the items smoothed and averaged over.
      kernel: static kernel name.

    Returns:
      ``(directions [d, d], strengths [d])``: unit eigenvectors of ``M`` as
      columns and their eigenvalues, strongest first.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> u = jax.random.normal(jax.random.key(0), (400, 3))
      >>> dirs, s = gradient_directions(u, 0.3 * jnp.tanh(2 * u[:, 1]), jnp.ones(400, bool),
      ...                               kernel="gaussian")
      >>> round(abs(float(dirs[1, 0])), 2)
      1.0
    """
    log_bw, _ = select_bandwidth(u, residual, ref_mask=mask, kernel=kernel)
    ref = jax.lax.stop_gradient(u)
    index = jnp.arange(u.shape[0])

    def total(query):
        est = nw_field(
            query, ref, residual, log_bw, query_index=index, ref_mask=mask, kernel=kernel
        )
        return jnp.sum(est.value)

    grads = jax.grad(total)(u) * mask[:, None]  # [n, d]: each row depends on its own query only
    outer = grads.T @ grads / jnp.maximum(jnp.sum(mask), 1)
    strengths, directions = jnp.linalg.eigh(outer)
    return directions[:, ::-1], strengths[::-1]


def initial_metric(
    u: Array,
    residual: Array,
    fit: Array,
    stop: Array,
    principal: Array,
    *,
    kernel: str,
    stop_size: int | None = None,
) -> tuple[Array, Array]:
    """Starting directions of the linear metric and their rank.

    The metric's points start at ``[u, u @ W]``: the standardised columns
    plus extra weight along the columns of ``W``. Two families of
    directions compete for ``W``: the top principal directions of the
    inputs (right where the field follows the inputs' own structure, e.g.
    topic clusters) and the top gradient directions of the smoothed
    residuals (:func:`gradient_directions` over the ``fit`` items, right
    where it follows low-variance directions). Each family at each rank
    (those of :data:`RANKS` below ``width``, and ``width``) predicts the
    ``stop`` items' residuals from the ``fit`` items at its best bandwidth;
    the best pair wins, and columns past its rank are zero. (More choices,
    such as the columns' weight against the directions, were tried and
    lost: 150 stop items cannot tell them apart.)

    Args:
      u: ``[n, d]`` inputs (standardised columns).
      residual: ``[n]`` residuals.
      fit, stop: ``[n]`` bools: items that give the directions, items that judge them.
      principal: ``[d, width]`` top principal directions of ``u`` over ``fit``;
        ``width`` (static) is the largest rank allowed.
      kernel: static kernel name.
      stop_size: static; at least the number of ``stop`` items. They alone
        are then smoothed (gathered), not all ``n`` items: with 15% of the
        items judging, about 7x fewer pairs. ``None``: all ``n``, masked.

    Returns:
      ``(matrix [d, width], rank)``: unit columns, zero past the integer ``rank``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> u = jax.random.normal(jax.random.key(0), (300, 4))
      >>> fit = jnp.arange(300) < 200
      >>> m, rank = initial_metric(u, 0.3 * jnp.tanh(2 * u[:, 1]), fit, ~fit, jnp.eye(4)[:, :2],
      ...                          kernel="gaussian")
      >>> m.shape, int(rank) in (1, 2)
      ((4, 2), True)
    """
    width = principal.shape[1]
    gradient, _ = gradient_directions(u, residual, fit, kernel=kernel)
    families = jnp.stack([principal, gradient[:, :width]])  # [2, d, width]
    ranks = sorted({r for r in RANKS if r < width} | {width})
    columns = jnp.arange(width)
    rows, judged = gather_rows(stop, stop_size)
    choices = len(ranks)
    kept = (columns < jnp.asarray(ranks)[:, None]).astype(u.dtype)  # [len(ranks), width]

    def error(i):  # one family at one rank; a loop, so the smoother compiles once
        z = jnp.concatenate([u, u @ families[i // choices] * kept[i % choices]], axis=1)
        grid = bandwidth_grid(z, ref_mask=fit)
        est = nw_field(z[rows], z, residual, grid, ref_mask=fit, kernel=kernel).value
        return jnp.min(masked_mean((residual[rows] - est) ** 2, judged))

    best = jnp.argmin(jax.lax.map(error, jnp.arange(2 * choices)))
    rank = jnp.asarray(ranks)[best % choices]
    return families[best // choices] * (columns < rank), rank
