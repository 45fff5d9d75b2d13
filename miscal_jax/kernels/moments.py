"""One primitive for every kernel sum in the library: blocked, online, bounded memory.

For queries ``q_i``, references ``z_j`` with values ``V_j`` (a row of a
``[n, c]`` matrix: residuals, squared residuals, permutation columns, bootstrap
weights, many models' residuals) and kernel weights
``w_ij = K(|q_i - z_j|^2 / h^2)``, :func:`kernel_moments` returns::

    sum_j w_ij,   sum_j w_ij V_j,   sum_j w_ij^2

without ever holding the ``[q, n]`` weight matrix. Queries are mapped in blocks;
within a query block the references are scanned in blocks and the sums are
accumulated online with a running maximum of the log-weights (the
flash-attention pattern): each block's weights are ``exp(log w - m)`` and the
sums so far are rescaled by ``exp(m_old - m_new)`` when the maximum grows. The
moments come back *relative* to the final maximum ``log_scale``; the absolute
sums are ``exp(log_scale) * sum_w`` and so on, and ratios such as the
Nadaraya-Watson value need no rescaling at all. A query with no reference in
reach (every weight zero) gets ``log_scale = -inf`` and zero sums, never NaN.

Distances are matmuls at ``precision=HIGHEST`` on points centred at the
references' mean. Leave-one-out (``query_index``) and masks (``ref_mask``:
padding, folds) are arguments. Several bandwidths share one distance pass.
Reverse mode recomputes each block (``jax.checkpoint``), so the gradient's
temporaries are of the size of one block plus the ``[q, c]`` running sums per
reference block, not ``[q, n]``.

Three interchangeable implementations compute the same moments:

- ``"xla"`` (default): ``lax.map`` over query blocks, ``lax.scan`` over
  reference blocks; moments by one matmul ``W @ [V]``.
- ``"pallas"``: a fused Pallas kernel (Triton on GPU, Mosaic on TPU, the
  interpreter on CPU) that carries ``sum w^2`` beside ``sum w``; forward only,
  its gradient recomputes blocks with the ``"xla"`` path.
- ``"dense"``: the obvious ``[q, n]`` computation, for checks and tiny inputs.

:func:`kernel_moments_sharded` splits the references across devices
(``shard_map``) and combines the per-device moments, max-rescaled.

References:
  Dao et al. (2022), FlashAttention; Milakov & Gimelshein (2018), online
  normaliser calculation for softmax.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.typing import ArrayLike

from miscal_jax._types import Array
from miscal_jax.kernels.shapes import get_log_kernel

__all__ = [
    "IMPLEMENTATIONS",
    "KernelMoments",
    "combine",
    "kernel_moments",
    "kernel_moments_sharded",
]

IMPLEMENTATIONS = ("xla", "pallas", "dense")
_HIGHEST = jax.lax.Precision.HIGHEST
#: Row counts are padded up to a multiple of this before compiling.
PAD_MULTIPLE = 128
#: Elements of one ``[bandwidths, query_block, ref_block]`` log-weight block.
_BLOCK_ELEMENTS = 1 << 21


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


def _log_weights(query, query_index, ref, ref_index, ref_valid, inv_h2, *, kernel, loo):
    """``[g, bq, bn]`` log-weights of ``[bq, d]`` queries against ``[bn, d]`` references.

    One matmul at HIGHEST precision gives the cross terms. The Gaussian is
    written as ``q.z/h^2 - |q|^2/(2h^2) - |z|^2/(2h^2)``, capped at 0 (its value
    at zero distance), with masked references folded into the last term as
    ``-inf``: the fewest elementwise operations in the hottest loop. Other
    kernels go through the squared scaled distance. Leave-one-out (static
    ``loo``) compares indices; without it that comparison is skipped.
    """
    cross = jnp.matmul(query, ref.T, precision=_HIGHEST)[None]
    query_sq, ref_sq = jnp.sum(query * query, axis=1), jnp.sum(ref * ref, axis=1)
    if kernel == "gaussian":
        query_bias = -0.5 * inv_h2[:, None] * query_sq[None, :]
        ref_bias = jnp.where(ref_valid[None, :], -0.5 * inv_h2[:, None] * ref_sq[None, :], -jnp.inf)
        log_w = cross * inv_h2[:, None, None] + query_bias[:, :, None] + ref_bias[:, None, :]
        log_w = jnp.minimum(log_w, 0.0)
    else:
        d2 = jnp.maximum(query_sq[:, None] + ref_sq[None, :] - 2.0 * cross, 0.0)
        log_w = get_log_kernel(kernel)(d2 * inv_h2[:, None, None])
        log_w = jnp.where(ref_valid[None, None, :], log_w, -jnp.inf)
    if loo:
        log_w = jnp.where(query_index[None, :, None] == ref_index[None, None, :], -jnp.inf, log_w)
    return log_w


def _merge(acc, log_w, values):
    """Adds one block of ``[g, bq, bn]`` log-weights to the running moments ``acc``."""
    log_scale, sum_w, sum_wv, sum_w2 = acc
    new_scale = jax.lax.stop_gradient(jnp.maximum(log_scale, jnp.max(log_w, axis=-1)))
    safe = jnp.where(jnp.isfinite(new_scale), new_scale, 0.0)
    w = jnp.exp(log_w - safe[..., None])
    rescale = jnp.exp(log_scale - safe)  # 0 while nothing has been seen (-inf - 0)
    # values carry a leading column of ones: sum w comes out of the same matmul
    moments = jnp.matmul(w, values, precision=_HIGHEST)
    return KernelMoments(
        new_scale,
        rescale * sum_w + moments[..., 0],
        rescale[..., None] * sum_wv + moments[..., 1:],
        rescale**2 * sum_w2 + jnp.sum(w * w, axis=-1),
    )


def _empty(g, q, c, dtype):
    zeros = jnp.zeros((g, q), dtype)
    return KernelMoments(
        jnp.full((g, q), -jnp.inf, dtype), zeros, jnp.zeros((g, q, c), dtype), zeros
    )


def _blocked(query, query_index, ref, ref_index, ref_valid, values, inv_h2, *, kernel, loo, bq, bn):
    """The ``"xla"`` path on padded inputs: ``[Q, d]`` queries, ``[N, d]`` references."""
    (big_q, d), (big_n, c), g = query.shape, values.shape, inv_h2.shape[0]
    ref_blocks = (
        ref.reshape(big_n // bn, bn, d),
        ref_index.reshape(-1, bn),
        ref_valid.reshape(-1, bn),
        values.reshape(-1, bn, c),
    )

    @jax.checkpoint
    def query_block(args):
        q, qi = args

        @jax.checkpoint
        def step(acc, block):
            z, zi, valid, v = block
            log_w = _log_weights(q, qi, z, zi, valid, inv_h2, kernel=kernel, loo=loo)
            return _merge(acc, log_w, v), None

        acc, _ = jax.lax.scan(step, _empty(g, bq, c - 1, query.dtype), ref_blocks)
        return acc

    out = jax.lax.map(query_block, (query.reshape(-1, bq, d), query_index.reshape(-1, bq)))
    # [Q/bq, g, bq, ...] -> [g, Q, ...]
    return KernelMoments(*(jnp.moveaxis(a, 0, 1).reshape(g, big_q, *a.shape[3:]) for a in out))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _blocked_moments(kernel, loo, bq, bn, *args):
    return _blocked(*args, kernel=kernel, loo=loo, bq=bq, bn=bn)


def _blocked_fwd(kernel, loo, bq, bn, *args):
    return _blocked(*args, kernel=kernel, loo=loo, bq=bq, bn=bn), args


def _blocked_bwd(kernel, loo, bq, bn, args, cotangent):
    # Reverse mode recomputes each block (checkpointed scan bodies) with query
    # blocks of half the size: a block's backward holds about three
    # [bq, bn] buffers against the forward's two, so this keeps the gradient's
    # temporaries near the forward pass's.
    half = bq // 2 if bq % 16 == 0 else bq
    _, vjp = jax.vjp(lambda *a: _blocked(*a, kernel=kernel, loo=loo, bq=half, bn=bn), *args)
    return vjp(cotangent)


_blocked_moments.defvjp(_blocked_fwd, _blocked_bwd)


def _dense(query, query_index, ref, ref_index, ref_valid, values, inv_h2, *, kernel, loo):
    """The obvious ``[g, q, n]`` computation (reference and tiny inputs)."""
    log_w = _log_weights(
        query, query_index, ref, ref_index, ref_valid, inv_h2, kernel=kernel, loo=loo
    )
    g, q, c = inv_h2.shape[0], query.shape[0], values.shape[1] - 1
    return _merge(_empty(g, q, c, query.dtype), log_w, values)


def _pallas_kernel(
    q_ref, qi_ref, z_ref, zi_ref, valid_ref, v_ref, inv_h2_ref, *out_refs, bn, kernel, loo
):
    """One query block against all references, looping over reference blocks in SRAM."""
    q, qi, inv_h2 = q_ref[...], qi_ref[...], inv_h2_ref[...]
    bq, c, g = q.shape[0], v_ref.shape[1] - 1, inv_h2.shape[0]

    def body(k, acc):
        rows = pl.ds(pl.multiple_of(k * bn, bn), bn)
        z = z_ref[rows, :]
        valid = valid_ref[rows] > 0
        log_w = _log_weights(q, qi, z, zi_ref[rows], valid, inv_h2, kernel=kernel, loo=loo)
        return _merge(acc, log_w, v_ref[rows, :])

    acc = jax.lax.fori_loop(0, z_ref.shape[0] // bn, body, _empty(g, bq, c, q.dtype))
    for out, a in zip(out_refs, acc, strict=True):
        out[...] = a


def _pallas(
    query, query_index, ref, ref_index, ref_valid, values, inv_h2, *, kernel, loo, bq, bn, interpret
):
    (big_q, d), (big_n, c), g = query.shape, values.shape, inv_h2.shape[0]
    whole = lambda shape: pl.BlockSpec(shape, lambda i: (0,) * len(shape))
    per_query = lambda *shape: pl.BlockSpec(shape, lambda i: (0, i, 0)[: len(shape)])
    call = pl.pallas_call(
        functools.partial(_pallas_kernel, bn=bn, kernel=kernel, loo=loo),
        grid=(big_q // bq,),
        in_specs=[
            pl.BlockSpec((bq, d), lambda i: (i, 0)),
            pl.BlockSpec((bq,), lambda i: (i,)),
            whole((big_n, d)),
            whole((big_n,)),
            whole((big_n,)),
            whole((big_n, c)),
            whole((g,)),
        ],
        out_specs=[per_query(g, bq), per_query(g, bq), per_query(g, bq, c - 1), per_query(g, bq)],
        out_shape=[
            jax.ShapeDtypeStruct(shape, query.dtype)
            for shape in ((g, big_q), (g, big_q), (g, big_q, c - 1), (g, big_q))
        ],
        interpret=interpret,
    )
    valid = ref_valid.astype(jnp.int32)
    return KernelMoments(*call(query, query_index, ref, ref_index, valid, values, inv_h2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _pallas_moments(kernel, loo, bq, bn, interpret, *args):
    return _pallas(*args, kernel=kernel, loo=loo, bq=bq, bn=bn, interpret=interpret)


def _pallas_fwd(kernel, loo, bq, bn, interpret, *args):
    return _pallas(*args, kernel=kernel, loo=loo, bq=bq, bn=bn, interpret=interpret), args


def _pallas_bwd(kernel, loo, bq, bn, interpret, args, cotangent):
    # The gradient recomputes blocks with the XLA path (checkpointed, bounded memory).
    return _blocked_bwd(kernel, loo, bq, bn, args, cotangent)


_pallas_moments.defvjp(_pallas_fwd, _pallas_bwd)


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def _pad(a: Array, rows: int, value=0) -> Array:
    return jnp.pad(a, [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1), constant_values=value)


def _pad_cols(a: Array, cols: int) -> Array:
    return jnp.pad(a, [(0, 0), (0, cols - a.shape[1])])


def _moments(
    query,
    query_index,
    ref,
    ref_index,
    ref_valid,
    values,
    inv_h2,
    *,
    kernel,
    loo,
    blocks,
    impl,
    interpret,
):
    """Pads to whole blocks and dispatches to one implementation (inside ``jit``)."""
    values = jnp.concatenate([jnp.ones((values.shape[0], 1), values.dtype), values], axis=1)
    args = (query, query_index, ref, ref_index, ref_valid, values, inv_h2)
    if impl == "dense":
        return _dense(*args, kernel=kernel, loo=loo)
    (q, d), (n, c), g = query.shape, values.shape, inv_h2.shape[0]
    align = 16 if impl == "pallas" else 8
    bn = min(_round_up(blocks[1], align), _round_up(n, align))
    bq = min(_round_up(blocks[0], align), _round_up(q, align))
    while g * bq * bn > _BLOCK_ELEMENTS and bq > align:
        bq = _round_up(bq // 2, align)
    big_q, big_n = _round_up(q, bq), _round_up(n, bn)
    query, query_index = _pad(query, big_q), _pad(query_index, big_q, -1)
    ref, ref_index, values = _pad(ref, big_n), _pad(ref_index, big_n, -1), _pad(values, big_n)
    ref_valid = _pad(ref_valid, big_n, False)
    if impl == "pallas":
        # Triton's dot wants dimensions in multiples of 16: zero columns change nothing.
        d16, c16 = _round_up(d, 16), _round_up(c, 16)
        args = (_pad_cols(query, d16), query_index, _pad_cols(ref, d16), ref_index, ref_valid)
        padded = (*args, _pad_cols(values, c16), inv_h2)
        out = _pallas_moments(kernel, loo, bq, bn, interpret, *padded)
        out = out._replace(sum_wv=out.sum_wv[..., : c - 1])
    else:
        args = (query, query_index, ref, ref_index, ref_valid, values, inv_h2)
        out = _blocked_moments(kernel, loo, bq, bn, *args)
    return KernelMoments(*(a[:, :q] for a in out))


def _centre(query, ref, ref_valid):
    """Centres both point sets at the valid references' mean (exact distances in float32)."""
    centre = jnp.sum(ref * ref_valid[:, None], 0) / jnp.maximum(jnp.sum(ref_valid), 1)
    return query - centre, ref - centre


