"""Panel geometry: a space learned from other models' outcomes on the same items.

When many models answer the same items (a leaderboard, MMLU-Pro's 84
models), where the *panel* is over- or underconfident, or which items it
gets right, says far more about which items are alike than one model's coin
flips do. A flax MLP with a ``k``-wide bottleneck, trained with optax,
predicts every panel model's outcome on an item from the item's embedding;
the bottleneck is the geometry. The outcome is either each panel model's
residual ``correct - confidence`` (``outcome="residual"``, the default, a
masked squared loss) or its 0/1 correctness (``outcome="correct"``, a masked
logistic loss); missing outcomes do not count. Training starts from the
closed-form reduced-rank ridge regression of the outcomes on the embedding.
The bottleneck is rotated and scaled by the decoder's singular vectors (for
correctness each model's logit weighted by the slope of its probability at
its accuracy), so that Euclidean distance in the panel space is (to first
order) the root-mean-square difference of the panel's predicted residuals
(or probabilities) and the coordinates come ordered by how much of it they
carry.

The map reads embeddings and the panel's outcomes only, never the target
model's, so it can be fitted once on all items and its output passed as the
``embeddings`` of the cross-fitted pipeline
(:func:`~miscal_jax.model.crossfit`, :func:`~miscal_jax.model.fit`); it
needs only an embedding to place an item, so new items are mapped too.

The *profile* geometry (:func:`fit_profile`, :func:`profile_embed`) skips
the embedding: an item's coordinates are its own panel outcomes, projected
on their top ``k`` principal directions over the items. Where every item to
be smoothed has been answered by the panel (a leaderboard's items, the
shipped MMLU-Pro table), it places items by how the panel actually fared on
them rather than by what an embedding predicts of that, and on three
held-out MMLU-Pro models it gave about half the held-out category error and
Brier of the embedding-based panel map (``benchmarks/README.md``). It reads
only the panel's outcomes, so no outcome of the target enters it either.

The *combined* geometry (:func:`fit_combined`, :func:`combined_embed`)
puts the profile coordinates beside the item embedding's top principal
components, so that items are near when the panel fares alike on them and
they are about the same thing; the cross-fit's candidate spaces then weigh
the two blocks. On the same three MMLU-Pro models it gave 0.67-0.75x the
profile space's held-out category error with a lower Brier.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.typing import ArrayLike

from miscal_jax._src.dtypes import as_float
from miscal_jax._types import Array, PRNGKey

__all__ = [
    "DEFAULT_CONFIG",
    "CombinedMap",
    "PanelConfig",
    "PanelMap",
    "PanelNet",
    "ProfileMap",
    "combined_embed",
    "fit_combined",
    "fit_panel",
    "fit_profile",
    "panel_embed",
    "profile_embed",
]


@struct.dataclass
class PanelConfig:
    """Configuration of :func:`fit_panel`: structure static, step sizes and ridge traced.

    A frozen dataclass and a pytree (see
    :class:`~miscal_jax.geometry.EncoderConfig`): ``learning_rate``,
    ``weight_decay`` and ``ridge`` are traced leaves, the rest is static.
    Change a field with ``config.replace(...)``.

    Attributes:
      outcome: ``"residual"`` (outcomes are ``correct - confidence`` in
        ``[-1, 1]``, squared loss) or ``"correct"`` (0/1, logistic loss). On
        three held-out MMLU-Pro models (82 panel models, all items) the
        residual panel gave lower held-out category error and Brier than the
        correctness panel on all three (``benchmarks/README.md``).
      out_dim: width ``k`` of the bottleneck (the panel space).
      hidden: widths of the encoder's hidden layers. None by default (a
        reduced-rank linear map): for the correctness panel on MMLU-Pro (83
        models, 12,032 items) and on planted low-rank data one GELU layer of
        128 reached a worse held-out loss (0.578 against 0.573; 0.59 against
        0.50), stopping after its first few hundred steps.
      learning_rate: AdamW step size.
      weight_decay: AdamW weight decay.
      batch_size: items per step.
      max_steps: most optimiser steps.
      eval_every: steps between evaluations on the held-out items.
      patience: evaluations without improvement before stopping.
      val_fraction: share of items held out for early stopping.
      ridge: penalty of the closed-form start, per fitting item (see
        :func:`fit_panel`).
    """

    outcome: str = struct.field(pytree_node=False, default="residual")
    out_dim: int = struct.field(pytree_node=False, default=16)
    hidden: tuple[int, ...] = struct.field(pytree_node=False, default=())
    learning_rate: float = 3e-3
    weight_decay: float = 1e-2
    batch_size: int = struct.field(pytree_node=False, default=512)
    max_steps: int = struct.field(pytree_node=False, default=3000)
    eval_every: int = struct.field(pytree_node=False, default=50)
    patience: int = struct.field(pytree_node=False, default=8)
    val_fraction: float = struct.field(pytree_node=False, default=0.15)
    ridge: float = 0.1


DEFAULT_CONFIG = PanelConfig()


class PanelNet(nn.Module):
    """Encoder ``[..., d] -> [..., out_dim]`` and linear decoder to ``num_models`` outputs.

    Attributes:
      hidden: widths of the encoder's hidden layers.
      out_dim: bottleneck width ``k``.
      num_models: panel size ``m``.
    """

    hidden: Sequence[int]
    out_dim: int
    num_models: int

    def setup(self):
        self.layers = [nn.Dense(width) for width in self.hidden]
        self.bottleneck = nn.Dense(self.out_dim)
        self.decoder = nn.Dense(self.num_models)

    def encode(self, x: Array) -> Array:
        """``[..., d] -> [..., k]`` bottleneck."""
        for layer in self.layers:
            x = nn.gelu(layer(x))
        return self.bottleneck(x)

    def __call__(self, x: Array) -> Array:
        """``[..., d] -> [..., m]`` each panel model's predicted residual (or logit of right)."""
        return self.decoder(self.encode(x))


