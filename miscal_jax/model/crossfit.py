"""The whole pipeline, cross-fitted: an honest out-of-fold field and correction.

A thin layer over the functional core (:func:`~miscal_jax.model.fit`,
:func:`~miscal_jax.model.out_of_fold`, :func:`~miscal_jax.model.predict`):
it validates the inputs, fits every fold in one compiled call, and adds the
confidence-only baselines under the same folds, so nothing about an item is
ever fitted on that item. :func:`apply_crossfit` applies the fold models to
new data.
"""

import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from miscal_jax._types import Array, FieldEstimate
from miscal_jax.calibrators.global_maps import (
    apply_histogram,
    apply_isotonic,
    apply_platt,
    apply_temperature,
    fit_histogram,
    fit_isotonic,
    fit_platt,
    fit_temperature,
)
from miscal_jax.correction.local import GLOBAL_METHODS, CorrectionState
from miscal_jax.geometry.encoder import EncoderConfig
from miscal_jax.geometry.spaces import DEFAULT_CANDIDATES, GEOMETRIES, Geometry, embed_folds
from miscal_jax.model.binned import CELLS, bin_model, binned_error
from miscal_jax.model.carry import carry, subsample
from miscal_jax.model.field_model import FieldModel, FitConfig, fit, out_of_fold_fields, predict
from miscal_jax.validation import validate_inputs

__all__ = [
    "BIN_CHECK",
    "EXACT_UP_TO",
    "SELECT_MAX",
    "SELECT_ON",
    "CrossFitResult",
    "FoldModel",
    "apply_crossfit",
    "crossfit",
    "selection_size",
]

#: Above this many items the geometry, bandwidth and correction are chosen on
#: a random subsample and carried to every item (:mod:`miscal_jax.model.carry`);
#: the subsample holds this many items, more for very large ``n``
#: (:func:`selection_size`).
SELECT_ON = 8192
#: The largest subsample :func:`selection_size` chooses on.
SELECT_MAX = 16384