_STATIC = ("kernel", "loo", "blocks", "impl", "interpret")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _kernel_moments(query, query_index, ref, ref_valid, values, log_bandwidth, **static):
    query, ref = _centre(query, ref, ref_valid)
    ref_index = jnp.arange(ref.shape[0], dtype=jnp.int32)
    inv_h2 = jnp.exp(-2.0 * log_bandwidth)
    return _moments(query, query_index, ref, ref_index, ref_valid, values, inv_h2, **static)


def _rescaled_sum(parts: KernelMoments, top: Array, expand, total) -> KernelMoments:
    """Sums partial moments after rescaling each to the common maximum ``top``."""
    safe = jnp.where(jnp.isfinite(top), top, 0.0)
    rescale = jnp.exp(parts.log_scale - expand(safe))
    return KernelMoments(
        top,
        total(rescale * parts.sum_w),
        total(rescale[..., None] * parts.sum_wv),
        total(rescale**2 * parts.sum_w2),
    )


def combine(parts: KernelMoments) -> KernelMoments:
    """Combines moments of disjoint reference sets, stacked on a leading axis.

    Args:
      parts: :class:`KernelMoments` whose arrays carry a leading ``[s]`` axis
        indexing the reference sets.

    Returns:
      The moments over the union of the reference sets.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> z = jnp.linspace(0, 1, 6)[:, None]
      >>> v = jnp.ones((6, 1))
      >>> halves = [kernel_moments(z, z[i : i + 3], v[:3], 0.0) for i in (0, 3)]
      >>> both = combine(jax.tree.map(lambda *a: jnp.stack(a), *halves))
      >>> bool(jnp.allclose(both.sum_w, kernel_moments(z, z, v, 0.0).sum_w))
      True
    """
    top = jnp.max(parts.log_scale, axis=0)
    return _rescaled_sum(parts, top, lambda a: a[None], lambda a: jnp.sum(a, axis=0))