@struct.dataclass
class PanelMap:
    """A fitted panel geometry: standardisation, network and output rotation.

    Attributes:
      mean: ``[d]`` centre of the embeddings.
      scale: ``[d]`` their standard deviation per coordinate.
      params: the :class:`PanelNet` parameters.
      rotation: ``[k, min(k, m)]`` bottleneck to panel space (singular
        vectors times singular values, over ``sqrt(m)``, of the decoder;
        for correctness each model's column times ``a (1 - a)``, ``a`` its
        accuracy).
      net: the :class:`PanelNet` (static).
    """

    mean: Array
    scale: Array
    params: Any
    rotation: Array
    net: PanelNet = struct.field(pytree_node=False)


def panel_embed(panel_map: PanelMap, embeddings: ArrayLike) -> Array:
    """Maps ``[n, d]`` item embeddings to ``[n, k]`` points of the panel space.

    Args:
      panel_map: a :class:`PanelMap` from :func:`fit_panel`.
      embeddings: ``[n, d]`` item embeddings (new items too: no outcomes needed).

    Returns:
      ``[n, min(k, m)]`` coordinates (``m`` panel models); the distance
      between two items is, to first order, the root-mean-square difference
      of the panel's predicted residuals (or probabilities) on them.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> x = jax.random.normal(jax.random.key(0), (40, 5))
      >>> y = (x[:, :1] > jnp.arange(3.0) - 1).astype(jnp.float32)
      >>> cfg = PanelConfig(outcome="correct", out_dim=2, max_steps=20, eval_every=10)
      >>> pm, _ = fit_panel(jax.random.key(1), x, y, jnp.ones_like(y, bool), cfg)
      >>> panel_embed(pm, x[:3]).shape
      (3, 2)
    """
    x = (as_float(embeddings) - panel_map.mean) / panel_map.scale
    z = panel_map.net.apply({"params": panel_map.params}, x, method=PanelNet.encode)
    return z @ panel_map.rotation


