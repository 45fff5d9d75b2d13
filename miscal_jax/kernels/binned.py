"""Binned kernel sums: references summarised in bins, ``O(q P)`` instead of ``O(q n)``.

For very many references the exact sums of :func:`~miscal_jax.kernels.kernel_moments`
cost ``q n`` kernel evaluations. Binned kernel smoothing (Fan & Marron 1994)
sums over ``P`` bins instead, each carrying its count and value sums::

    sum_j w(q, z_j) V_j  ~  sum_b E_b[w(q, .)] sum_{j in b} V_j

where ``E_b`` averages the kernel over bin ``b``'s points. Simple binning
takes the centroid, ``E_b[w] = w(q, c_b)``; that undercounts every bin
(``w`` is convex away from the query, Jensen), most where the bins are wide
against the bandwidth. For the Gaussian kernel the average is taken instead
over a Gaussian cloud with the bin's centroid ``c`` and per-axis spread
``s^2``, in closed form::

    E_b[w] = prod_i (1 + s_i^2 / h^2)^(-1/2) exp(-sum_i (q_i - c_i)^2 / (2 (h^2 + s_i^2)))

exact for a bin of one point (``s = 0``), one matmul of ``[q^2, q]`` per
block. ``sum w^2`` uses the average of ``w^2`` (the kernel at ``h / sqrt 2``),
which exceeds ``E_b[w]^2`` where weights vary within a bin, so the effective
sample size is not overstated. Other kernels use the centroid.

Bins here are the leaves of a balanced principal-axis tree
(:func:`tree_cells`) in the smoother's own space, optionally split further by a label (the caller
splits by outcome, so a bin's residuals are nearly constant). The error
grows with the bins' radius over the bandwidth, ``rho / h``
(:func:`bin_radius`): measured here, the largest field error is about 0.003
at ``rho / h = 0.1`` in 2-D and the field correlates 0.94 with the exact one at
``rho / h = 1.5`` in a 16-D learned space (``benchmarks/README.md``); callers
measure it against exact sums on a sample.

Near and far: a caller that holds the references themselves sums a query's
own leaf exactly (:func:`near_moments` over :func:`leaf_members`) and skips
that leaf's bins (``binned_moments(skip=...)``); leave-one-out then drops the
query from its exact leaf sum, and :func:`~miscal_jax.kernels.moments.combine`
adds the two parts.

The moments come back in :class:`~miscal_jax.kernels.KernelMoments`'s
relative convention, so every consumer of the exact sums reads them unchanged.

References:
  Fan & Marron (1994), Fast implementations of nonparametric curve
  estimators; Wand (1994), Fast computation of multivariate kernel estimators.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from miscal_jax._types import Array
from miscal_jax.kernels.blockwise import (
    DISTANCE_PRECISION,
    KernelMoments,
    block_log_weights,
)
from miscal_jax.kernels.moments import block_sizes, pad_rows, round_up
from miscal_jax.kernels.shapes import get_log_kernel

__all__ = [
    "Bins",
    "Summary",
    "Tree",
    "bin_points",
    "bin_radius",
    "binned_moments",
    "leaf_members",
    "near_moments",
    "route",
    "tree_cells",
]


class Bins(NamedTuple):
    """References summarised in ``P`` bins.

    Attributes:
      centre: ``[P, k]`` each bin's centroid (zero for an empty bin).
      count: ``[P]`` references in each bin.
      sums: ``[P, c]`` the sums of their values.
      label: ``[n]`` the bin each reference was counted in (``-1``: masked out).
      spread: ``[P, k]`` the variance of each bin's points along each axis.
    """

    centre: Array
    count: Array
    sums: Array
    label: Array
    spread: Array


class Tree(NamedTuple):
    """A balanced principal-axis tree of ``L = 2^depth`` leaves.

    Attributes:
      leaf: ``[n]`` the leaf of each point it was built on.
      axis: ``[L - 1, k]`` each split's unit axis, in heap order (root first).
      threshold: ``[L - 1]`` each split's threshold on it (between the halves).
    """

    leaf: Array
    axis: Array
    threshold: Array


def tree_cells(points: ArrayLike, depth: int, *, power_steps: int = 3) -> Tree:
    """A balanced principal-axis tree of ``2^depth`` leaves over the points.

    Level by level, every cell is split at the median of its points'
    projections on the cell's principal axis (a few power iterations), so
    the leaves hold ``n / 2^depth`` points each (one more or fewer), are
    narrow along the directions the points spread in, and cost
    ``O(depth n (log n + k))`` to build: a sort and a few segment sums per
    level, no distance to every centre.

    Args:
      points: ``[n, k]``.
      depth: static number of levels (``2^depth`` leaves, at most ``n``).
      power_steps: static power iterations per level.

    Returns:
      :class:`Tree`; :func:`route` sends new points down it.

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.1, 0.0]])
      >>> tree = tree_cells(x, 1)
      >>> tree.leaf.tolist(), route(jnp.array([[4.0, 0.0]]), tree).tolist()
      ([0, 0, 1, 1], [1])
    """
    points = jnp.asarray(points)
    n, k = points.shape
    if not 0 <= depth or (1 << depth) > n:
        raise ValueError(f"depth: need 0 <= depth and 2^depth <= n = {n}, got {depth}.")

    def level(seg, i):
        cells = 1 << i
        count = jax.ops.segment_sum(jnp.ones(n, points.dtype), seg, num_segments=cells)
        mean = jax.ops.segment_sum(points, seg, num_segments=cells) / jnp.maximum(count, 1)[:, None]
        off = points - mean[seg]
        # power iterations from a direction drawn for the level (the same for every cell)
        start = jax.random.normal(jax.random.fold_in(jax.random.key(0), i), (k,), points.dtype)
        v = jnp.broadcast_to(start, (cells, k))
        for _ in range(power_steps):
            proj = jnp.sum(off * v[seg], 1)
            v = jax.ops.segment_sum(off * proj[:, None], seg, num_segments=cells)
            v = v / jnp.maximum(jnp.linalg.norm(v, axis=1, keepdims=True), 1e-30)
        proj = jnp.sum(off * v[seg], 1)
        order = jnp.lexsort((proj, seg))  # by cell, then along its axis
        first = jnp.cumsum(count) - count  # each cell's first position in the order
        rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
        upper = (rank - first[seg].astype(jnp.int32)) * 2 >= count[seg].astype(jnp.int32)
        low = jax.ops.segment_max(jnp.where(upper, -jnp.inf, proj), seg, num_segments=cells)
        high = jax.ops.segment_min(jnp.where(upper, proj, jnp.inf), seg, num_segments=cells)
        # the threshold in the original coordinates: x . v > t, t = mid-gap + mean . v
        gap = jnp.where(jnp.isfinite(low) & jnp.isfinite(high), 0.5 * (low + high), 0.0)
        return 2 * seg + upper, (v, gap + jnp.sum(mean * v, 1))

    seg = jax.lax.optimization_barrier(jnp.zeros(n, jnp.int32))  # not a constant to fold
    axes, thresholds = [], []
    for i in range(depth):  # static: each level has its own number of cells
        seg, (v, t) = level(seg, i)
        axes.append(v)
        thresholds.append(t)
    if not axes:
        return Tree(seg, jnp.zeros((0, k), points.dtype), jnp.zeros((0,), points.dtype))
    return Tree(seg, jnp.concatenate(axes), jnp.concatenate(thresholds))


def route(points: ArrayLike, tree: Tree) -> Array:
    """``[q]`` the leaf of :class:`Tree` each of ``[q, k]`` points falls in.

    At each split a point goes to the upper half where ``x . axis > threshold``
    (example in :func:`tree_cells`).
    """
    points = jnp.asarray(points)
    leaf = jnp.zeros(points.shape[0], jnp.int32)
    depth = (tree.axis.shape[0] + 1).bit_length() - 1
    for i in range(depth):
        node = (1 << i) - 1 + leaf
        upper = jnp.sum(points * tree.axis[node], 1) > tree.threshold[node]
        leaf = 2 * leaf + upper
    return leaf


def leaf_members(leaf: ArrayLike, leaves: int) -> Array:
    """``[leaves, cap]`` the points of each leaf (``-1`` padded), ``cap = ceil(n / leaves)``.

    For the balanced leaves of :func:`tree_cells` (sizes differ by one at most).

    Examples:
      >>> import jax.numpy as jnp
      >>> leaf_members(jnp.array([1, 0, 1]), 2).tolist()
      [[1, -1], [0, 2]]
    """
    leaf = jnp.asarray(leaf, jnp.int32)
    n = leaf.shape[0]
    cap = -(-n // leaves)
    order = jnp.argsort(leaf, stable=True)
    count = jnp.bincount(leaf, length=leaves)
    first = jnp.cumsum(count) - count
    slot = jnp.arange(n) - first[leaf[order]]
    members = jnp.full((leaves, cap), -1, jnp.int32)
    return members.at[leaf[order], slot].set(order.astype(jnp.int32), mode="drop")


class Summary(NamedTuple):
    """References summarised for sums near (exact) and far (binned).

    Attributes:
      bins: :class:`Bins`, ``group`` consecutive bins per leaf of ``tree``.
      tree: the :class:`Tree` over the references.
      members: ``[L, cap]`` each leaf's references (:func:`leaf_members`).
    """

    bins: Bins
    tree: Tree
    members: Array


def bin_points(
    points: ArrayLike, values: ArrayLike, mask: ArrayLike, label: ArrayLike, bins: int
) -> Bins:
    """Summarises the masked points in ``bins`` bins by their labels.

    Args:
      points: ``[n, k]``; values: ``[n, c]``; mask: ``[n]`` bools.
      label: ``[n]`` ints in ``[0, bins)``, each point's bin.
      bins: static number of bins ``P``.

    Returns:
      :class:`Bins` with centroids, counts and value sums of the masked points.

    Examples:
      >>> import jax.numpy as jnp
      >>> b = bin_points(jnp.array([[0.0], [2.0], [5.0]]), jnp.array([[1.0], [3.0], [7.0]]),
      ...                jnp.array([True, True, False]), jnp.array([0, 0, 1]), 2)
      >>> b.centre[:, 0].tolist(), b.count.tolist(), b.sums[:, 0].tolist(), b.label.tolist()
      ([1.0, 0.0], [2.0, 0.0], [4.0, 0.0], [0, 0, -1])
    """
    points, values = jnp.asarray(points), jnp.asarray(values)
    mask, label = jnp.asarray(mask, bool), jnp.asarray(label, jnp.int32)
    label = jnp.where(mask, label, -1)
    put = lambda a: jax.ops.segment_sum(a, jnp.where(mask, label, bins), num_segments=bins + 1)[
        :bins
    ]
    count = put(mask.astype(points.dtype))
    inv = 1.0 / jnp.maximum(count, 1.0)[:, None]
    centre = put(points) * inv
    off = points - centre[jnp.clip(label, 0, bins - 1)]
    spread = put(off * off) * inv
    return Bins(centre, count, put(values.astype(points.dtype)), label, spread)


def bin_radius(points: ArrayLike, bins: Bins, log_bandwidth: ArrayLike) -> Array:
    """The bins' root-mean-square radius over the bandwidth, ``rho / h`` (scalar).

    ``points`` ``[n, k]`` are the points ``bins`` was built from; the binned
    sums' error grows with this ratio (module docstring).

    Examples:
      >>> import jax.numpy as jnp
      >>> b = bin_points(jnp.array([[0.0], [2.0]]), jnp.ones((2, 1)), jnp.ones(2, bool),
      ...                jnp.zeros(2, int), 1)
      >>> float(bin_radius(jnp.array([[0.0], [2.0]]), b, jnp.log(2.0)))  # radius 1, h = 2
      0.5
    """
    points = jnp.asarray(points)
    ok = bins.label >= 0
    off = points - bins.centre[jnp.maximum(bins.label, 0)]
    ms = jnp.sum(jnp.where(ok, jnp.sum(off * off, 1), 0.0)) / jnp.maximum(jnp.sum(ok), 1)
    return jnp.sqrt(ms) * jnp.exp(-jnp.asarray(log_bandwidth))


def _cloud_terms(centre, spread, inv_h2):
    """Per-bin terms of the Gaussian cloud's log-weight: ``[g, P, 2k]`` and ``[g, P]``.

    ``log w = -(sum_i a_i q_i^2 - 2 sum_i a_i c_i q_i + sum_i a_i c_i^2) / 2 + norm``
    with ``a_i = 1 / (h^2 + s_i^2)`` and ``norm = -sum_i log(1 + s_i^2 / h^2) / 2``:
    one matmul of ``[q^2, q]`` with ``[a, -2 a c]``.
    """
    a = 1.0 / (1.0 / inv_h2[:, None, None] + spread[None])
    weights = jnp.concatenate([a, -2.0 * a * centre[None]], -1)
    norm = -0.5 * jnp.sum(jnp.log1p(spread[None] * inv_h2[:, None, None]), -1)
    return weights, jnp.sum(centre * centre * a, -1), norm


def _cloud_log_weights(query, weights, mid, norm) -> Array:
    """``[g, bq, bn]`` log of the Gaussian kernel averaged over each bin's cloud."""
    g, bn, _ = weights.shape
    features = jnp.concatenate([query * query, query], -1)  # [bq, 2k]
    quad = jnp.matmul(features, weights.reshape(g * bn, -1).T, precision=DISTANCE_PRECISION)
    quad = jnp.moveaxis(quad.reshape(-1, g, bn), 1, 0)
    return -0.5 * jnp.maximum(quad + mid[:, None, :], 0.0) + norm[:, None, :]


