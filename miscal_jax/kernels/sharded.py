"""The kernel sums across devices: references sharded, or queries and references in a ring.

:func:`kernel_moments_sharded` splits the references over one mesh axis;
every device reduces its shard against all queries and the partial moments
are combined with the running-maximum rescaling (``pmax`` then ``psum``).
Queries and outputs are replicated: right when the queries are few (a
prediction, a grid for a picture).

:func:`kernel_moments_ring` shards both: each device holds ``1/P`` of the
queries, of the references and of the outputs; the reference shards travel
round the ring (``ppermute``), ``P`` steps, each device folding the shard it
holds into its queries' moments. No device ever holds all queries or all
references, so ``n`` is bounded by the devices' memory together, not one's;
the smoothing of ``n`` items by ``n`` items (leave-one-out, bandwidth
selection) is this case.

Both compile once per mesh, shapes and static arguments: the whole
computation, padding and centring included, is one ``jax.jit`` whose static
arguments are the mesh and the configuration.
"""

import contextlib
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from miscal_jax.kernels.blockwise import KernelMoments, rescaled_sum
from miscal_jax.kernels.moments import (
    RING,
    centred_codes,
    combine,
    moments,
    prepare,
    unstack,
)

__all__ = ["kernel_moments_ring", "kernel_moments_sharded", "ring_while_tracing"]


@contextlib.contextmanager
def ring_while_tracing(mesh: Mesh, axis: str) -> Iterator[None]:
    """Every :func:`~miscal_jax.kernels.kernel_moments` traced inside runs on the ring.

    Inside the context, :func:`~miscal_jax.kernels.kernel_moments` calls
    :func:`kernel_moments_ring` over ``axis`` of ``mesh``.

    The choice is made when a function is *traced*, so use it inside a
    ``jax.jit`` whose static arguments include the mesh (as
    :func:`~miscal_jax.model.fit_sharded` does): a program traced without it
    and cached keeps running on one device.

    Examples:
      >>> import jax, numpy as np
      >>> from miscal_jax.kernels import kernel_moments
      >>> mesh = jax.make_mesh((jax.device_count(),), ("items",))
      >>> z = np.linspace(0, 1, 10)[:, None]
      >>> with ring_while_tracing(mesh, "items"):
      ...     m = kernel_moments(z, z, np.ones((10, 1)), -1.0)
      >>> bool(np.allclose(m.sum_wv[:, 0], m.sum_w))
      True
    """
    token = RING.set((mesh, axis))
    try:
        yield
    finally:
        RING.reset(token)


def _placed(mesh: Mesh, specs, *args):
    """``args`` laid out as ``specs`` on ``mesh`` (inside ``jit``: a resharding, no host copy).

    Explicit mesh axes are resharded; automatic ones (XLA's SPMD partitioner
    lays out the rest of the program, as in :func:`~miscal_jax.model.fit_sharded`)
    get a sharding constraint.
    """
    explicit = all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)
    place = jax.reshard if explicit else jax.lax.with_sharding_constraint
    return [place(a, NamedSharding(mesh, spec)) for a, spec in zip(args, specs, strict=True)]


@functools.partial(jax.jit, static_argnames=("mesh", "axis", "static"))
def _sharded(*args, mesh, axis, static):
    def local(query, query_code, ref, ref_code, values, inv_h2):
        part = moments(query, query_code, ref, ref_code, values, inv_h2, static=static)
        top = jax.lax.pmax(part.log_scale, axis)
        return rescaled_sum(part, top, lambda a: a, lambda a: jax.lax.psum(a, axis))

    specs = (P(), P(), P(axis), P(axis), P(axis), P())
    run = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P(), check_vma=False)
    return run(*_placed(mesh, specs, *centred_codes(*args)))


@functools.partial(jax.jit, static_argnames=("mesh", "axis", "static"))
def _ring(*args, mesh, axis, static):
    devices = mesh.shape[axis]
    shift = [(i, (i + 1) % devices) for i in range(devices)]

    def local(query, query_code, ref, ref_code, values, inv_h2):
        def reduce(ref, ref_code, values):
            return moments(query, query_code, ref, ref_code, values, inv_h2, static=static)

        def step(carry, _):
            acc, *shard = carry
            shard = [jax.lax.ppermute(a, axis, shift) for a in shard]
            parts = jax.tree.map(lambda a, b: jnp.stack([a, b]), acc, reduce(*shard))
            return (combine(parts), *shard), None

        shard = (ref, ref_code, values)
        (acc, *_), _ = jax.lax.scan(step, (reduce(*shard), *shard), None, length=devices - 1)
        return acc

    rows = (P(axis), P(axis), P(axis), P(axis), P(axis), P())
    out = P(None, axis)
    outs = KernelMoments(out, out, out, out)
    run = jax.shard_map(local, mesh=mesh, in_specs=rows, out_specs=outs, check_vma=False)
    return run(*_placed(mesh, rows, *centred_codes(*args)))


