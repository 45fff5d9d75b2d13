"""The per-block mathematics every implementation of the kernel sums shares.

A block is ``bq`` queries against ``bn`` references. Every path (the XLA scan,
the Pallas kernels, the dense check) computes a block's log-weights with
:func:`log_weights`, folds them into running moments with :func:`fold`, and
differentiates a block with :func:`block_grads`, so the paths differ only in how
they walk the blocks, never in what a block computes.

Conventions (all arrays already padded and centred by the caller):

- ``query_code`` ``[bq]`` ints: the reference index a query leaves out, ``-1``
  for none (and for padding);
- ``ref_code`` ``[bn]`` ints: the reference's own index, ``-2`` where the
  reference is masked or padding (so it is never in reach and never equal to a
  query's ``-1``);
- ``values`` ``[bn, C]`` carry a leading column of ones, so ``sum w`` comes out
  of the same matmul as ``sum w V``.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from miscal_jax._types import Array
from miscal_jax.kernels.shapes import get_log_kernel

__all__ = [
    "DISTANCE_PRECISION",
    "KernelMoments",
    "block_grads",
    "block_log_weights",
    "pair_mask",
    "Running",
    "finish",
    "fold",
    "log_weights",
    "rescaled_sum",
    "start",
]

#: Precision of the distance matmul ``q . z``: full float32 products (no
#: TF32 on GPU). The moments matmul ``W @ V`` runs at the default precision
#: with float32 accumulation: its inputs are weights in ``[0, 1]``, where
#: TF32's 10-bit mantissa costs at most about 5e-4 relative per term.
DISTANCE_PRECISION = jax.lax.Precision.HIGHEST


class KernelMoments(NamedTuple):
    """Kernel sums relative to a per-query scale.

    With ``s = exp(log_scale)``, the absolute sums are ``s * sum_w``,
    ``s[..., None] * sum_wv`` and ``s**2 * sum_w2``. ``log_scale`` carries no
    gradient (it cancels out of every quantity built from the moments).

    Attributes:
      log_scale: ``[..., q]`` largest log-weight of each query (``-inf`` when
        every weight is zero).
      sum_w: ``[..., q]`` relative ``sum_j w_ij``.
      sum_wv: ``[..., q, c]`` relative ``sum_j w_ij V_jc``.
      sum_w2: ``[..., q]`` relative ``sum_j w_ij^2``.
    """

    log_scale: Array
    sum_w: Array
    sum_wv: Array
    sum_w2: Array


def pair_mask(query_code: Array, ref_code: Array, *, loo: bool) -> Array:
    """``[bq, bn]`` bools from a ``[bq, 1]`` column and a ``[1, bn]`` row of codes.

    True where the reference is valid and, with ``loo``, not the query's
    left-out one.
    """
    ok = jnp.broadcast_to(ref_code >= 0, (query_code.shape[0], ref_code.shape[1]))
    if loo:
        ok = ok & (query_code != ref_code)
    return ok


def log_weights(cross, query_sq, ref_sq, pair_ok, inv_h2, *, kernel: str) -> Array:
    """``[bq, bn]`` log-weights of one bandwidth.

    Args:
      cross: ``[bq, bn]`` products ``q . z``.
      query_sq: ``[bq, 1]`` squared norms ``|q|^2`` (a column).
      ref_sq: ``[1, bn]`` squared norms ``|z|^2`` (a row).
      pair_ok: ``[bq, bn]`` bools (:func:`pair_mask`); other pairs get ``-inf``.
      inv_h2: scalar ``1 / h^2``.
      kernel: static kernel name (:mod:`miscal_jax.kernels.shapes`).

    The Gaussian is written as ``(q.z - |q|^2/2 - |z|^2/2) / h^2`` capped at 0
    (its value at zero distance); other kernels go through the squared scaled
    distance ``u = max(|q|^2 + |z|^2 - 2 q.z, 0) / h^2``.
    """
    if kernel == "gaussian":
        log_w = jnp.minimum(inv_h2 * (cross - 0.5 * query_sq - 0.5 * ref_sq), 0.0)
    else:
        d2 = jnp.maximum(query_sq + ref_sq - 2.0 * cross, 0.0)
        log_w = get_log_kernel(kernel)(d2 * inv_h2)
    return jnp.where(pair_ok, log_w, -jnp.inf)


class Running(NamedTuple):
    """Running moments while references stream past: ``sums[..., 0]`` is ``sum w``.

    Attributes:
      log_scale: ``[..., bq]`` running maximum of the log-weights.
      sums: ``[..., bq, C]`` relative ``sum w [1, V]`` (the ones column first).
      sum_w2: ``[..., bq]`` relative ``sum w^2``.
    """

    log_scale: Array
    sums: Array
    sum_w2: Array


def start(shape: tuple[int, ...], c: int, dtype=jnp.float32) -> Running:
    """Running moments before any reference: scale ``-inf``, zero sums."""
    zeros = jnp.zeros(shape, dtype)
    return Running(jnp.full(shape, -jnp.inf, dtype), jnp.zeros((*shape, c), dtype), zeros)


def fold(run: Running, log_w: Array, values: Array, *, keepdims: bool = False) -> Running:
    """Folds ``[..., bq, bn]`` log-weights with ``[bn, C]`` values into ``run``.

    With ``keepdims`` the per-query state is a ``[bq, 1]`` column (``log_scale``
    and ``sum_w2``), the layout a TPU kernel keeps in VMEM.

    Online max rescaling: a query that has seen no weight keeps scale ``-inf``
    and zero sums (the ``> -inf`` test, not ``isfinite``: the same comparison
    lowers on every backend). No slicing and no concatenation, so the same code
    runs inside a Triton kernel.
    """
    column = (lambda a: a) if keepdims else (lambda a: a[..., None])
    top = jnp.max(log_w, axis=-1, keepdims=keepdims)
    new_scale = jax.lax.stop_gradient(jnp.maximum(run.log_scale, top))
    safe = jnp.where(new_scale > -jnp.inf, new_scale, 0.0)
    w = jnp.exp(log_w - column(safe))
    rescale = jnp.exp(run.log_scale - safe)  # 0 while nothing has been seen (-inf - 0)
    moments = jnp.matmul(w, values.astype(w.dtype), preferred_element_type=w.dtype)
    return Running(
        new_scale,
        column(rescale) * run.sums + moments,
        rescale * rescale * run.sum_w2 + jnp.sum(w * w, axis=-1, keepdims=keepdims),
    )


def finish(run: Running, c: int | None = None) -> KernelMoments:
    """:class:`KernelMoments` of running moments, keeping value columns ``1 .. c - 1``."""
    c = run.sums.shape[-1] if c is None else c
    return KernelMoments(run.log_scale, run.sums[..., 0], run.sums[..., 1:c], run.sum_w2)


def rescaled_sum(parts: KernelMoments, top: Array, expand, total) -> KernelMoments:
    """Sums partial moments after rescaling each to the common maximum ``top``."""
    safe = jnp.where(top > -jnp.inf, top, 0.0)
    rescale = jnp.exp(parts.log_scale - expand(safe))
    return KernelMoments(
        top,
        total(rescale * parts.sum_w),
        total(rescale[..., None] * parts.sum_wv),
        total(rescale**2 * parts.sum_w2),
    )


def block_log_weights(query, query_code, ref, ref_code, inv_h2, *, kernel: str, loo: bool):
    """``[g, bq, bn]`` log-weights of every bandwidth from one distance matmul.

    Args:
      query: ``[bq, d]``; query_code: ``[bq]``; ref: ``[bn, d]``; ref_code: ``[bn]``;
      inv_h2: ``[g]``; kernel, loo: static.

    Returns:
      The log-weights and the pieces they were built from:
      ``(cross [bq, bn], query_sq [bq, 1], ref_sq [1, bn], pair_ok [bq, bn])``.
    """
    cross = jnp.matmul(query, ref.T, precision=DISTANCE_PRECISION)
    query_sq = jnp.sum(query * query, axis=1, keepdims=True)
    ref_sq = jnp.sum(ref * ref, axis=1)[None, :]
    ok = pair_mask(query_code[:, None], ref_code[None, :], loo=loo)
    lw = jax.vmap(lambda s: log_weights(cross, query_sq, ref_sq, ok, s, kernel=kernel))(inv_h2)
    return lw, (cross, query_sq, ref_sq, ok)


def block_grads(
    query,
    query_code,
    ref,
    ref_code,
    values,
    inv_h2,
    log_scale,
    g_values,
    g_w2,
    *,
    kernel: str,
    loo: bool,
):
    """Gradients of one block's contribution to the moments (one recompute).

    With ``w_ij = exp(log w_ij - m_i)`` (``m = log_scale`` from the forward
    pass, held fixed), the cotangent of ``log w_ij`` is
    ``s_ij = w_ij (sum_c gV_ic V_jc + 2 gW2_i w_ij)``; with ``log w = f(u)``,
    ``u = d2 / h^2``, ``t = s f'(u)`` gives ``dq_i = 2/h^2 sum_j t_ij (q_i - z_j)``,
    ``dz_j = -2/h^2 sum_i t_ij (q_i - z_j)`` and ``d(1/h^2) = sum t_ij d2_ij``:
    three matmuls of the block's size, no ``[q, n]`` matrix.

    Args:
      query: ``[bq, d]``; query_code: ``[bq]``; ref: ``[bn, d]``; ref_code: ``[bn]``.
      values: ``[bn, C]`` with the ones column first.
      inv_h2: ``[g]``; log_scale: ``[g, bq]`` from the forward pass.
      g_values: ``[g, bq, C]`` cotangents of ``(sum_w, sum_wv)``.
      g_w2: ``[g, bq]`` cotangent of ``sum_w2``.
      kernel, loo: static, as in :func:`log_weights`.

    Returns:
      ``(d query [bq, d], d ref [bn, d], d values [bn, C], d inv_h2 [g])``.
    """
    lw, (cross, query_sq, ref_sq, ok) = block_log_weights(
        query, query_code, ref, ref_code, inv_h2, kernel=kernel, loo=loo
    )
    safe = jnp.where(log_scale > -jnp.inf, log_scale, 0.0)
    w = jnp.exp(lw - safe[..., None])  # [g, bq, bn]
    gv = jnp.matmul(g_values, values.T)
    s = w * (gv + 2.0 * g_w2[..., None] * w)
    d2 = jnp.maximum(query_sq + ref_sq - 2.0 * cross, 0.0)
    u = d2[None] * inv_h2[:, None, None]
    if kernel == "gaussian":
        t = -0.5 * s * (lw < 0.0)  # the cap at 0 has zero slope
    else:
        _, slope = jax.jvp(get_log_kernel(kernel), (u,), (jnp.ones_like(u),))
        t = s * jnp.where(ok, slope, 0.0)
    a = 2.0 * jnp.sum(t * inv_h2[:, None, None], axis=0)  # [bq, bn]
    d_query = query * jnp.sum(a, axis=1)[:, None] - jnp.matmul(a, ref)
    d_ref = ref * jnp.sum(a, axis=0)[:, None] - jnp.matmul(a.T, query)
    d_values = jnp.einsum("gij,gic->jc", w, g_values)
    d_inv_h2 = jnp.sum(t * d2[None], axis=(1, 2))
    return d_query, d_ref, d_values, d_inv_h2
