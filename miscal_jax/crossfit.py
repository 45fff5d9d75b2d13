"""The whole pipeline, cross-fitted: an honest out-of-fold field and correction.

For each of K folds, everything (global map, geometry, encoder, bandwidth,
correction parameters, final map) is fitted on the other folds and applied to
the held-out fold, so nothing about an item is ever fitted on that item.
The fitted fold models are kept; :func:`apply_crossfit` averages them on new
data.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from tqdm.auto import tqdm

from miscal_jax._types import Array, FieldEstimate
from miscal_jax.baselines import (
    apply_histogram,
    apply_isotonic,
    apply_platt,
    apply_temperature,
    fit_histogram,
    fit_isotonic,
    fit_platt,
    fit_temperature,
)
from miscal_jax.correction import (
    CorrectionState,
    apply_global,
    fit_correction_params,
    fit_global,
    local_confidence,
)
from miscal_jax.geometry import GEOMETRIES, Geometry, embed, fit_geometry
from miscal_jax.representation import EncoderConfig
from miscal_jax.smoother import loo_field, nw_field
from miscal_jax.validation import validate_inputs

__all__ = ["CrossFitResult", "FoldModel", "apply_crossfit", "crossfit", "fold_ids"]


class FoldModel(NamedTuple):
    """Everything fitted on one fold's training items.

    Attributes:
      geometry: the chosen :class:`~miscal_jax.geometry.Geometry`.
      ref_z: ``[m, k]`` training items in the chosen space.
      ref_residual: ``[m]`` ``correct - conf`` of the training items.
      ref_residual_global: ``[m]`` ``correct - p_global`` of the training items.
      correction: the fitted :class:`~miscal_jax.correction.CorrectionState`.
    """

    geometry: Geometry
    ref_z: Array
    ref_residual: Array
    ref_residual_global: Array
    correction: CorrectionState


class CrossFitResult(NamedTuple):
    """Out-of-fold outputs for every item (all ``[n]``), and the fold models.

    Attributes:
      field: estimate of ``E[correct - conf | x]``.
      field_se: its standard error.
      n_eff: its effective sample size.
      corrected_conf: the locally corrected confidence.
      fold: fold id of each item.
      predictions: out-of-fold confidences by method: ``uncorrected``,
        ``temperature``, ``platt``, ``isotonic``, ``histogram``, ``local``.
      models: one :class:`FoldModel` per fold.
      info: per fold, the geometry selection report of
        :func:`~miscal_jax.geometry.fit_geometry`.
    """

    field: np.ndarray
    field_se: np.ndarray
    n_eff: np.ndarray
    corrected_conf: np.ndarray
    fold: np.ndarray
    predictions: dict
    models: tuple
    info: tuple


def fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
    """``[n]`` fold ids in ``[0, folds)``, balanced and randomly placed."""
    if folds < 2:
        raise ValueError(f"folds: need at least 2 for cross-fitting, got {folds}.")
    if n < 2 * folds:
        raise ValueError(f"folds: {folds} folds need at least {2 * folds} items, got {n}.")
    perm = np.random.default_rng(seed).permutation(n)
    ids = np.empty(n, np.int64)
    ids[perm] = np.arange(n) % folds
    return ids


def _apply_fold(model: FoldModel, x, conf):
    """Field and corrected confidence of a fold model at ``[q]`` new items."""
    z = embed(model.geometry, x, conf)
    bw, kernel = model.geometry.log_bandwidth, model.geometry.kernel
    est = nw_field(z, model.ref_z, model.ref_residual, bw, kernel=kernel)
    local = nw_field(z, model.ref_z, model.ref_residual_global, bw, kernel=kernel)
    p_global = apply_global(model.correction.global_map, conf)
    p_local = local_confidence(model.correction.params, p_global, local.value, local.n_eff)
    if model.correction.final_map is not None:
        p_local = apply_isotonic(model.correction.final_map, p_local)
    return est, p_local


def _fit_fold(
    rng,
    x,
    conf,
    correct,
    *,
    candidates,
    config,
    use_conf,
    global_method,
    final_recalibration,
    progress,
):
    global_map = fit_global(conf, correct, method=global_method)
    p_global = np.asarray(apply_global(global_map, conf))
    residual_global = correct - p_global
    geometry, info = fit_geometry(
        rng,
        x,
        conf,
        residual_global,
        candidates=candidates,
        config=config,
        use_conf=use_conf,
        progress=progress,
    )
    z = embed(geometry, x, conf)
    loo = loo_field(z, residual_global, geometry.log_bandwidth, kernel=geometry.kernel)
    params = fit_correction_params(p_global, loo.value, loo.n_eff, correct)
    final_map = None
    if final_recalibration:
        p_loo = local_confidence(params, p_global, loo.value, loo.n_eff)
        final_map = fit_isotonic(p_loo, correct)
    correction = CorrectionState(global_map, params, final_map)
    model = FoldModel(
        geometry, z, jnp.asarray(correct - conf), jnp.asarray(residual_global), correction
    )
    return model, info


def crossfit(
    embeddings: ArrayLike,
    conf: ArrayLike,
    correct: ArrayLike,
    *,
    folds: int = 5,
    seed: int = 0,
    candidates: tuple[str, ...] = GEOMETRIES,
    config: EncoderConfig = EncoderConfig(),
    use_conf: bool = True,
    global_method: str = "isotonic",
    final_recalibration: bool = True,
    progress: bool = True,
) -> CrossFitResult:
    """Runs validate -> represent -> smooth -> correct with K-fold cross-fitting.

    Args:
      embeddings: ``[n, d]`` item representations.
      conf: ``[n]`` confidences in ``[0, 1]``.
      correct: ``[n]`` 0/1 outcomes.
      folds: number of folds K (>= 2).
      seed: seed of the fold split and all training randomness.
      candidates: geometries to choose from (see :mod:`miscal_jax.geometry`).
      config: encoder configuration (also holds the kernel name).
      use_conf: feed ``logit(conf)`` to the encoder.
      global_method: ``"isotonic"`` or ``"temperature"`` for the first map.
      final_recalibration: fit a final isotonic map on the corrected values.
      progress: show progress bars.

    Returns:
      A :class:`CrossFitResult`; every per-item output is out-of-fold.

    Examples:
      >>> from miscal_jax.synthetic import make_planted
      >>> d = make_planted(300, seed=0)
      >>> res = crossfit(d.embeddings, d.conf, d.correct, folds=3, candidates=("raw",),
      ...                progress=False)
      >>> res.field.shape, sorted(res.predictions)[:2]
      ((300,), ['histogram', 'isotonic'])
    """
    data = validate_inputs(embeddings, conf, correct)
    x, p, y = data
    n = x.shape[0]
    ids = fold_ids(n, folds, seed)
    out = {k: np.zeros(n, np.float32) for k in ("field", "se", "n_eff", "local")}
    preds = {k: np.zeros(n, np.float32) for k in ("temperature", "platt", "isotonic", "histogram")}
    models, infos = [], []
    keys = jax.random.split(jax.random.key(seed), folds)
    for k in tqdm(range(folds), desc="folds", disable=not progress):
        tr, te = ids != k, ids == k
        model, info = _fit_fold(
            keys[k],
            x[tr],
            p[tr],
            y[tr],
            candidates=candidates,
            config=config,
            use_conf=use_conf,
            global_method=global_method,
            final_recalibration=final_recalibration,
            progress=progress,
        )
        est, p_local = _apply_fold(model, x[te], p[te])
        out["field"][te], out["se"][te], out["n_eff"][te] = (np.asarray(a) for a in est)
        out["local"][te] = np.asarray(p_local)
        preds["temperature"][te] = apply_temperature(fit_temperature(p[tr], y[tr]), p[te])
        preds["platt"][te] = apply_platt(fit_platt(p[tr], y[tr]), p[te])
        preds["isotonic"][te] = apply_isotonic(fit_isotonic(p[tr], y[tr]), p[te])
        preds["histogram"][te] = apply_histogram(fit_histogram(p[tr], y[tr]), p[te])
        models.append(model)
        infos.append(info)
    preds = {"uncorrected": p.copy(), **preds, "local": out["local"]}
    return CrossFitResult(
        out["field"],
        out["se"],
        out["n_eff"],
        out["local"],
        ids,
        preds,
        tuple(models),
        tuple(infos),
    )


def apply_crossfit(
    result: CrossFitResult, embeddings: ArrayLike, conf: ArrayLike
) -> tuple[FieldEstimate, Array]:
    """Applies the fold models to new items and averages them.

    Args:
      result: a :class:`CrossFitResult`.
      embeddings: ``[q, d]`` new items.
      conf: ``[q]`` their confidences.

    Returns:
      ``(field_estimate, corrected_conf)``: the fold-averaged
      :class:`FieldEstimate` (``se`` and ``n_eff`` averaged too, a
      conservative choice) and ``[q]`` corrected confidences.
    """
    x = np.asarray(embeddings, np.float32)
    p = np.asarray(conf, np.float32)
    if x.ndim != 2 or x.shape[1] != result.models[0].geometry.mean.shape[0]:
        raise ValueError(
            f"embeddings: expected [q, {result.models[0].geometry.mean.shape[0]}], got {x.shape}."
        )
    if p.shape != (x.shape[0],):
        raise ValueError(f"conf: expected shape [{x.shape[0]}], got {p.shape}.")
    outs = [_apply_fold(m, x, p) for m in result.models]
    est = FieldEstimate(*(jnp.mean(jnp.stack([o[0][i] for o in outs]), 0) for i in range(3)))
    return est, jnp.mean(jnp.stack([o[1] for o in outs]), 0)
