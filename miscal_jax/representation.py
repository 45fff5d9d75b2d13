"""Calibration-aware representation: a flax encoder trained with the smoother.

The encoder ``g_theta: x -> z`` is trained so that the leave-one-out
Nadaraya-Watson prediction of the residuals inside each mini-batch is as good
as possible (metric learning for kernel regression). The log-bandwidth is a
parameter too. Residuals are single coin flips, so the main danger is
overfitting: weight decay, early stopping on a held-out split, and the
comparison against the raw and PCA geometries in :mod:`miscal_jax.geometry`
guard against it.

References:
  Weinberger & Tesauro (2007), "Metric learning for kernel regression".
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.typing import ArrayLike
from tqdm.auto import tqdm

from miscal_jax._types import Array, PRNGKey
from miscal_jax.smoother import bandwidth_grid, loo_field, nw_field

__all__ = [
    "Encoder",
    "EncoderConfig",
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


class EncoderConfig(NamedTuple):
    """Static training configuration (hashable, so it can be a jit static arg)."""

    hidden: tuple[int, ...] = ()
    out_dim: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 1e-2
    batch_size: int = 256
    max_steps: int = 600
    eval_every: int = 25
    patience: int = 6
    kernel: str = "gaussian"


class TrainState(train_state.TrainState):
    """flax ``TrainState`` whose ``params`` are ``{"encoder": ..., "log_bandwidth": []}``."""


def batch_loo_loss(params, apply_fn, x: Array, residual: Array, *, kernel: str) -> Array:
    """Mean squared leave-one-out NW error of ``[b]`` residuals within a batch.

    Args:
      params: ``{"encoder": ..., "log_bandwidth": scalar}``.
      apply_fn: the encoder's ``apply``.
      x: ``[b, d]`` encoder inputs.
      residual: ``[b]`` residuals.
      kernel: static kernel name.

    Returns:
      Scalar loss.
    """
    z = apply_fn({"params": params["encoder"]}, x)
    pred = loo_field(z, residual, params["log_bandwidth"], kernel=kernel).value
    return jnp.mean((residual - pred) ** 2)


def init_train_state(rng: PRNGKey, x: ArrayLike, config: EncoderConfig) -> TrainState:
    """Initialises encoder parameters, bandwidth and optimiser.

    The initial bandwidth is the median distance between encoded training
    points, so training starts near the constant predictor and narrows from there.

    Args:
      rng: PRNG key.
      x: ``[n, d]`` encoder inputs (used for shapes and the bandwidth scale).
      config: an :class:`EncoderConfig`.

    Returns:
      A :class:`TrainState`.
    """
    model = Encoder(hidden=tuple(config.hidden), out_dim=config.out_dim)
    x = jnp.asarray(x, jnp.float32)
    enc_params = model.init(rng, x[:1])["params"]
    z0 = model.apply({"params": enc_params}, x[:512])
    log_bw = jnp.asarray(bandwidth_grid(z0, num=24)[-7], jnp.float32)
    tx = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
    params = {"encoder": enc_params, "log_bandwidth": log_bw}
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def train_step(
    state: TrainState, x: Array, residual: Array, *, kernel: str = "gaussian"
) -> tuple[TrainState, dict]:
    """One optimiser step on a ``[b, d]`` batch; returns ``(state, {"loss": ...})``."""
    loss, grads = jax.value_and_grad(batch_loo_loss)(
        state.params, state.apply_fn, x, residual, kernel=kernel
    )
    return state.apply_gradients(grads=grads), {"loss": loss}


_jit_train_step = jax.jit(train_step, static_argnames=("kernel",))


@functools.partial(jax.jit, static_argnames=("apply_fn", "kernel"))
def _heldout_loss(params, apply_fn, x_fit, r_fit, x_val, r_val, kernel: str) -> Array:
    z_fit = apply_fn({"params": params["encoder"]}, x_fit)
    z_val = apply_fn({"params": params["encoder"]}, x_val)
    est = nw_field(z_val, z_fit, r_fit, params["log_bandwidth"], kernel=kernel)
    return jnp.mean((r_val - est.value) ** 2)


def fit_encoder(
    rng: PRNGKey,
    x_fit: ArrayLike,
    residual_fit: ArrayLike,
    x_val: ArrayLike,
    residual_val: ArrayLike,
    config: EncoderConfig = EncoderConfig(),
    *,
    progress: bool = True,
) -> tuple[TrainState, dict]:
    """Trains the encoder with early stopping on a validation split.

    The validation loss predicts each validation residual from the fitting
    points (never from itself). Training stops after ``patience`` evaluations
    without improvement and returns the best parameters seen.

    Args:
      rng: PRNG key.
      x_fit: ``[n, d]`` fitting inputs; ``residual_fit``: ``[n]``.
      x_val: ``[m, d]`` validation inputs; ``residual_val``: ``[m]``.
      config: an :class:`EncoderConfig`.
      progress: show a progress bar.

    Returns:
      ``(best_state, history)`` where ``history`` has ``"step"``,
      ``"train_loss"``, ``"val_loss"`` lists and ``"constant_loss"``, the
      validation error of predicting the fitting mean everywhere.
    """
    x_fit = jnp.asarray(x_fit, jnp.float32)
    r_fit = jnp.asarray(residual_fit, jnp.float32)
    x_val = jnp.asarray(x_val, jnp.float32)
    r_val = jnp.asarray(residual_val, jnp.float32)
    x_np, r_np = np.asarray(x_fit), np.asarray(r_fit)  # cheap host-side batch gathers
    n = x_fit.shape[0]
    batch = min(config.batch_size, n)
    init_rng, rng = jax.random.split(rng)
    state = init_train_state(init_rng, x_fit, config)
    evaluate = lambda s: _heldout_loss(
        s.params, s.apply_fn, x_fit, r_fit, x_val, r_val, kernel=config.kernel
    )
    best_state, best_val = state, float(evaluate(state))
    history = {
        "step": [0],
        "train_loss": [float("nan")],
        "val_loss": [best_val],
        "constant_loss": float(jnp.mean((r_val - jnp.mean(r_fit)) ** 2)),
    }
    bad_evals, running = 0, []
    order = np.zeros(0, np.int64)
    bar = tqdm(range(1, config.max_steps + 1), desc="encoder", disable=not progress, leave=False)
    for step in bar:
        if order.size < batch:  # a fresh shuffle each epoch
            rng, perm_rng = jax.random.split(rng)
            order = np.asarray(jax.random.permutation(perm_rng, n))
        idx, order = order[:batch], order[batch:]
        state, metrics = _jit_train_step(state, x_np[idx], r_np[idx], kernel=config.kernel)
        running.append(metrics["loss"])
        if step % config.eval_every:
            continue
        val = float(evaluate(state))
        history["step"].append(step)
        history["train_loss"].append(float(jnp.mean(jnp.stack(running))))
        history["val_loss"].append(val)
        running = []
        bar.set_postfix(val=f"{val:.4f}", best=f"{best_val:.4f}")
        if val < best_val:
            best_state, best_val, bad_evals = state, val, 0
        else:
            bad_evals += 1
            if bad_evals >= config.patience:
                break
    bar.close()
    history["best_val_loss"] = best_val
    return best_state, history
