"""The functional core: ``fit`` and ``predict`` over one :class:`FieldModel` pytree.

``fit(key, embeddings, conf, correct, config)`` runs the whole cross-fitted
pipeline (global map, geometry, bandwidth, correction, final map) for all K
folds at once, folds chosen by masks rather than slices, and returns one
pytree with the fold models stacked on a leading axis. It is pure: it runs
under ``jax.jit`` with ``config`` static, and ``jax.vmap`` over many models'
``(conf, correct)`` sharing one embedding matrix fits them all in one call.
``predict(model, embeddings, conf)`` applies the fold models to new items and
averages them; :func:`out_of_fold` gives every fitted item its estimate from
the fold model that never saw it. :func:`save` and :func:`load` write and read
a versioned msgpack file.
"""

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, struct
from jax.typing import ArrayLike

from miscal_jax._src.dtypes import as_float, float_dtype
from miscal_jax._src.fitting import gather_rows
from miscal_jax._types import Array, FieldEstimate, PRNGKey
from miscal_jax.correction.local import (
    CorrectionParams,
    apply_global,
    fit_correction_params,
    fit_final,
    fit_global_out_of_fold,
    local_confidence,
)
from miscal_jax.geometry.encoder import EncoderConfig
from miscal_jax.geometry.spaces import DEFAULT_CANDIDATES, Geometry, embed, fit_geometry
from miscal_jax.kernels.binned import (
    Bins,
    Summary,
    Tree,
    binned_moments,
    near_moments,
    route,
)
from miscal_jax.kernels.moments import combine, kernel_moments
from miscal_jax.smoothing.nadaraya_watson import field_from_moments, residual_values

__all__ = [
    "FORMAT_VERSION",
    "FieldModel",
    "FitConfig",
    "batch_axes",
    "check_queries",
    "fit",
    "fit_many",
    "apply_fold",
    "fold_masks",
    "fold_parts",
    "fold_values",
    "summary_moments",
    "inner_global",
    "load",
    "out_of_fold",
    "out_of_fold_global",
    "per_model",
    "num_models",
    "predict",
    "predict_block",
    "query_block",
    "save",
    "select_model",
]

#: Version of the file layout written by :func:`save`; :func:`load` refuses others.
FORMAT_VERSION = 4


@struct.dataclass
class FitConfig:
    """Configuration of :func:`fit`: a frozen dataclass, structure static, numbers traced.

    Every field here is structural (static: it selects the compiled program);
    the numeric hyperparameters live in ``encoder`` (:class:`EncoderConfig`)
    and are traced leaves, so ``jax.jit(fit)`` needs no ``static_argnums``,
    ``jax.eval_shape(fit, key, x, p, y, config)`` works, and a sweep over
    learning rates compiles :func:`fit` once. Change a field with
    ``config.replace(...)``.

    Attributes:
      folds: number of cross-fitting folds K (>= 2).
      candidates: geometries to choose from per fold (:mod:`miscal_jax.geometry.spaces`).
      encoder: encoder configuration (also holds the kernel name).
      use_conf: feed ``logit(conf)`` to the encoder.
      global_method: the first map: ``"stacked"`` (isotonic and Platt
        weighed by their out-of-fold Brier score, and the final map stacked
        likewise; :func:`~miscal_jax.correction.fit_stacked`),
        ``"isotonic"`` or ``"temperature"``.
      final_recalibration: fit a final isotonic map on the corrected values.

    The correction's parameters and the final map are fitted on the training
    rows' leave-one-out field values, leaving out a trained space's own fit
    rows (their values saw their outcomes through the space's weights).
    """

    folds: int = struct.field(pytree_node=False, default=5)
    candidates: tuple[str, ...] = struct.field(pytree_node=False, default=DEFAULT_CANDIDATES)
    encoder: EncoderConfig = EncoderConfig()
    use_conf: bool = struct.field(pytree_node=False, default=True)
    global_method: str = struct.field(pytree_node=False, default="stacked")
    final_recalibration: bool = struct.field(pytree_node=False, default=True)