def _prepare(query, ref, values, log_bandwidth, query_index, ref_mask):
    """Validates static facts and casts to one floating dtype."""
    query, ref, values = (jnp.asarray(a) for a in (query, ref, values))
    dtype = jnp.result_type(query, ref, values)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    query, ref, values = (a.astype(dtype) for a in (query, ref, values))
    if query.ndim != 2 or ref.ndim != 2 or query.shape[1] != ref.shape[1]:
        raise ValueError(
            f"query/ref: expected [q, d] and [n, d] with the same d, got {query.shape} and "
            f"{ref.shape}."
        )
    if values.ndim != 2 or values.shape[0] != ref.shape[0]:
        raise ValueError(f"values: expected [{ref.shape[0]}, c], got {values.shape}.")
    log_bandwidth = jnp.asarray(log_bandwidth, dtype)
    if log_bandwidth.ndim > 1:
        raise ValueError(f"log_bandwidth: expected a scalar or [g], got {log_bandwidth.shape}.")
    q, n = query.shape[0], ref.shape[0]
    if query_index is None:
        query_index = jnp.full(q, -1, jnp.int32)
    query_index = jnp.asarray(query_index, jnp.int32)
    ref_valid = jnp.ones(n, bool) if ref_mask is None else jnp.asarray(ref_mask).astype(bool)
    if query_index.shape != (q,):
        raise ValueError(f"query_index: expected shape [{q}], got {query_index.shape}.")
    if ref_valid.shape != (n,):
        raise ValueError(f"ref_mask: expected shape [{n}], got {ref_valid.shape}.")
    return query, query_index, ref, ref_valid, values, log_bandwidth