def _masked_loss(outputs: Array, outcomes: Array, mask: Array, outcome: str) -> Array:
    """Mean loss over the ``mask`` cells of ``[b, m]`` outcomes (logistic or squared)."""
    if outcome == "correct":
        loss = optax.sigmoid_binary_cross_entropy(outputs, outcomes)
    else:
        loss = jnp.square(outputs - outcomes)
    return jnp.sum(jnp.where(mask, loss, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _rotation(decoder_kernel: Array, slope: Array) -> Array:
    """``[k, min(k, m)]`` ``R`` with ``|dz R|^2 = |dz W diag(slope)|^2 / m``, ``W`` ``[k, m]``."""
    u, s, _ = jnp.linalg.svd(decoder_kernel * slope, full_matrices=False)
    return u * s / jnp.sqrt(decoder_kernel.shape[1])


def _reduced_rank_ridge(xs: Array, y: Array, fit_mask: Array, mean: Array, slope: Array, config):
    """Closed-form start: bottleneck and decoder kernels ``[d, k]``, ``[k, m]``.

    Ridge regression of the centred outcomes (missing ones at the model's
    ``[m]`` mean) on the standardised fitting rows, penalty
    ``ridge * n_fit``; its fitted values' top ``k`` right singular vectors
    ``V`` give the bottleneck ``B V`` and the decoder ``V^T / slope``
    (``slope`` ``a (1 - a)`` for correctness: the first-order logit of the
    linear prediction; 1 for residuals).
    """
    rows = jnp.any(fit_mask, axis=1, keepdims=True).astype(xs.dtype)
    centred = jnp.where(fit_mask, y - mean, 0.0)
    xf = xs * rows
    n_fit = jnp.maximum(jnp.sum(rows), 1.0)
    gram = xf.T @ xf + config.ridge * n_fit * jnp.eye(xs.shape[1])
    coef = jnp.linalg.solve(gram, xf.T @ centred)
    _, _, vt = jnp.linalg.svd(xf @ coef, full_matrices=False)
    v = jnp.zeros((config.out_dim, y.shape[1])).at[: vt.shape[0]].set(vt[: config.out_dim])
    return coef @ v.T, v / slope


def _check(embeddings, panel_outcomes, panel_mask, config: PanelConfig) -> None:
    """Static checks (shapes, config), plus value checks when the inputs are concrete."""
    if config.outcome not in ("residual", "correct"):
        raise ValueError(f"config.outcome: {config.outcome!r} is not 'residual' or 'correct'.")
    shapes = {
        "embeddings": np.shape(embeddings),
        "panel_outcomes": np.shape(panel_outcomes),
        "panel_mask": np.shape(panel_mask),
    }
    for name, shape in shapes.items():
        if len(shape) != 2:
            raise ValueError(f"{name}: expected a 2-D array, got shape {shape}.")
    n = shapes["embeddings"][0]
    if shapes["panel_outcomes"][0] != n:
        raise ValueError(
            f"panel_outcomes: has {shapes['panel_outcomes'][0]} rows but embeddings has {n}; "
            "pass one row per item, in the same order."
        )
    if shapes["panel_mask"] != shapes["panel_outcomes"]:
        raise ValueError(
            f"panel_mask: shape {shapes['panel_mask']} differs from panel_outcomes' "
            f"{shapes['panel_outcomes']}; pass True where an outcome was observed."
        )
    if shapes["panel_outcomes"][1] < 1:
        raise ValueError("panel_outcomes: the panel has no models; pass at least one column.")
    n_val = round(config.val_fraction * n)
    if not 0 < config.val_fraction < 1 or n_val < 1 or n - n_val < 1:
        raise ValueError(
            f"config.val_fraction: {config.val_fraction} of {n} items leaves no held-out or "
            "no fitting items; use a fraction in (0, 1) and at least a few items."
        )
    if config.eval_every < 1 or config.max_steps < config.eval_every:
        raise ValueError(
            f"config: need 1 <= eval_every <= max_steps, got {config.eval_every} and "
            f"{config.max_steps}."
        )
    arrays = (embeddings, panel_outcomes, panel_mask)
    if any(isinstance(a, jax.core.Tracer) for a in arrays):
        return
    _check_embeddings(embeddings, n)
    y = np.asarray(panel_outcomes, np.float64)
    if config.outcome == "correct":
        valid = np.isin(y, (0.0, 1.0))
        fix = "is not 0 or 1; write 1 for a right answer and 0 for a wrong one"
    else:
        valid = (y >= -1.0) & (y <= 1.0)
        fix = "is not a residual correct - confidence in [-1, 1]"
    _check_outcomes(y, np.asarray(panel_mask), valid, fix)


def _check_outcomes(y: np.ndarray, mask: np.ndarray, valid: np.ndarray, fix: str) -> None:
    """Value checks of both panel geometries on ``[n, m]`` concrete outcomes.

    The mask must be boolean, every observed outcome ``valid`` (else the
    first bad one is named with ``fix``) and every panel model observed at least
    once.
    """
    if mask.dtype != bool:
        raise ValueError(
            f"panel_mask: expected booleans (True where observed), got dtype {mask.dtype}."
        )
    bad = np.argwhere(mask & ~valid)
    if bad.size:
        i, j = bad[0]
        raise ValueError(
            f"panel_outcomes: value {y[i, j]} at index [{i}, {j}] {fix}, or set panel_mask "
            "False there."
        )
    empty = np.flatnonzero(~mask.any(axis=0))
    if empty.size:
        raise ValueError(
            f"panel_mask: panel model (column) {empty[0]} has no observed outcome; drop that "
            "column."
        )


def fit_panel(
    rng: PRNGKey,
    embeddings: ArrayLike,
    panel_outcomes: ArrayLike,
    panel_mask: ArrayLike,
    config: PanelConfig = DEFAULT_CONFIG,
) -> tuple[PanelMap, dict]:
    """Learns the panel geometry from the panel's outcomes (pure, ``jit``-able).

    A random ``val_fraction`` of the *items* is held out. Mini-batches of the
    other items train the network with AdamW on the masked logistic loss;
    every ``eval_every`` steps the held-out loss is computed, the best
    parameters so far are kept with ``jnp.where``, and training stops after
    ``patience`` evaluations without improvement (a ``lax.while_loop`` over
    evaluation blocks, a ``lax.fori_loop`` of steps inside; no host syncs).
    The decoder's biases start at each model's fitting mean (accuracy as a
    logit for ``outcome="correct"``);
    with the default linear encoder (``hidden=()``) the weights start at the
    closed-form reduced-rank ridge fit, so the held-out loss of the result is
    never worse than that of the closed form (evaluation 0).

    Args:
      rng: PRNG key (split, initialisation and batch order).
      embeddings: ``[n, d]`` item embeddings.
      panel_outcomes: ``[n, m]`` outcomes of the ``m`` panel models:
        residuals ``correct - confidence`` (``config.outcome="residual"``)
        or 0/1 correctness (``"correct"``); anything where ``panel_mask`` is
        ``False``, NaN included.
      panel_mask: ``[n, m]`` bools, ``True`` where the outcome was observed.
      config: a :class:`PanelConfig` (static).

    Returns:
      ``(panel_map, history)``: ``history["val_loss"]`` is ``[E + 1]`` held-out
      losses (evaluation 0 is the initial network; NaN after stopping),
      ``history["best_val_loss"]``, ``history["constant_loss"]`` (held-out
      loss of predicting each model's fitting mean everywhere) and
      ``history["steps"]``.

    Raises:
      ValueError: bad shapes or configuration; with concrete inputs also
        non-finite embeddings, observed outcomes that are not 0/1
        (correctness) or not in ``[-1, 1]`` (residuals), a
        non-boolean mask, or a panel model with no observed outcome.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> x = jax.random.normal(jax.random.key(0), (200, 8))
      >>> y = (x[:, :1] + 0.3 * jnp.arange(6.0) > 0.5).astype(jnp.float32)
      >>> mask = jnp.ones_like(y, bool)
      >>> cfg = PanelConfig(outcome="correct", out_dim=2, max_steps=300)
      >>> pm, hist = jax.jit(fit_panel)(jax.random.key(1), x, y, mask, cfg)
      >>> bool(hist["best_val_loss"] < 0.5 * hist["constant_loss"])
      True
    """
    _check(embeddings, panel_outcomes, panel_mask, config)
    x = as_float(embeddings)
    mask = jnp.asarray(panel_mask, bool)
    y = jnp.where(mask, as_float(panel_outcomes), 0.0)
    n, m = y.shape
    mean = jnp.mean(x, axis=0)
    std = jnp.std(x, axis=0)
    scale = jnp.where(std > 0, std, 1.0)
    xs = (x - mean) / scale

    split_rng, init_rng, order_rng = jax.random.split(rng, 3)
    n_val = round(config.val_fraction * n)
    val = jnp.zeros(n, bool).at[jax.random.permutation(split_rng, n)[:n_val]].set(True)
    fit_mask = mask & ~val[:, None]
    val_mask = mask & val[:, None]
    seen = jnp.maximum(jnp.sum(fit_mask, axis=0), 1)
    mean_outcome = jnp.sum(jnp.where(fit_mask, y, 0.0), axis=0) / seen
    if config.outcome == "correct":
        mean_outcome = jnp.clip(mean_outcome, 1e-3, 1 - 1e-3)
        bias = jnp.log(mean_outcome) - jnp.log1p(-mean_outcome)
        slope = mean_outcome * (1 - mean_outcome)
    else:
        bias, slope = mean_outcome, jnp.ones_like(mean_outcome)

    net = PanelNet(hidden=tuple(config.hidden), out_dim=config.out_dim, num_models=m)
    params = net.init(init_rng, xs[:1])["params"]
    params = {**params, "decoder": {**params["decoder"], "bias": bias}}
    if not config.hidden:
        encoder, decoder = _reduced_rank_ridge(xs, y, fit_mask, mean_outcome, slope, config)
        params["bottleneck"] = {**params["bottleneck"], "kernel": encoder}
        params["decoder"] = {**params["decoder"], "kernel": decoder}
    tx = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
    opt_state = tx.init(params)

    def val_loss(params):
        return _masked_loss(net.apply({"params": params}, xs), y, val_mask, config.outcome)

    batch = min(config.batch_size, n - n_val)
    order = jnp.argsort(jnp.where(val, 2.0, jax.random.uniform(order_rng, (n,))))

    def step(i, carry):
        params, opt_state = carry
        idx = order[(i * batch + jnp.arange(batch)) % (n - n_val)]

        def loss(p):
            outputs = net.apply({"params": p}, xs[idx])
            return _masked_loss(outputs, y[idx], fit_mask[idx], config.outcome)

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    evals = config.max_steps // config.eval_every

    def block(carry):
        k, params, opt_state, best, best_val, bad, history = carry
        start = k * config.eval_every
        params, opt_state = jax.lax.fori_loop(
            start, start + config.eval_every, step, (params, opt_state)
        )
        loss = val_loss(params)
        better = loss < best_val
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old), params, best)
        return (
            k + 1,
            params,
            opt_state,
            best,
            jnp.where(better, loss, best_val),
            jnp.where(better, 0, bad + 1),
            history.at[k + 1].set(loss),
        )

    def running(carry):
        k, *_, bad, _ = carry
        return (k < evals) & (bad < config.patience)

    first = val_loss(params)
    history = jnp.full(evals + 1, jnp.nan).at[0].set(first)
    carry = (0, params, opt_state, params, first, 0, history)
    k, _, _, best, best_val, _, history = jax.lax.while_loop(running, block, carry)
    constant = _masked_loss(jnp.broadcast_to(bias, y.shape), y, val_mask, config.outcome)
    rotation = _rotation(best["decoder"]["kernel"], slope)
    panel_map = PanelMap(mean, scale, best, rotation, net)
    info = {
        "val_loss": history,
        "best_val_loss": best_val,
        "constant_loss": constant,
        "steps": k * config.eval_every,
    }
    return panel_map, info


