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
    "distance_cotangent",
    "pair_mask",
    "Running",
    "finish",
    "fold",
    "log_weights",
    "ref_grads",
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


def pair_mask(query_code: Array, ref_code: Array, *, loo: bool) -> tuple[Array, Array | None]:
    """``(ref_ok, loo_ok)`` from query and reference codes shaped to broadcast.

    Codes come as a column and a row (``[bq, 1]`` and ``[1, bn]``, or the other
    way round for the transposed layout). ``ref_ok`` keeps the references'
    own shape (the reference is valid); ``loo_ok`` is the pairs' mask (the
    reference is not the query's left-out one), ``None`` without ``loo``.
    """
    return ref_code >= 0, (query_code != ref_code) if loo else None


def log_weights(cross, query_sq, ref_sq, mask, inv_h2, *, kernel: str) -> Array:
    """Log-weights of one bandwidth, in the orientation of ``cross``.

    Args:
      cross: ``[bq, bn]`` products ``q . z`` (or their ``[bn, bq]`` transpose).
      query_sq: squared norms ``|q|^2`` as a column ``[bq, 1]`` (a row when transposed).
      ref_sq: squared norms ``|z|^2`` as a row ``[1, bn]`` (a column when transposed).
      mask: :func:`pair_mask`'s ``(ref_ok, loo_ok)``; masked pairs get ``-inf``.
      inv_h2: scalar ``1 / h^2``.
      kernel: static kernel name (:mod:`miscal_jax.kernels.shapes`).

    The Gaussian is written as ``(q.z - |q|^2/2 - |z|^2/2) / h^2`` capped at 0
    (its value at zero distance), with the masked references folded into the
    ``|z|^2`` term as ``-inf`` (one select per reference, not per pair); other
    kernels go through the squared scaled distance
    ``u = max(|q|^2 + |z|^2 - 2 q.z, 0) / h^2``.
    """
    ref_ok, loo_ok = mask
    if kernel == "gaussian":
        # h^-2 inside the select: no -inf * h^-2 whose derivative would be NaN
        ref_bias = jnp.where(ref_ok, -0.5 * inv_h2 * ref_sq, -jnp.inf)
        log_w = jnp.minimum(inv_h2 * cross + (-0.5 * inv_h2 * query_sq) + ref_bias, 0.0)
    else:
        d2 = jnp.maximum(query_sq + ref_sq - 2.0 * cross, 0.0)
        log_w = jnp.where(ref_ok, get_log_kernel(kernel)(d2 * inv_h2), -jnp.inf)
    return log_w if loo_ok is None else jnp.where(loo_ok, log_w, -jnp.inf)


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


def fold(
    run: Running, log_w: Array, values: Array, *, keepdims: bool = False, materialise: bool = False
) -> Running:
    """Folds ``[..., bq, bn]`` log-weights with ``[bn, C]`` values into ``run``.

    With ``keepdims`` the per-query state is a ``[bq, 1]`` column (``log_scale``
    and ``sum_w2``), the layout a TPU kernel keeps in VMEM. With
    ``materialise`` (XLA programs, not Pallas kernels) the block's weights sit
    behind an optimisation barrier, so ``sum w^2`` reads them: otherwise XLA
    rewrites ``w * w`` as ``exp(2 log w)``, a second exponential and a third
    pass over the block's log-weights (on CPU the forward is about 30% faster).

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
    if materialise:
        w = jax.lax.optimization_barrier(w)
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
      ``(cross [bq, bn], query_sq [bq, 1], ref_sq [1, bn], mask)``.
    """
    query_sq = jnp.sum(query * query, axis=1)[:, None]
    ref_sq = jnp.sum(ref * ref, axis=1)[None, :]
    cross = jnp.matmul(query, ref.T, precision=DISTANCE_PRECISION)
    ok = pair_mask(query_code[:, None], ref_code[None, :], loo=loo)
    lw = log_weights(
        cross[None], query_sq[None], ref_sq[None], ok, inv_h2[:, None, None], kernel=kernel
    )
    return lw, (cross, query_sq, ref_sq, ok)


def distance_cotangent(w, gv, g_w2, cross, query_sq, ref_sq, mask, inv_h2, *, kernel: str):
    """``a = 2 f'(u) s / h^2``, the cotangent of the squared distances of one bandwidth.

    ``s = w (gv + 2 gW2 w)`` is the cotangent of the log-weights (``gv`` the
    values' cotangents dotted with the values, ``g_w2`` that of ``sum w^2``,
    broadcastable to ``w``); for the Gaussian ``a = -s / h^2``. Pure
    elementwise, so the Triton backward runs the same lines.
    """
    s = w * (gv + 2.0 * g_w2 * w)
    if kernel == "gaussian":
        return -s * inv_h2
    d2 = jnp.maximum(query_sq + ref_sq - 2.0 * cross, 0.0)
    u = d2 * inv_h2
    _, slope = jax.jvp(get_log_kernel(kernel), (u,), (jnp.ones_like(u),))
    ref_ok, loo_ok = mask
    ok = ref_ok if loo_ok is None else ref_ok & loo_ok
    return 2.0 * s * jnp.where(ok, slope, 0.0) * inv_h2


