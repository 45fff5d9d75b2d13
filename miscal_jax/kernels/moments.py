"""One primitive for every kernel sum in the library: blocked, online, bounded memory.

For queries ``q_i``, references ``z_j`` with values ``V_j`` (a row of a
``[n, c]`` matrix: residuals, squared residuals, permutation columns, bootstrap
weights, many models' residuals) and kernel weights
``w_ij = K(|q_i - z_j|^2 / h^2)``, :func:`kernel_moments` returns::

    sum_j w_ij,   sum_j w_ij V_j,   sum_j w_ij^2

without ever holding the ``[q, n]`` weight matrix. References are streamed in
blocks and the sums accumulated online with a running maximum of the
log-weights (the flash-attention pattern); the moments come back *relative* to
that maximum ``log_scale`` (absolute sums are ``exp(log_scale) * sum_w`` and so
on; ratios such as the Nadaraya-Watson value need no rescaling). A query with
no reference in reach gets ``log_scale = -inf`` and zero sums, never NaN.

Three interchangeable implementations compute the same moments from the same
block mathematics (:mod:`miscal_jax.kernels.blockwise`):

- ``"xla"`` (default on every backend): ``lax.map`` over query blocks,
  ``lax.scan`` over reference blocks (:mod:`miscal_jax.kernels.xla_path`), with
  a block budget per backend;
- ``"pallas"``: a fused Pallas kernel chosen per platform when the program is
  lowered (``lax.platform_dependent``): Triton on CUDA and ROCm
  (:mod:`miscal_jax.kernels.pallas_gpu`), Mosaic on TPU
  (:mod:`miscal_jax.kernels.pallas_tpu`), the Pallas interpreter (of the
  Triton kernel) on CPU; ``interpret=True`` forces the interpreter everywhere;
- ``"dense"``: the obvious ``[q, n]`` computation, for checks and tiny inputs
  (differentiated by plain autodiff: the independent reference for the others).

Reverse mode is hand-written and recomputes each block's weights once from
the forward's ``log_scale``, with temporaries of one block's size: by the XLA
scan (:func:`~miscal_jax.kernels.xla_path.backward`) for ``"xla"``, and for
``"pallas"`` on CPU and TPU; by two fused Triton kernels
(:func:`~miscal_jax.kernels.pallas_gpu.backward`) for ``"pallas"`` on GPUs.

Dtypes: the points are centred at the valid references' mean and everything is
accumulated in ``promote(input dtype, float32)``: bfloat16 and float16 inputs
give float32 moments (their distances would otherwise lose the small
differences that matter at small bandwidths), float64 under ``jax_enable_x64``
stays float64.

References:
  Dao et al. (2022), FlashAttention; Milakov & Gimelshein (2018), online
  normaliser calculation for softmax.
"""

import contextvars
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from miscal_jax._types import Array
from miscal_jax.kernels import xla_path
from miscal_jax.kernels.blockwise import KernelMoments, rescaled_sum
from miscal_jax.kernels.shapes import get_log_kernel

__all__ = [
    "IMPLEMENTATIONS",
    "KernelMoments",
    "combine",
    "kernel_moments",
]

IMPLEMENTATIONS = ("xla", "pallas", "dense")

#: ``(mesh, axis)`` while a function is traced for a mesh
#: (:func:`~miscal_jax.kernels.sharded.ring_while_tracing`): every
#: :func:`kernel_moments` traced then runs as
#: :func:`~miscal_jax.kernels.sharded.kernel_moments_ring` over that axis.
RING: contextvars.ContextVar = contextvars.ContextVar("miscal_jax_ring", default=None)
#: Row counts are padded up to a multiple of this before compiling.
PAD_MULTIPLE = 128