@struct.dataclass
class ProfileMap:
    """A fitted profile geometry: each panel model's mean outcome and the principal directions.

    Attributes:
      mean: ``[m]`` each panel model's mean observed outcome.
      components: ``[m, k']`` the top ``k' = min(k, n, m)`` right singular
        vectors of the centred ``[n, m]`` outcome matrix, over ``sqrt(m)``.
      explained: ``[]`` share of the centred matrix's sum of squares the
        ``k`` directions carry.
    """

    mean: Array
    components: Array
    explained: Array


def _centred(panel_outcomes: ArrayLike, panel_mask: ArrayLike, mean: Array) -> Array:
    """``[n, m]`` outcomes minus each model's mean, 0 (the mean) where not observed."""
    mask = jnp.asarray(panel_mask, bool)
    y = as_float(panel_outcomes)
    return jnp.where(mask, y - mean, 0.0)


def fit_profile(panel_outcomes: ArrayLike, panel_mask: ArrayLike, k: int = 16) -> ProfileMap:
    """Learns the profile geometry: principal directions of the panel's outcomes (``jit``-able).

    The ``[n, m]`` outcomes are centred per panel model (each model's mean
    over its observed items) and a missing outcome is taken at that mean;
    the top ``k`` right singular vectors ``V`` of the result ``C`` give the
    map ``z = C V / sqrt(m)``. Distance between two items in it is the
    root-mean-square difference of their rank-``k`` denoised outcome
    profiles over the panel, so items the panel fares alike on are near.

    Args:
      panel_outcomes: ``[n, m]`` outcomes of the ``m`` panel models on the
        ``n`` items (residuals ``correct - confidence`` or 0/1 correctness;
        anything where ``panel_mask`` is ``False``, NaN included).
      panel_mask: ``[n, m]`` bools, ``True`` where the outcome was observed.
      k: static number of directions (at most ``min(n, m)`` are kept).

    Returns:
      A :class:`ProfileMap`; place items with :func:`profile_embed`.

    Raises:
      ValueError: not 2-D, mismatched shapes, ``k < 1``; with concrete
        inputs also a non-boolean mask, a non-finite observed outcome or a
        panel model with no observed outcome (each naming its index).

    Examples:
      >>> import jax.numpy as jnp
      >>> y = jnp.array([[1.0, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]])
      >>> pm = fit_profile(y, jnp.ones_like(y, bool), k=2)
      >>> profile_embed(pm, y, jnp.ones_like(y, bool)).shape
      (4, 2)
    """
    _check_profile(panel_outcomes, panel_mask, k)
    mask = jnp.asarray(panel_mask, bool)
    y = jnp.where(mask, as_float(panel_outcomes), 0.0)
    m = y.shape[1]
    mean = jnp.sum(y, axis=0) / jnp.maximum(jnp.sum(mask, axis=0), 1)
    centred = _centred(y, mask, mean)
    _, s, vt = jnp.linalg.svd(centred, full_matrices=False)
    used = min(k, vt.shape[0])
    components = vt[:used].T / jnp.sqrt(m)
    total = jnp.sum(jnp.square(s))
    explained = jnp.where(total > 0, jnp.sum(jnp.square(s[:used])) / total, 1.0)
    return ProfileMap(mean, components, explained)


