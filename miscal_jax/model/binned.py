"""Binned fold models: each fold's training items summarised, for ``O(n P)`` out-of-fold fields.

The exact out-of-fold field smooths every held-out item against every
training item: ``~0.8 n^2`` kernel evaluations, an hour at ``n = 10^6`` on a
2-core CPU. :func:`bin_model` summarises each fold's training items in its own
space (the geometry the fold chose, at its bandwidth): the ``cells`` leaves
of a balanced principal-axis tree, each split by outcome, so a bin's
residuals ``correct - conf`` are nearly constant; each bin carries its
count, centroid, spread and residual sums
(:mod:`miscal_jax.kernels.binned`). :func:`~miscal_jax.model.predict` and
:func:`~miscal_jax.model.out_of_fold` then smooth the ``2 cells`` bins of a
fold instead of its items: ``2 cells n`` evaluations. Everything else of the
model (geometry, bandwidth, global maps, correction) is unchanged.

The approximation's error grows with the bins' radius over the bandwidth
(:func:`~miscal_jax.kernels.binned.bin_radius`); :func:`binned_error`
measures it against exact sums on a sample of items.
"""

import jax
import jax.numpy as jnp
import numpy as np

from miscal_jax._types import PRNGKey
from miscal_jax.geometry.spaces import embed
from miscal_jax.kernels.binned import (
    Summary,
    bin_points,
    bin_radius,
    leaf_members,
    tree_cells,
)
from miscal_jax.model.field_model import FieldModel, apply_fold, fold_parts, fold_values

__all__ = ["CELLS", "bin_model", "bin_radii", "binned_error"]

#: Default tree leaves per fold (each split by outcome: twice as many bins).
CELLS = 16384


def bin_model(model: FieldModel, cells: int = CELLS) -> FieldModel:
    """``model`` with each fold's training items summarised in ``2 cells`` bins.

    Args:
      model: a :class:`~miscal_jax.model.FieldModel` (one model, not a batch).
      cells: static leaves of each fold's tree (rounded up to a power of two,
        at most the number of items).

    Returns:
      The model with ``bins`` set (:func:`bin_radii` gives their radii).

    Examples:
      >>> import jax
      >>> from miscal_jax.model import FitConfig, fit, out_of_fold
      >>> from miscal_jax.synthetic.planted import make_planted
      >>> d = make_planted(256, seed=0)
      >>> model, _ = jax.jit(fit)(jax.random.key(0), d.embeddings, d.conf, d.correct,
      ...                         FitConfig(folds=2, candidates=("raw",)))
      >>> binned = bin_model(model, cells=256)  # a leaf (and a bin) per item: exact
      >>> exact, approx = out_of_fold(model)[0].value, out_of_fold(binned)[0].value
      >>> bool(abs(exact - approx).max() < 1e-4)
      True
    """
    if model.train_mask.ndim != 2:
        raise ValueError("model: bin one model at a time (select_model), not a batch.")
    n = model.train_mask.shape[1]
    depth = min(max(0, (int(cells) - 1).bit_length()), n.bit_length() - 1)
    outcome = model.ref_correct.astype(jnp.int32)

    def one(args):
        geometry, train, ref_residual = args
        z = embed(geometry, model.ref_x, model.ref_conf)
        tree = tree_cells(z, depth)
        values = fold_values(model, ref_residual)
        bins = bin_points(z, values, train, 2 * tree.leaf + outcome, 2 << depth)
        return Summary(bins, tree, leaf_members(tree.leaf, 1 << depth))

    args = (model.geometry, model.train_mask, model.ref_residual)
    return model.replace(bins=jax.lax.map(one, args))


@jax.jit
def bin_radii(model: FieldModel):
    """``[K]`` each fold's bins' root-mean-square radius over its bandwidth (``rho / h``).

    Examples:
      >>> import jax
      >>> from miscal_jax.model import FitConfig, fit
      >>> from miscal_jax.synthetic.planted import make_planted
      >>> d = make_planted(256, seed=0)
      >>> model, _ = jax.jit(fit)(jax.random.key(0), d.embeddings, d.conf, d.correct,
      ...                         FitConfig(folds=2, candidates=("raw",)))
      >>> bin_radii(bin_model(model, cells=256)).tolist()  # one item per bin: no radius
      [0.0, 0.0]
    """

    def one(args):
        geometry, summary = args
        z = embed(geometry, model.ref_x, model.ref_conf)
        return bin_radius(z, summary.bins, geometry.log_bandwidth)

    return jax.lax.map(one, (model.geometry, model.bins))


@jax.jit
def _sampled(model: FieldModel, pick):
    """Exact and binned field and corrected confidence at held-out items ``pick`` ``[K, s]``."""

    def one(k):
        x, conf = model.ref_x[pick[k]], model.ref_conf[pick[k]]
        exact_model = model.replace(bins=None)
        exact = apply_fold(exact_model, fold_parts(exact_model, k), x, conf)
        binned = apply_fold(model, fold_parts(model, k), x, conf)
        return exact[0].value, binned[0].value, exact[1], binned[1]

    return jax.lax.map(one, jnp.arange(model.train_mask.shape[0]))


def binned_error(model: FieldModel, rng: PRNGKey, size: int = 1024) -> dict:
    """The binned model's field against exact sums at ``size`` random held-out items.

    Each fold's share of the sample is smoothed both ways (``size n``
    kernel evaluations in all).

    Args:
      model: a model with ``bins`` (:func:`bin_model`).
      rng: PRNG key (the sample).
      size: items checked, split evenly over the folds.

    Returns:
      ``{"checked": s, "field_corr", "field_max_abs_diff", "field_median_abs_diff",
      "corrected_max_abs_diff", "radius_over_bandwidth" (largest over folds)}``.

    Examples:
      >>> import jax
      >>> from miscal_jax.model import FitConfig, fit
      >>> from miscal_jax.synthetic.planted import make_planted
      >>> d = make_planted(256, seed=0)
      >>> model, _ = jax.jit(fit)(jax.random.key(0), d.embeddings, d.conf, d.correct,
      ...                         FitConfig(folds=2, candidates=("raw",)))
      >>> err = binned_error(bin_model(model, cells=256), jax.random.key(1), size=64)
      >>> err["checked"], err["field_max_abs_diff"] < 1e-4
      (64, True)
    """
    if model.bins is None:
        raise ValueError("model: it has no bins; bin it with bin_model first.")
    folds, n = model.train_mask.shape
    per = max(1, min(size // folds, n // folds - 1))
    keys = jax.random.split(rng, folds)
    score = lambda key, train: jnp.where(train, -1.0, jax.random.uniform(key, (n,)))
    pick = jax.vmap(lambda key, train: jax.lax.top_k(score(key, train), per)[1])(
        keys, model.train_mask
    )
    exact, binned, p_exact, p_binned = (
        np.asarray(a, np.float64).ravel() for a in _sampled(model, pick)
    )
    same = np.std(exact) > 0 and np.std(binned) > 0
    return {
        "checked": int(exact.size),
        "field_corr": float(np.corrcoef(exact, binned)[0, 1]) if same else 1.0,
        "field_max_abs_diff": float(np.max(np.abs(exact - binned))),
        "field_median_abs_diff": float(np.median(np.abs(exact - binned))),
        "corrected_max_abs_diff": float(np.max(np.abs(p_exact - p_binned))),
        "radius_over_bandwidth": float(np.max(np.asarray(bin_radii(model)))),
    }
