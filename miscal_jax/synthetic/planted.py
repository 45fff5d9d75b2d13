"""Synthetic data with a planted miscalibration field, for tests and studies.

Items belong to topic clusters in a low-dimensional signal space; each cluster
is overconfident, underconfident or calibrated. Confidence is drawn
independently of the input from an LLM-like distribution (mostly high), and
the clusters' offsets balance, so inside every confidence bin the field
averages to zero: the global reliability diagram looks calibrated while
whole regions are not. Optional nuisance dimensions with larger spread
dominate raw distances, and a random rotation mixes all coordinates, as in a
sentence embedding.

:func:`make_confounded_null` is the opposite case, the null that real LLM data
makes hard: confidence depends on the topic and the position in the
embedding, while the miscalibration is a function of confidence alone.
:func:`make_confounded_panel` adds other models answering the same items, as
in a leaderboard, whose confidences share the target's dependence on the
input and whose answers carry real regional fields of their own.
"""

from typing import NamedTuple

import numpy as np

__all__ = [
    "ConfoundedPanel",
    "PlantedData",
    "make_confounded_null",
    "make_confounded_panel",
    "make_planted",
]


class PlantedData(NamedTuple):
    """A synthetic data set and its ground truth.

    Attributes:
      embeddings: ``[n, d]`` float32 inputs.
      conf: ``[n]`` float32 reported confidences.
      correct: ``[n]`` float32 0/1 outcomes.
      field: ``[n]`` true field ``E[correct - conf | x]`` at each item (the
        definition: averaged over the confidence, which is independent of x).
      field_given_conf: ``[n]`` true ``E[correct - conf | x, conf]`` per item.
      region: ``[n]`` int cluster id of each item (the planted regions).
      region_sign: ``[num_clusters]`` -1 overconfident, +1 under, 0 calibrated.
      signal_basis: ``[d, signal_dim]`` orthonormal columns spanning the
        directions of the inputs that carry the clusters (the field varies
        in their span only).
    """

    embeddings: np.ndarray
    conf: np.ndarray
    correct: np.ndarray
    field: np.ndarray
    field_given_conf: np.ndarray
    region: np.ndarray
    region_sign: np.ndarray
    signal_basis: np.ndarray


def make_planted(
    n: int = 3000,
    *,
    seed: int = 0,
    amplitude: float = 0.15,
    num_clusters: int = 6,
    signal_dim: int = 8,
    nuisance_dim: int = 0,
    nuisance_scale: float = 3.0,
    cluster_spread: float = 0.25,
    conf_ab: tuple[float, float] = (5.0, 1.6),
    overconfidence: float = 1.0,
    rotate: bool = True,
) -> PlantedData:
    """Draws a planted-field data set.

    The true probability of a right answer is ``p + delta`` where ``p`` is the
    calibrated confidence and ``delta = amplitude * sign(cluster) * min(1,
    min(p, 1 - p) / amplitude)`` (the cap keeps ``p + delta`` in ``[0, 1]``).
    Signs cycle ``-1, +1, 0`` over clusters, so with ``num_clusters`` a
    multiple of 3 they cancel exactly in every confidence bin.

    Args:
      n: number of items.
      seed: random seed.
      amplitude: size of the planted offset; 0 gives the null (no field).
      num_clusters: number of topic clusters.
      signal_dim: dimensions carrying the cluster structure.
      nuisance_dim: extra dimensions of pure noise.
      nuisance_scale: standard deviation of the nuisance dimensions (cluster
        centres are unit vectors, so 3 already swamps them in raw distance).
      cluster_spread: within-cluster standard deviation per signal dimension.
      conf_ab: Beta parameters of the calibrated confidence.
      overconfidence: reported conf is ``sigmoid(overconfidence * logit(p))``;
        1 keeps it globally calibrated, > 1 adds a global (input-independent)
        overconfidence.
      rotate: apply a random rotation to the columns (default), so no column
        is pure signal or pure nuisance; ``False`` keeps the signal in the
        first ``signal_dim`` columns and each nuisance dimension in its own column.

    Returns:
      A :class:`PlantedData`.
    """
    if n < 1 or num_clusters < 1 or signal_dim < 1:
        raise ValueError("n, num_clusters and signal_dim must be positive.")
    rng = np.random.default_rng(seed)
    embeddings, region, _, basis = _clustered(
        rng, n, num_clusters, signal_dim, nuisance_dim, nuisance_scale, cluster_spread, rotate
    )

    region_sign = np.array([(-1, 1, 0)[c % 3] for c in range(num_clusters)], dtype=np.int64)
    p = rng.beta(*conf_ab, size=n)
    offset = _offset(p, amplitude)
    correct = (rng.random(n) < p + offset * region_sign[region]).astype(np.float32)
    conf = _report(p, overconfidence)
    # the field is defined against the *reported* confidence; its average over
    # p (independent of x) is taken on a fixed large sample, the same each seed
    p_ref = np.random.default_rng(12345).beta(*conf_ab, size=200_000)
    gap_ref = float(np.mean(p_ref - _report(p_ref, overconfidence)))
    field_x = gap_ref + float(np.mean(_offset(p_ref, amplitude))) * region_sign[region]
    field_xp = p - conf + offset * region_sign[region]
    return PlantedData(
        embeddings.astype(np.float32),
        conf.astype(np.float32),
        correct,
        field_x.astype(np.float32),
        field_xp.astype(np.float32),
        region,
        region_sign,
        basis.astype(np.float32),
    )


