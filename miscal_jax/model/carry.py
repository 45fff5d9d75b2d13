"""Large data: the geometry and bandwidth chosen on a subsample, the field carried to every item.

A fit compares every candidate space at every bandwidth on every fold: about
600 smoothing passes of ``n`` items against ``n``. Above a few tens of
thousands of items that is hours on a CPU, and the choice it makes hardly
moves with ``n``. :func:`carry` therefore takes a model fitted on a random
subsample of ``m`` items and extends it to all ``n``:

- **folds**: the subsample's items keep the fold that held them out; the
  others are dealt to the folds so that every fold holds out ``ceil(n / K)``
  or one fewer items. A fold model therefore never evaluates an item its
  geometry, bandwidth or correction was fitted on.
- **global maps and residuals**: refitted per fold on all of its training
  items (with the inner cross-fitting of :func:`~miscal_jax.model.fit`).
- **bandwidth**: rescaled by the kernel-regression rate,
  ``h_n = h_m (m / n)^{1 / (k + 4)}`` with ``k`` the chosen space's width, so
  the smoother uses the larger sample's resolution.
- **geometry**: the subsample's, unchanged.
- **correction and final map**: refitted per fold on the leave-one-out
  field values of up to ``2m`` of its training items from *outside* the
  subsample (no geometry saw them), smoothed against all of the fold's
  training items at the carried bandwidth: the correction learns how far to
  trust the field at the resolution it is now used at (a space chosen on a
  small subsample can be poor, and its field must then be shrunk, however
  many items it averages). With fewer than ``m / 2`` such items per fold
  (``n < 2m`` roughly) the subsample's own correction is kept: it was fitted
  on more items.

The out-of-fold field over all ``n`` items is then one smoothing pass per
fold at one bandwidth in one space (exact blocked sums, ``~0.8 n^2`` kernel
evaluations instead of ``~600 n^2``); the refitted correction costs
``2 K m n`` more.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from miscal_jax._src.dtypes import as_float
from miscal_jax._src.fitting import gather_rows
from miscal_jax._types import Array, PRNGKey
from miscal_jax.correction.local import (
    fit_correction_params,
    fit_final,
    interleaved_folds,
    local_confidence,
)
from miscal_jax.geometry.spaces import embed
from miscal_jax.kernels.moments import kernel_moments
from miscal_jax.model.binned import bin_model
from miscal_jax.model.field_model import (
    FieldModel,
    fold_masks,
    fold_parts,
    fold_values,
    inner_global,
    summary_moments,
    training_size,
)
from miscal_jax.smoothing.nadaraya_watson import field_from_moments

__all__ = ["carry", "carried_folds", "subsample"]


def subsample(rng: PRNGKey, n: int, m: int) -> Array:
    """``[m]`` distinct item indices drawn uniformly from ``n``, sorted.

    Examples:
      >>> import jax
      >>> idx = subsample(jax.random.key(0), 10, 4)
      >>> idx.shape, bool((idx[1:] > idx[:-1]).all())
      ((4,), True)
    """
    if not 0 < m <= n:
        raise ValueError(f"m: need 0 < m <= n = {n}, got {m}.")
    return jnp.sort(jax.random.permutation(rng, n)[:m])


def carried_folds(rng: PRNGKey, fold_of_subsample: Array, subsample_idx: Array, n: int, folds: int):
    """``[folds, n]`` training masks: subsample items keep their folds, the rest fill them evenly.

    Every fold holds out ``ceil(n / folds)`` or one fewer items (as
    :func:`~miscal_jax.model.fold_masks` makes them), so the out-of-fold
    machinery applies unchanged.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> masks = carried_folds(jax.random.key(0), jnp.array([0, 1, 2]), jnp.array([0, 4, 8]),
      ...                       10, 3)
      >>> masks.shape, [int(k) for k in jnp.argmin(masks, 0)[jnp.array([0, 4, 8])]]
      ((3, 10), [0, 1, 2])
    """
    m = subsample_idx.shape[0]
    have = jnp.bincount(fold_of_subsample, length=folds)
    want = n // folds + (jnp.arange(folds) < n % folds)
    labels = jnp.repeat(jnp.arange(folds), want - have, total_repeat_length=n - m)
    labels = jax.random.permutation(rng, labels)
    taken = jnp.zeros(n, bool).at[subsample_idx].set(True)
    rest = jnp.nonzero(~taken, size=n - m)[0]
    fold = jnp.zeros(n, jnp.int32).at[subsample_idx].set(fold_of_subsample)
    fold = fold.at[rest].set(labels)
    return fold[None, :] != jnp.arange(folds)[:, None]


def _space_width(geometry, x: Array, conf: Array) -> Array:
    """``[K]`` width of each fold's chosen space (its columns that are not padding)."""
    z = jax.lax.map(lambda g: embed(g, x, conf), geometry)
    return jnp.sum(jnp.any(z != 0, axis=1), axis=1)