def profile_embed(profile_map: ProfileMap, panel_outcomes: ArrayLike, panel_mask: ArrayLike):
    """Maps items' ``[n, m]`` panel outcomes to ``[n, k]`` points of the profile space.

    Args:
      profile_map: a :class:`ProfileMap` from :func:`fit_profile`.
      panel_outcomes: ``[n, m]`` the same panel models' outcomes on the items
        (new items too, in the same column order).
      panel_mask: ``[n, m]`` bools, ``True`` where observed; a missing
        outcome counts as the model's mean, so an item no panel model
        answered sits at the origin.

    Returns:
      ``[n, k']`` coordinates (``k'`` the map's number of directions).
    """
    return _centred(panel_outcomes, panel_mask, profile_map.mean) @ profile_map.components


def _check_profile(panel_outcomes, panel_mask, k: int) -> None:
    """Static checks (shapes, ``k``), plus value checks when the inputs are concrete."""
    shape, mask_shape = np.shape(panel_outcomes), np.shape(panel_mask)
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise ValueError(
            f"panel_outcomes: expected a 2-D [items, models] array with at least one of each, "
            f"got shape {shape}."
        )
    if mask_shape != shape:
        raise ValueError(
            f"panel_mask: shape {mask_shape} differs from panel_outcomes' {shape}; pass True "
            "where an outcome was observed."
        )
    if k < 1:
        raise ValueError(f"k: {k} directions; pass k >= 1.")
    if any(isinstance(a, jax.core.Tracer) for a in (panel_outcomes, panel_mask)):
        return
    y = np.asarray(panel_outcomes, np.float64)
    _check_outcomes(y, np.asarray(panel_mask), np.isfinite(y), "is not finite; fix it")