class Static(NamedTuple):
    """The static (hashable) configuration of one kernel-sum program."""

    kernel: str
    loo: bool
    bq: int
    bn: int
    impl: str
    interpret: bool


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a positive multiple of ``multiple``."""
    return max(multiple, -(-n // multiple) * multiple)


def pad_rows(a: Array, rows: int, value=0) -> Array:
    """``a`` padded with ``value`` along its first axis to ``rows`` rows."""
    return jnp.pad(a, [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1), constant_values=value)


def pad_blocks(query, query_code, ref, ref_code, values, bq: int, bn: int):
    """Pads queries to a multiple of ``bq`` rows and references to one of ``bn``.

    Padded queries leave nothing out (code ``-1``), padded references are
    masked (code ``-2``), so neither changes a moment. Returns the five
    padded arrays.
    """
    big_q, big_n = round_up(query.shape[0], bq), round_up(ref.shape[0], bn)
    return (
        pad_rows(query, big_q),
        pad_rows(query_code, big_q, -1),
        pad_rows(ref, big_n),
        pad_rows(ref_code, big_n, -2),
        pad_rows(values, big_n),
    )


def _backend_family() -> str:
    backend = jax.default_backend()
    return "gpu" if backend in ("cuda", "rocm", "gpu") else backend


def _pallas_forward(static: Static, *args) -> KernelMoments:
    """The Pallas kernel of the platform the program is lowered for (imported lazily)."""
    from miscal_jax.kernels import pallas_gpu, pallas_tpu

    query, query_code, ref, ref_code, values, inv_h2 = args
    kw = dict(kernel=static.kernel, loo=static.loo)

    def run(module, interpret):
        padded = pad_blocks(query, query_code, ref, ref_code, values, *module.TILES[:2])
        out = module.forward(*padded, inv_h2, interpret=interpret, **kw)
        return KernelMoments(*(a[:, : query.shape[0]] for a in out))

    if static.interpret:
        return run(pallas_gpu, True)
    return jax.lax.platform_dependent(
        cuda=lambda: run(pallas_gpu, False),
        rocm=lambda: run(pallas_gpu, False),
        tpu=lambda: run(pallas_tpu, False),
        default=lambda: run(pallas_gpu, True),
    )


def _forward(static: Static, *args) -> KernelMoments:
    if static.impl == "pallas":
        out = _pallas_forward(static, *args)
        return KernelMoments(*(a.astype(args[0].dtype) for a in out))
    return xla_path.forward(*args, kernel=static.kernel, loo=static.loo, bq=static.bq, bn=static.bn)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _moments(static, query, query_code, ref, ref_code, values, inv_h2):
    return _forward(static, query, query_code, ref, ref_code, values, inv_h2)


def _moments_fwd(static, *args):
    out = _forward(static, *args)
    return out, (args, out.log_scale)


def _xla_backward(static: Static, args, log_scale, cotangent):
    # half the forward's query rows: a backward block holds its distances, weights and
    # their cotangents; on CPU 128 to 512 rows run equally fast (2026-12-07)
    bq = static.bq // 2 if static.bq % 16 == 0 else static.bq
    return xla_path.backward(
        *args, log_scale, cotangent, kernel=static.kernel, loo=static.loo, bq=bq, bn=static.bn
    )


def _triton_backward(static: Static, args, log_scale, cotangent, interpret: bool):
    """The fused Triton backward on rows padded to its tiles (imported lazily)."""
    from miscal_jax.kernels import pallas_gpu

    *points, inv_h2 = args
    padded = pad_blocks(*points, *pallas_gpu.TILES[:2])
    (q, n), big_q = (points[0].shape[0], points[2].shape[0]), padded[0].shape[0]
    per_query = lambda a: jnp.pad(a, [(0, 0), (0, big_q - q)] + [(0, 0)] * (a.ndim - 2))
    grads = pallas_gpu.backward(
        *padded, inv_h2, per_query(log_scale), KernelMoments(*(per_query(a) for a in cotangent)),
        kernel=static.kernel, loo=static.loo, interpret=interpret,
    )  # fmt: skip
    d_query, d_ref, d_values, d_inv_h2 = grads
    return d_query[:q], d_ref[:n], d_values[:n], d_inv_h2


def _moments_bwd(static, residuals, cotangent):
    args, log_scale = residuals
    if static.impl != "pallas":
        grads = _xla_backward(static, args, log_scale, cotangent)
    elif static.interpret:
        grads = _triton_backward(static, args, log_scale, cotangent, True)
    else:  # the fused Triton backward on GPUs, the XLA one elsewhere
        triton = lambda: _triton_backward(static, args, log_scale, cotangent, False)
        grads = jax.lax.platform_dependent(
            cuda=triton,
            rocm=triton,
            default=lambda: _xla_backward(static, args, log_scale, cotangent),
        )
    d_query, d_ref, d_values, d_inv_h2 = grads
    return d_query, None, d_ref, None, d_values.astype(args[4].dtype), d_inv_h2


_moments.defvjp(_moments_fwd, _moments_bwd)


def block_sizes(query_block: int, ref_block: int, q: int, n: int, g: int) -> tuple[int, int]:
    """XLA-path blocks: multiples of 8, no larger than the data, within the backend's budget."""
    bn = min(round_up(ref_block, 8), round_up(n, 8))
    bq = min(round_up(query_block, 8), round_up(q, 8))
    budget = xla_path.BLOCK_ELEMENTS.get(_backend_family(), xla_path.BLOCK_ELEMENTS["cpu"])
    while g * bq * bn > budget and bq > 8:
        bq = round_up(bq // 2, 8)
    return bq, bn


def moments(query, query_code, ref, ref_code, values, inv_h2, *, static: Static) -> KernelMoments:
    """The moments of centred, accumulator-dtype inputs, any row counts (inside ``jit``).

    Args:
      query: ``[q, d]``; query_code: ``[q]`` (``-1``: nothing left out).
      ref: ``[n, d]``; ref_code: ``[n]`` (``-2``: masked or padding).
      values: ``[n, c]``; inv_h2: ``[g]``.
      static: :class:`Static` (``bq``, ``bn`` already chosen by :func:`block_sizes`).

    Returns:
      :class:`KernelMoments` of ``[g, q]`` and ``[g, q, c]`` arrays.
    """
    values = jnp.concatenate([jnp.ones((values.shape[0], 1), values.dtype), values], axis=1)
    if static.impl == "dense":
        return xla_path.dense(
            query, query_code, ref, ref_code, values, inv_h2, kernel=static.kernel, loo=static.loo
        )
    padded = pad_blocks(query, query_code, ref, ref_code, values, static.bq, static.bn)
    out = _moments(static, *padded, inv_h2)
    return KernelMoments(*(a[:, : query.shape[0]] for a in out))


def centre(query: Array, ref: Array, ref_ok: Array) -> tuple[Array, Array]:
    """Centres both point sets at the valid references' mean (exact distances in float32)."""
    centre = jnp.sum(ref * ref_ok[:, None], 0) / jnp.maximum(jnp.sum(ref_ok), 1)
    return query - centre, ref - centre


def centred_codes(query, query_code, ref, ref_ok, values, log_bandwidth):
    """From validated, padded inputs to :func:`moments`' arguments (inside ``jit``).

    Centres the points, turns the reference mask into codes (``-2`` masked)
    and the log-bandwidths into ``1 / h^2``. Returns
    ``(query, query_code, ref, ref_code, values, inv_h2)``.
    """
    query, ref = centre(query, ref, ref_ok)
    ref_code = jnp.where(ref_ok, jnp.arange(ref.shape[0], dtype=jnp.int32), -2)
    return query, query_code, ref, ref_code, values, jnp.exp(-2.0 * log_bandwidth)


@functools.partial(jax.jit, static_argnames=("static",))
def _kernel_moments(*args, static):
    return moments(*centred_codes(*args), static=static)


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
    return rescaled_sum(parts, top, lambda a: a[None], lambda a: jnp.sum(a, axis=0))


def accumulator_dtype(*arrays) -> jnp.dtype:
    """``promote(inputs, float32)``: float32, or float64 under ``jax_enable_x64``."""
    dtype = jnp.result_type(*arrays)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    return jnp.promote_types(dtype, jnp.float32)


def check_inputs(query, ref, values, log_bandwidth, query_index, ref_mask):
    """Validates static facts and casts to the accumulator dtype.

    Returns:
      ``(query [q, d], query_code [q], ref [n, d], ref_ok [n], values [n, c],
      log_bandwidth [] or [g])``.
    """
    query, ref, values = (jnp.asarray(a) for a in (query, ref, values))
    dtype = accumulator_dtype(query, ref, values)
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
    ref_ok = jnp.ones(n, bool) if ref_mask is None else jnp.asarray(ref_mask).astype(bool)
    if query_index.shape != (q,):
        raise ValueError(f"query_index: expected shape [{q}], got {query_index.shape}.")
    if ref_ok.shape != (n,):
        raise ValueError(f"ref_mask: expected shape [{n}], got {ref_ok.shape}.")
    return query, query_index, ref, ref_ok, values, log_bandwidth


def make_static(kernel, loo, query_block, ref_block, impl, interpret, q, n, g) -> Static:
    """Checks the static arguments and picks the block sizes."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl: expected one of {IMPLEMENTATIONS}, got {impl!r}.")
    if query_block < 1 or ref_block < 1:
        raise ValueError(
            f"query_block/ref_block: must be positive ints, got {query_block} and {ref_block}."
        )
    get_log_kernel(kernel)
    bq, bn = block_sizes(int(query_block), int(ref_block), q, n, g)
    return Static(kernel, bool(loo), bq, bn, impl, bool(interpret))


def prepare(
    query,
    ref,
    values,
    log_bandwidth,
    query_index,
    ref_mask,
    options: dict,
    *,
    query_shards: int = 1,
    ref_shards: int = 1,
):
    """Validates, pads and configures a call of the public entry points (outside ``jit``).

    Rows are padded to a multiple of ``PAD_MULTIPLE`` times the shard count
    (nearby sizes, such as folds, share compiled code; every shard is equal),
    and the block sizes are chosen for one shard's rows.

    Args:
      query, ref, values, log_bandwidth, query_index, ref_mask: as in
        :func:`kernel_moments`.
      options: ``kernel``, ``query_block``, ``ref_block``, ``impl``, ``interpret``.
      query_shards, ref_shards: devices the queries and the references are split over.

    Returns:
      ``(args, static, log_bandwidth)``: the six padded arrays of
      :func:`centred_codes`, the :class:`Static` and the checked log-bandwidth.
    """
    loo = query_index is not None
    query, query_index, ref, ref_ok, values, log_bw = check_inputs(
        query, ref, values, log_bandwidth, query_index, ref_mask
    )
    big_q = round_up(query.shape[0], PAD_MULTIPLE * query_shards)
    big_n = round_up(ref.shape[0], PAD_MULTIPLE * ref_shards)
    static = make_static(
        options["kernel"], loo, options["query_block"], options["ref_block"], options["impl"],
        options["interpret"], big_q // query_shards, big_n // ref_shards, max(log_bw.size, 1),
    )  # fmt: skip
    args = (
        pad_rows(query, big_q),
        pad_rows(query_index, big_q, -1),
        pad_rows(ref, big_n),
        pad_rows(ref_ok, big_n, False),
        pad_rows(values, big_n),
        jnp.atleast_1d(log_bw),
    )
    return args, static, log_bw


def unstack(out: KernelMoments, log_bandwidth: Array) -> KernelMoments:
    """Drops the bandwidth axis when a single (scalar) bandwidth was given."""
    return KernelMoments(*(jnp.squeeze(a, 0) for a in out)) if log_bandwidth.ndim == 0 else out


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
    interpret: bool = False,
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
      impl: ``"xla"``, ``"pallas"`` or ``"dense"`` (see the module docstring);
        the Pallas kernels use their own tiles, not ``query_block``/``ref_block``.
      interpret: run the Pallas kernel in the Pallas interpreter on every
        platform (debugging); on CPU the interpreter runs whatever this says.

    Returns:
      :class:`KernelMoments` of ``[q]`` and ``[q, c]`` arrays, with a leading
      ``[g]`` axis when ``log_bandwidth`` is ``[g]``. The dtype is the
      accumulator dtype: float32 (for bfloat16, float16 and float32 inputs), or
      float64 for float64 inputs under ``jax_enable_x64``.

    Examples:
      >>> import jax.numpy as jnp
      >>> ref = jnp.array([[0.0], [1.0]])
      >>> m = kernel_moments(jnp.array([[0.0]]), ref, jnp.array([[1.0], [3.0]]), 0.0)
      >>> round(float(m.sum_wv[0, 0] / m.sum_w[0]), 4)  # (1 + 3 e^-0.5) / (1 + e^-0.5)
      1.7551
    """
    ring = RING.get()
    if ring is not None:  # traced for a mesh: the same sums with rows split over its axis
        from miscal_jax.kernels.sharded import kernel_moments_ring

        return kernel_moments_ring(
            query, ref, values, log_bandwidth, mesh=ring[0], axis_name=ring[1], kernel=kernel,
            query_index=query_index, ref_mask=ref_mask, query_block=query_block,
            ref_block=ref_block, impl=impl, interpret=interpret,
        )  # fmt: skip
    args, static, log_bw = prepare(
        query, ref, values, log_bandwidth, query_index, ref_mask,
        dict(kernel=kernel, query_block=query_block, ref_block=ref_block, impl=impl,
             interpret=interpret),
    )  # fmt: skip
    out = _kernel_moments(*args, static=static)
    return unstack(KernelMoments(*(a[:, : jnp.shape(query)[0]] for a in out)), log_bw)