def _refit_correction(rng, model: FieldModel, fold, fresh, p_global, size, final):
    """One fold's correction and final map from ``size`` fresh training items' LOO field values.

    The LOO values come from the fold's bins when the model has them.
    """
    geometry, train = fold[0], fold[4]
    x, conf, correct = model.ref_x, model.ref_conf, model.ref_correct
    score = jnp.where(train & fresh, jax.random.uniform(rng, train.shape), -1.0)
    top, pick = jax.lax.top_k(score, size)
    valid = top >= 0.0
    summary, bw, kernel = fold[6], geometry.log_bandwidth, geometry.kernel
    if summary is None:  # exact sums over the fold's training items, gathered
        rows, ok = gather_rows(train, training_size(model))
        z = embed(geometry, x[rows], conf[rows])
        values = fold_values(model, fold[5])[rows]
        at = (jnp.cumsum(train) - 1)[pick]  # each picked item's place among the gathered
        m = kernel_moments(z[at], z, values, bw, query_index=at, ref_mask=ok, kernel=kernel)
    else:  # each item's own leaf is the one it was built into
        z = embed(geometry, x[pick], conf[pick])
        m = summary_moments(model, fold, z, summary.tree.leaf[pick], exclude=pick)
    loo = field_from_moments(m._replace(sum_wv=m.sum_wv[:, 2:]))
    params = fit_correction_params(p_global[pick], loo.value, loo.n_eff, correct[pick], valid)
    if not final:
        return params, None
    p_loo = local_confidence(params, p_global[pick], loo.value, loo.n_eff)
    stacked = model.config.global_method == "stacked"
    inner = interleaved_folds(size, model.config.folds) if stacked else None  # pick is random
    return params, fit_final(p_loo, correct[pick], valid, inner)


def carry(
    model: FieldModel,
    rng: PRNGKey,
    embeddings: ArrayLike,
    conf: ArrayLike,
    correct: ArrayLike,
    subsample_idx: ArrayLike,
    cells: int | None = None,
) -> FieldModel:
    """Extends a model fitted on ``embeddings[subsample_idx]`` to all ``n`` items.

    Args:
      model: a :class:`~miscal_jax.model.FieldModel` fitted on the subsample
        (in the order of ``subsample_idx``).
      rng: PRNG key (the other items' folds, the inner split of the global maps).
      embeddings, conf, correct: ``[n, d]``, ``[n]``, ``[n]`` all items.
      subsample_idx: ``[m]`` the subsample's indices into them.
      cells: static; ``None`` smooths every item exactly, an int bins each
        fold's training items in ``2 cells`` bins
        (:func:`~miscal_jax.model.bin_model`), used from the correction's
        refit on.

    Returns:
      A :class:`~miscal_jax.model.FieldModel` over all ``n`` items (see the
      module docstring); :func:`~miscal_jax.model.out_of_fold` of it is out
      of fold for every item.

    Examples:
      >>> import jax
      >>> from miscal_jax.model import FitConfig, fit
      >>> from miscal_jax.synthetic.planted import make_planted
      >>> d = make_planted(300, seed=0)
      >>> idx = subsample(jax.random.key(1), 300, 100)
      >>> small, _ = jax.jit(fit)(jax.random.key(0), d.embeddings[idx], d.conf[idx],
      ...                         d.correct[idx], FitConfig(folds=2, candidates=("raw",)))
      >>> big = jax.jit(carry)(small, jax.random.key(2), d.embeddings, d.conf, d.correct, idx)
      >>> big.train_mask.shape, big.ref_residual.shape
      ((2, 300), (2, 300))
    """
    x, conf, correct = as_float(embeddings), as_float(conf), as_float(correct)
    idx = jnp.asarray(subsample_idx)
    n, m, folds = x.shape[0], idx.shape[0], model.config.folds
    if model.ref_x.shape[0] != m or model.ref_x.shape[1] != x.shape[1]:
        raise ValueError(
            f"model/subsample_idx: the model was fitted on {model.ref_x.shape} items, "
            f"subsample_idx has {m} and the embeddings are {x.shape}; pass the indices of the "
            "items it was fitted on, in the same order."
        )
    fold_rng, inner_rng, pick_rng = jax.random.split(rng, 3)
    masks = carried_folds(fold_rng, model.fold, idx, n, folds)
    inner = fold_masks(inner_rng, n, folds)
    method = model.config.global_method
    global_map, p_global, residual = jax.vmap(
        lambda train: inner_global(conf, correct, train, inner, method)
    )(masks)
    width = _space_width(model.geometry, model.ref_x[:256], model.ref_conf[:256])
    log_bw = model.geometry.log_bandwidth + jnp.log(m / n) / (width + 4.0)
    geometry = model.geometry.replace(
        log_bandwidth=log_bw.astype(model.geometry.log_bandwidth.dtype)
    )
    fresh = ~jnp.zeros(n, bool).at[idx].set(True)
    final = model.final_map is not None
    size = min(2 * m, (n - m) // 2)  # fewer than the fresh training items of any fold
    big = FieldModel(
        x, conf, correct, masks, residual, geometry, global_map, model.params, model.final_map,
        model.config,
    )  # fmt: skip
    if cells is not None:
        big = bin_model(big, cells)
    if size < m // 2:  # too few fresh items to refit: the subsample's fit is the better one
        return big
    refit = lambda args: _refit_correction(
        args[0], big, fold_parts(big, args[1]), fresh, args[2], size=size, final=final
    )
    keys = jax.random.split(pick_rng, folds)
    params, final_map = jax.lax.map(refit, (keys, jnp.arange(folds), p_global))
    return big.replace(params=params, final_map=final_map)