@struct.dataclass
class CombinedMap:
    """A fitted combined geometry: the profile space beside the item embedding's top components.

    Attributes:
      profile: the :class:`ProfileMap` of the panel's outcomes.
      mean: ``[d]`` centre of the item embeddings.
      components: ``[d, k'']`` their top ``k'' = min(k, n, d)`` principal directions.
      scales: ``[2]`` the root-mean-square distance from the centre of the
        profile block and of the embedding block over the fitting items; each
        block is divided by its own, so both weigh the same on average.
    """

    profile: ProfileMap
    mean: Array
    components: Array
    scales: Array


def fit_combined(
    panel_outcomes: ArrayLike, panel_mask: ArrayLike, embeddings: ArrayLike, k: int = 16
) -> CombinedMap:
    """Learns the combined geometry: panel profile and topic side by side (``jit``-able).

    The profile space (:func:`fit_profile`) places items by how the panel
    fared on them and can lose what the item is *about*: two questions on
    different topics that the panel found equally hard sit together. This
    map keeps both: an item's point is its ``k`` profile coordinates beside
    the top ``k`` principal components of its embedding, each block divided
    by its root-mean-square distance from the centre, so that neither block
    drowns the other by its units or its width. Their relative scale is then
    the smoother's business: among the cross-fitted pipeline's candidate
    spaces the linear metric learns a weight per coordinate from the
    residuals, and the candidates are compared per fold on items no weight
    saw (:func:`~miscal_jax.geometry.fit_geometry`). It reads the panel's
    outcomes and the embeddings only, never the target's outcomes.

    Args:
      panel_outcomes: ``[n, m]`` outcomes of the ``m`` panel models (as
        :func:`fit_profile`).
      panel_mask: ``[n, m]`` bools, ``True`` where observed.
      embeddings: ``[n, d]`` item embeddings, rows in the same order.
      k: static number of directions of each block.

    Returns:
      A :class:`CombinedMap`; place items with :func:`combined_embed`.

    Raises:
      ValueError: as :func:`fit_profile`; also embeddings that are not
        ``[n, d]`` with the outcomes' ``n`` rows, or (concrete) not finite.

    Examples:
      >>> import jax.numpy as jnp
      >>> y = jnp.array([[1.0, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]])
      >>> x = jnp.array([[0.0, 1], [1, 0], [1, 1], [2, 0]])
      >>> mask = jnp.ones_like(y, bool)
      >>> combined_embed(fit_combined(y, mask, x, k=2), y, mask, x).shape
      (4, 4)
    """
    _check_profile(panel_outcomes, panel_mask, k)
    _check_embeddings(embeddings, np.shape(panel_outcomes)[0])
    profile = fit_profile(panel_outcomes, panel_mask, k)
    x = as_float(embeddings)
    mean = jnp.mean(x, axis=0)
    _, _, vt = jnp.linalg.svd(x - mean, full_matrices=False)
    components = vt[: min(k, vt.shape[0])].T
    blocks = (profile_embed(profile, panel_outcomes, panel_mask), (x - mean) @ components)
    scales = jnp.stack([_rms_radius(z) for z in blocks])
    return CombinedMap(profile, mean, components, scales)


