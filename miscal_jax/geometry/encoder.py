"""Calibration-aware representation: a flax encoder trained with the smoother.

The encoder ``g_theta: x -> z`` is trained so that the leave-one-out
Nadaraya-Watson prediction of the residuals inside each mini-batch is as good
as possible (metric learning for kernel regression). The log-bandwidth is a
parameter too. Residuals are single coin flips, so the main danger is
overfitting: weight decay, early stopping on a held-out split, and the
comparison against the raw and PCA geometries in :mod:`miscal_jax.geometry.spaces`
guard against it.

References:
  Weinberger & Tesauro (2007), "Metric learning for kernel regression".
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state
from jax.typing import ArrayLike

from miscal_jax._src.dtypes import as_float
from miscal_jax._src.fitting import gather_rows, masked_mean
from miscal_jax._types import Array, PRNGKey
from miscal_jax.smoothing.nadaraya_watson import bandwidth_grid, loo_field, nw_field

__all__ = [
    "Encoder",
    "EncoderConfig",
    "LinearMetric",
    "TrainState",
    "batch_loo_loss",
    "fit_encoder",
    "init_train_state",
    "train_step",
]


class Encoder(nn.Module):
    """An MLP ``[..., d] -> [..., out_dim]``.

    Attributes:
      hidden: widths of the hidden layers (depth = its length).
      out_dim: dimension ``k`` of the learned space.
    """

    hidden: Sequence[int] = (64,)
    out_dim: int = 16

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for width in self.hidden:
            x = nn.gelu(nn.Dense(width)(x))
        return nn.Dense(self.out_dim)(x)


class LinearMetric(nn.Module):
    """A linear metric: per-column weights beside a low-rank rotated part.

    ``z = [x * exp(log_w), x @ W]`` with ``log_w`` of shape ``[d]`` and ``W``
    of shape ``[d, rank]``, so squared distances add a diagonal metric (it
    can shrink nuisance columns) and a rank-``rank`` one (it can follow a
    rotated subspace that no column weight can). ``W`` is stored times
    ``sqrt(d)``, so one optimiser step moves its unit columns by as much,
    relative to their entries, as it moves a log-weight.
    :mod:`miscal_jax.geometry.spaces` starts ``W`` at directions where the
    residuals vary (:func:`~miscal_jax.geometry.directions.initial_metric`);
    a zero column stays zero under training (its gradient vanishes), so the
    start also sets the rank. By default ``W`` is zero: the standardised columns.

    Attributes:
      rank: the number of columns of ``W``.
    """

    rank: int = 8

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        log_w = self.param("log_w", nn.initializers.zeros, (d,))
        w = self.param("directions", nn.initializers.zeros, (d, self.rank))
        return jnp.concatenate([x * jnp.exp(log_w), x @ w / jnp.sqrt(d)], axis=-1)


@struct.dataclass
class EncoderConfig:
    """Training configuration of the learned spaces: structure static, step sizes traced.

    A frozen dataclass and a pytree: the structural fields (``hidden``,
    ``out_dim``, batch sizes, step counts, ``kernel``) are static, part of the
    tree's structure, so they select the compiled program; the numeric
    hyperparameters (``learning_rate``, ``weight_decay``,
    ``linear_learning_rate``) are leaves, traced under ``jit``, so a sweep
    over them compiles once and can be ``vmap``-ed. Change a field with
    ``config.replace(...)``.

    ``hidden`` and ``out_dim`` shape the MLP of the ``"learned"`` geometry.
    The ``"linear"`` geometry (:class:`LinearMetric`) trains with
    ``linear_learning_rate`` and ``linear_batch_size`` instead: with few
    parameters larger steps on larger batches are stable, and they reach
    down-weighted nuisance directions within the step budget.
    """

    hidden: tuple[int, ...] = struct.field(pytree_node=False, default=())
    out_dim: int = struct.field(pytree_node=False, default=16)
    learning_rate: float = 3e-3
    weight_decay: float = 1e-2
    batch_size: int = struct.field(pytree_node=False, default=256)
    max_steps: int = struct.field(pytree_node=False, default=600)
    eval_every: int = struct.field(pytree_node=False, default=25)
    patience: int = struct.field(pytree_node=False, default=6)
    kernel: str = struct.field(pytree_node=False, default="gaussian")
    linear_learning_rate: float = 3e-2
    linear_batch_size: int = struct.field(pytree_node=False, default=1024)


class TrainState(train_state.TrainState):
    """flax ``TrainState`` whose ``params`` are ``{"encoder": ..., "log_bandwidth": []}``."""


def batch_loo_loss(
    params, apply_fn, x: Array, residual: Array, mask: Array | None = None, *, kernel: str
) -> Array:
    """Mean squared leave-one-out NW error of ``[b]`` residuals within a batch.

    Args:
      params: ``{"encoder": ..., "log_bandwidth": scalar}``.
      apply_fn: the encoder's ``apply``.
      x: ``[b, d]`` encoder inputs.
      residual: ``[b]`` residuals.
      mask: optional ``[b]`` bools; ``False`` rows neither predict nor count.
      kernel: static kernel name.

    Returns:
      Scalar loss.
    """
    z = apply_fn({"params": params["encoder"]}, x)
    mask = jnp.ones(residual.shape, bool) if mask is None else mask
    pred = loo_field(z, residual, params["log_bandwidth"], ref_mask=mask, kernel=kernel).value
    return jnp.sum(mask * (residual - pred) ** 2) / jnp.maximum(jnp.sum(mask), 1)


def init_train_state(
    rng: PRNGKey,
    x: ArrayLike,
    config: EncoderConfig,
    mask: ArrayLike | None = None,
    module: nn.Module | None = None,
    params=None,
) -> TrainState:
    """Initialises encoder parameters, bandwidth and optimiser.

    The initial bandwidth is a wide one on the grid of the encoded points
    (:func:`~miscal_jax.smoothing.bandwidth_grid`), so training starts near the
    constant predictor and narrows from there.

    Args:
      rng: PRNG key.
      x: ``[n, d]`` encoder inputs (used for shapes and the bandwidth scale).
      config: an :class:`EncoderConfig`.
      mask: optional ``[n]`` bools: rows used for the bandwidth scale.
      module: the flax module to train; by default the :class:`Encoder`
        that ``config`` describes.
      params: optional starting parameters of ``module`` (default: its own
        initialisation from ``rng``).

    Returns:
      A :class:`TrainState`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> state = init_train_state(jax.random.key(0), jnp.ones((10, 3)), EncoderConfig(out_dim=2))
      >>> sorted(state.params)
      ['encoder', 'log_bandwidth']
    """
    if module is None:
        module = Encoder(hidden=tuple(config.hidden), out_dim=config.out_dim)
    x = as_float(x)
    enc_params = module.init(rng, x[:1])["params"] if params is None else params
    z0 = module.apply({"params": enc_params}, x)
    log_bw = bandwidth_grid(z0, num=24, ref_mask=mask)[-7]
    tx = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
    params = {"encoder": enc_params, "log_bandwidth": log_bw}
    return TrainState.create(apply_fn=module.apply, params=params, tx=tx)


def train_step(
    state: TrainState,
    x: Array,
    residual: Array,
    mask: Array | None = None,
    *,
    kernel: str = "gaussian",
) -> tuple[TrainState, dict]:
    """One optimiser step on a ``[b, d]`` batch; returns ``(state, {"loss": ...})``."""
    loss, grads = jax.value_and_grad(batch_loo_loss)(
        state.params, state.apply_fn, x, residual, mask, kernel=kernel
    )
    return state.apply_gradients(grads=grads), {"loss": loss}


def heldout_loss(
    params, apply_fn, x, residual, fit_mask, val_mask, *, kernel: str, val_size: int | None = None
) -> Array:
    """Squared error of predicting ``val_mask`` residuals from ``fit_mask`` rows (``[n]`` masks).

    ``val_size`` (static), at least the number of ``val_mask`` rows, smooths
    those rows alone (gathered) instead of all ``n``.
    """
    z = apply_fn({"params": params["encoder"]}, x)
    rows, judged = gather_rows(val_mask, val_size)
    est = nw_field(z[rows], z, residual, params["log_bandwidth"], ref_mask=fit_mask, kernel=kernel)
    return masked_mean((residual[rows] - est.value) ** 2, judged)


def fit_encoder(
    rng: PRNGKey,
    x: ArrayLike,
    residual: ArrayLike,
    fit_mask: ArrayLike,
    val_mask: ArrayLike,
    config: EncoderConfig = EncoderConfig(),
    module: nn.Module | None = None,
    params=None,
    val_size: int | None = None,
) -> tuple[TrainState, dict]:
    """Trains the encoder with early stopping on a validation split (pure, ``jit``-able).

    Mini-batches walk through the ``fit_mask`` rows in a random order. Every
    ``eval_every`` steps the validation loss predicts each ``val_mask``
    residual from the ``fit_mask`` rows (never from itself); the best
    parameters so far are kept with ``jnp.where``, and training stops after
    ``patience`` evaluations without improvement (a ``lax.while_loop`` over
    evaluation blocks, a ``lax.fori_loop`` of steps inside each). Masks
    instead of slices keep every shape static, so folds share one compiled
    loop and the whole fit can be vmapped.

    Args:
      rng: PRNG key.
      x: ``[n, d]`` encoder inputs.
      residual: ``[n]`` residuals.
      fit_mask: ``[n]`` bools, rows to train on.
      val_mask: ``[n]`` bools, rows for early stopping.
      config: an :class:`EncoderConfig` (static).
      module: static flax module to train (default: the config's :class:`Encoder`).
      params: optional starting parameters of ``module``.
      val_size: static; at least the number of ``val_mask`` rows: each
        evaluation then smooths those rows alone (gathered), not all ``n``.

    Returns:
      ``(best_state, history)``: ``history["val_loss"]`` is ``[E + 1]``
      (evaluation 0 is the initial state; NaN after stopping),
      ``history["best_val_loss"]``, ``history["constant_loss"]`` (the
      validation error of predicting the fitting mean everywhere) and
      ``history["steps"]``, the number of steps taken.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> x = jax.random.normal(jax.random.key(0), (64, 3))
      >>> r = jnp.sign(x[:, 0]) * 0.3
      >>> fit = jnp.arange(64) < 48
      >>> cfg = EncoderConfig(out_dim=2, batch_size=16, max_steps=20, eval_every=10)
      >>> state, hist = jax.jit(fit_encoder)(
      ...     jax.random.key(1), x, r, fit, ~fit, cfg)
      >>> hist["val_loss"].shape
      (3,)
    """
    x = as_float(x)
    residual = as_float(residual)
    fit_mask = jnp.asarray(fit_mask, bool)
    val_mask = jnp.asarray(val_mask, bool)
    n = x.shape[0]
    batch = min(config.batch_size, n)
    evals = max(1, config.max_steps // config.eval_every)
    init_rng, order_rng = jax.random.split(rng)
    state = init_train_state(init_rng, x, config, fit_mask, module, params)
    # fit rows first, in a random order; batches walk through them cyclically
    order = jnp.argsort(jnp.where(fit_mask, jax.random.uniform(order_rng, (n,)), 2.0))
    n_fit = jnp.maximum(jnp.sum(fit_mask), 1)
    in_batch = jnp.arange(batch) < n_fit  # no row twice in one batch
    evaluate = functools.partial(
        heldout_loss,
        x=x,
        residual=residual,
        fit_mask=fit_mask,
        val_mask=val_mask,
        kernel=config.kernel,
        val_size=val_size,
    )

    def step(i, state):
        idx = order[(i * batch + jnp.arange(batch)) % n_fit]
        state, _ = train_step(state, x[idx], residual[idx], in_batch, kernel=config.kernel)
        return state

    def block(carry):
        k, state, best, best_val, bad, history = carry
        start = k * config.eval_every
        state = jax.lax.fori_loop(start, start + config.eval_every, step, state)
        val = evaluate(state.params, state.apply_fn)
        better = val < best_val
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old), state.params, best)
        return (
            k + 1,
            state,
            best,
            jnp.where(better, val, best_val),
            jnp.where(better, 0, bad + 1),
            history.at[k + 1].set(val),
        )

    def running(carry):
        k, _, _, _, bad, _ = carry
        return (k < evals) & (bad < config.patience)

    first = evaluate(state.params, state.apply_fn)
    history = jnp.full(evals + 1, jnp.nan).at[0].set(first)
    carry = (0, state, state.params, first, 0, history)
    k, state, best, best_val, _, history = jax.lax.while_loop(running, block, carry)
    fit_mean = jnp.sum(fit_mask * residual) / n_fit
    constant = jnp.sum(val_mask * (residual - fit_mean) ** 2) / jnp.maximum(jnp.sum(val_mask), 1)
    info = {
        "val_loss": history,
        "best_val_loss": best_val,
        "constant_loss": constant,
        "steps": k * config.eval_every,
    }
    return state.replace(params=best), info