@struct.dataclass
class FieldModel:
    """Everything :func:`fit` learned, fold models stacked on a leading ``[K]`` axis.

    Attributes:
      ref_x: ``[n, d]`` fitted items (the smoother's references).
      ref_conf: ``[n]`` their confidences.
      ref_correct: ``[n]`` their outcomes.
      train_mask: ``[K, n]`` bools: the items fold model ``k`` was fitted on.
        Each item is held out by exactly one fold, and the folds hold out
        ``ceil(n / K)`` or one fewer items (as :func:`fold_masks` makes them).
      ref_residual: ``[K, n]`` residuals ``correct - p_global`` that fold model
        ``k`` smooths (each training item's from a global map fitted without it).
      geometry: :class:`~miscal_jax.geometry.Geometry` with ``[K, ...]`` leaves.
      global_map: the first, confidence-only map, ``[K, ...]`` leaves.
      params: :class:`~miscal_jax.correction.CorrectionParams`, ``[K]`` leaves.
      final_map: isotonic map applied last (stacked with Platt scaling under
        the stacked method), ``[K, ...]`` leaves (``None`` when off).
      config: the :class:`FitConfig` (its structure static, its numbers leaves).
      bins: ``None`` (fold models smooth their training items exactly), or a
        :class:`~miscal_jax.kernels.binned.Summary` with ``[K, ...]`` leaves:
        each fold's training items summarised in its space
        (:func:`~miscal_jax.model.bin_model`), which :func:`predict` and
        :func:`out_of_fold` then smooth instead (:func:`summary_moments`).
    """

    ref_x: Array
    ref_conf: Array
    ref_correct: Array
    train_mask: Array
    ref_residual: Array
    geometry: Geometry
    global_map: Any
    params: CorrectionParams
    final_map: Any
    config: FitConfig = FitConfig()
    bins: Summary | None = None

    @property
    def fold(self) -> Array:
        """``[n]`` fold id of each fitted item (the fold that held it out)."""
        return jnp.argmin(self.train_mask, axis=0)


def fold_masks(rng: PRNGKey, n: int, folds: int) -> Array:
    """``[folds, n]`` training masks of a balanced, random K-fold split.

    Examples:
      >>> import jax
      >>> m = fold_masks(jax.random.key(0), 10, 5)
      >>> m.shape, int(m.sum(0).min()), int(m.sum(1).min())
      ((5, 10), 4, 8)
    """
    if folds < 2:
        raise ValueError(f"folds: need at least 2 for cross-fitting, got {folds}.")
    if n < 2 * folds:
        raise ValueError(f"folds: {folds} folds need at least {2 * folds} items, got {n}.")
    fold = jax.random.permutation(rng, n) % folds
    return fold[None, :] != jnp.arange(folds)[:, None]


def inner_global(conf, correct, train, inner_masks, method):
    """The fold's global map and training residuals free of their own outcomes.

    The fold's map is fitted on its ``train`` rows. Each training row's
    residual instead comes from a map fitted on the training rows outside its
    inner fold (``inner_masks``, a second K-fold split of all items), so the
    geometry, the correction and the final map see residuals as noisy as new
    items'.

    Returns:
      ``(global_map, p_global [n], residual [n])``; rows outside ``train``
      get the fold's map.
    """
    global_map, p_global = fit_global_out_of_fold(conf, correct, train, inner_masks, method=method)
    return global_map, p_global, correct - p_global


def _fit_fold(rng, x, conf, correct, train, inner_masks, config: FitConfig):
    """One fold model from the ``train`` rows (every shape static)."""
    global_map, p_global, residual = inner_global(
        conf, correct, train, inner_masks, config.global_method
    )
    geometry, loo, info = fit_geometry(
        rng,
        x,
        conf,
        residual,
        train,
        candidates=config.candidates,
        config=config.encoder,
        use_conf=config.use_conf,
        train_size=x.shape[0] - x.shape[0] // config.folds,  # the largest fold's training rows
    )
    # the correction and the final map learn from rows whose field values are
    # as noisy as a new item's: a trained space's own fit rows are left out
    honest = info.pop("honest")
    params = fit_correction_params(p_global, loo.value, loo.n_eff, correct, honest)
    final_map = None
    if config.final_recalibration:
        p_loo = local_confidence(params, p_global, loo.value, loo.n_eff)
        stacked = config.global_method == "stacked"
        final_map = fit_final(p_loo, correct, honest, inner_masks if stacked else None)
    return (geometry, global_map, params, final_map, residual), info


