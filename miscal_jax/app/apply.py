"""Fit once, apply later: the jobs behind ``miscal-jax fit`` and ``miscal-jax apply``.

``fit`` cross-fits a :class:`~miscal_jax.model.FieldModel` on a data set and
saves it (:func:`~miscal_jax.model.save`); ``apply`` loads it and writes, for
every new item, the estimated field with a 90% interval, its effective sample
size and the locally corrected confidence. Both write atomically: a file or
folder appears complete or not at all.
"""

import csv
import os
import tempfile
from pathlib import Path

import jax
import numpy as np

from miscal_jax import metrics as M
from miscal_jax.app.io import Dataset
from miscal_jax.app.report import staged
from miscal_jax.geometry.spaces import DEFAULT_CANDIDATES
from miscal_jax.model.crossfit import crossfit
from miscal_jax.model.field_model import load, predict, save
from miscal_jax.stats.inference import normal_interval

__all__ = ["run_apply", "run_fit"]


def run_fit(
    data: Dataset,
    path: str | Path,
    *,
    seed: int = 0,
    folds: int = 5,
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES,
    progress: bool = True,
) -> dict:
    """Cross-fits a model on ``data`` and saves it to ``path``.

    Args:
      data: a :class:`~miscal_jax.app.io.Dataset`.
      path: model file to write (``.msgpack``); written to a temporary file
        beside it and renamed when complete.
      seed: seed of folds and training.
      folds: number of folds.
      candidates: geometries to choose from.
      progress: one line per stage on stderr.

    Returns:
      A summary: items, folds, chosen geometry per fold, held-out Brier of
      isotonic and of the local correction.
    """
    x, p, y = data.embeddings, data.conf, data.correct
    res = crossfit(x, p, y, folds=folds, seed=seed, candidates=candidates, progress=progress)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.absolute().parent)
    os.close(fd)
    try:
        save(res.model, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {
        "items": int(x.shape[0]),
        "folds": folds,
        "geometry": [i["chosen"] for i in res.info],
        "brier_isotonic": float(M.brier(res.predictions["isotonic"], y)),
        "brier_local": float(M.brier(res.predictions["local"], y)),
    }


def run_apply(model_path: str | Path, data: Dataset, out_dir: str | Path) -> Path:
    """Applies a saved model to new items; writes ``out_dir/predictions.csv``.

    Columns: ``row``, ``field`` (estimated ``E[correct - conf | x]``),
    ``field_low``/``field_high`` (90% normal interval), ``n_eff``, ``conf``
    and ``corrected_conf``; ``correct`` too where ``data`` has outcomes
    (``data.meta["outcomes"]``).

    Args:
      model_path: a file written by :func:`run_fit` or :func:`~miscal_jax.save`.
      data: a :class:`~miscal_jax.app.io.Dataset` with the model's embedding width.
      out_dir: output folder (replaced only by a complete new one).

    Returns:
      The path of ``predictions.csv``.
    """
    model = load(model_path)
    d = model.ref_x.shape[1]
    if data.embeddings.shape[1] != d:
        raise ValueError(
            f"data: embeddings have {data.embeddings.shape[1]} dimensions but the model was "
            f"fitted on {d}; embed the new items the same way."
        )
    est, corrected = jax.jit(predict)(model, data.embeddings, data.conf)
    low, high = normal_interval(est.value, est.se, level=0.9)
    cols = {
        "field": est.value,
        "field_low": low,
        "field_high": high,
        "n_eff": est.n_eff,
        "conf": data.conf,
        "corrected_conf": corrected,
    }
    if data.meta.get("outcomes", True):
        cols["correct"] = data.correct
    cols = {k: np.asarray(v, np.float64) for k, v in cols.items()}
    out = Path(out_dir)
    with staged(out) as tmp:
        with open(tmp / "predictions.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["row", *cols])
            for i in range(data.embeddings.shape[0]):
                writer.writerow([i, *(f"{cols[k][i]:.6g}" for k in cols)])
    return out / "predictions.csv"
