"""Regime discovery: a short, honest list of over- and underconfident regions.

Candidates are k-means clusters (several k) of the inputs' principal
components, which use no labels. ``p_global`` is a confidence-only isotonic
map. The items are split in two halves: on the *discovery* half candidates
are screened by their mean excess residual ``correct - p_global``; on the
*evaluation* half each screened candidate gets its size, mean residual with
interval, and a two-sided test of its excess residual (miscalibration beyond
what a confidence-only map fixes), by Monte Carlo under Bernoulli(``p_global``)
outcomes, which stays exact when confidences are near 0 or 1.
Benjamini-Hochberg over the tested candidates controls the false discovery
rate. Which regions are tested depends on evaluation labels only through the
confidence-only curve, never through location.

References:
  Benjamini & Hochberg (1995); Lloyd (1982) and Arthur & Vassilvitskii (2007)
  for k-means and its seeding.
"""

import functools
from statistics import NormalDist
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from miscal_jax._types import Array
from miscal_jax.calibrators.global_maps import apply_isotonic, fit_isotonic

__all__ = [
    "Regime",
    "RegimeModel",
    "assign_regimes",
    "benjamini_hochberg",
    "discover_regimes",
    "kmeans",
]


def kmeans(
    rng: Array, x: Array, *, k: int, iters: int = 50, max_k: int | None = None
) -> tuple[Array, Array]:
    """k-means (k-means++ seeding, ``iters`` Lloyd steps) of ``[n, m]`` points.

    Args:
      rng: PRNG key.
      x: ``[n, m]`` points.
      k: number of clusters.
      iters: static number of Lloyd steps.
      max_k: static capacity (default ``k``): calls with different ``k`` and
        one ``max_k`` share one compiled program, with the same result (under
        JAX's default ``jax_threefry_partitionable``).

    Returns:
      ``(centroids [k, m], labels [n])``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> x = jnp.array([[0.0], [0.1], [5.0], [5.1]])
      >>> _, labels = kmeans(jax.random.key(0), x, k=2)
      >>> bool(labels[0] == labels[1] != labels[2] == labels[3])
      True
    """
    max_k = k if max_k is None else max_k
    if not 1 <= k <= max_k:
        raise ValueError(f"k: expected 1 <= k <= max_k = {max_k}, got {k}.")
    centroids, labels = _kmeans(rng, jnp.asarray(x), jnp.int32(k), max_k=max_k, iters=iters)
    return centroids[:k], labels


@functools.partial(jax.jit, static_argnames=("max_k", "iters"))
def _kmeans(rng, x, k, *, max_k, iters):
    """:func:`kmeans` with ``max_k`` centroid slots, the first traced ``k`` of them in use."""
    n = x.shape[0]
    used = jnp.arange(max_k) < k
    # squared distances to the centroids in use; inf to the others
    sq = lambda c: jnp.where(used, jnp.sum((x[:, None, :] - c[None, :, :]) ** 2, axis=-1), jnp.inf)

    def seed_step(carry, key):
        centroids, count = carry
        d2 = jnp.min(jnp.where(jnp.arange(max_k)[None, :] < count, sq(centroids), jnp.inf), axis=1)
        idx = jax.random.choice(key, n, p=d2 / jnp.sum(d2))
        grown = (centroids.at[count].set(x[idx]), count + 1)
        return jax.lax.cond(count < k, lambda: grown, lambda: carry), None

    first = x[jax.random.randint(rng, (), 0, n)]
    init = jnp.zeros((max_k, x.shape[1]), x.dtype).at[0].set(first)
    # with jax_threefry_partitionable (the default) split keys are prefix-consistent:
    # the first k - 1 are those of split(., k - 1), so max_k changes nothing
    keys = jax.random.split(jax.random.fold_in(rng, 1), max(max_k - 1, 1))
    (centroids, _), _ = jax.lax.scan(seed_step, (init, 1), keys)

    def lloyd(_, c):
        labels = jnp.argmin(sq(c), axis=1)
        sums = jax.ops.segment_sum(x, labels, num_segments=max_k)
        counts = jax.ops.segment_sum(jnp.ones(n), labels, num_segments=max_k)
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], c)

    centroids = jax.lax.fori_loop(0, iters, lloyd, centroids)
    return centroids, jnp.argmin(sq(centroids), axis=1)