def fit(
    rng: PRNGKey,
    embeddings: ArrayLike,
    conf: ArrayLike,
    correct: ArrayLike,
    config: FitConfig = FitConfig(),
) -> tuple[FieldModel, dict]:
    """Fits the cross-fitted field and local correction (pure; ``jit`` with ``config`` static).

    Validate first (:func:`~miscal_jax.validation.validate_inputs`): this
    function only checks shapes, so it can be traced.

    Args:
      rng: PRNG key (fold split, splits inside folds, encoder training).
      embeddings: ``[n, d]`` item representations.
      conf: ``[n]`` confidences in ``[0, 1]``.
      correct: ``[n]`` 0/1 outcomes.
      config: a :class:`FitConfig`.

    Returns:
      ``(model, info)``: the :class:`FieldModel` and per-fold selection
      details from :func:`~miscal_jax.geometry.fit_geometry` with a leading
      ``[K]`` axis (``info["select_error"]`` and ``info["held_error"]`` are
      ``[K, c]``, ``info["constant_error"]`` is ``[K]``; with trained
      candidates, ``info["encoder"]`` is a tuple of their training histories).

    Examples:
      >>> import jax
      >>> from miscal_jax.synthetic.planted import make_planted
      >>> d = make_planted(200, seed=0)
      >>> cfg = FitConfig(folds=2, candidates=("raw",))
      >>> model, info = jax.jit(fit)(
      ...     jax.random.key(0), d.embeddings, d.conf, d.correct, cfg)
      >>> model.train_mask.shape, info["select_error"].shape
      ((2, 200), (2, 1))
    """
    x = as_float(embeddings)
    conf = as_float(conf)
    correct = as_float(correct)
    if x.ndim != 2 or conf.shape != (x.shape[0],) or correct.shape != conf.shape:
        raise ValueError(
            f"embeddings/conf/correct: expected [n, d], [n], [n], got {x.shape}, {conf.shape}, "
            f"{correct.shape}; call validate_inputs first."
        )
    split_rng, fold_rng, inner_rng = jax.random.split(rng, 3)
    masks = fold_masks(split_rng, x.shape[0], config.folds)
    inner_masks = fold_masks(inner_rng, x.shape[0], config.folds)
    keys = jax.random.split(fold_rng, config.folds)
    fold = lambda args: _fit_fold(args[0], x, conf, correct, args[1], inner_masks, config)
    fitted, info = jax.lax.map(fold, (keys, masks))
    geometry, global_map, params, final_map, residual = fitted
    model = FieldModel(
        x, conf, correct, masks, residual, geometry, global_map, params, final_map, config
    )
    return model, info


def fit_many(
    rng: PRNGKey,
    embeddings: ArrayLike,
    conf: ArrayLike,
    correct: ArrayLike,
    config: FitConfig = FitConfig(),
) -> tuple[FieldModel, dict]:
    """Fits ``m`` models that answered the same items: one batch, the embeddings held once.

    ``jax.vmap(fit, in_axes=(None, None, 0, 0, None))`` fits the same models
    but returns ``m`` copies of the shared ``[n, d]`` embeddings (84 models of
    12k items at d = 384: 1.5 GB); here the batch keeps one ``ref_x``
    (:func:`batch_axes` says so to ``vmap``). Every model gets the same folds.

    Args:
      rng: PRNG key, shared by the models.
      embeddings: ``[n, d]`` the items.
      conf: ``[m, n]`` each model's confidences.
      correct: ``[m, n]`` each model's outcomes.
      config: a :class:`FitConfig`.

    Returns:
      ``(models, info)``: a batch :class:`FieldModel` (``ref_x`` ``[n, d]``,
      every other leaf with a leading ``[m]`` axis) and ``info`` with a
      leading ``[m]`` axis.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from miscal_jax.synthetic.planted import make_planted
      >>> d = make_planted(200, seed=0)
      >>> cfg = FitConfig(folds=2, candidates=("raw",))
      >>> many, _ = jax.jit(fit_many)(jax.random.key(0), d.embeddings,
      ...     jnp.stack([d.conf, d.conf**2]), jnp.stack([d.correct] * 2), cfg)
      >>> num_models(many), many.ref_x.shape, many.ref_conf.shape
      (2, (200, 8), (2, 200))
    """
    x = as_float(embeddings)

    def one(c, y):
        model, info = fit(rng, x, c, y, config)
        return model.replace(ref_x=None), info

    models, info = jax.vmap(one)(jnp.asarray(conf), jnp.asarray(correct))
    return models.replace(ref_x=x), info


def batch_axes(model: FieldModel) -> FieldModel:
    """``vmap`` axes of a batch of models: 0 for every leaf, ``None`` for shared embeddings.

    Pass it as the model's ``in_axes`` to map a function of one model over a batch.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from miscal_jax.synthetic.planted import make_planted
      >>> d = make_planted(200, seed=0)
      >>> cfg = FitConfig(folds=2, candidates=("raw",))
      >>> many = jax.eval_shape(fit_many, jax.random.key(0), d.embeddings,
      ...     jnp.stack([d.conf] * 3), jnp.stack([d.correct] * 3), cfg)[0]
      >>> axes = batch_axes(many)
      >>> axes.ref_x is None, axes.ref_conf
      (True, 0)
    """
    shared = model.ref_x.ndim == 2
    return jax.tree.map(lambda _: 0, model).replace(ref_x=None if shared else 0)


