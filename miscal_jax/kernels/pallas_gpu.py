"""The Pallas kernel for GPUs, lowered through Triton.

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
    finish,
    fold,
    log_weights,
    pair_mask,
    start,
)

__all__ = ["TILES", "forward"]

#: ``(bq, bn, largest dk)``: queries and references per tile, columns per chunk.
TILES = (64, 64, 64)


def _pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << (int(n) - 1).bit_length())


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
    (big_q, d), c, g = query.shape, values.shape[1], inv_h2.shape[0]
    dk = min(dk_max, _pow2(d))
    width, c2 = -(-d // dk) * dk, _pow2(c)
    query = jnp.pad(query, ((0, 0), (0, width - d)))
    ref = jnp.pad(ref, ((0, 0), (0, width - d)))
    values = jnp.pad(values, ((0, 0), (0, c2 - c)))
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