def _prepare(mesh, axis_name, args, options, *, shard_queries):
    """:func:`~miscal_jax.kernels.moments.prepare` with rows split over one mesh axis."""
    axis = axis_name or mesh.axis_names[0]
    devices = mesh.shape[axis]
    padded, static, log_bw = prepare(
        *args, options, query_shards=devices if shard_queries else 1, ref_shards=devices
    )
    return padded, dict(mesh=mesh, axis=axis, static=static), log_bw


def kernel_moments_sharded(
    query: ArrayLike,
    ref: ArrayLike,
    values: ArrayLike,
    log_bandwidth: ArrayLike,
    *,
    mesh: Mesh,
    axis_name: str | None = None,
    kernel: str = "gaussian",
    query_index: ArrayLike | None = None,
    ref_mask: ArrayLike | None = None,
    query_block: int = 512,
    ref_block: int = 2048,
    impl: str = "xla",
    interpret: bool = False,
) -> KernelMoments:
    """:func:`~miscal_jax.kernels.kernel_moments` with the references split across ``mesh``.

    Args:
      query, ref, values, log_bandwidth, kernel, query_index, ref_mask,
      query_block, ref_block, impl, interpret: as in
        :func:`~miscal_jax.kernels.kernel_moments`.
      mesh: a ``jax.sharding.Mesh``.
      axis_name: the mesh axis to shard references over (default: the first).

    Returns:
      :class:`KernelMoments`, replicated, equal to the single-device result up
      to float rounding. References are padded to a multiple of
      ``128 * devices`` (padding masked out), so any ``n`` works.

    Examples:
      >>> import jax, numpy as np
      >>> mesh = jax.make_mesh((jax.device_count(),), ("refs",))
      >>> z = np.linspace(0, 1, 10)[:, None]
      >>> m = kernel_moments_sharded(z, z, np.ones((10, 1)), -1.0, mesh=mesh)
      >>> bool(np.allclose(m.sum_wv[:, 0], m.sum_w))
      True
    """
    args, static, log_bw = _prepare(
        mesh, axis_name, (query, ref, values, log_bandwidth, query_index, ref_mask),
        dict(kernel=kernel, query_block=query_block, ref_block=ref_block, impl=impl,
             interpret=interpret),
        shard_queries=False,
    )  # fmt: skip
    out = _sharded(*args, **static)
    return unstack(KernelMoments(*(a[:, : jnp.shape(query)[0]] for a in out)), log_bw)


def kernel_moments_ring(
    query: ArrayLike,
    ref: ArrayLike,
    values: ArrayLike,
    log_bandwidth: ArrayLike,
    *,
    mesh: Mesh,
    axis_name: str | None = None,
    kernel: str = "gaussian",
    query_index: ArrayLike | None = None,
    ref_mask: ArrayLike | None = None,
    query_block: int = 512,
    ref_block: int = 2048,
    impl: str = "xla",
    interpret: bool = False,
) -> KernelMoments:
    """:func:`~miscal_jax.kernels.kernel_moments` with queries and references both sharded.

    Queries, references, values and the outputs are split over ``axis_name``;
    the reference shards rotate round the ring (``ppermute``), so each device
    holds ``1/P`` of every array at any time. Differentiable like the
    single-device primitive.

    Args:
      query, ref, values, log_bandwidth, kernel, query_index, ref_mask,
      query_block, ref_block, impl, interpret: as in
        :func:`~miscal_jax.kernels.kernel_moments` (``query_index`` holds
        global reference indices).
      mesh: a ``jax.sharding.Mesh``.
      axis_name: the mesh axis of the ring (default: the first).

    Returns:
      :class:`KernelMoments` sharded over the query axis, equal to the
      single-device result up to float rounding. Rows are padded to a
      multiple of ``128 * devices``; when that padding is not needed the
      outputs keep the ring's sharding.

    Examples:
      >>> import jax, numpy as np
      >>> mesh = jax.make_mesh((jax.device_count(),), ("ring",))
      >>> z = np.linspace(0, 1, 10)[:, None]
      >>> m = kernel_moments_ring(z, z, np.ones((10, 1)), -1.0, mesh=mesh)
      >>> bool(np.allclose(m.sum_wv[:, 0], m.sum_w))
      True
    """
    args, static, log_bw = _prepare(
        mesh, axis_name, (query, ref, values, log_bandwidth, query_index, ref_mask),
        dict(kernel=kernel, query_block=query_block, ref_block=ref_block, impl=impl,
             interpret=interpret),
        shard_queries=True,
    )  # fmt: skip
    q = jnp.shape(query)[0]
    out = _ring(*args, **static)
    if out.sum_w.shape[1] != q:  # padded rows: gather the outputs, then drop the padding
        replicated = NamedSharding(mesh, P())
        out = KernelMoments(*(jax.reshard(a, replicated)[:, :q] for a in out))
    return unstack(out, log_bw)
