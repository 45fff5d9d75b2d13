"""Shared pieces of the small pure-JAX fits (global maps, correction strength).

Every fit pads its ``[n]`` inputs to a multiple of :data:`FIT_PAD` rows with
zero weight (so data sets of slightly different sizes share compiled code),
minimises a weighted binary cross-entropy over a few parameters, and does so
with a fixed number of damped Newton steps (so ``vmap`` over many fits costs
no more than one).
"""

import jax
import jax.numpy as jnp
import optax

from miscal_jax._types import Array

__all__ = ["FIT_PAD", "bce", "gather_rows", "masked_mean", "minimise", "pad_fit_inputs"]

#: Inputs of every fit are padded to a multiple of this (with zero weight), so
#: data sets of slightly different sizes share compiled code.
FIT_PAD = 256


def masked_mean(values: Array, mask: Array) -> Array:
    """Mean over the last axis of ``[..., n]`` values where the ``[n]`` mask holds (0 if none)."""
    return jnp.sum(values * mask, axis=-1) / jnp.maximum(jnp.sum(mask), 1)


def gather_rows(mask: Array, size: int | None) -> tuple[Array, Array]:
    """``([size] row indices, [size] bools)``: the rows where ``[n]`` ``mask`` holds, padded.

    ``size`` (static) must be at least the number of such rows; padding
    repeats the last row with ``False``. ``None``: every row, all ``True``
    where the mask holds (nothing gathered).
    """
    n = mask.shape[0]
    if size is None:
        return jnp.arange(n), mask
    rows = jnp.nonzero(mask, size=size, fill_value=n)[0]
    return jnp.minimum(rows, n - 1), rows < n


def bce(logits: Array, correct: Array, weight: Array | None = None) -> Array:
    """Mean (or weighted mean) binary cross-entropy; 0 when every weight is 0."""
    losses = optax.sigmoid_binary_cross_entropy(logits, correct)
    if weight is None:
        return jnp.mean(losses)
    total = jnp.sum(weight)
    return jnp.sum(weight * losses) / jnp.where(total > 0, total, 1.0)


def pad_fit_inputs(names: tuple[str, ...], arrays: tuple, weight) -> tuple[Array, ...]:
    """Checks ``[n]`` inputs, casts them to float and pads them to a multiple of ``FIT_PAD``.

    Args:
      names: the argument names, for error messages.
      arrays: ``[n]`` array-likes (concrete or traced).
      weight: ``[n]`` non-negative weights or ``None`` (all ones).

    Returns:
      The padded ``[m]`` arrays (padding value 0.5) followed by the ``[m]``
      weight, zero on padding and wherever the given weight is ``<= 0``.
    """
    dtype = jnp.result_type(float)
    out = []
    for name, a in zip(names, arrays, strict=True):
        a = jnp.asarray(a)
        if a.ndim != 1:
            raise ValueError(f"{name}: expected a 1-D array [n], got shape {a.shape}.")
        out.append(a.astype(dtype))
    n = out[0].shape[0]
    if n == 0:
        raise ValueError(f"{names[0]}: expected at least one item, got an empty array.")
    for name, a in zip(names[1:], out[1:], strict=True):
        if a.shape[0] != n:
            raise ValueError(f"{name}: expected shape ({n},) like {names[0]}, got {a.shape}.")
    if weight is None:
        weight = jnp.ones(n, dtype)
    else:
        weight = jnp.asarray(weight)
        if weight.shape != (n,):
            raise ValueError(
                f"weight: expected shape ({n},) like {names[0]} (0/1 mask or non-negative "
                f"weights), got {weight.shape}."
            )
        weight = weight.astype(dtype)
        weight = jnp.where(weight > 0, weight, 0.0)
    pad = -(-n // FIT_PAD) * FIT_PAD - n
    out = [jnp.pad(a, (0, pad), constant_values=0.5) for a in out]
    return (*out, jnp.pad(weight, (0, pad)))


def minimise(loss, init: Array, steps: int = 30) -> Array:
    """Minimises a smooth loss of a small ``[p]`` parameter vector (damped Newton).

    Levenberg-Marquardt steps ``(H + lam * s * I)^-1 g`` with the exact
    Hessian (``p`` is 1 or 2 here, so it costs about as much as the
    gradient), a step kept only if it lowers the loss (up to float rounding),
    ``lam`` shrunk after a kept step and grown after a rejected one. A fixed
    number of steps and no line search: no ``while_loop`` whose batched form (under ``vmap`` over
    many models and folds) would run every element to the slowest's count.
    """
    grad_fn, hess_fn = jax.grad(loss), jax.hessian(loss)
    eye = jnp.eye(init.shape[0], dtype=init.dtype)

    def step(carry, _):
        v, value, lam = carry
        g, h = grad_fn(v), hess_fn(v)
        scale = jnp.maximum(jnp.max(jnp.abs(jnp.diag(h))), 1e-12)
        delta = jnp.linalg.solve(0.5 * (h + h.T) + lam * scale * eye, g)
        finite = jnp.all(jnp.isfinite(delta))
        trial = v - jnp.where(finite, delta, 0.0)
        new = loss(trial)
        # near the optimum float32 cannot see the decrease: accept ties within rounding
        tie = 4 * jnp.finfo(value.dtype).eps * jnp.abs(value)
        keep = finite & jnp.isfinite(new) & (new <= value + tie)
        lam = jnp.clip(jnp.where(keep, lam * 0.3, lam * 10.0), 1e-9, 1e12)
        return (jnp.where(keep, trial, v), jnp.where(keep, new, value), lam), None

    carry = (init, loss(init), jnp.asarray(1e-3, init.dtype))
    (params, _, _), _ = jax.lax.scan(step, carry, None, length=steps)
    return params