def benjamini_hochberg(p_values: ArrayLike) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (monotone, capped at 1)."""
    p = np.asarray(p_values, np.float64)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


class Regime(NamedTuple):
    """One reported region, with statistics from the evaluation half.

    Attributes:
      id: rank (0 = strongest evidence).
      size: evaluation items in the region (``size_all`` counts every item).
      sign: ``"over"`` (confidence too high there) or ``"under"``.
      mean_residual: mean ``correct - conf``; ``ci_low``/``ci_high`` its interval.
      excess: mean ``correct - p_global`` (beyond a global isotonic map).
      p_value: two-sided Monte Carlo test of ``excess = 0``; ``p_adjusted``: BH-adjusted.
      members: indices of all items assigned to the region.
      examples: up to 5 indices of members nearest the region's centre.
      candidate: ``(k, cluster)`` the candidate it came from.
    """

    id: int
    size: int
    size_all: int
    sign: str
    mean_residual: float
    ci_low: float
    ci_high: float
    excess: float
    p_value: float
    p_adjusted: float
    members: np.ndarray
    examples: np.ndarray
    candidate: tuple


class RegimeModel(NamedTuple):
    """What :func:`assign_regimes` needs: the PCA map and the regimes' centroids.

    Attributes:
      mean: ``[d]``; projection: ``[d, m]``; scale: scalar.
      centroids: tuple over reported regimes of ``[k, m]`` candidate centroid sets.
      clusters: tuple of the cluster index of each regime in its set.
    """

    mean: np.ndarray
    projection: np.ndarray
    scale: float
    centroids: tuple
    clusters: tuple


def _project(model: RegimeModel, x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, np.float32) - model.mean) @ model.projection / model.scale


def assign_regimes(model: RegimeModel, embeddings: ArrayLike) -> np.ndarray:
    """``[n]`` regime id of each item (the first reported regime whose cluster
    holds it), or -1 for none."""
    z = _project(model, embeddings)
    out = np.full(z.shape[0], -1, np.int64)
    for rid, (cents, c) in enumerate(zip(model.centroids, model.clusters, strict=True)):
        labels = np.argmin(((z[:, None, :] - cents[None]) ** 2).sum(-1), axis=1)
        out[(labels == c) & (out < 0)] = rid
    return out


def discover_regimes(
    embeddings: ArrayLike,
    conf: ArrayLike,
    correct: ArrayLike,
    *,
    num_clusters: tuple[int, ...] = (6, 12, 24),
    pca_dim: int = 16,
    fdr: float = 0.1,
    screen: float = 0.2,
    max_regimes: int = 8,
    min_size: int = 20,
    num_simulations: int = 4000,
    overlap: float = 0.5,
    level: float = 0.9,
    seed: int = 0,
) -> tuple[list[Regime], RegimeModel]:
    """Finds regions whose miscalibration goes beyond confidence, with FDR control.

    Args:
      embeddings: ``[n, d]`` inputs; conf ``[n]``; correct ``[n]``.
      num_clusters: k values of the candidate clusterings.
      pca_dim: principal components used for clustering.
      fdr: Benjamini-Hochberg level over the tested candidates.
      screen: a candidate is tested on the evaluation half only if its
        discovery-half z-test has p below this.
      max_regimes: at most this many regimes are reported.
      min_size: candidates with fewer discovery or evaluation items are skipped.
      num_simulations: Monte Carlo draws of each region's test.
      overlap: a significant candidate is not reported when more than this
        fraction of its members belong to regimes already reported.
      level: coverage of the ``mean_residual`` interval.
      seed: seed of the halves and of k-means.

    Returns:
      ``(regimes, model)``: reported regimes sorted by adjusted p-value then
      size, and a :class:`RegimeModel` for :func:`assign_regimes`.
    """
    x = np.asarray(embeddings, np.float32)
    p = np.asarray(conf, np.float64)
    y = np.asarray(correct, np.float64)
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    half = np.zeros(n, bool)
    half[rng.permutation(n)[: n // 2]] = True  # True = discovery
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    proj = vt[: min(pca_dim, vt.shape[0])].T
    scale = float(s[0] / np.sqrt(max(n - 1, 1))) or 1.0
    z = (x - mean) @ proj / scale
    # The reference curve is a confidence-only isotonic map over all items: it
    # carries no information about location, and a region's own items in it
    # can only shrink that region's excess (conservative). A map fitted on
    # half the items is noisier, and its noise, shared by a whole region,
    # made the tests anti-conservative (12.5% false alarms at FDR 0.1 under
    # the null in 200 simulations, against 4.5% with this map).
    iso = fit_isotonic(p, y)
    excess = y - np.asarray(apply_isotonic(iso, p), np.float64)
    residual = y - p
    zcrit = NormalDist().inv_cdf(0.5 + level / 2)
    # outcome probabilities under "no miscalibration beyond confidence"
    q_null = np.clip(np.asarray(apply_isotonic(iso, p), np.float64), 1e-3, 1 - 1e-3)
    sim_rng = np.random.default_rng(seed + 1)

    def test(mask):
        """Two-sided Monte Carlo test of sum(correct) against Bernoulli(q_null).

        Exact in the tails where a normal approximation is not (confidences
        near 0 or 1, small regions, all-right or all-wrong neighbourhoods).
        """
        q = q_null[mask]
        observed = y[mask].sum()
        sims = (sim_rng.random((num_simulations, q.size)) < q).sum(axis=1)
        upper = (1 + np.sum(sims >= observed)) / (1 + num_simulations)
        lower = (1 + np.sum(sims <= observed)) / (1 + num_simulations)
        return float(np.mean(excess[mask])), min(1.0, 2 * min(upper, lower))

    tested = []
    key = jax.random.key(seed)
    for k in num_clusters:
        if k >= n // (2 * min_size):
            continue
        key, sub = jax.random.split(key)
        cents, labels = kmeans(sub, z, k=int(k), max_k=max(num_clusters))
        cents, labels = np.asarray(cents), np.asarray(labels)
        for c in range(k):
            disc, ev = (labels == c) & half, (labels == c) & ~half
            if disc.sum() < min_size or ev.sum() < min_size:
                continue
            if test(disc)[1] >= screen:
                continue
            m, pv = test(ev)
            tested.append(dict(k=k, c=c, cents=cents, labels=labels, ev=ev, excess=m, p=pv))
    if not tested:
        return [], RegimeModel(mean, proj, scale, (), ())
    adjusted = benjamini_hochberg([t["p"] for t in tested])
    for t, a in zip(tested, adjusted, strict=True):
        t["p_adj"] = a
    keep = sorted(
        (t for t in tested if t["p_adj"] <= fdr), key=lambda t: (t["p_adj"], -t["ev"].sum())
    )
    regimes, cents_out, clusters_out = [], [], []
    taken = np.zeros(n, bool)
    for t in keep:
        if len(regimes) == max_regimes:
            break
        members = np.flatnonzero(t["labels"] == t["c"])
        if taken[members].mean() > overlap:  # mostly a region already reported
            continue
        taken[members] = True
        r_ev = residual[t["ev"]]
        q = q_null[t["ev"]]
        # empirical spread, floored by the Bernoulli spread so that an
        # all-right region does not get a zero-width interval
        sd = max(r_ev.std(ddof=1) if r_ev.size > 1 else 0.0, float(np.sqrt(np.mean(q * (1 - q)))))
        m, se = float(r_ev.mean()), sd / np.sqrt(r_ev.size)
        dist = ((z[members] - t["cents"][t["c"]]) ** 2).sum(1)
        regimes.append(
            Regime(
                id=len(regimes),
                size=int(t["ev"].sum()),
                size_all=int(members.size),
                sign="under" if t["excess"] > 0 else "over",
                mean_residual=float(m),
                ci_low=float(m - zcrit * se),
                ci_high=float(m + zcrit * se),
                excess=float(t["excess"]),
                p_value=float(t["p"]),
                p_adjusted=float(t["p_adj"]),
                members=members,
                examples=members[np.argsort(dist)[:5]],
                candidate=(int(t["k"]), int(t["c"])),
            )
        )
        cents_out.append(t["cents"])
        clusters_out.append(int(t["c"]))
    return regimes, RegimeModel(mean, proj, scale, tuple(cents_out), tuple(clusters_out))
