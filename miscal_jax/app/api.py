"""The ``report`` command as Python calls: from a file, a folder of evaluation logs or a DataFrame.

:func:`load` reads any source with the CLI's column rules and, for a long
table with a target ``model``, places the items in the panel geometry of the
other models; :func:`report` then writes the report. A notebook user never
writes a file to get one::

    summary = miscal_jax.app.api.report(df, "out", model="gpt-4o")
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np

from miscal_jax.app.io import DEFAULT_MODEL, Dataset, PanelData

__all__ = ["PANEL_GEOMETRIES", "check_for_report", "load", "panel_dataset", "report"]

PANEL_GEOMETRIES = ("profile", "encoder", "combined")


def panel_dataset(
    panel: PanelData,
    *,
    geometry: str | None = None,
    outcome: str | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> Dataset:
    """The target's rows of a :class:`~miscal_jax.app.io.PanelData`, embedded in the panel geometry.

    The panel map reads no outcome of the target, so it is fitted once on all
    items; cross-fitting then runs on the target's rows in its space.

    Args:
      panel: from :func:`~miscal_jax.app.io.load_with_panel`.
      geometry: ``"profile"`` (the panel's outcomes' top principal directions;
        needs no item embeddings), ``"encoder"`` (an encoder of the item
        embeddings trained to predict those outcomes) or ``"combined"`` (the
        profile coordinates beside the item embeddings' top principal
        components, the relative scale left to the candidate spaces).
        ``None``: combined where the items have embeddings, else profile
        (on three held-out MMLU-Pro models the combined space gave
        0.67-0.75x the profile space's held-out category error and a lower
        Brier, ``benchmarks/README.md``).
      outcome: ``"residual"`` or ``"correct"`` (``None``: the default config's).
      seed: the encoder's training seed.
      log: called with one line on the geometry (``None``: silent).

    Returns:
      The target :class:`~miscal_jax.app.io.Dataset` with ``embeddings`` the
      panel coordinates, ``panel`` the other models' ``[n, M]`` outcomes on
      each row's item (NaN where missing) and ``meta["panel"]`` the details.

    Raises:
      ValueError: an unknown geometry, or the encoder without item embeddings.
    """
    import jax

    from miscal_jax.geometry.panel import (
        DEFAULT_CONFIG,
        combined_embed,
        fit_combined,
        fit_panel,
        fit_profile,
        panel_embed,
        profile_embed,
    )

    if geometry is None:
        geometry = "profile" if panel.item_embeddings is None else "combined"
    if geometry not in PANEL_GEOMETRIES:
        raise ValueError(f"panel_geometry: expected one of {PANEL_GEOMETRIES}, got {geometry!r}.")
    if geometry != "profile" and panel.item_embeddings is None:
        raise ValueError(
            f"--panel-geometry {geometry}: {panel.target.meta['source']} has no item embeddings "
            "or texts for it to read; give emb_* columns, --embeddings or --text-col, "
            "or use the default profile geometry (it needs none)."
        )
    outcome = outcome or DEFAULT_CONFIG.outcome
    values, mask = panel.panel_outcomes(outcome)
    n_items, n_models = values.shape
    if log is not None:
        log(
            f"panel {geometry} geometry from {n_models} other models ({outcome}) on {n_items} items"
        )
    info = {
        "geometry": geometry,
        "outcome": outcome,
        "models": n_models,
        "items": n_items,
        "item_embeddings": panel.item_embeddings is not None,
        "names": list(panel.panel_models),
    }
    if geometry == "profile":
        profile_map = fit_profile(values, mask, DEFAULT_CONFIG.out_dim)
        z = np.asarray(profile_embed(profile_map, values, mask))
        info["explained"] = float(profile_map.explained)
    elif geometry == "combined":
        k = DEFAULT_CONFIG.out_dim
        combined_map = jax.jit(fit_combined, static_argnums=3)(
            values, mask, panel.item_embeddings, k
        )
        z = np.asarray(combined_embed(combined_map, values, mask, panel.item_embeddings))
        info["explained"] = float(combined_map.profile.explained)
        info["profile_dims"] = int(combined_map.profile.components.shape[1])
    else:
        panel_map, history = jax.jit(fit_panel)(
            jax.random.key(seed),
            panel.item_embeddings,
            values,
            mask,
            DEFAULT_CONFIG.replace(outcome=outcome),
        )
        z = np.asarray(panel_embed(panel_map, panel.item_embeddings))
        info["val_loss"] = float(history["best_val_loss"])
        info["constant_loss"] = float(history["constant_loss"])
    info["dims"] = int(z.shape[1])
    rows = panel.target_item
    outcomes = np.where(panel.panel_mask, panel.panel_correct, np.nan)[rows]
    data = panel.target
    return data._replace(embeddings=z[rows], panel=outcomes, meta={**data.meta, "panel": info})


def load(
    source=None,
    *,
    model: str | None = None,
    embeddings: str | Path | None = None,
    confidence_col: str | None = None,
    correct_col: str = "correct",
    text_col: str | None = None,
    text_embedding: str = "auto",
    item_col: str | None = None,
    model_col: str | None = None,
    panel_outcome: str | None = None,
    panel_geometry: str | None = None,
    normalisation: str = "none",
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> Dataset:
    """One model's data, as ``miscal-jax report`` reads it.

    Args:
      source: ``None`` (the shipped MMLU-Pro demo set); a file (``.npz``,
        ``.csv``, ``.csv.gz``, ``.jsonl``, ``.parquet``); lm-eval samples or
        Inspect logs (file or folder); or a pandas / polars DataFrame.
      model: demo set: a model's name or part of it. Otherwise the target
        model of a long table (one row per item and model; evaluation logs of
        several models are one), placed in the panel geometry of the others.
      embeddings, confidence_col, correct_col, text_col, text_embedding:
        as the CLI's flags (see :func:`~miscal_jax.app.io.load_data`).
      item_col, model_col, panel_outcome, panel_geometry: with ``model`` and a
        long table, as the CLI's flags.
      normalisation: lm-eval multiple-choice confidences, ``"none"`` or ``"length"``.
      seed: the panel encoder's training seed.
      log: called with one line per stage (``None``: silent).

    Returns:
      A validated :class:`~miscal_jax.app.io.Dataset`.

    Raises:
      ValueError: one line naming the argument, the source and the fix.
    """
    from miscal_jax.app.io import load_data, load_default, load_with_panel

    if source is None:
        return load_default(model or DEFAULT_MODEL, confidence_col or "verbal")
    if model is None:
        return load_data(
            source,
            embeddings=embeddings,
            confidence_col=confidence_col or "confidence",
            correct_col=correct_col,
            text_col=text_col,
            text_embedding=text_embedding,
            normalisation=normalisation,
        )
    panel = load_with_panel(
        source,
        model=model,
        item_col=item_col or "item",
        model_col=model_col or "model",
        confidence_col=confidence_col or "confidence",
        correct_col=correct_col,
        embeddings=embeddings,
        text_col=text_col,
        text_embedding=text_embedding,
        normalisation=normalisation,
    )
    return panel_dataset(panel, geometry=panel_geometry, outcome=panel_outcome, seed=seed, log=log)


def check_for_report(data: Dataset, folds: int) -> None:
    """Refuses data a report cannot be run on (too few rows for the folds, one outcome only).

    Raises:
      ValueError: one line naming the problem and the fix.
    """
    n = data.embeddings.shape[0]
    if folds < 2:
        raise ValueError(f"--folds: need at least 2, got {folds}.")
    if n < 2 * folds:
        raise ValueError(
            f"--folds: {folds} folds need at least {2 * folds} rows, the data has {n}; "
            f"use --folds {max(2, n // 2)} or fewer."
        )
    right = int(data.correct.sum())
    if right in (0, n):
        value = 1 if right else 0
        raise ValueError(
            f"correct: every one of the {n} items has correct = {value}; the report needs "
            "both right (1) and wrong (0) answers (check --correct-col)."
        )


def report(
    source=None,
    out: str | Path = "miscal-report",
    *,
    seed: int = 0,
    folds: int = 5,
    permutations: int = 200,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    candidates: tuple[str, ...] | None = None,
    out_name: str = "out",
    **columns,
) -> dict:
    """Reads a source with :func:`load` and writes the report to ``out``.

    Args:
      source, columns: as :func:`load` (``model``, ``text_col``, ...).
      out: output folder (created, or replaced if it holds a previous report).
      out_name: what messages call ``out`` (the CLI: ``--out``).
      seed, folds, permutations, progress, log, candidates: as
        :func:`~miscal_jax.app.report.run_report`.

    Returns:
      The ``summary.json`` content.

    Raises:
      ValueError: bad data or arguments (nothing is written).
    """
    from miscal_jax.app.report import check_out_dir, run_report

    check_out_dir(out, name=out_name)
    data = load(source, seed=seed, log=log, **columns)
    check_for_report(data, folds)
    return run_report(
        data,
        out,
        seed=seed,
        folds=folds,
        permutations=permutations,
        progress=progress,
        log=log,
        candidates=candidates,
    )
