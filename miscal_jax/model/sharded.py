"""The model across devices: prediction with the queries split, fitting with the items split.

:func:`predict_sharded`: a fitted :class:`~miscal_jax.model.FieldModel` is
small next to the queries a production user scores (its references are the
fitted items), so each device holds the whole model and ``1/D`` of the
queries, and runs the same program as :func:`~miscal_jax.model.predict` on
its share: no communication at all.

:func:`fit_sharded` and :func:`out_of_fold_sharded`: the items are split
over a mesh axis, and every kernel sum of the fit (bandwidth selection,
encoder training, leave-one-out fields) runs as
:func:`~miscal_jax.kernels.kernel_moments_ring`: each device holds ``1/D`` of
the items and the reference shards travel round the ring, so no device ever
smooths all ``n`` items against all ``n``. The small per-fold fits (global
maps, PCA, the correction) are left to XLA's SPMD partitioner. The mesh may
span processes (``jax.distributed.initialize``): the same call on every
process fits one model.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from miscal_jax._types import Array, FieldEstimate, PRNGKey
from miscal_jax.kernels.sharded import ring_while_tracing
from miscal_jax.model.field_model import (
    FieldModel,
    FitConfig,
    check_queries,
    fit,
    num_models,
    out_of_fold,
    predict_block,
    query_block,
)

__all__ = ["fit_sharded", "out_of_fold_sharded", "predict_sharded"]


@functools.partial(jax.jit, static_argnames=("mesh", "axis"))
def _predict_sharded(model, x, conf, *, mesh, axis):
    run = jax.shard_map(
        predict_block,
        mesh=mesh,
        in_specs=(P(), P(axis), P(axis)),
        out_specs=P(axis),
        check_vma=False,
    )
    return run(model, x, conf)


def predict_sharded(
    model: FieldModel,
    embeddings: ArrayLike,
    conf: ArrayLike,
    *,
    mesh: Mesh,
    axis: str | None = None,
) -> tuple[FieldEstimate, Array]:
    """:func:`~miscal_jax.model.predict` with the queries split over the devices of a mesh axis.

    Each device holds the (replicated) model and ``ceil(q / D)`` queries,
    padded to a size bucket as :func:`~miscal_jax.model.predict` pads them, so
    nearby query counts share one program; the ``[q]`` outputs (a few floats
    a query) are then gathered onto every device of the mesh.

    Args:
      model: one fitted :class:`~miscal_jax.model.FieldModel` (not a batch:
        pick one with :func:`~miscal_jax.model.select_model`).
      embeddings: ``[q, d]`` new items.
      conf: ``[q]`` their confidences.
      mesh: a :class:`jax.sharding.Mesh`.
      axis: the mesh axis the queries are split over (default: the first).

    Returns:
      ``(field_estimate, corrected_conf)`` as :func:`~miscal_jax.model.predict`:
      ``[q]`` arrays.

    Examples:
      >>> import jax, numpy as np
      >>> from miscal_jax.model import FitConfig, fit, predict
      >>> from miscal_jax.synthetic.planted import make_planted
      >>> d = make_planted(200, seed=0)
      >>> model, _ = jax.jit(fit)(jax.random.key(0), d.embeddings, d.conf, d.correct,
      ...                         FitConfig(folds=2, candidates=("raw",)))
      >>> mesh = jax.make_mesh((jax.device_count(),), ("q",))
      >>> _, p = predict_sharded(model, d.embeddings[:9], d.conf[:9], mesh=mesh)
      >>> p.shape, bool(np.allclose(p, predict(model, d.embeddings[:9], d.conf[:9])[1]))
      ((9,), True)
    """
    if num_models(model) is not None:
        raise ValueError(
            "model: a batch of models; predict_sharded takes one (select_model(model, i))."
        )
    axis = mesh.axis_names[0] if axis is None else axis
    if axis not in mesh.axis_names:
        raise ValueError(f"axis: {axis!r} is not an axis of the mesh {mesh.axis_names}.")
    x, conf = check_queries(model, embeddings, conf)
    q, devices = x.shape[0], mesh.shape[axis]
    per_device = max(1, -(-q // devices))
    block = query_block(per_device)
    total = -(-per_device // block) * block * devices
    x = jnp.pad(x, ((0, total - q), (0, 0)))
    conf = jnp.pad(conf, (0, total - q), constant_values=0.5)
    rows, whole = NamedSharding(mesh, P(axis)), NamedSharding(mesh, P())
    x, conf = jax.device_put(x, rows), jax.device_put(conf, rows)
    model = jax.device_put(model, whole)
    out = _predict_sharded(model, x, conf, mesh=mesh, axis=axis)
    return jax.tree.map(lambda a: jax.device_put(a, whole)[:q], out)


def _axis(mesh: Mesh, axis: str | None) -> str:
    axis = mesh.axis_names[0] if axis is None else axis
    if axis not in mesh.axis_names:
        raise ValueError(f"axis: {axis!r} is not an axis of the mesh {mesh.axis_names}.")
    return axis


def _automatic(mesh: Mesh) -> Mesh:
    """The mesh with automatic axes: XLA lays out what the ring does not (sorts, small fits)."""
    auto = (jax.sharding.AxisType.Auto,) * len(mesh.axis_names)
    return Mesh(mesh.devices, mesh.axis_names, axis_types=auto)


@functools.partial(jax.jit, static_argnames=("config", "mesh", "axis"))
def _fit_sharded(rng, x, conf, correct, config, *, mesh, axis):
    with ring_while_tracing(mesh, axis):
        return fit(rng, x, conf, correct, config)


@functools.partial(jax.jit, static_argnames=("mesh", "axis"))
def _out_of_fold_sharded(model, *, mesh, axis):
    with ring_while_tracing(mesh, axis):
        return out_of_fold(model)


def _rows(mesh: Mesh, axis: str, *arrays):
    """Host arrays split by rows over ``axis`` (kept whole where the rows do not divide)."""
    out = []
    for a in arrays:
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            # a global array of a multi-process mesh: the same shards, under the automatic axes
            spec = a.sharding.spec if isinstance(a.sharding, NamedSharding) else P(axis)
            shards = [s.data for s in a.addressable_shards]
            out.append(
                jax.make_array_from_single_device_arrays(a.shape, NamedSharding(mesh, spec), shards)
            )
            continue
        spec = P(axis) if jnp.shape(a)[0] % mesh.shape[axis] == 0 else P()
        out.append(jax.device_put(a, NamedSharding(mesh, spec)))
    return out


def fit_sharded(
    rng: PRNGKey,
    embeddings: ArrayLike,
    conf: ArrayLike,
    correct: ArrayLike,
    config: FitConfig = FitConfig(),
    *,
    mesh: Mesh,
    axis: str | None = None,
) -> tuple[FieldModel, dict]:
    """:func:`~miscal_jax.model.fit` with the items split over the devices of a mesh axis.

    One program, compiled once per mesh, shapes and configuration; equal to
    :func:`~miscal_jax.model.fit` up to float rounding (the ring sums the
    reference shards in another order).

    Args:
      rng, embeddings, conf, correct, config: as :func:`~miscal_jax.model.fit`.
        On a mesh spanning processes, pass global arrays
        (``jax.make_array_from_process_local_data``: each process its rows).
      mesh: a :class:`jax.sharding.Mesh` (its devices may span processes).
      axis: the mesh axis the items are split over (default: the first).

    Returns:
      ``(model, info)`` as :func:`~miscal_jax.model.fit`, its arrays laid out
      on the mesh.

    Examples:
      >>> import jax, numpy as np
      >>> from miscal_jax.model import FitConfig, fit, out_of_fold
      >>> from miscal_jax.synthetic.planted import make_planted
      >>> d = make_planted(200, seed=0)
      >>> cfg = FitConfig(folds=2, candidates=("raw",))
      >>> mesh = jax.make_mesh((jax.device_count(),), ("items",))
      >>> model, _ = fit_sharded(jax.random.key(0), d.embeddings, d.conf, d.correct, cfg,
      ...                        mesh=mesh)
      >>> one, _ = jax.jit(fit)(jax.random.key(0), d.embeddings, d.conf, d.correct, cfg)
      >>> a = out_of_fold_sharded(model, mesh=mesh)[0].value
      >>> bool(np.allclose(a, out_of_fold(one)[0].value, atol=1e-5))
      True
    """
    axis, mesh = _axis(mesh, axis), _automatic(mesh)
    x, conf, correct = _rows(mesh, axis, embeddings, conf, correct)
    return _fit_sharded(rng, x, conf, correct, config, mesh=mesh, axis=axis)


def out_of_fold_sharded(
    model: FieldModel, *, mesh: Mesh, axis: str | None = None
) -> tuple[FieldEstimate, Array]:
    """:func:`~miscal_jax.model.out_of_fold` with the fitted items split over a mesh axis.

    Args:
      model: a :class:`~miscal_jax.model.FieldModel` (e.g. from :func:`fit_sharded`).
      mesh, axis: as :func:`fit_sharded`.

    Returns:
      ``(field_estimate, corrected_conf)``: ``[n]`` arrays, as
      :func:`~miscal_jax.model.out_of_fold`.
    """
    return _out_of_fold_sharded(model, mesh=_automatic(mesh), axis=_axis(mesh, axis))