def per_model(fn, key: PRNGKey, model: FieldModel, *args):
    """``fn(key_i, model_i, *args_i)`` over a batch of models, one vmap, the key split per model.

    The statistics take one model; this is how each of them takes a batch.
    ``args`` carry a leading ``[m]`` axis (``None`` leaves pass through).

    Returns:
      ``fn``'s outputs with a leading ``[m]`` axis.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from miscal_jax.synthetic.planted import make_planted
      >>> d = make_planted(200, seed=0)
      >>> cfg = FitConfig(folds=2, candidates=("raw",))
      >>> many = jax.eval_shape(fit_many, jax.random.key(0), d.embeddings,
      ...     jnp.stack([d.conf] * 3), jnp.stack([d.correct] * 3), cfg)[0]
      >>> mean_conf = lambda key, one: one.ref_conf.mean()
      >>> jax.eval_shape(lambda m: per_model(mean_conf, jax.random.key(0), m), many).shape
      (3,)
    """
    keys = jax.random.split(key, num_models(model))
    axes = (0, batch_axes(model), *(0,) * len(args))
    return jax.vmap(fn, in_axes=axes)(keys, model, *args)


def fold_parts(model: FieldModel, k) -> tuple:
    """Fold ``k``'s pieces.

    Returns:
      ``(geometry, global_map, params, final_map, train_mask, ref_residual, bins)``.
    """
    take = lambda tree: jax.tree.map(lambda a: a[k], tree)
    parts = (model.geometry, model.global_map, model.params, model.final_map)
    return take(parts + (model.train_mask, model.ref_residual, model.bins))


