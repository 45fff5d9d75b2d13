"""The Pallas kernel for TPUs, lowered through Mosaic.

The grid is ``[g, Q / bq, N / bn]``: bandwidths and query blocks are
parallel, the reference blocks are the reduction ("arbitrary") axis that
Mosaic pipelines, so every operand is tiled by its ``BlockSpec`` and only one
``[bq, d]`` query tile, one ``[bn, d]`` reference tile and one ``[bn, C]``
value tile sit in VMEM (double-buffered), whatever ``n``. The running moments
live in VMEM scratch as ``[bq, 1]`` columns and a ``[bq, C]`` block, and are
written out after the last reference block. The bandwidth comes from SMEM.

TPU layouts want the last two dimensions of a block in multiples of
``(8, 128)`` or equal to the array's: so the squared reference norms and the
reference codes are ``[1, N]`` rows (blocks ``(1, bn)``, ``bn`` a multiple of
128), the query codes a ``[Q, 1]`` column, the per-query outputs ``[g, Q, 1]``,
and ``d`` and ``C`` are whole (full-width blocks). The reference norms are
computed outside the kernel: inside it they would need a sublane-to-lane
relayout of every tile.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from miscal_jax.kernels.blockwise import (
    DISTANCE_PRECISION,
    KernelMoments,
    Running,
    finish,
    fold,
    log_weights,
    pair_mask,
)

__all__ = ["TILES", "forward"]

#: ``(bq, bn)``: queries and references per tile (``bn`` a multiple of 128).
TILES = (256, 512)


def _kernel(inv_h2_ref, q_ref, qc_ref, z_ref, zsq_ref, zc_ref, v_ref, *refs, kernel, loo):
    scale_out, sums_out, w2_out, scale, sums, w2 = refs
    k = pl.program_id(2)

    @pl.when(k == 0)
    def _():
        scale[...] = jnp.full(scale.shape, -jnp.inf, jnp.float32)
        sums[...] = jnp.zeros(sums.shape, jnp.float32)
        w2[...] = jnp.zeros(w2.shape, jnp.float32)

    q = q_ref[...]
    cross = jax.lax.dot_general(
        q, z_ref[...], (((1,), (1,)), ((), ())), precision=DISTANCE_PRECISION,
        preferred_element_type=jnp.float32,
    )  # fmt: skip
    query_sq = jnp.sum(q * q, axis=1, keepdims=True)
    ok = pair_mask(qc_ref[...], zc_ref[...], loo=loo)
    log_w = log_weights(cross, query_sq, zsq_ref[...], ok, inv_h2_ref[pl.program_id(0)],
                        kernel=kernel)  # fmt: skip
    run = fold(Running(scale[...], sums[...], w2[...]), log_w, v_ref[...], keepdims=True)
    scale[...], sums[...], w2[...] = run

    @pl.when(k == pl.num_programs(2) - 1)
    def _():
        scale_out[...], sums_out[...], w2_out[...] = scale[...], sums[...], w2[...]


def forward(
    query, query_code, ref, ref_code, values, inv_h2, *, kernel, loo, interpret, tiles=TILES
) -> KernelMoments:
    """Moments of ``[Q, d]`` queries against ``[N, d]`` references (float32).

    ``Q`` and ``N`` must be multiples of the tiles' ``bq`` and ``bn`` (the
    caller pads). Returns ``[g, Q]`` and ``[g, Q, C - 1]`` arrays.
    """
    bq, bn = tiles
    (big_q, d), (big_n, c), g = query.shape, values.shape, inv_h2.shape[0]
    per_query = lambda width: pl.BlockSpec((None, bq, width), lambda h, i, k: (h, i, 0))
    row = pl.BlockSpec((1, bn), lambda h, i, k: (0, k))
    call = pl.pallas_call(
        functools.partial(_kernel, kernel=kernel, loo=loo),
        grid=(g, big_q // bq, big_n // bn),
        in_specs=[
            pl.BlockSpec(memory_space=pltpu.MemorySpace.SMEM),
            pl.BlockSpec((bq, d), lambda h, i, k: (i, 0)),
            pl.BlockSpec((bq, 1), lambda h, i, k: (i, 0)),
            pl.BlockSpec((bn, d), lambda h, i, k: (k, 0)),
            row,
            row,
            pl.BlockSpec((bn, c), lambda h, i, k: (k, 0)),
        ],
        out_specs=[per_query(1), per_query(c), per_query(1)],
        out_shape=[
            jax.ShapeDtypeStruct(shape, jnp.float32)
            for shape in ((g, big_q, 1), (g, big_q, c), (g, big_q, 1))
        ],
        scratch_shapes=[
            pltpu.VMEM((bq, 1), jnp.float32),
            pltpu.VMEM((bq, c), jnp.float32),
            pltpu.VMEM((bq, 1), jnp.float32),
        ],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=interpret,
        name="kernel_moments_mosaic",
    )
    ref_sq = jnp.sum(ref * ref, axis=1)[None, :]
    scale, sums, w2 = call(
        inv_h2, query, query_code[:, None], ref, ref_sq, ref_code[None, :], values
    )
    return finish(Running(scale[..., 0], sums, w2[..., 0]))