def combined_embed(
    combined_map: CombinedMap,
    panel_outcomes: ArrayLike,
    panel_mask: ArrayLike,
    embeddings: ArrayLike,
) -> Array:
    """Maps items to ``[n, k' + k'']`` points of the combined space: profile block, then topic.

    Args:
      combined_map: a :class:`CombinedMap` from :func:`fit_combined`.
      panel_outcomes, panel_mask: ``[n, m]`` the panel's outcomes on the
        items, as :func:`profile_embed` takes them.
      embeddings: ``[n, d]`` the items' embeddings.

    Returns:
      ``[n, k' + k'']`` coordinates; each block has root-mean-square norm 1
      over the fitting items.
    """
    profile = profile_embed(combined_map.profile, panel_outcomes, panel_mask)
    topic = (as_float(embeddings) - combined_map.mean) @ combined_map.components
    return jnp.concatenate(
        [profile / combined_map.scales[0], topic / combined_map.scales[1]], axis=1
    )


def _rms_radius(z: Array) -> Array:
    """``[]`` root-mean-square distance of ``[n, k]`` points from their mean (1 if all coincide)."""
    radius = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(z - jnp.mean(z, axis=0)), axis=1)))
    return jnp.where(radius > 0, radius, 1.0)


def _check_embeddings(embeddings, n: int) -> None:
    """``[n, d]`` finite embeddings (the value check only when concrete)."""
    shape = np.shape(embeddings)
    if len(shape) != 2 or shape[0] != n or shape[1] < 1:
        raise ValueError(
            f"embeddings: expected a 2-D [items, dims] array with one row per item ({n}), "
            f"got shape {shape}."
        )
    if isinstance(embeddings, jax.core.Tracer):
        return
    x = np.asarray(embeddings, np.float64)
    bad = np.argwhere(~np.isfinite(x))
    if bad.size:
        i, j = bad[0]
        raise ValueError(
            f"embeddings: value {x[i, j]} at index [{i}, {j}] is not finite; fix or drop that item."
        )
