"""Prediction across devices: the queries split over a mesh axis, the model on every device.

A fitted :class:`~miscal_jax.model.FieldModel` is small next to the queries a
production user scores (its references are the fitted items), so each device
holds the whole model and ``1/D`` of the queries, and runs the same program
as :func:`~miscal_jax.model.predict` on its share: no communication at all.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from miscal_jax._types import Array, FieldEstimate
from miscal_jax.model.field_model import (
    FieldModel,
    check_queries,
    num_models,
    predict_block,
    query_block,
)

__all__ = ["predict_sharded"]


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