def _static(kernel, loo, query_block, ref_block, impl, interpret) -> dict:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl: expected one of {IMPLEMENTATIONS}, got {impl!r}.")
    if query_block < 1 or ref_block < 1:
        raise ValueError(
            f"query_block/ref_block: must be positive ints, got {query_block} and {ref_block}."
        )
    get_log_kernel(kernel)
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    blocks = (int(query_block), int(ref_block))
    return dict(kernel=kernel, loo=loo, blocks=blocks, impl=impl, interpret=bool(interpret))


def _unstack(out: KernelMoments, log_bandwidth: Array) -> KernelMoments:
    return KernelMoments(*(a[0] for a in out)) if log_bandwidth.ndim == 0 else out


def kernel_moments(
    query: ArrayLike,
    ref: ArrayLike,
    values: ArrayLike,
    log_bandwidth: ArrayLike,
    *,
    kernel: str = "gaussian",
    query_index: ArrayLike | None = None,
    ref_mask: ArrayLike | None = None,
    query_block: int = 512,
    ref_block: int = 2048,
    impl: str = "xla",
    interpret: bool | None = None,
) -> KernelMoments:
    """Kernel moments ``sum w``, ``sum w V``, ``sum w^2`` of queries against references.

    Args:
      query: ``[q, d]`` query points.
      ref: ``[n, d]`` reference points.
      values: ``[n, c]`` values carried by the references.
      log_bandwidth: scalar, or ``[g]`` candidates sharing one distance pass;
        traced and differentiable.
      kernel: static kernel name (:mod:`miscal_jax.kernels.shapes`).
      query_index: optional ``[q]`` ints: reference ``query_index[i]`` is left
        out of query ``i`` (leave-one-out); ``-1`` leaves nothing out.
      ref_mask: optional ``[n]`` bools; ``False`` references are ignored
        (padding, other folds).
      query_block: static queries per block.
      ref_block: static references per block; memory is
        ``O(g * query_block * ref_block)``.
      impl: ``"xla"``, ``"pallas"`` or ``"dense"`` (see the module docstring).
      interpret: run the Pallas kernel in the interpreter (default: on CPU).

    Returns:
      :class:`KernelMoments` of ``[q]`` and ``[q, c]`` arrays, with a leading
      ``[g]`` axis when ``log_bandwidth`` is ``[g]``. The dtype follows the
      inputs (float32 by default; bfloat16 and float64 work).

    Examples:
      >>> import jax.numpy as jnp
      >>> ref = jnp.array([[0.0], [1.0]])
      >>> m = kernel_moments(jnp.array([[0.0]]), ref, jnp.array([[1.0], [3.0]]), 0.0)
      >>> round(float(m.sum_wv[0, 0] / m.sum_w[0]), 4)  # (1 + 3 e^-0.5) / (1 + e^-0.5)
      1.7551
    """
    static = _static(kernel, query_index is not None, query_block, ref_block, impl, interpret)
    query, query_index, ref, ref_valid, values, log_bw = _prepare(
        query, ref, values, log_bandwidth, query_index, ref_mask
    )
    # Rows padded to a multiple of PAD_MULTIPLE: nearby sizes (folds) share compiled code.
    q, n = query.shape[0], ref.shape[0]
    big_q, big_n = _round_up(q, PAD_MULTIPLE), _round_up(n, PAD_MULTIPLE)
    out = _kernel_moments(
        _pad(query, big_q),
        _pad(query_index, big_q, -1),
        _pad(ref, big_n),
        _pad(ref_valid, big_n, False),
        _pad(values, big_n),
        jnp.atleast_1d(log_bw),
        **static,
    )
    return _unstack(KernelMoments(*(a[:, :q] for a in out)), log_bw)