def _clustered(rng, n, num_clusters, signal_dim, nuisance_dim, nuisance_scale, spread, rotate):
    """``[n, signal_dim + nuisance_dim]`` points around unit-norm topic centres,
    each point's ``[n]`` topic, its ``[n, signal_dim]`` unrotated signal part
    and the ``[d, signal_dim]`` basis of the signal directions in the points'
    coordinates. The rotation is drawn even when not applied, so ``rotate``
    changes no later draw."""
    centres = rng.normal(size=(num_clusters, signal_dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    region = rng.integers(num_clusters, size=n)
    signal = centres[region] + spread * rng.normal(size=(n, signal_dim))
    nuisance = nuisance_scale * rng.normal(size=(n, nuisance_dim))
    x = np.concatenate([signal, nuisance], axis=1)
    rotation, _ = np.linalg.qr(rng.normal(size=(x.shape[1], x.shape[1])))
    basis = rotation[:signal_dim].T if rotate else np.eye(x.shape[1])[:, :signal_dim]
    return (x @ rotation if rotate else x), region, signal, basis


def _offset(p: np.ndarray, amplitude: float) -> np.ndarray:
    """``amplitude`` capped so that ``p +- offset`` stays in ``[0, 1]``."""
    if amplitude <= 0:
        return np.zeros_like(p)
    return amplitude * np.minimum(1.0, np.minimum(p, 1 - p) / amplitude)


def _report(p: np.ndarray, overconfidence: float) -> np.ndarray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return 1.0 / (1.0 + np.exp(-overconfidence * (np.log(q) - np.log1p(-q))))


def make_confounded_null(
    n: int = 3000,
    *,
    seed: int = 0,
    exponent: float = 1.8,
    num_clusters: int = 6,
    signal_dim: int = 8,
    nuisance_dim: int = 0,
    nuisance_scale: float = 3.0,
    cluster_spread: float = 0.25,
    base_logit: float = 1.5,
    cluster_shift: float = 0.8,
    position_slope: float = 1.0,
    conf_noise: float = 0.7,
) -> PlantedData:
    """Draws a confounded null: confidence depends on x, miscalibration on confidence only.

    Items sit in topic clusters as in :func:`make_planted`. The reported
    confidence is ``sigmoid(base_logit + cluster_shift * a[cluster] +
    position_slope * <s, u> + conf_noise * eps)`` with ``a[c] ~ N(0, 1)`` per
    cluster, ``s`` the item's signal coordinates, ``u`` a random unit
    direction and ``eps ~ N(0, 1)``; the answer is right with probability
    ``conf ** exponent`` whatever the input. So ``E[correct - conf | x, conf]
    = conf^exponent - conf`` is the same function of confidence everywhere:
    no region is miscalibrated beyond what a confidence-only map fixes, yet
    the field ``E[correct - conf | x]`` varies with ``x`` through the
    confidence. A heterogeneity test or regime search must stay quiet here.

    Args:
      n: number of items.
      seed: random seed.
      exponent: ``P(correct | conf) = conf ** exponent`` (> 1: overconfident).
      num_clusters: number of topic clusters.
      signal_dim: dimensions carrying the cluster structure.
      nuisance_dim: extra dimensions of pure noise.
      nuisance_scale: standard deviation of the nuisance dimensions.
      cluster_spread: within-cluster standard deviation per signal dimension.
      base_logit: mean logit of the confidence.
      cluster_shift: spread of the clusters' confidence logits (topic effect).
      position_slope: slope of the confidence logit along ``u`` (position
        effect inside and across clusters).
      conf_noise: standard deviation of the input-independent logit noise.

    Returns:
      A :class:`PlantedData`: ``field`` is ``E[correct - conf | x]`` (averaged
      over the logit noise by Gauss-Hermite quadrature), ``field_given_conf``
      is ``conf^exponent - conf``, ``region`` the cluster and ``region_sign``
      all zero (no region is miscalibrated given confidence).

    Examples:
      >>> d = make_confounded_null(2000, seed=0)
      >>> d.embeddings.shape, bool(d.field.std() > 0.005), int(abs(d.region_sign).sum())
      ((2000, 8), True, 0)
    """
    data, _, _ = _draw_confounded(
        np.random.default_rng(seed),
        n,
        exponent=exponent,
        num_clusters=num_clusters,
        signal_dim=signal_dim,
        nuisance_dim=nuisance_dim,
        nuisance_scale=nuisance_scale,
        cluster_spread=cluster_spread,
        base_logit=base_logit,
        cluster_shift=cluster_shift,
        position_slope=position_slope,
        conf_noise=conf_noise,
    )
    return data


def _draw_confounded(
    rng,
    n,
    *,
    exponent,
    num_clusters,
    signal_dim,
    nuisance_dim,
    nuisance_scale,
    cluster_spread,
    base_logit,
    cluster_shift,
    position_slope,
    conf_noise,
):
    """The confounded null drawn from ``rng`` (arguments as in :func:`make_confounded_null`).

    Returns:
      ``(data, signal, mean_logit)``: the :class:`PlantedData`, the items'
      ``[n, signal_dim]`` unrotated signal coordinates and ``[n]`` mean
      confidence logits.
    """
    if n < 1 or num_clusters < 1 or signal_dim < 1:
        raise ValueError("n, num_clusters and signal_dim must be positive.")
    if exponent <= 0 or conf_noise < 0:
        raise ValueError(
            f"exponent must be positive and conf_noise non-negative, got {exponent}, {conf_noise}."
        )
    embeddings, region, signal, basis = _clustered(
        rng, n, num_clusters, signal_dim, nuisance_dim, nuisance_scale, cluster_spread, True
    )
    mean_logit = _confounded_logit(
        rng, region, signal, num_clusters, base_logit, cluster_shift, position_slope
    )
    conf = _sigmoid(mean_logit + conf_noise * rng.normal(size=n))
    correct = (rng.random(n) < conf**exponent).astype(np.float32)
    # E[conf^k - conf | x]: the logit noise integrated out (probabilists' Hermite nodes)
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    c = _sigmoid(mean_logit[:, None] + conf_noise * nodes[None, :])
    field_x = (c**exponent - c) @ (weights / weights.sum())
    data = PlantedData(
        embeddings.astype(np.float32),
        conf.astype(np.float32),
        correct,
        field_x.astype(np.float32),
        (conf**exponent - conf).astype(np.float32),
        region,
        np.zeros(num_clusters, dtype=np.int64),
        basis.astype(np.float32),
    )
    return data, signal, mean_logit


def _confounded_logit(rng, region, signal, num_clusters, base_logit, cluster_shift, slope):
    """``[n]`` mean confidence logit from a random topic effect and a random direction."""
    topic = rng.normal(size=num_clusters)
    direction = rng.normal(size=signal.shape[1])
    direction /= np.linalg.norm(direction)
    return base_logit + cluster_shift * topic[region] + slope * signal @ direction


class ConfoundedPanel(NamedTuple):
    """A confounded null target and a panel of other models on the same items.

    Attributes:
      target: the target model's :class:`PlantedData` (the confounded null).
      panel_conf: ``[n, M]`` float32 confidences of the panel models.
      panel_correct: ``[n, M]`` float32 0/1 outcomes of the panel models.
    """

    target: PlantedData
    panel_conf: np.ndarray
    panel_correct: np.ndarray


def make_confounded_panel(
    n: int = 1000,
    num_models: int = 20,
    *,
    seed: int = 0,
    shared: float = 0.7,
    panel_field: float = 0.15,
    exponent: float = 1.8,
    num_clusters: int = 6,
    signal_dim: int = 8,
    cluster_spread: float = 0.25,
    base_logit: float = 1.5,
    cluster_shift: float = 0.8,
    position_slope: float = 1.0,
    conf_noise: float = 0.7,
) -> ConfoundedPanel:
    """Draws the confounded null for a target model beside a panel that is not null.

    The target is drawn as in :func:`make_confounded_null` (no nuisance
    dimensions): its answer is right with probability ``conf ** exponent``
    whatever the input. Panel model ``m`` has the mean confidence logit
    ``shared * target's + (1 - shared) * its own`` (own topic effects and
    direction, drawn the same way), so a geometry learned from the panel
    stretches the very directions along which the target's confidence moves;
    its answer is right with probability ``conf_m ** k_m + panel_field *
    sign_m[cluster]`` (clipped to ``[0, 1]``), with ``k_m ~ U(1, 2.5)`` and
    the signs a random half +1, half -1 over the clusters, so every panel
    model has real regional miscalibration to learn.
    Smoothing the target's residuals in that geometry must still find no
    heterogeneity beyond what its confidence explains.

    Args:
      n: number of items.
      num_models: panel size ``M``.
      seed: random seed.
      shared: weight of the target's mean logit in each panel model's.
      panel_field: amplitude of the panel models' regional fields.
      exponent, num_clusters, signal_dim, cluster_spread, base_logit,
        cluster_shift, position_slope, conf_noise: as in
        :func:`make_confounded_null`.

    Returns:
      A :class:`ConfoundedPanel`.

    Examples:
      >>> d = make_confounded_panel(500, 4, seed=0)
      >>> d.target.embeddings.shape, d.panel_conf.shape, d.panel_correct.shape
      ((500, 8), (500, 4), (500, 4))
    """
    if num_models < 1 or not 0.0 <= shared <= 1.0:
        raise ValueError(
            f"num_models must be positive and shared in [0, 1], got {num_models}, {shared}."
        )
    target, signal, logit = _draw_confounded(
        np.random.default_rng(seed),
        n,
        exponent=exponent,
        num_clusters=num_clusters,
        signal_dim=signal_dim,
        nuisance_dim=0,
        nuisance_scale=0.0,
        cluster_spread=cluster_spread,
        base_logit=base_logit,
        cluster_shift=cluster_shift,
        position_slope=position_slope,
        conf_noise=conf_noise,
    )
    region = target.region
    rng = np.random.default_rng([seed, 1])
    conf = np.empty((n, num_models))
    correct = np.empty((n, num_models))
    for m in range(num_models):
        own = _confounded_logit(
            rng, region, signal, num_clusters, base_logit, cluster_shift, position_slope
        )
        conf[:, m] = _sigmoid(shared * logit + (1 - shared) * own + conf_noise * rng.normal(size=n))
        sign = rng.permutation(np.resize([-1.0, 1.0], num_clusters))
        p_right = conf[:, m] ** rng.uniform(1.0, 2.5) + panel_field * sign[region]
        correct[:, m] = rng.random(n) < np.clip(p_right, 0.0, 1.0)
    return ConfoundedPanel(target, conf.astype(np.float32), correct.astype(np.float32))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))