def training_size(model: FieldModel) -> int:
    """Static bound on a fold's training items: ``n - ceil(n / K) + 1``.

    Every fold holds out ``ceil(n / K)`` or one fewer items (:func:`fold_masks`,
    :func:`~miscal_jax.model.carried_folds`), so the gathered training items
    (:func:`~miscal_jax._src.fitting.gather_rows`) fit in this many rows.
    """
    folds, n = model.train_mask.shape[-2:]
    return n - -(-n // folds) + 1


def fold_values(model: FieldModel, ref_residual: Array) -> Array:
    """``[n, 4]`` the values a fold smooths: ``[r, r^2]`` of ``correct - conf``, of the residual."""
    raw = residual_values(model.ref_correct - model.ref_conf)
    return jnp.concatenate([raw, residual_values(ref_residual)], axis=1)


#: Queries per vectorised batch of the near (own-leaf) sums of a binned fold.
NEAR_BATCH = 256


def summary_moments(model: FieldModel, parts, z: Array, leaf: Array, exclude=None):
    """A binned fold's moments at ``[q, k]`` queries ``z`` in its space, lying in leaves ``leaf``.

    The training items of a query's own leaf are summed exactly
    (:func:`~miscal_jax.kernels.binned.near_moments`, re-embedded from
    ``ref_x``), every other leaf's bins as clouds
    (:func:`~miscal_jax.kernels.binned.binned_moments`); ``exclude`` ``[q]``
    leaves out one item per query (leave-one-out; ``-1``: none). Values as
    :func:`fold_values`.
    """
    geometry, _, _, _, train, ref_residual, summary = parts
    bw, kernel = geometry.log_bandwidth, geometry.kernel
    exclude = jnp.full(z.shape[0], -1, jnp.int32) if exclude is None else exclude
    far = binned_moments(z, summary.bins, bw, kernel=kernel, skip=leaf, group=2)
    values = fold_values(model, ref_residual)

    def near(args):
        zi, li, ei = args
        idx = summary.members[li]  # [cap]
        at = jnp.maximum(idx, 0)
        ok = (idx >= 0) & train[at] & (at != ei)
        points = embed(geometry, model.ref_x[at], model.ref_conf[at])
        return near_moments(zi[None], points[None], values[at][None], ok[None], bw, kernel=kernel)

    # one bandwidth per fold: [q, 1, ...] -> [q, ...]
    close = jax.tree.map(
        lambda a: a[:, 0], jax.lax.map(near, (z, leaf, exclude), batch_size=NEAR_BATCH)
    )
    return combine(jax.tree.map(lambda a, b: jnp.stack([a, b]), far, close))


def _fold_fields(model: FieldModel, parts, x, conf):
    """``(field of correct - conf, field of correct - p_global)`` of one fold at ``[q, d]``."""
    geometry, _, _, _, train, ref_residual, bins = parts
    z = embed(geometry, x, conf)
    if bins is not None:
        m = summary_moments(model, parts, z, route(z, bins.tree))
    else:  # the fold's training items alone, gathered: a fifth fewer pairs at K = 5
        rows, ok = gather_rows(train, training_size(model))
        ref_z = embed(geometry, model.ref_x[rows], model.ref_conf[rows])
        values = fold_values(model, ref_residual)[rows]
        m = kernel_moments(z, ref_z, values, geometry.log_bandwidth, ref_mask=ok,
                           kernel=geometry.kernel)  # fmt: skip
    field = field_from_moments(m._replace(sum_wv=m.sum_wv[:, :2]))
    local = field_from_moments(m._replace(sum_wv=m.sum_wv[:, 2:]))
    return field, local


def apply_fold(model: FieldModel, parts, x, conf):
    """Field (of ``correct - conf``) and ``[q]`` corrected confidence of one fold at ``[q, d]``.

    ``parts`` is :func:`fold_parts`'s tuple for the fold.
    """
    field, _, p_local = _apply_fold_fields(model, parts, x, conf)
    return field, p_local


def _apply_fold_fields(model: FieldModel, parts, x, conf):
    """:func:`apply_fold` with the field after the global map between its two outputs."""
    global_map, params, final_map = parts[1:4]
    field, local = _fold_fields(model, parts, x, conf)
    p_local = local_confidence(params, apply_global(global_map, conf), local.value, local.n_eff)
    if final_map is not None:
        p_local = apply_global(final_map, p_local)
    return field, local, p_local


def num_models(model: FieldModel) -> int | None:
    """The number of models stacked in ``model`` by ``jax.vmap(fit)``, or ``None`` for one.

    A batched model's leaves carry a leading ``[m]`` axis (``train_mask`` is
    ``[m, K, n]``); :func:`predict`, :func:`out_of_fold`, :func:`save` and
    :func:`load` accept it as it is, :func:`select_model` takes one out.
    """
    return model.train_mask.shape[0] if model.train_mask.ndim == 3 else None


def select_model(model: FieldModel, i: int) -> FieldModel:
    """Model ``i`` of a batch from ``jax.vmap(fit)`` (an ordinary :class:`FieldModel`).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from miscal_jax.synthetic.planted import make_planted
      >>> d = make_planted(200, seed=0)
      >>> confs = jnp.stack([d.conf, d.conf**2])
      >>> cfg = FitConfig(folds=2, candidates=("raw",))
      >>> many, _ = jax.vmap(fit, in_axes=(None, None, 0, 0, None))(
      ...     jax.random.key(0), d.embeddings, confs, jnp.stack([d.correct] * 2), cfg)
      >>> num_models(many), num_models(select_model(many, 1))
      (2, None)
    """
    m = num_models(model)
    if m is None:
        raise ValueError("model: not a batch (no leading model axis); it is model 0 already.")
    if not 0 <= i < m:
        raise ValueError(f"i: the batch holds {m} models, got index {i}.")
    shared = model.ref_x.ndim == 2
    one = jax.tree.map(lambda a: a[i], model.replace(ref_x=None))
    return one.replace(ref_x=model.ref_x if shared else model.ref_x[i])


def check_queries(model: FieldModel, x, conf) -> tuple[Array, Array]:
    """New items ``x [q, d]`` and ``conf [q]`` as float arrays, their shapes checked."""
    x = as_float(x)
    conf = as_float(conf)
    d = model.ref_x.shape[-1]
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"embeddings: expected [q, {d}], got {x.shape}.")
    if conf.shape != (x.shape[0],):
        raise ValueError(f"conf: expected shape [{x.shape[0]}], got {conf.shape}.")
    return x, conf


#: Queries are run in chunks of this many rows; fewer are padded to a power of two
#: (at least 128), so every query size shares one of four compiled programs.
PREDICT_CHUNK = 1024


@jax.jit
def predict_block(model: FieldModel, x: Array, conf: Array) -> tuple[FieldEstimate, Array]:
    """:func:`predict` of one block of queries as it is (no padding, no chunks)."""
    folds = model.train_mask.shape[0]
    per_fold = jax.lax.map(
        lambda k: apply_fold(model, fold_parts(model, k), x, conf), jnp.arange(folds)
    )
    return jax.tree.map(lambda a: jnp.mean(a, axis=0), per_fold)