def kernel_moments_sharded(
    query: ArrayLike,
    ref: ArrayLike,
    values: ArrayLike,
    log_bandwidth: ArrayLike,
    *,
    mesh: jax.sharding.Mesh,
    axis_name: str | None = None,
    kernel: str = "gaussian",
    query_index: ArrayLike | None = None,
    ref_mask: ArrayLike | None = None,
    query_block: int = 512,
    ref_block: int = 2048,
    impl: str = "xla",
    interpret: bool | None = None,
) -> KernelMoments:
    """:func:`kernel_moments` with the references split across the devices of ``mesh``.

    Each device reduces its shard of references against all queries
    (``shard_map``); the partial moments are combined across devices with
    the running-maximum rescaling (:func:`combine`, as ``pmax`` and ``psum``).
    The references are padded to a multiple of the device count (padding is
    masked out), so any ``n`` works.

    Args:
      query, ref, values, log_bandwidth, kernel, query_index, ref_mask,
      query_block, ref_block, impl, interpret: as in :func:`kernel_moments`.
      mesh: a ``jax.sharding.Mesh``.
      axis_name: the mesh axis to shard references over (default: the first).

    Returns:
      :class:`KernelMoments`, equal to the single-device result up to float
      rounding.

    Examples:
      >>> import jax, numpy as np
      >>> mesh = jax.make_mesh((jax.device_count(),), ("refs",))
      >>> z = np.linspace(0, 1, 10)[:, None]
      >>> m = kernel_moments_sharded(z, z, np.ones((10, 1)), -1.0, mesh=mesh)
      >>> bool(np.allclose(m.sum_wv[:, 0], m.sum_w))
      True
    """
    from jax.sharding import PartitionSpec as P

    static = _static(kernel, query_index is not None, query_block, ref_block, impl, interpret)
    axis = axis_name or mesh.axis_names[0]
    devices = mesh.shape[axis]
    query, query_index, ref, ref_valid, values, log_bw = _prepare(
        query, ref, values, log_bandwidth, query_index, ref_mask
    )
    n = ref.shape[0]
    rows = -(-n // devices) * devices
    query, ref = _centre(query, ref, ref_valid)
    ref_index = _pad(jnp.arange(n, dtype=jnp.int32), rows, -1)
    ref, ref_valid, values = _pad(ref, rows), _pad(ref_valid, rows, False), _pad(values, rows)
    inv_h2 = jnp.exp(-2.0 * jnp.atleast_1d(log_bw))

    def local(query, query_index, ref, ref_index, ref_valid, values, inv_h2):
        part = _moments(query, query_index, ref, ref_index, ref_valid, values, inv_h2, **static)
        top = jax.lax.pmax(part.log_scale, axis)
        return _rescaled_sum(part, top, lambda a: a, lambda a: jax.lax.psum(a, axis))

    specs = (P(), P(), P(axis), P(axis), P(axis), P(axis), P())
    sharded = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=specs,
            out_specs=P(),
            check_vma=False,
        )
    )
    put = lambda a, spec: jax.device_put(a, jax.sharding.NamedSharding(mesh, spec))
    args = (query, query_index, ref, ref_index, ref_valid, values, inv_h2)
    out = sharded(*(put(a, spec) for a, spec in zip(args, specs, strict=True)))
    return _unstack(out, log_bw)
