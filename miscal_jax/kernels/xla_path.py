"""The ``"xla"`` implementation: query blocks mapped, reference blocks scanned.

The forward pass maps ``lax.map`` over query blocks and ``lax.scan`` over
reference blocks, folding each ``[g, bq, bn]`` block into running moments
(:func:`~miscal_jax.kernels.blockwise.fold`). The backward pass recomputes
each block once from the forward's ``log_scale``
(:func:`~miscal_jax.kernels.blockwise.block_grads`) and accumulates the query
gradient in the inner scan and the reference and value gradients, kept
transposed, in the outer one: one recompute of the weights, in one layout, as
flash attention's backward does, instead of differentiating the scan (which
recomputes the forward two or three times).

Block sizes come from the caller; :data:`BLOCK_ELEMENTS` bounds the
``[g, bq, bn]`` block per backend (a CPU's cache, an accelerator's memory).
"""

import jax
import jax.numpy as jnp

from miscal_jax._types import Array
from miscal_jax.kernels.blockwise import (
    KernelMoments,
    block_grads,
    block_log_weights,
    finish,
    fold,
    ref_grads,
    start,
)

__all__ = ["BLOCK_ELEMENTS", "backward", "dense", "forward"]

#: Largest ``[g, bq, bn]`` block, in elements, by backend: the CPU's is sized to
#: its caches, an accelerator's to a small share of its memory.
BLOCK_ELEMENTS = {"cpu": 1 << 21, "gpu": 1 << 25, "tpu": 1 << 23}


def dense(query, query_code, ref, ref_code, values, inv_h2, *, kernel, loo) -> KernelMoments:
    """The obvious ``[g, q, n]`` computation (checks and tiny inputs)."""
    log_w, _ = block_log_weights(query, query_code, ref, ref_code, inv_h2, kernel=kernel, loo=loo)
    run = start((inv_h2.shape[0], query.shape[0]), values.shape[1], query.dtype)
    return finish(fold(run, log_w, values, materialise=True))


def _ref_blocks(ref, ref_code, values, bn):
    (n, d), c = ref.shape, values.shape[1]
    return ref.reshape(n // bn, bn, d), ref_code.reshape(-1, bn), values.reshape(-1, bn, c)


def forward(query, query_code, ref, ref_code, values, inv_h2, *, kernel, loo, bq, bn):
    """Moments of ``[Q, d]`` queries against ``[N, d]`` references (``bq | Q``, ``bn | N``)."""
    (big_q, d), c, g = query.shape, values.shape[1], inv_h2.shape[0]
    blocks = _ref_blocks(ref, ref_code, values, bn)

    def query_block(args):
        q, qc = args

        def step(acc, block):
            z, zc, v = block
            log_w, _ = block_log_weights(q, qc, z, zc, inv_h2, kernel=kernel, loo=loo)
            return fold(acc, log_w, v, materialise=True), None

        acc, _ = jax.lax.scan(step, start((g, bq), c, query.dtype), blocks)
        return finish(acc)

    out = jax.lax.map(query_block, (query.reshape(-1, bq, d), query_code.reshape(-1, bq)))
    # [Q/bq, g, bq, ...] -> [g, Q, ...]
    return KernelMoments(*(jnp.moveaxis(a, 0, 1).reshape(g, big_q, *a.shape[3:]) for a in out))


def backward(
    query, query_code, ref, ref_code, values, inv_h2, log_scale, cotangent, *, kernel, loo, bq, bn
) -> tuple[Array, Array, Array, Array]:
    """Gradients of :func:`forward` in one recompute.

    Args:
      query, query_code, ref, ref_code, values, inv_h2: the forward's inputs.
      log_scale: ``[g, Q]`` the forward's output scale (held fixed).
      cotangent: :class:`KernelMoments` cotangent (its ``log_scale`` is ignored).
      kernel, loo, bq, bn: static, as in :func:`forward`.

    Returns:
      ``(d query [Q, d], d ref [N, d], d values [N, C], d inv_h2 [g])``.
    """
    (big_q, d), (big_n, c), g = query.shape, values.shape, inv_h2.shape[0]
    g_values = jnp.concatenate([cotangent.sum_w[..., None], cotangent.sum_wv], axis=-1)
    per_query = lambda a: jnp.moveaxis(a.reshape(g, big_q // bq, bq, *a.shape[2:]), 1, 0)
    query_blocks = (
        query.reshape(-1, bq, d),
        query_code.reshape(-1, bq),
        per_query(log_scale),
        per_query(g_values),
        per_query(cotangent.sum_w2),
    )
    blocks = _ref_blocks(ref, ref_code, values, bn)

    def outer(carry, qb):
        q, qc, scale, gv, gw2 = qb

        def inner(acc, rb):
            z, zc, v = rb
            dq, ref_sums, dv_t, dh = block_grads(
                q, qc, z, zc, v, inv_h2, scale, gv, gw2, kernel=kernel, loo=loo
            )
            return (acc[0] + dq, acc[1] + dh), (ref_sums, dv_t)

        (dq, dh), (ref_sums, dv_t) = jax.lax.scan(
            inner, (jnp.zeros_like(q), jnp.zeros_like(inv_h2)), blocks
        )
        return jax.tree.map(jnp.add, carry, (ref_sums, dv_t, dh)), dq

    nb = big_n // bn
    init = (
        jnp.zeros((nb, d + 1, bn), ref.dtype),
        jnp.zeros((nb, c, bn), ref.dtype),
        jnp.zeros_like(inv_h2),
    )
    (ref_sums, d_values_t, d_inv_h2), d_query = jax.lax.scan(outer, init, query_blocks)
    # [N / bn, k, bn] -> [k, N]: the reference-side sums were kept transposed
    flat = lambda a: jnp.moveaxis(a, 0, 1).reshape(a.shape[1], big_n)
    d_ref, d_values = ref_grads(ref, flat(ref_sums), flat(d_values_t))
    return d_query.reshape(big_q, d), d_ref, d_values, d_inv_h2