class _Running(NamedTuple):
    """Running binned moments: ``sums`` (``sum w`` first) and ``sum w^2`` on their own scales."""

    scale: Array
    sums: Array
    scale2: Array
    sum_w2: Array


def _online(run: _Running, log_w, log_w2, values) -> _Running:
    """Folds one block's ``[g, bq, bn]`` log-weights (and those of ``w^2``) into ``run``."""

    def rescaled(old, new_logs):
        top = jnp.maximum(old, jnp.max(new_logs, -1))
        safe = jnp.where(top > -jnp.inf, top, 0.0)
        return top, jnp.exp(old - safe), jnp.exp(new_logs - safe[..., None])

    scale, keep, w = rescaled(run.scale, log_w)
    scale2, keep2, w2 = rescaled(run.scale2, log_w2)
    sums = keep[..., None] * run.sums + jnp.matmul(w, values, preferred_element_type=w.dtype)
    return _Running(scale, sums, scale2, keep2 * run.sum_w2 + jnp.sum(w2, -1))


def _forward(query, query_code, centre, spread, bin_code, log_n, table, inv_h2, *, kernel, bq, bn):
    """Blocked moments of queries against bins (``bq | q``, ``bn | P``), ``sum w`` first."""
    (big_q, k), g, c = query.shape, inv_h2.shape[0], table.shape[1]
    per_bin = lambda x: jnp.moveaxis(x.reshape(2 * g, -1, bn, *x.shape[2:]), 1, 0)
    # E[w] and E[w^2] (the kernel at h / sqrt 2) of every bandwidth from one matmul
    both = jnp.concatenate([inv_h2, 2.0 * inv_h2])
    cloud = _cloud_terms(centre, spread, both) if kernel == "gaussian" else None
    blocks = (
        centre.reshape(-1, bn, k),
        bin_code.reshape(-1, bn),
        log_n.reshape(-1, bn),
        table.reshape(-1, bn, c),
        None if cloud is None else tuple(per_bin(t) for t in cloud),
    )

    def query_block(args):
        q, qc = args

        def step(run, block):
            cb, code, log_count, vb, terms = block
            ok = (code[None, :] >= 0) & (qc[:, None] != code[None, :])
            if terms is not None:
                log_w = jnp.where(ok[None], _cloud_log_weights(q, *terms), -jnp.inf)
                log_w, log_w2 = log_w[:g], log_w[g:]
            else:
                log_w, _ = block_log_weights(q, qc, cb, code, inv_h2, kernel=kernel, loo=True)
                log_w2 = 2.0 * log_w
            return _online(run, log_w, log_w2 + log_count[None, None, :], vb), None

        empty = jnp.full((g, bq), -jnp.inf, query.dtype)
        init = _Running(empty, jnp.zeros((g, bq, c), query.dtype), empty, jnp.zeros_like(empty))
        run, _ = jax.lax.scan(step, init, blocks)
        return run

    run = jax.lax.map(query_block, (query.reshape(-1, bq, k), query_code.reshape(-1, bq)))
    flat = lambda a: jnp.moveaxis(a, 0, 1).reshape(g, big_q, *a.shape[3:])
    return jax.tree.map(flat, run)