def query_block(q: int) -> int:
    """Rows per compiled block for ``q`` queries: a power of two in ``[128, PREDICT_CHUNK]``.

    Examples:
      >>> query_block(5), query_block(1000), query_block(1100), query_block(50_000)
      (128, 1024, 1024, 1024)
    """
    return min(PREDICT_CHUNK, max(128, 1 << (q - 1).bit_length()))


def predict(
    model: FieldModel, embeddings: ArrayLike, conf: ArrayLike
) -> tuple[FieldEstimate, Array]:
    """Applies the fold models to new items and averages them (pure, ``jit``-able).

    Called on concrete arrays, the queries are padded to a size bucket (a
    power of two from 128 to :data:`PREDICT_CHUNK`) and larger sets are run
    in chunks of :data:`PREDICT_CHUNK`, so query sizes share compiled
    programs (1,000 and 1,100 queries: one compilation). Inside a caller's
    ``jit`` the queries are used as they are.

    Args:
      model: a :class:`FieldModel`.
      embeddings: ``[q, d]`` new items.
      conf: ``[q]`` their confidences.

    Returns:
      ``(field_estimate, corrected_conf)``: the fold-averaged
      :class:`~miscal_jax.FieldEstimate` of ``correct - conf`` (``se`` and
      ``n_eff`` averaged too, a conservative choice) and ``[q]`` corrected
      confidences. For a batch of ``m`` models (:func:`num_models`), ``[m, q]``
      arrays; ``conf`` is then ``[q]`` (shared) or ``[m, q]`` (one row a model).

    Examples:
      >>> import jax
      >>> from miscal_jax.synthetic.planted import make_planted
      >>> d = make_planted(200, seed=0)
      >>> cfg = FitConfig(folds=2, candidates=("raw",))
      >>> model, _ = jax.jit(fit)(
      ...     jax.random.key(0), d.embeddings, d.conf, d.correct, cfg)
      >>> est, p = predict(model, d.embeddings[:5], d.conf[:5])
      >>> est.value.shape, p.shape
      ((5,), (5,))
    """
    if num_models(model) is not None:  # a batch: every model, one conf row each or shared
        conf = jnp.asarray(conf)
        axis = 0 if conf.ndim == 2 else None
        run = lambda m, c: predict(m, embeddings, c)
        return jax.vmap(run, in_axes=(batch_axes(model), axis))(model, conf)
    x, conf = check_queries(model, embeddings, conf)
    q = x.shape[0]
    if isinstance(x, jax.core.Tracer) or isinstance(conf, jax.core.Tracer) or q == 0:
        return predict_block(model, x, conf)
    size = query_block(q)
    total = -(-q // size) * size
    x = jnp.pad(x, ((0, total - q), (0, 0)))
    conf = jnp.pad(conf, (0, total - q), constant_values=0.5)
    parts = [
        predict_block(model, x[s : s + size], conf[s : s + size]) for s in range(0, total, size)
    ]
    return jax.tree.map(lambda *a: jnp.concatenate(a)[:q], *parts)


def out_of_fold(model: FieldModel) -> tuple[FieldEstimate, Array]:
    """Each fitted item's field and corrected confidence from the fold that held it out.

    Returns:
      ``(field_estimate, corrected_conf)`` of ``[n]`` arrays, all out-of-fold
      (``[m, n]`` for a batch of ``m`` models).

    Examples:
      >>> import jax
      >>> from miscal_jax.synthetic.planted import make_planted
      >>> d = make_planted(200, seed=0)
      >>> cfg = FitConfig(folds=2, candidates=("raw",))
      >>> model, _ = jax.jit(fit)(
      ...     jax.random.key(0), d.embeddings, d.conf, d.correct, cfg)
      >>> est, p = out_of_fold(model)
      >>> est.value.shape
      (200,)
    """
    field, _, p_local = out_of_fold_fields(model)
    return field, p_local


def out_of_fold_global(model: FieldModel) -> FieldEstimate:
    """Each fitted item's field of ``correct - p_global``, from the fold that held it out.

    Each fold model smooths its training items' residuals after the fold's
    global map (``model.ref_residual``) in the geometry it chose: the field
    the local correction acts on, which shows where a model deviates from its
    *own* average miscalibration.

    Args:
      model: a :class:`FieldModel`.

    Returns:
      A :class:`~miscal_jax.FieldEstimate` of ``[n]`` arrays, all out-of-fold.

    Examples:
      >>> import jax
      >>> from miscal_jax.synthetic.planted import make_planted
      >>> d = make_planted(200, seed=0)
      >>> cfg = FitConfig(folds=2, candidates=("raw",))
      >>> model, _ = jax.jit(fit)(
      ...     jax.random.key(0), d.embeddings, d.conf, d.correct, cfg)
      >>> jax.jit(out_of_fold_global)(model).value.shape
      (200,)
    """
    return out_of_fold_fields(model)[1]


def out_of_fold_fields(model: FieldModel) -> tuple[FieldEstimate, FieldEstimate, Array]:
    """:func:`out_of_fold` and :func:`out_of_fold_global` from one smoothing pass.

    Both fields smooth the same references with the same weights (only the
    values differ), so a caller that needs both pays for one pass.

    Returns:
      ``(field, field_global, corrected_conf)``, ``[n]`` arrays (``[m, n]``
      for a batch of ``m`` models), all out-of-fold.

    Examples:
      >>> import jax
      >>> from miscal_jax.synthetic.planted import make_planted
      >>> d = make_planted(200, seed=0)
      >>> cfg = FitConfig(folds=2, candidates=("raw",))
      >>> model, _ = jax.jit(fit)(
      ...     jax.random.key(0), d.embeddings, d.conf, d.correct, cfg)
      >>> field, field_global, p = jax.jit(out_of_fold_fields)(model)
      >>> field.value.shape, field_global.value.shape, p.shape
      ((200,), (200,), (200,))
    """
    if num_models(model) is not None:
        return jax.vmap(out_of_fold_fields, in_axes=(batch_axes(model),))(model)
    return _held_out_map(model, lambda parts, x, conf: _apply_fold_fields(model, parts, x, conf))


def _held_out_map(model: FieldModel, apply):
    """``apply(fold_parts, x, conf)`` at each fold's held-out items, gathered to ``[n]`` leaves.

    Folds hold out ``m = ceil(n / K)`` or ``m - 1`` items (see
    ``FieldModel.train_mask``), so each fold smooths ``m`` padded rows, not
    all ``n`` items.
    """
    folds, n = model.train_mask.shape
    held_out = lambda train: jnp.nonzero(~train, size=-(-n // folds), fill_value=n)[0]
    index = jax.vmap(held_out)(model.train_mask)  # [K, m], padded with n
    rows = jnp.minimum(index, n - 1)  # padding reads any row; it is dropped below

    def fold(k):
        return apply(fold_parts(model, k), model.ref_x[rows[k]], model.ref_conf[rows[k]])

    per_fold = jax.lax.map(fold, jnp.arange(folds))
    flat = index.reshape(-1)
    put = lambda a: jnp.full(n, jnp.nan, a.dtype).at[flat].set(a.reshape(-1), mode="drop")
    return jax.tree.map(put, per_fold)


def _template(config: FitConfig, shapes: dict) -> FieldModel:
    """A :class:`FieldModel` of the right structure for ``serialization.from_state_dict``."""
    n, d, m = shapes["n"], shapes["d"], shapes.get("models")
    x = jnp.zeros((n, d))
    if m is None:
        one = lambda: fit(jax.random.key(0), x, jnp.full(n, 0.5), jnp.zeros(n), config)
        model = jax.eval_shape(one)[0]
        if shapes.get("bins"):
            model = model.replace(bins=_bins_template(config.folds, n, shapes["bins"]))
        return model
    config = jax.tree.map(lambda a: jnp.zeros(m) + jnp.asarray(a)[0], config)
    many = jax.vmap(fit, in_axes=(None, None, 0, 0, 0))
    batch = jax.eval_shape(
        lambda: many(jax.random.key(0), x, jnp.full((m, n), 0.5), jnp.zeros((m, n)), config)
    )[0]
    if shapes.get("shared_embeddings"):  # written by fit_many: one [n, d] for the batch
        batch = batch.replace(ref_x=jax.ShapeDtypeStruct((n, d), float_dtype()))
    return batch


def _bins_shape(summary: Summary) -> list:
    """``[P, k, c, cap]`` of a binned model's ``bins`` (what :func:`_bins_template` rebuilds)."""
    bins = summary.bins
    return [*bins.centre.shape[1:], bins.sums.shape[-1], summary.members.shape[-1]]


def _bins_template(folds: int, n: int, shape: list) -> Summary:
    """The structure of a binned model's ``bins``: ``shape`` is ``[P, k, c, cap]``."""
    (p, k, c, cap), f = shape, float_dtype()
    new = lambda dims, dtype=f: jax.ShapeDtypeStruct((folds, *dims), dtype)
    leaves = p // 2
    bins = Bins(new((p, k)), new((p,)), new((p, c)), new((n,), jnp.int32), new((p, k)))
    tree = Tree(new((n,), jnp.int32), new((leaves - 1, k)), new((leaves - 1,)))
    return Summary(bins, tree, new((leaves, cap), jnp.int32))


def _plain(value):
    """A config value as JSON-able data (tuples as lists, arrays as numbers or lists)."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, str | bool | int | float):
        return value
    return np.asarray(value).tolist()


def save(model: FieldModel, path: str | Path) -> None:
    """Writes ``model`` to ``path`` (msgpack, versioned, bit-exact).

    Args:
      model: a :class:`FieldModel`, or a batch from ``jax.vmap(fit)`` (the
        number of models is recorded; :func:`load` returns the batch).
      path: output file, conventionally ``*.msgpack``.

    Examples:
      >>> import jax, tempfile, os
      >>> from miscal_jax.synthetic.planted import make_planted
      >>> d = make_planted(200, seed=0)
      >>> cfg = FitConfig(folds=2, candidates=("raw",))
      >>> model, _ = jax.jit(fit)(
      ...     jax.random.key(0), d.embeddings, d.conf, d.correct, cfg)
      >>> path = os.path.join(tempfile.mkdtemp(), "model.msgpack")
      >>> save(model, path)
      >>> bool((load(path).ref_x == model.ref_x).all())
      True
    """
    config = model.config
    header = {
        "format": "miscal_jax.FieldModel",
        "version": FORMAT_VERSION,
        "config": {
            "folds": config.folds,
            "candidates": list(config.candidates),
            "encoder": {
                f.name: _plain(getattr(config.encoder, f.name))
                for f in dataclasses.fields(config.encoder)
            },
            "use_conf": config.use_conf,
            "global_method": config.global_method,
            "final_recalibration": config.final_recalibration,
        },
        "shapes": {
            "n": model.ref_x.shape[-2],
            "d": model.ref_x.shape[-1],
            "folds": config.folds,
            "models": num_models(model),
            "shared_embeddings": num_models(model) is not None and model.ref_x.ndim == 2,
            "bins": None if model.bins is None else _bins_shape(model.bins),
        },
    }
    state = serialization.to_state_dict(model)
    payload = serialization.msgpack_serialize({"header": header, "state": state})
    Path(path).write_bytes(payload)


def load(path: str | Path) -> FieldModel:
    """Reads a model written by :func:`save`.

    Raises:
      ValueError: the file is missing, unreadable, corrupt, not a miscal_jax
        model, or from another format version.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"model: cannot read {str(path)!r} ({err.strerror or err}).") from None
    try:
        content = serialization.msgpack_restore(raw)
        header = content["header"]
        kind, version = header["format"], header["version"]
    except Exception:
        raise ValueError(
            f"model: {str(path)!r} is not a miscal_jax model file (corrupt or another format); "
            "write one with `miscal-jax fit --save` or miscal_jax.save."
        ) from None
    if kind != "miscal_jax.FieldModel" or version != FORMAT_VERSION:
        raise ValueError(
            f"model: {str(path)!r} is format {kind!r} version {version}; this miscal_jax reads "
            f"version {FORMAT_VERSION}: refit the model with this version."
        )
    cfg = header["config"]
    enc = dict(cfg["encoder"], hidden=tuple(cfg["encoder"]["hidden"]))
    for name in ("learning_rate", "weight_decay", "linear_learning_rate"):
        enc[name] = np.asarray(enc[name], float_dtype())
    config = FitConfig(
        folds=int(cfg["folds"]),
        candidates=tuple(cfg["candidates"]),
        encoder=EncoderConfig(**enc),
        use_conf=bool(cfg["use_conf"]),
        global_method=str(cfg["global_method"]),
        final_recalibration=bool(cfg["final_recalibration"]),
    )
    template = _template(config, header["shapes"])
    try:
        model = serialization.from_state_dict(template, content["state"])
    except Exception as err:
        raise ValueError(
            f"model: {str(path)!r} is damaged ({err}); refit and save again."
        ) from None
    # [models, K, n]: one leading model for an unbatched file
    held_out = ~np.asarray(model.train_mask).reshape(-1, *model.train_mask.shape[-2:])
    for per_item, per_fold in zip(held_out.sum(1), held_out.sum(2), strict=True):
        bad = np.flatnonzero(per_item != 1)
        if bad.size:
            raise ValueError(
                f"model: {str(path)!r}: item {bad[0]} is held out by {per_item[bad[0]]} folds "
                "(each item must be held out by exactly one); refit and save again."
            )
        if per_fold.max() - per_fold.min() > 1:
            raise ValueError(
                f"model: {str(path)!r}: its folds hold out {per_fold.tolist()} items (the "
                "sizes must differ by at most one); refit and save again."
            )
    return jax.tree.map(jnp.asarray, model)