def selection_size(n: int) -> int:
    """Items :func:`crossfit` chooses the geometry on by default, for ``n`` items.

    All of them up to :data:`SELECT_ON`; then ``n / 60`` within
    ``[SELECT_ON, SELECT_MAX]``: 8,192 up to about 500,000 items, 16,384 from
    about a million. A larger subsample costs a fit several times longer, and
    finds a learned geometry that 8,192 coin flips cannot (on planted data
    with 24 nuisance columns beside 8 signal columns, 10^5 items: raw space in
    every fold and a field correlating 0.10 with the truth from 8,192 items,
    the linear metric in every fold and 0.67 from 20,480;
    ``benchmarks/README.md``).

    Examples:
      >>> selection_size(5000), selection_size(100_000), selection_size(10**6)
      (5000, 8192, 16384)
    """
    return n if n <= SELECT_ON else min(max(SELECT_ON, n // 60), SELECT_MAX)


#: Above this many items (by backend) the out-of-fold field smooths binned
#: training items (:mod:`miscal_jax.model.binned`) instead of every item: the
#: exact field's ``0.8 n^2`` kernel evaluations take about 90 s at 150,000
#: items on a 2-core CPU, and an accelerator does ``10^6`` in seconds.
EXACT_UP_TO = {"cpu": 150_000, "gpu": 2_000_000, "tpu": 2_000_000}
#: Items the binned field is checked on against exact sums.
BIN_CHECK = 1024


class FoldModel(NamedTuple):
    """A view of one fold of a :class:`~miscal_jax.model.FieldModel`.

    Attributes:
      geometry: the fold's :class:`~miscal_jax.geometry.Geometry`.
      ref_z: ``[m, k]`` the fold's training items in its space.
      ref_residual: ``[m]`` ``correct - conf`` of the training items.
      ref_residual_global: ``[m]`` ``correct - p_global`` of the training items,
        each from a global map fitted without it (inner cross-fitting).
      correction: the fold's :class:`~miscal_jax.correction.CorrectionState`.
    """

    geometry: Geometry
    ref_z: Array
    ref_residual: Array
    ref_residual_global: Array
    correction: CorrectionState


class CrossFitResult(NamedTuple):
    """Out-of-fold outputs for every item (all ``[n]``), and the fitted model.

    Attributes:
      field: estimate of ``E[correct - conf | x]``.
      field_se: its standard error.
      n_eff: its effective sample size.
      field_global: estimate of ``E[correct - p_global | x]``, the field
        after each fold's global map (:func:`~miscal_jax.model.out_of_fold_global`).
      corrected_conf: the locally corrected confidence.
      fold: fold id of each item.
      predictions: out-of-fold confidences by method: ``uncorrected``,
        ``temperature``, ``platt``, ``isotonic``, ``histogram``, ``local``.
      models: one :class:`FoldModel` view per fold.
      info: per fold, ``chosen`` (geometry name), ``select_error`` (by
        candidate: leave-one-out error over the items it is judged on),
        ``held_error`` (the same over items no trained candidate saw) and
        ``constant_error`` (the training mean's error there).
      model: the :class:`~miscal_jax.model.FieldModel` (save it, or
        :func:`~miscal_jax.model.predict` with it).
      scale: which fitting path ran (see :func:`crossfit`).
      selection: on the subsample path, the model fitted on the subsample
        (the heterogeneity test runs on it); ``None`` on the exact path.
    """

    field: np.ndarray
    field_se: np.ndarray
    n_eff: np.ndarray
    field_global: np.ndarray
    corrected_conf: np.ndarray
    fold: np.ndarray
    predictions: dict
    models: tuple
    info: tuple
    model: FieldModel
    scale: dict | None = None
    selection: FieldModel | None = None


_fit = jax.jit(fit)
_carry = jax.jit(carry, static_argnames=("cells",))
_bin = jax.jit(bin_model, static_argnames=("cells",))


@jax.jit
def _baselines(model: FieldModel) -> dict:
    """Out-of-fold confidence-only baselines under the model's folds."""
    conf, correct, masks = model.ref_conf, model.ref_correct, model.train_mask
    methods = {
        "temperature": (fit_temperature, apply_temperature),
        "platt": (fit_platt, apply_platt),
        "isotonic": (fit_isotonic, apply_isotonic),
        "histogram": (fit_histogram, apply_histogram),
    }
    out = {}
    for name, (fit_one, apply_one) in methods.items():
        per_fold = jax.vmap(lambda m, f=fit_one, a=apply_one: a(f(conf, correct, m), conf))(masks)
        out[name] = jnp.sum(jnp.where(masks, 0.0, per_fold), axis=0)
    return out


def _fold_views(model: FieldModel) -> tuple[FoldModel, ...]:
    parts, spaces = _fold_parts(model)
    spaces, residual = np.asarray(spaces), np.asarray(model.ref_correct - model.ref_conf)
    views = []
    for k, (geometry, global_map, params, final_map, train, residual_global) in enumerate(parts):
        rows = np.asarray(train)
        views.append(
            FoldModel(
                geometry,
                spaces[k][rows],
                residual[rows],
                np.asarray(residual_global)[rows],
                CorrectionState(global_map, params, final_map),
            )
        )
    return tuple(views)


@jax.jit
def _fold_parts(model: FieldModel):
    """Each fold's pieces, unstacked, and ``[K, n, z_dim]`` the items in each fold's space."""
    stacked = (
        model.geometry,
        model.global_map,
        model.params,
        model.final_map,
        model.train_mask,
        model.ref_residual,
    )
    parts = [jax.tree.map(lambda a, k=k: a[k], stacked) for k in range(model.config.folds)]
    spaces = embed_folds(model.geometry, model.ref_x, model.ref_conf)
    return parts, spaces


def crossfit(
    embeddings: ArrayLike,
    conf: ArrayLike,
    correct: ArrayLike,
    *,
    folds: int = 5,
    seed: int = 0,
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES,
    config: EncoderConfig = EncoderConfig(),
    use_conf: bool = True,
    global_method: str = "stacked",
    final_recalibration: bool = True,
    progress: bool = True,
    select_on: int | str | None = "auto",
    cells: int | str | None = "auto",
) -> CrossFitResult:
    """Runs validate -> represent -> smooth -> correct with K-fold cross-fitting.

    Args:
      embeddings: ``[n, d]`` item representations.
      conf: ``[n]`` confidences in ``[0, 1]``.
      correct: ``[n]`` 0/1 outcomes.
      folds: number of folds K (>= 2).
      seed: seed of the fold split and all training randomness.
      candidates: geometries to choose from (see :mod:`miscal_jax.geometry.spaces`).
      config: encoder configuration (also holds the kernel name).
      use_conf: feed ``logit(conf)`` to the encoder.
      global_method: the first map, one of :data:`~miscal_jax.correction.GLOBAL_METHODS`
        (see :class:`~miscal_jax.model.FitConfig`).
      final_recalibration: fit a final isotonic map on the corrected values.
      progress: print one line to stderr when the fit starts and ends.
      select_on: with more items than this, fit on a random subsample of this
        size and carry the model to all items (:func:`~miscal_jax.model.carry`);
        ``"auto"``: :func:`selection_size` of ``n``; ``None``: always fit on
        all items.
      cells: tree leaves per fold of the binned field
        (:func:`~miscal_jax.model.bin_model`); ``"auto"``: :data:`CELLS` above
        :data:`EXACT_UP_TO` items for the backend, else exact sums;
        ``None``: always exact.

    Returns:
      A :class:`CrossFitResult`; every per-item output is out-of-fold.
      ``scale`` says which path ran: ``{"path": "exact", "n": n}`` or
      ``{"path": "subsample", "n": n, "selected_on": m}``; on the second,
      ``selection`` is the model fitted on the subsample (``None`` otherwise).
      ``scale["field"]`` is ``"exact"`` or ``"binned"``; a binned field adds
      ``cells`` and ``approximation``, its error against exact sums at
      :data:`BIN_CHECK` held-out items (:func:`~miscal_jax.model.binned_error`).

    Examples:
      >>> from miscal_jax.synthetic.planted import make_planted
      >>> d = make_planted(300, seed=0)
      >>> res = crossfit(d.embeddings, d.conf, d.correct, folds=3, candidates=("raw",),
      ...                progress=False)
      >>> res.field.shape, sorted(res.predictions)[:2]
      ((300,), ['histogram', 'isotonic'])
    """
    x, p, y = validate_inputs(embeddings, conf, correct)
    if global_method not in GLOBAL_METHODS:
        raise ValueError(f"global_method: expected one of {GLOBAL_METHODS}, got {global_method!r}.")
    unknown = set(candidates) - set(GEOMETRIES)
    if not candidates or unknown:
        raise ValueError(
            f"candidates: expected a non-empty subset of {GEOMETRIES}, got {candidates}."
        )
    if folds < 2:
        raise ValueError(f"folds: need at least 2 for cross-fitting, got {folds}.")
    if x.shape[0] < 2 * folds:
        raise ValueError(f"folds: {folds} folds need at least {2 * folds} items, got {x.shape[0]}.")
    fit_config = FitConfig(
        folds=folds,
        candidates=tuple(candidates),
        encoder=config,
        use_conf=use_conf,
        global_method=global_method,
        final_recalibration=final_recalibration,
    )
    start = time.perf_counter()
    if progress:
        print(f"miscal-jax: fitting {folds} folds ({', '.join(candidates)})...", file=sys.stderr)
    n = x.shape[0]
    cells = _cells(cells, n)
    select_on = selection_size(n) if select_on == "auto" else _count("select_on", select_on)
    sub_key, fit_key, carry_key, check_key = jax.random.split(jax.random.key(seed), 4)
    if select_on is not None and n > select_on:
        if select_on < 2 * folds:
            raise ValueError(f"select_on: need at least {2 * folds} items, got {select_on}.")
        idx = np.asarray(subsample(sub_key, n, select_on))
        small, info = _fit(fit_key, x[idx], p[idx], y[idx], fit_config)
        model = _carry(small, carry_key, x, p, y, idx, cells=cells)
        scale = {"path": "subsample", "n": n, "selected_on": select_on}
    else:
        model, info = _fit(jax.random.key(seed), x, p, y, fit_config)
        scale, small = {"path": "exact", "n": n}, None
        if cells is not None:
            model = _bin(model, cells=cells)
    scale["field"] = "exact" if cells is None else "binned"
    if cells is not None:
        scale["cells"] = cells
        scale["approximation"] = binned_error(model, check_key, BIN_CHECK)
    est, est_global, p_local = jax.jit(out_of_fold_fields)(model)
    baselines = jax.block_until_ready(_baselines(model))  # the time below is the fit's
    if progress:
        print(f"miscal-jax: folds fitted in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    preds = {"uncorrected": p.copy()}
    preds.update({k: np.asarray(v, np.float32) for k, v in baselines.items()})
    preds["local"] = np.asarray(p_local, np.float32)
    choice = np.asarray(model.geometry.choice)
    infos = tuple(
        {
            "chosen": candidates[int(choice[k])],
            "select_error": dict(zip(candidates, map(float, info["select_error"][k]), strict=True)),
            "held_error": dict(zip(candidates, map(float, info["held_error"][k]), strict=True)),
            "constant_error": float(info["constant_error"][k]),
        }
        for k in range(folds)
    )
    return CrossFitResult(
        np.asarray(est.value, np.float32),
        np.asarray(est.se, np.float32),
        np.asarray(est.n_eff, np.float32),
        np.asarray(est_global.value, np.float32),
        preds["local"],
        np.asarray(model.fold),
        preds,
        _fold_views(model),
        infos,
        model,
        scale,
        small,
    )


def _cells(cells: int | str | None, n: int) -> int | None:
    """The tree leaves per fold :func:`crossfit` bins with, or ``None`` (exact)."""
    if cells == "auto":
        limit = EXACT_UP_TO.get(jax.default_backend(), EXACT_UP_TO["gpu"])
        return CELLS if n > limit else None
    return _count("cells", cells)


def _count(name: str, value):
    """``value`` if it is a positive int or ``None``; else a ``ValueError`` naming ``name``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name}: expected a positive int, 'auto' or None, got {value!r}.")
    return value


def apply_crossfit(
    result: CrossFitResult, embeddings: ArrayLike, conf: ArrayLike
) -> tuple[FieldEstimate, Array]:
    """Applies the fold models to new items and averages them (:func:`~miscal_jax.model.predict`).

    Args:
      result: a :class:`CrossFitResult`.
      embeddings: ``[q, d]`` new items.
      conf: ``[q]`` their confidences.

    Returns:
      ``(field_estimate, corrected_conf)``: the fold-averaged
      :class:`FieldEstimate` (``se`` and ``n_eff`` averaged too, a
      conservative choice) and ``[q]`` corrected confidences.
    """
    return jax.jit(predict)(result.model, embeddings, conf)
