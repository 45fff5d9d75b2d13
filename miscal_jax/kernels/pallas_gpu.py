"""The Pallas kernels for GPUs, lowered through Triton: forward and fused backward.

JAX 0.10 lowers ``pl.pallas_call`` on GPUs to Mosaic GPU unless Triton
compiler parameters are given; this kernel passes
``pallas.triton.CompilerParams`` and so lowers to Triton (Mosaic GPU's
``pallas_call`` entry is deprecated and its kernels hold whole blocks in shared
memory, which the kernel sums do not fit).

One program per ``(bandwidth, query block)``: the grid is ``[g, Q / bq]``, so
every dot is 2-D, as Triton requires. A program loads its ``[bq, d]`` queries
in ``dk``-column chunks, walks the references in ``[bn, d]`` tiles with a
``fori_loop`` (references and values stay in global memory and are read tile
by tile), and keeps ``[bq]`` and ``[bq, C]`` running moments in registers.
Every array in the kernel has power-of-two dimensions: ``bq``, ``bn``, ``dk``
and ``C`` are powers of two, ``d`` is padded to a multiple of ``dk`` with zero
columns (which change no distance) and ``C`` with zero values.

The backward (:func:`backward`) is two kernels in the flash-attention-2
pattern, each recomputing the weights of its tiles once from the forward's
``log_scale``: one program per query tile accumulates the row sums of
``a = 2 f'(u) s / h^2`` and ``a @ z`` (the query gradient), one program per
reference tile accumulates the column sums, ``a^T @ q`` and ``w^T @ gV`` (the
reference and value gradients); the bandwidth's gradient is assembled from
these outside (:func:`~miscal_jax.kernels.blockwise.block_grads` explains the
algebra). No atomics, no ``[q, n]`` matrix.

The tiles (:data:`TILES`) keep a program's live set, ``[bq, bn]`` weights plus
``[bq, C]`` sums and a ``[bn, dk]`` reference tile, to a few tens of KiB: well
inside an SM's registers and shared memory on A100 and H100.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from miscal_jax.kernels.blockwise import (
    DISTANCE_PRECISION,
    KernelMoments,
    Running,
    distance_cotangent,
    finish,
    fold,
    log_weights,
    pair_mask,
    start,
)

__all__ = ["TILES", "backward", "forward"]

#: ``(bq, bn, largest dk)``: queries and references per tile, columns per chunk.
TILES = (64, 64, 64)


def _pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << (int(n) - 1).bit_length())


def _pad_columns(query, ref, values, dk_max: int):
    """Zero columns up to Triton's power-of-two shapes: ``d`` to a multiple of the
    chunk ``dk`` (no distance changes), ``C`` to a power of two (no moment changes).

    Returns ``(query, ref, values, dk)``.
    """
    d, c = query.shape[1], values.shape[1]
    dk = min(dk_max, _pow2(d))
    width = -(-d // dk) * dk
    pad = lambda a, k: jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, k - a.shape[-1])])
    return pad(query, width), pad(ref, width), pad(values, _pow2(c)), dk


def _kernel(inv_h2_ref, q_ref, qc_ref, z_ref, zc_ref, v_ref, *out_refs, bn, dk, kernel, loo):
    bq, d = q_ref.shape
    chunks = [pl.ds(k * dk, dk) for k in range(d // dk)]
    inv_h2, query_code = inv_h2_ref[0], qc_ref[...][:, None]
    query_sq = sum(jnp.sum(q_ref[:, cols] ** 2, axis=1) for cols in chunks)[:, None]

    def body(j, acc):
        rows = pl.ds(pl.multiple_of(j * bn, bn), bn)
        cross = jnp.zeros((bq, bn), jnp.float32)
        ref_sq = jnp.zeros((bn,), jnp.float32)
        for cols in chunks:
            z = z_ref[rows, cols]
            cross += jnp.dot(q_ref[:, cols], z.T, precision=DISTANCE_PRECISION)
            ref_sq += jnp.sum(z * z, axis=1)
        ok = pair_mask(query_code, zc_ref[rows][None, :], loo=loo)
        log_w = log_weights(cross, query_sq, ref_sq[None, :], ok, inv_h2, kernel=kernel)
        return fold(acc, log_w, v_ref[rows, :])

    acc = jax.lax.fori_loop(0, z_ref.shape[0] // bn, body, start((bq,), v_ref.shape[1]))
    for out, a in zip(out_refs, acc, strict=True):
        out[...] = a


def forward(
    query, query_code, ref, ref_code, values, inv_h2, *, kernel, loo, interpret, tiles=TILES
) -> KernelMoments:
    """Moments of ``[Q, d]`` queries against ``[N, d]`` references (float32).

    ``Q`` and ``N`` must be multiples of the tiles' ``bq`` and ``bn`` (the
    caller pads); columns are padded here. Returns ``[g, Q]`` and ``[g, Q, C - 1]``.
    """
    bq, bn, dk_max = tiles
    big_q, c, g = query.shape[0], values.shape[1], inv_h2.shape[0]
    query, ref, values, dk = _pad_columns(query, ref, values, dk_max)
    width, c2 = query.shape[1], values.shape[1]
    row = lambda shape: pl.BlockSpec((None, *shape), lambda h, i: (h, i, 0)[: len(shape) + 1])
    whole = lambda shape: pl.BlockSpec(shape, lambda h, i: (0,) * len(shape))
    call = pl.pallas_call(
        functools.partial(_kernel, bn=bn, dk=dk, kernel=kernel, loo=loo),
        grid=(g, big_q // bq),
        in_specs=[
            pl.BlockSpec((1,), lambda h, i: (h,)),
            pl.BlockSpec((bq, width), lambda h, i: (i, 0)),
            pl.BlockSpec((bq,), lambda h, i: (i,)),
            whole(ref.shape),
            whole(ref_code.shape),
            whole(values.shape),
        ],
        out_specs=[row((bq,)), row((bq, c2)), row((bq,))],
        out_shape=[
            jax.ShapeDtypeStruct(shape, jnp.float32)
            for shape in ((g, big_q), (g, big_q, c2), (g, big_q))
        ],
        compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        name="kernel_moments_triton",
    )
    return finish(Running(*call(inv_h2, query, query_code, ref, ref_code, values)), c)


def _query_grad_kernel(
    inv_h2_ref,
    q_ref,
    qc_ref,
    scale_ref,
    gv_ref,
    gw2_ref,
    z_ref,
    zc_ref,
    v_ref,
    rows_out,
    a_ref_out,
    *,
    bn,
    dk,
    kernel,
    loo,
):
    """One (bandwidth, query tile): row sums of ``a`` and ``a @ z``."""
    bq, d = q_ref.shape
    chunks = [pl.ds(k * dk, dk) for k in range(d // dk)]
    inv_h2, query_code = inv_h2_ref[0], qc_ref[...][:, None]
    query_sq = sum(jnp.sum(q_ref[:, cols] ** 2, axis=1) for cols in chunks)[:, None]
    scale = scale_ref[...]
    safe = jnp.where(scale > -jnp.inf, scale, 0.0)[:, None]
    g_values, g_w2 = gv_ref[...], gw2_ref[...][:, None]

    def body(j, carry):
        rows, parts = carry
        tile = pl.ds(pl.multiple_of(j * bn, bn), bn)
        cross = sum(jnp.dot(q_ref[:, c], z_ref[tile, c].T, precision=DISTANCE_PRECISION)
                    for c in chunks)  # fmt: skip
        ref_sq = sum(jnp.sum(z_ref[tile, c] ** 2, axis=1) for c in chunks)[None, :]
        ok = pair_mask(query_code, zc_ref[tile][None, :], loo=loo)
        w = jnp.exp(log_weights(cross, query_sq, ref_sq, ok, inv_h2, kernel=kernel) - safe)
        gv = jnp.dot(g_values, v_ref[tile, :].T)
        a = distance_cotangent(w, gv, g_w2, cross, query_sq, ref_sq, ok, inv_h2, kernel=kernel)
        parts = [p + jnp.dot(a, z_ref[tile, c]) for p, c in zip(parts, chunks, strict=True)]
        return rows + jnp.sum(a, axis=1), parts

    init = (jnp.zeros((bq,), jnp.float32), [jnp.zeros((bq, dk), jnp.float32) for _ in chunks])
    rows, parts = jax.lax.fori_loop(0, z_ref.shape[0] // bn, body, init)
    rows_out[...] = rows
    for part, c in zip(parts, chunks, strict=True):
        a_ref_out[:, c] = part


def _ref_grad_kernel(
    inv_h2_ref,
    z_ref,
    zc_ref,
    v_ref,
    q_ref,
    qc_ref,
    scale_ref,
    gv_ref,
    gw2_ref,
    cols_out,
    a_query_out,
    d_values_out,
    *,
    bq,
    dk,
    kernel,
    loo,
):
    """One (bandwidth, reference tile): column sums of ``a``, ``a^T @ q`` and ``w^T @ gV``."""
    bn, d = z_ref.shape
    chunks = [pl.ds(k * dk, dk) for k in range(d // dk)]
    inv_h2, ref_code = inv_h2_ref[0], zc_ref[...][:, None]
    ref_sq = sum(jnp.sum(z_ref[:, c] ** 2, axis=1) for c in chunks)[:, None]
    values = v_ref[...]

    def body(i, carry):
        cols, parts, d_values = carry
        tile = pl.ds(pl.multiple_of(i * bq, bq), bq)
        cross = sum(jnp.dot(z_ref[:, c], q_ref[tile, c].T, precision=DISTANCE_PRECISION)
                    for c in chunks)  # [bn, bq]  # fmt: skip
        query_sq = sum(jnp.sum(q_ref[tile, c] ** 2, axis=1) for c in chunks)[None, :]
        ok = pair_mask(qc_ref[tile][None, :], ref_code, loo=loo)  # [bn, bq] layout
        scale = scale_ref[tile]
        safe = jnp.where(scale > -jnp.inf, scale, 0.0)[None, :]
        w = jnp.exp(log_weights(cross, ref_sq, query_sq, ok, inv_h2, kernel=kernel) - safe)
        g_values = gv_ref[tile, :]
        gv = jnp.dot(values, g_values.T)
        g_w2 = gw2_ref[tile][None, :]
        a = distance_cotangent(w, gv, g_w2, cross, ref_sq, query_sq, ok, inv_h2, kernel=kernel)
        parts = [p + jnp.dot(a, q_ref[tile, c]) for p, c in zip(parts, chunks, strict=True)]
        return cols + jnp.sum(a, axis=1), parts, d_values + jnp.dot(w, g_values)

    init = (
        jnp.zeros((bn,), jnp.float32),
        [jnp.zeros((bn, dk), jnp.float32) for _ in chunks],
        jnp.zeros(values.shape, jnp.float32),
    )
    cols, parts, d_values = jax.lax.fori_loop(0, q_ref.shape[0] // bq, body, init)
    cols_out[...] = cols
    d_values_out[...] = d_values
    for part, c in zip(parts, chunks, strict=True):
        a_query_out[:, c] = part


def backward(
    query,
    query_code,
    ref,
    ref_code,
    values,
    inv_h2,
    log_scale,
    cotangent,
    *,
    kernel,
    loo,
    interpret,
    tiles=TILES,
):
    """Gradients of :func:`forward` by the two fused kernels (one recompute each).

    Args:
      query, query_code, ref, ref_code, values, inv_h2: the forward's inputs
        (rows multiples of the tiles).
      log_scale: ``[g, Q]`` the forward's output scale (held fixed).
      cotangent: :class:`KernelMoments` cotangent (its ``log_scale`` ignored).
      kernel, loo, interpret: as in :func:`forward`.

    Returns:
      ``(d query [Q, d], d ref [N, d], d values [N, C], d inv_h2 [g])``.
    """
    bq, bn, dk_max = tiles
    (big_q, d), (big_n, c), g = query.shape, values.shape, inv_h2.shape[0]
    q, z, v, dk = _pad_columns(query, ref, values, dk_max)
    width, c2 = q.shape[1], v.shape[1]
    g_values = jnp.concatenate([cotangent.sum_w[..., None], cotangent.sum_wv], -1)
    g_values = jnp.pad(g_values, [(0, 0), (0, 0), (0, c2 - c)])
    g_w2 = cotangent.sum_w2
    params = pltriton.CompilerParams(num_warps=4, num_stages=2)
    scalar = pl.BlockSpec((1,), lambda h, i: (h,))
    whole = lambda shape: pl.BlockSpec(shape, lambda h, i: (0,) * len(shape))
    mine = lambda rows, *rest: pl.BlockSpec((rows, *rest), lambda h, i: (i,) + (0,) * len(rest))
    per_g = lambda *shape: pl.BlockSpec((None, *shape), lambda h, i: (h, i, 0)[: len(shape) + 1])
    per_g_whole = lambda *shape: pl.BlockSpec((None, *shape), lambda h, i: (h,) + (0,) * len(shape))
    out = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    rows, a_ref = pl.pallas_call(
        functools.partial(_query_grad_kernel, bn=bn, dk=dk, kernel=kernel, loo=loo),
        grid=(g, big_q // bq),
        in_specs=[
            scalar,
            mine(bq, width),
            mine(bq),
            per_g(bq),
            per_g(bq, c2),
            per_g(bq),
            whole(z.shape),
            whole(ref_code.shape),
            whole(v.shape),
        ],  # fmt: skip
        out_specs=[per_g(bq), per_g(bq, width)],
        out_shape=[out(g, big_q), out(g, big_q, width)],
        compiler_params=params,
        interpret=interpret,
        name="kernel_moments_query_grad",
    )(inv_h2, q, query_code, log_scale, g_values, g_w2, z, ref_code, v)
    cols, a_query, d_values = pl.pallas_call(
        functools.partial(_ref_grad_kernel, bq=bq, dk=dk, kernel=kernel, loo=loo),
        grid=(g, big_n // bn),
        in_specs=[
            scalar,
            mine(bn, width),
            mine(bn),
            mine(bn, c2),
            whole(q.shape),
            whole(query_code.shape),
            per_g_whole(big_q),
            per_g_whole(big_q, c2),
            per_g_whole(big_q),
        ],  # fmt: skip
        out_specs=[per_g(bn), per_g(bn, width), per_g(bn, c2)],
        out_shape=[out(g, big_n), out(g, big_n, width), out(g, big_n, c2)],
        compiler_params=params,
        interpret=interpret,
        name="kernel_moments_ref_grad",
    )(inv_h2, z, ref_code, v, q, query_code, log_scale, g_values, g_w2)
    a_ref, a_query = a_ref[..., :d], a_query[..., :d]
    d_query = query * jnp.sum(rows, 0)[:, None] - jnp.sum(a_ref, 0)
    d_ref = ref * jnp.sum(cols, 0)[:, None] - jnp.sum(a_query, 0)
    query_sq, ref_sq = jnp.sum(query * query, 1), jnp.sum(ref * ref, 1)
    sum_a_d2 = rows @ query_sq + cols @ ref_sq - 2.0 * jnp.einsum("gid,id->g", a_ref, query)
    return d_query, d_ref, jnp.sum(d_values, 0)[:, :c], 0.5 * sum_a_d2 / inv_h2