def _pair_cotangents(
    query, query_code, ref, ref_code, values, inv_h2, log_scale, g_values, g_w2, *, kernel, loo
):
    """``(w, a, query_sq, ref_sq)``: ``[g, bq, bn]`` weights and ``a = 2 f'(u) s / h^2``."""
    lw, (cross, query_sq, ref_sq, ok) = block_log_weights(
        query, query_code, ref, ref_code, inv_h2, kernel=kernel, loo=loo
    )
    safe = jnp.where(log_scale > -jnp.inf, log_scale, 0.0)
    w = jnp.exp(lw - safe[..., None])
    # gV_i . V_j: the ones column (sum w's) gives gV_i0 alone, the others one small
    # matmul (on CPU, broadcasts of two or more value columns fuse about 2x slower)
    gv = g_values[..., 0, None] + jnp.einsum("gic,jc->gij", g_values[..., 1:], values[:, 1:])
    a = distance_cotangent(
        w, gv, g_w2[..., None], cross[None], query_sq[None], ref_sq[None], ok,
        inv_h2[:, None, None], kernel=kernel,
    )  # fmt: skip
    return w, a, query_sq, ref_sq


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
    ``s_ij = w_ij (sum_c gV_ic V_jc + 2 gW2_i w_ij)``. With ``log w = f(u)``,
    ``u = d2 / h^2`` and ``a_ij = 2 f'(u_ij) s_ij / h^2`` (for the Gaussian
    ``a = -s / h^2``), ``dq_i = sum_j a_ij (q_i - z_j)`` and
    ``dz_j = -sum_i a_ij (q_i - z_j)``: row and column sums of ``a`` and two
    matmuls ``a @ z``, ``a^T @ q``. The bandwidth's gradient
    ``d(1/h^2) = sum_ij a_ij d2_ij h^2 / 2`` comes from the same pieces, as
    ``d2_ij = |q_i|^2 + |z_j|^2 - 2 q_i . z_j``: no extra pass over the pairs.

    Every sum is a matmul of the ``[bq, bn]`` block: over references
    ``a @ [z, |z|^2, 1]``, over queries ``[q, 1]^T @ a`` and ``gV^T @ w``, so
    the reference-side sums come back transposed (``[k, bn]``). On CPU a
    product with a small left factor is fast, while contracting the block's
    major axis into a ``[bn, k]`` result is 3 to 4 times slower (slower even
    than recomputing the block in the transposed layout, which an earlier
    version did).

    Args:
      query: ``[bq, d]``; query_code: ``[bq]``; ref: ``[bn, d]``; ref_code: ``[bn]``.
      values: ``[bn, C]`` with the ones column first.
      inv_h2: ``[g]``; log_scale: ``[g, bq]`` from the forward pass.
      g_values: ``[g, bq, C]`` cotangents of ``(sum_w, sum_wv)``.
      g_w2: ``[g, bq]`` cotangent of ``sum_w2``.
      kernel, loo: static, as in :func:`log_weights`.

    Returns:
      ``(d query [bq, d], ref_sums [d + 1, bn], d values^T [C, bn], d inv_h2 [g])``
      with ``ref_sums = [q, 1]^T @ sum_g a``, from which
      ``d ref = z * ref_sums[d] - ref_sums[:d]^T`` (:func:`ref_grads`).
    """
    args = (query, query_code, ref, ref_code, values, inv_h2, log_scale, g_values, g_w2)
    w, a, query_sq, ref_sq = _pair_cotangents(*args, kernel=kernel, loo=loo)
    (g, bq, bn), d = a.shape, query.shape[1]
    # 2-D matmuls (bandwidths folded into rows): XLA's CPU batched dot is far slower
    ref_side = jnp.concatenate([ref, ref_sq.T, jnp.ones((bn, 1), a.dtype)], axis=1)
    sums = jnp.matmul(a.reshape(g * bq, bn), ref_side).reshape(g, bq, d + 2)
    a_ref, a_ref_sq, rows = sums[..., :d], sums[..., d], sums[..., d + 1]
    query_side = jnp.concatenate([query, jnp.ones((bq, 1), a.dtype)], axis=1).T
    ref_sums = jnp.matmul(query_side, jnp.sum(a, axis=0))
    d_values_t = jnp.matmul(jnp.moveaxis(g_values, 2, 0).reshape(-1, g * bq), w.reshape(g * bq, bn))
    d_query = query * jnp.sum(rows, axis=0)[:, None] - jnp.sum(a_ref, axis=0)
    cross_term = jnp.einsum("gid,id->g", a_ref, query)
    sum_a_d2 = rows @ query_sq[:, 0] + jnp.sum(a_ref_sq, axis=1) - 2.0 * cross_term
    return d_query, ref_sums, d_values_t, 0.5 * sum_a_d2 / inv_h2


def ref_grads(ref, ref_sums, d_values_t):
    """``(d ref [n, d], d values [n, C])`` from :func:`block_grads`' transposed sums.

    Args:
      ref: ``[n, d]``; ref_sums: ``[d + 1, n]``; d_values_t: ``[C, n]``, summed over
        the query blocks.
    """
    d = ref.shape[1]
    return ref * ref_sums[d][:, None] - ref_sums[:d].T, d_values_t.T