def binned_moments(
    query: ArrayLike,
    bins: Bins,
    log_bandwidth: ArrayLike,
    *,
    kernel: str = "gaussian",
    skip: ArrayLike | None = None,
    group: int = 1,
    query_block: int = 512,
    bin_block: int = 2048,
) -> KernelMoments:
    """Kernel moments of queries against binned references (see the module docstring).

    Bins are streamed in blocks and the sums accumulated online with a running
    maximum, as :func:`~miscal_jax.kernels.kernel_moments` streams references;
    a bin of ``N`` points enters with its values ``[N, sums]`` at the weight
    one of its points has on average, and ``sum w^2`` with ``N`` times the
    average squared weight (on a scale of its own). The Gaussian averages
    over each bin as a cloud with the bin's centroid and per-axis spread
    (exact for a point; it keeps the bins' convexity, and ``w^2`` varies
    more than ``w``, so ``n_eff`` is not overstated); other kernels weigh
    the centroid.

    Args:
      query: ``[q, k]`` queries in the bins' space.
      bins: :class:`Bins` with ``P`` bins and ``c`` value columns.
      log_bandwidth: scalar, or ``[g]`` candidates.
      kernel: static kernel name.
      skip: optional ``[q]`` ints: query ``i`` leaves out the bins ``b`` with
        ``b // group == skip[i]`` (its own leaf, summed exactly by the caller
        with :func:`near_moments`); ``-1``: none.
      group: static number of consecutive bins per skipped group.
      query_block, bin_block: static block sizes (within the backend's budget).

    Returns:
      :class:`~miscal_jax.kernels.KernelMoments` as :func:`kernel_moments`
      returns them.

    Examples:
      >>> import jax.numpy as jnp
      >>> from miscal_jax.kernels import kernel_moments
      >>> z, v = jnp.array([[0.0], [1.0]]), jnp.array([[1.0], [3.0]])
      >>> one_each = bin_points(z, v, jnp.ones(2, bool), jnp.arange(2), 2)
      >>> m = binned_moments(jnp.array([[0.0]]), one_each, 0.0)
      >>> round(float(m.sum_wv[0, 0] / m.sum_w[0]), 4)  # exact when every bin is one point
      1.7551
    """
    get_log_kernel(kernel)
    query = jnp.asarray(query, bins.centre.dtype)
    log_bw = jnp.asarray(log_bandwidth, query.dtype)
    inv_h2 = jnp.exp(-2.0 * jnp.atleast_1d(log_bw))
    q, p, g = query.shape[0], bins.sums.shape[0], inv_h2.shape[0]
    skip = jnp.full(q, -1, jnp.int32) if skip is None else jnp.asarray(skip, jnp.int32)
    # centred at the bins' mean: exact distances in float32
    mid = jnp.sum(bins.centre * bins.count[:, None], 0) / jnp.maximum(jnp.sum(bins.count), 1.0)
    centre, query = bins.centre - mid, query - mid
    filled = bins.count > 0
    table = jnp.concatenate([bins.count[:, None], bins.sums], 1)
    log_n = jnp.where(filled, jnp.log(jnp.where(filled, bins.count, 1.0)), -jnp.inf)
    code = jnp.where(filled, jnp.arange(p, dtype=jnp.int32) // group, -2)
    bq, bn = block_sizes(query_block, bin_block, q, p, g)
    big_q, big_p = round_up(q, bq), round_up(p, bn)
    run = _forward(
        pad_rows(query, big_q), pad_rows(skip, big_q, -1), pad_rows(centre, big_p),
        pad_rows(bins.spread, big_p), pad_rows(code, big_p, -2),
        pad_rows(log_n, big_p, -jnp.inf), pad_rows(table, big_p), inv_h2,
        kernel=kernel, bq=bq, bn=bn,
    )  # fmt: skip
    log_scale, sums, scale2, sum_w2 = (a[:, :q] for a in run)
    safe = jnp.where(log_scale > -jnp.inf, log_scale, 0.0)
    sum_w2 = jnp.where(scale2 > -jnp.inf, sum_w2 * jnp.exp(scale2 - 2.0 * safe), 0.0)
    out = KernelMoments(log_scale, sums[..., 0], sums[..., 1:], sum_w2)
    return KernelMoments(*(a[0] for a in out)) if log_bw.ndim == 0 else out


def near_moments(
    query: ArrayLike,
    ref: ArrayLike,
    values: ArrayLike,
    ref_ok: ArrayLike,
    log_bandwidth: ArrayLike,
    *,
    kernel: str = "gaussian",
) -> KernelMoments:
    """Exact moments of each query against its own few references (its leaf's points).

    Args:
      query: ``[q, k]``.
      ref: ``[q, m, k]`` query ``i``'s references.
      values: ``[q, m, c]`` their values.
      ref_ok: ``[q, m]`` bools, the references that count.
      log_bandwidth: scalar, or ``[g]``.
      kernel: static kernel name.

    Returns:
      :class:`~miscal_jax.kernels.KernelMoments` as :func:`binned_moments` returns them.

    Examples:
      >>> import jax.numpy as jnp
      >>> m = near_moments(jnp.zeros((1, 1)), jnp.array([[[0.0], [1.0]]]),
      ...                  jnp.array([[[1.0], [3.0]]]), jnp.ones((1, 2), bool), 0.0)
      >>> round(float(m.sum_wv[0, 0] / m.sum_w[0]), 4)
      1.7551
    """
    query, ref, values = (jnp.asarray(a) for a in (query, ref, values))
    log_bw = jnp.asarray(log_bandwidth, query.dtype)
    inv_h2 = jnp.exp(-2.0 * jnp.atleast_1d(log_bw))
    d2 = jnp.sum((ref - query[:, None, :]) ** 2, -1)  # [q, m]
    log_w = get_log_kernel(kernel)(d2[None] * inv_h2[:, None, None])
    log_w = jnp.where(jnp.asarray(ref_ok)[None], log_w, -jnp.inf)  # [g, q, m]
    top = jnp.max(log_w, -1)
    safe = jnp.where(top > -jnp.inf, top, 0.0)
    w = jnp.exp(log_w - safe[..., None])
    out = KernelMoments(
        top, jnp.sum(w, -1), jnp.einsum("gqm,qmc->gqc", w, values), jnp.sum(w * w, -1)
    )
    return KernelMoments(*(a[0] for a in out)) if log_bw.ndim == 0 else out
