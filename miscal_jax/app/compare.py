"""``miscal-jax compare``: many models answering the same items, one report.

Input is a *panel*: ``m`` models x ``n`` items, with one embedding per item
(or a text per item, embedded by :mod:`miscal_jax.app.text_embed`). Each model is
cross-fitted on the items it answered, tested for input-dependent
miscalibration and searched for regimes, exactly as ``miscal-jax report``
does for one model. The models' regimes are then pooled into *regions*
(regimes of different models that share most of their items are one region)
and every model is measured on every region, which gives a model-by-region
heat map: a region red for all models is a hard topic everyone is
overconfident on; a region coloured for one model only is that model's own.

All models are fitted by :func:`fit_models`, the one place to swap in a
vmapped functional fit: today it loops over :func:`~miscal_jax.model.crossfit`.
"""

import json
import sys
import time
from importlib import resources
from pathlib import Path
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

from miscal_jax.app import html as H
from miscal_jax.app.bootstrap import bootstrap_metrics
from miscal_jax.app.describe import count_terms, distinctive_terms, snippet
from miscal_jax.app.figures import LEVEL, png
from miscal_jax.app.report import Statistics, method_metrics, model_statistics
from miscal_jax.calibrators.global_maps import apply_isotonic, fit_isotonic
from miscal_jax.geometry.spaces import DEFAULT_CANDIDATES
from miscal_jax.model.crossfit import CrossFitResult, crossfit

__all__ = [
    "Comparison",
    "ModelReport",
    "Panel",
    "compare_models",
    "fit_models",
    "load_demo_panel",
    "load_panel",
    "run_compare",
    "select_models",
]


class Panel(NamedTuple):
    """Several models' results on the same items.

    Attributes:
      embeddings: ``[n, d]`` float32, one row per item.
      conf: ``[m, n]`` confidences in ``[0, 1]``, NaN where a model has none.
      correct: ``[m, n]`` 0/1 (ignored where ``conf`` is NaN).
      models: the ``m`` model names.
      items: the ``n`` item ids.
      text: ``n`` item texts, or ``None``.
      group: ``[n]`` int categories (evaluation only), or ``None``.
      group_names: names of the categories, or ``None``.
      meta: provenance.
    """

    embeddings: np.ndarray
    conf: np.ndarray
    correct: np.ndarray
    models: list
    items: list
    text: list | None
    group: np.ndarray | None
    group_names: list | None
    meta: dict


def load_demo_panel(confidence: str = "verbal") -> Panel:
    """The shipped MMLU-Pro demo set as a panel: 3 models x 3,001 questions."""
    kinds = {"verbal": "conf_verbal", "logit": "conf_logit"}
    if confidence not in kinds:
        raise ValueError(
            f"confidence: {confidence!r} is not in the demo set; use 'verbal' or 'logit'."
        )
    import gzip

    root = resources.files("miscal_jax") / "data"
    with resources.as_file(root / "mmlu_pro_demo.npz") as path:
        arrays = dict(np.load(path))
    with resources.as_file(root / "mmlu_pro_demo_questions.json.gz") as path:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            questions = json.load(f)
    conf = arrays[kinds[confidence]].astype(np.float64)
    conf = np.where(np.isfinite(conf), np.clip(conf, 0.0, 1.0), np.nan)
    return Panel(
        embeddings=arrays["embeddings"].astype(np.float32),
        conf=conf,
        correct=arrays["correct"].astype(np.float64),
        models=[str(m) for m in arrays["models"]],
        items=[int(i) for i in arrays["question_id"]],
        text=list(questions),
        group=arrays["category"].astype(np.int64),
        group_names=[str(c) for c in arrays["category_names"]],
        meta={"source": "MMLU-Pro demo (shipped)", "confidence": confidence},
    )


def _floats(name: str, values: list, path: Path) -> np.ndarray:
    """A column as float64: empty cells NaN, true/false as 1/0, else one line naming the row."""
    out = np.empty(len(values), np.float64)
    for i, v in enumerate(values):
        text = v.strip().lower() if isinstance(v, str) else None
        if v is None or text == "":
            out[i] = np.nan
        elif isinstance(v, bool) or text in ("true", "false"):
            out[i] = float(v is True or text == "true")
        else:
            try:
                out[i] = float(v)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{name}: value {v!r} at data row {i + 1} of {path} is not a number."
                ) from None
    return out


def select_models(panel: Panel, names) -> Panel:
    """The panel restricted to ``names`` (exact names or unambiguous parts of them)."""
    rows = []
    for name in names:
        hits = [j for j, m in enumerate(panel.models) if m == name] or [
            j for j, m in enumerate(panel.models) if name.lower() in m.lower()
        ]
        if len(hits) != 1:
            raise ValueError(
                f"--models: {name!r} matches {len(hits)} of the models {panel.models}; "
                "pass exact names."
            )
        rows.append(hits[0])
    if len(set(rows)) != len(rows):
        raise ValueError("--models: a model is named twice.")
    return panel._replace(
        conf=panel.conf[rows], correct=panel.correct[rows], models=[panel.models[j] for j in rows]
    )


def load_panel(
    source,
    *,
    item_col: str = "item",
    model_col: str = "model",
    confidence_col: str = "confidence",
    correct_col: str = "correct",
    embeddings=None,
    text_col: str | None = None,
    text_embedding: str = "auto",
    group_col: str = "group",
    progress: bool = False,
    normalisation: str = "none",
) -> Panel:
    """Reads a long table (one row per item and model) into a :class:`Panel`.

    Args:
      source: ``.csv``, ``.csv.gz``, ``.jsonl`` or ``.parquet`` with columns
        item, model, confidence, correct; optional ``text``/``text_col``,
        ``group`` and per-item embeddings as ``emb_0..emb_{d-1}``; the same
        as a pandas or polars DataFrame; or lm-eval samples / Inspect logs of
        several models (file or folder; their question texts are embedded).
      item_col, model_col, confidence_col, correct_col, group_col: column names.
      embeddings: optional ``.npy`` of ``[n, d]``, one row per item in order
        of first appearance in the table.
      text_col: column with the item texts; when there are no embeddings they
        are computed from it (see :func:`~miscal_jax.app.text_embed.embed_texts`,
        cached beside ``path``).
      text_embedding: ``"auto"``, ``"minilm"`` or ``"lsa"``.
      progress: show the embedding model's progress.
      normalisation: lm-eval multiple-choice confidences, ``"none"`` or ``"length"``.

    Returns:
      A :class:`Panel`; a row with an empty confidence leaves that cell NaN.

    Raises:
      ValueError: one line naming the file, column or row and the fix.
    """
    from miscal_jax.app.io import read_source, require_long_columns, text_cache
    from miscal_jax.app.text_embed import embed_texts

    table = read_source(source, normalisation=normalisation)
    path = table.source
    if table.notes is not None and text_col is None and embeddings is None:
        text_col = "text"  # evaluation logs: embed the questions
    require_long_columns(table, path, item_col, model_col, confidence_col, correct_col)
    cols = table.columns
    item_vals = [str(v) for v in cols[item_col]]
    model_vals = [str(v) for v in cols[model_col]]
    items = list(dict.fromkeys(item_vals))
    models = list(dict.fromkeys(model_vals))
    item_of = {v: i for i, v in enumerate(items)}
    model_of = {v: i for i, v in enumerate(models)}
    row_item = np.array([item_of[v] for v in item_vals], np.int64)
    row_model = np.array([model_of[v] for v in model_vals], np.int64)
    seen = row_model * len(items) + row_item
    uniq, counts = np.unique(seen, return_counts=True)
    if np.any(counts > 1):
        dup = int(np.flatnonzero(seen == uniq[np.argmax(counts > 1)])[1])
        raise ValueError(
            f"data: {table.place(dup)} repeats item {item_vals[dup]!r} for model "
            f"{model_vals[dup]!r}; keep one row per item and model."
        )
    conf_rows = _floats(confidence_col, cols[confidence_col], path)
    correct_rows = _floats(correct_col, cols[correct_col], path)
    bad = np.flatnonzero(np.isfinite(conf_rows) & ((conf_rows < 0) | (conf_rows > 1)))
    if bad.size:
        raise ValueError(
            f"{confidence_col}: value {conf_rows[bad[0]]} on {table.place(int(bad[0]))} is outside "
            "[0, 1]; clip or drop it."
        )
    bad = np.flatnonzero(np.isfinite(conf_rows) & ~np.isin(correct_rows, (0.0, 1.0)))
    if bad.size:
        raise ValueError(
            f"{correct_col}: value {correct_rows[bad[0]]} on {table.place(int(bad[0]))} is not "
            "0 or 1."
        )
    conf = np.full((len(models), len(items)), np.nan)
    correct = np.zeros((len(models), len(items)))
    conf[row_model, row_item] = conf_rows
    correct[row_model, row_item] = np.nan_to_num(correct_rows)
    first = np.full(len(items), -1, np.int64)
    first[row_item[::-1]] = np.arange(row_item.size)[::-1]  # first row of each item
    text = None
    tcol = text_col or ("text" if "text" in cols else None)
    if text_col is not None and text_col not in cols:
        raise ValueError(f"--text-col: {path} has no column {text_col!r}.")
    if tcol is not None:
        text = [str(cols[tcol][r]) for r in first]
    meta = {"source": str(path), "confidence": confidence_col}
    if table.notes is not None:
        meta["log"] = table.notes
    emb_cols = sorted(
        (c for c in cols if c.startswith("emb_") and c[4:].isdigit()), key=lambda c: int(c[4:])
    )
    if embeddings is not None:
        emb_path = Path(embeddings)
        if not emb_path.is_file():
            raise ValueError(f"embeddings: no such file {emb_path}.")
        emb = np.load(emb_path, allow_pickle=False)
        if emb.ndim != 2 or emb.shape[0] != len(items):
            raise ValueError(
                f"embeddings: expected [{len(items)}, d] (one row per item, in order of first "
                f"appearance), got {emb.shape}."
            )
    elif emb_cols:
        emb = np.stack([_floats(c, [cols[c][r] for r in first], path) for c in emb_cols], 1)
    elif text_col is not None:
        cache_dir, cache_name = text_cache(source)
        te = embed_texts(
            text,
            method=text_embedding,
            cache_dir=cache_dir,
            cache_name=cache_name,
            progress=progress,
        )
        emb = te.embeddings
        meta["text_embedding"] = te.method
    else:
        raise ValueError(
            f"data: {path} has no emb_0.. columns; pass a .npy with --embeddings or the text "
            "column with --text-col."
        )
    if not np.all(np.isfinite(emb)):
        raise ValueError("embeddings: contain NaN or infinite values.")
    group = group_names = None
    if group_col in cols:
        names = [str(cols[group_col][r]) for r in first]
        group_names = sorted(set(names))
        lookup = {g: i for i, g in enumerate(group_names)}
        group = np.array([lookup[g] for g in names], np.int64)
    return Panel(
        np.asarray(emb, np.float32), conf, correct, models, items, text, group, group_names, meta
    )


# ----------------------------------------------------------------------------- fitting


def fit_models(
    embeddings,
    conf,
    correct,
    *,
    folds: int = 5,
    seed: int = 0,
    candidates: tuple = DEFAULT_CANDIDATES,
    progress: bool = False,
    names=None,
) -> tuple:
    """Cross-fits every model of a panel; the one place that fits all models.

    Today a loop over :func:`~miscal_jax.model.crossfit`, each model on
    the items it answered (``conf`` not NaN). This is the seam for the
    vmapped functional ``fit``: replace the body with one call that fits all
    rows of ``conf``/``correct`` against the shared ``embeddings`` (missing
    cells as zero weights) and returns one result per model.

    Args:
      embeddings: ``[n, d]`` shared item embeddings.
      conf: ``[m, n]`` confidences, NaN where missing.
      correct: ``[m, n]`` 0/1.
      folds, seed, candidates: as in :func:`~miscal_jax.model.crossfit`
        (the same seed for every model).
      progress: print one line per model to stderr.
      names: model names for the progress lines.

    Returns:
      A tuple of ``m`` ``(observed_index [n_j], CrossFitResult)`` pairs.
    """
    x = np.asarray(embeddings, np.float32)
    conf = np.asarray(conf, np.float64)
    correct = np.asarray(correct, np.float64)
    out = []
    for j in range(conf.shape[0]):
        obs = np.flatnonzero(np.isfinite(conf[j]))
        if progress:
            name = names[j] if names is not None else f"model {j}"
            print(f"miscal-jax: fitting {name} ({obs.size} items)...", file=sys.stderr, flush=True)
        res = crossfit(
            x[obs],
            conf[j, obs],
            correct[j, obs],
            folds=folds,
            seed=seed,
            candidates=candidates,
            progress=False,
        )
        out.append((obs, res))
    return tuple(out)


class ModelReport(NamedTuple):
    """One model's analysis (items are its observed ones, ``index`` into the panel)."""

    name: str
    index: np.ndarray
    result: CrossFitResult
    statistics: Statistics
    methods: dict


class Comparison(NamedTuple):
    """Per-model analyses and the pooled regions with the model-by-region matrix.

    Attributes:
      models: one :class:`ModelReport` per model.
      regions: list of dicts: ``members`` (panel item indices), ``found_by``
        (model indices), ``terms``.
      cells: ``[m, R]`` mean ``correct - p_global`` of each model on each region.
      cell_se: ``[m, R]`` their standard errors.
      cell_n: ``[m, R]`` items behind each cell.
      seconds: run time.
    """

    models: tuple
    regions: list
    cells: np.ndarray
    cell_se: np.ndarray
    cell_n: np.ndarray
    seconds: float


def _pool_regions(panel: Panel, reports, *, overlap: float = 0.5) -> list[dict]:
    """Regimes of all models, merged when their items overlap (Jaccard > ``overlap``)."""
    n = panel.embeddings.shape[0]
    regions: list[dict] = []
    found = [(r.p_adjusted, j, r) for j, rep in enumerate(reports) for r in rep.statistics.regimes]
    for _, j, r in sorted(found, key=lambda t: (t[0], t[1])):
        mask = np.zeros(n, bool)
        mask[reports[j].index[r.members]] = True
        best, best_jac = None, overlap
        for reg in regions:
            jac = (mask & reg["mask"]).sum() / max((mask | reg["mask"]).sum(), 1)
            if jac > best_jac:
                best, best_jac = reg, jac
        if best is None:
            regions.append({"mask": mask, "found_by": {j: r}})
        elif j not in best["found_by"]:
            best["found_by"][j] = r
    return regions


def compare_models(
    panel: Panel,
    *,
    folds: int = 5,
    permutations: int = 200,
    seed: int = 0,
    candidates: tuple = DEFAULT_CANDIDATES,
    progress: bool = False,
) -> Comparison:
    """Fits every model, tests and finds regimes per model, pools regions, fills the matrix.

    Heat-map cells: for a model that reported the region itself, its regime's
    held-out excess (the evaluation half of :func:`discover_regimes`); for
    any other model, the mean of ``correct - p_global`` over the region's
    items that model answered, where ``p_global`` is that model's own global
    isotonic map. Neither uses the model's labels to choose the region, so
    both are honest.
    """

    started = time.perf_counter()
    x = panel.embeddings
    fits = fit_models(
        x,
        panel.conf,
        panel.correct,
        folds=folds,
        seed=seed,
        candidates=candidates,
        progress=progress,
        names=panel.models,
    )
    reports = []
    for j, (obs, res) in enumerate(fits):
        p, y = panel.conf[j, obs], panel.correct[j, obs]
        stats = model_statistics(res, seed=seed, permutations=permutations)
        groups = None if panel.group is None else panel.group[obs]
        methods = method_metrics(res.predictions, y, groups)
        reports.append(ModelReport(panel.models[j], obs, res, stats, methods))
    regions = _pool_regions(panel, reports)
    m, r_count = len(reports), len(regions)
    cells = np.full((m, r_count), np.nan)
    cell_se = np.full((m, r_count), np.nan)
    cell_n = np.zeros((m, r_count), np.int64)
    for j, rep in enumerate(reports):
        p, y = panel.conf[j, rep.index], panel.correct[j, rep.index]
        excess = y - np.asarray(apply_isotonic(fit_isotonic(p, y), p), np.float64)
        cards = H.regime_cards(
            [reg["found_by"][j] for reg in regions if j in reg["found_by"]],
            p,
            y,
            rep.result.predictions,
            evaluation=np.asarray(rep.statistics.found.evaluation),
        )
        own = iter(cards)
        for c, reg in enumerate(regions):
            if j in reg["found_by"]:
                card = next(own)
                cells[j, c] = card["excess"]
                cell_se[j, c] = (card["excess_ci"][1] - card["excess"]) / card["z"]
                cell_n[j, c] = card["size_evaluated"]
                continue
            sel = reg["mask"][rep.index]
            if sel.sum() >= 5:
                e = excess[sel]
                cells[j, c] = e.mean()
                cell_se[j, c] = e.std(ddof=1) / np.sqrt(e.size)
                cell_n[j, c] = e.size
    if panel.text is not None and regions:
        counts = count_terms(panel.text)
        for reg in regions:
            reg["terms"] = [t.term for t in distinctive_terms(counts, reg["mask"], top_k=6)]
    for reg in regions:
        reg["members"] = np.flatnonzero(reg.pop("mask"))
        reg.setdefault("terms", [])
    return Comparison(
        tuple(reports), regions, cells, cell_se, cell_n, time.perf_counter() - started
    )


# ----------------------------------------------------------------------------- report


def heatmap_png(comparison: Comparison, models, *, level: float = LEVEL) -> bytes:
    """Model-by-region heat map of ``correct - p_global`` (red: overconfident).

    A cell with a thick frame is a region the model reported itself; a dot
    marks a cell whose interval excludes zero.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    cells = comparison.cells
    m, r = cells.shape
    z = NormalDist().inv_cdf(0.5 + level / 2)
    fig = Figure(figsize=(min(12.0, max(4.5, 1.05 * r + 2.8)), max(2.2, 0.5 * m + 1.6)))
    ax = fig.subplots()
    finite = np.abs(cells[np.isfinite(cells)])
    lim = float(finite.max()) if finite.size else 0.1
    im = ax.imshow(np.ma.masked_invalid(cells), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    for j in range(m):
        for c in range(r):
            v = cells[j, c]
            if not np.isfinite(v):
                ax.text(c, j, "n/a", ha="center", va="center", fontsize=7, color="#666")
                continue
            sig = abs(v) > z * comparison.cell_se[j, c]
            ax.text(
                c,
                j,
                f"{v:+.2f}" + ("•" if sig else ""),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if abs(v) > 0.6 * lim else "black",
            )
            if j in comparison.regions[c]["found_by"]:
                ax.add_patch(Rectangle((c - 0.5, j - 0.5), 1, 1, fill=False, ec="black", lw=2.2))
    labels = []
    for c, reg in enumerate(comparison.regions):
        words = "\n".join(reg["terms"][:2])
        labels.append(f"C{c}" + (f"\n{words}" if words else ""))
    ax.set_xticks(range(r), labels, fontsize=7)
    ax.set_yticks(range(m), [_short(s) for s in models], fontsize=8)
    ax.tick_params(length=0)
    cb = fig.colorbar(im, ax=ax, shrink=0.9)
    cb.set_label("accuracy − recalibrated conf.", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    ax.set_title("Regions x models (frame: reported for that model; •: CI excludes 0)", fontsize=9)
    fig.tight_layout()
    return png(fig)


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _compare_summary(panel: Panel, comp: Comparison, boots: list) -> dict:
    models = []
    for rep, boot in zip(comp.models, boots, strict=True):
        p, y = panel.conf[panel.models.index(rep.name), rep.index], None
        y = panel.correct[panel.models.index(rep.name), rep.index]
        models.append(
            {
                "name": rep.name,
                "n": int(rep.index.size),
                "accuracy": float(y.mean()),
                "mean_confidence": float(p.mean()),
                "heterogeneity": {
                    "statistic": rep.statistics.heterogeneity.statistic,
                    "p_value": rep.statistics.heterogeneity.p_value,
                    "permutations": int(rep.statistics.heterogeneity.null.size),
                },
                "grouping_loss": {
                    "estimate": rep.statistics.grouping_loss.estimate,
                    "ci_low": rep.statistics.grouping_loss.low,
                    "ci_high": rep.statistics.grouping_loss.high,
                },
                "geometry": [i["chosen"] for i in rep.result.info],
                "methods": rep.methods,
                "method_intervals": boot["intervals"],
                "local_minus_isotonic": boot.get("local_minus_isotonic"),
                "regimes": [
                    {
                        "id": r.id,
                        "sign": r.sign,
                        "size": r.size_all,
                        "excess_residual": r.excess,
                        "mean_residual": r.mean_residual,
                        "ci_low": r.ci_low,
                        "ci_high": r.ci_high,
                        "p_adjusted": r.p_adjusted,
                    }
                    for r in rep.statistics.regimes
                ],
            }
        )
    regions = []
    for c, reg in enumerate(comp.regions):
        regions.append(
            {
                "id": c,
                "size": int(reg["members"].size),
                "terms": reg["terms"],
                "found_by": [comp.models[j].name for j in sorted(reg["found_by"])],
                "cells": {
                    rep.name: {
                        "excess": None
                        if not np.isfinite(comp.cells[j, c])
                        else float(comp.cells[j, c]),
                        "se": None
                        if not np.isfinite(comp.cell_se[j, c])
                        else float(comp.cell_se[j, c]),
                        "n": int(comp.cell_n[j, c]),
                        "reported": j in reg["found_by"],
                    }
                    for j, rep in enumerate(comp.models)
                },
            }
        )
    return {
        "n_items": int(panel.embeddings.shape[0]),
        "source": panel.meta,
        "models": models,
        "regions": regions,
        "seconds": round(comp.seconds, 1),
    }


def _region_cards(panel: Panel, comp: Comparison) -> str:
    z = NormalDist().inv_cdf(0.5 + LEVEL / 2)
    out = ['<div class="cards">']
    for c, reg in enumerate(comp.regions):
        vals = comp.cells[:, c]
        mean = np.nanmean(vals) if np.isfinite(vals).any() else 0.0
        sign = "over" if mean < 0 else "under"
        shared = [
            j
            for j in range(len(comp.models))
            if np.isfinite(vals[j])
            and abs(vals[j]) > z * comp.cell_se[j, c]
            and np.sign(vals[j]) == np.sign(mean)
        ]
        kind = (
            "shared by all models"
            if len(shared) == len(comp.models)
            else f"shared by {len(shared)} of {len(comp.models)} models"
            if len(shared) > 1
            else "specific to one model"
        )
        words = ", ".join(reg["terms"][:4]) or f"region C{c}"
        rows = []
        for j, rep in enumerate(comp.models):
            v, half = vals[j], z * comp.cell_se[j, c]
            if not np.isfinite(v):
                cell = "<td>n/a</td>"
            else:
                word = "over" if v < 0 else "under"
                cell = (
                    f'<td><span class="{word}-t">{word} {abs(v):.2f}</span><br>'
                    f'<span class="ci">[{v - half:+.2f}, {v + half:+.2f}]</span></td>'
                )
            mark = " ●" if j in reg["found_by"] else ""
            rows.append(f"<tr><td>{H.escape(_short(rep.name, 24))}{mark}</td>{cell}</tr>")
        rows = "".join(rows)
        cats = ""
        if panel.group is not None:
            share = H.category_shares(reg["members"], panel.group, panel.group_names)
            cats = ", ".join(
                f"{H.escape(g['name'])} {g['share']:.0%} ({g['overall']:.0%} overall)"
                for g in share
            )
            cats = f'<p class="small">Categories (not used to find it): {cats}.</p>'
        examples = ""
        if panel.text is not None:
            found = next(iter(reg["found_by"].items()))
            ex = comp.models[found[0]].index[found[1].examples[:2]]
            examples = (
                "<ul>"
                + "".join(f"<li>{H.escape(snippet(panel.text[i]))}</li>" for i in ex)
                + "</ul>"
            )
        out.append(
            f'<div class="card {sign}"><h3>C{c}: {H.escape(words)}</h3>'
            f'<p class="words">{kind}; {reg["members"].size} items</p><p class="small">'
            "Accuracy minus each model's recalibrated confidence here (●: reported for that "
            "model):</p>"
            f'<div class="tablewrap"><table><tbody>{rows}</tbody></table></div>'
            f"{cats}{examples}</div>"
        )
    out.append("</div>")
    return "\n".join(out)


def write_compare_report(out_dir, panel: Panel, comp: Comparison, *, seed: int = 0) -> dict:
    """Writes ``report.html`` and ``summary.json`` for a comparison; returns the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    boots = []
    for j, rep in enumerate(comp.models):
        groups = None if panel.group is None else panel.group[rep.index]
        y = panel.correct[panel.models.index(rep.name), rep.index]
        boots.append(bootstrap_metrics(rep.result.predictions, y, groups, seed=seed + j))
    summary = _compare_summary(panel, comp, boots)
    rows = []
    for s in summary["models"]:
        het, gl, m = s["heterogeneity"], s["grouping_loss"], s["methods"]
        n_over = sum(r["sign"] == "over" for r in s["regimes"])
        d = (s.get("local_minus_isotonic") or {}).get("brier")
        diff = f"<br>{H.ci_span(d[1], d[2], 4)}" if d else ""
        rows.append(
            f"<tr><td>{H.escape(_short(s['name'], 40))}</td><td>{s['n']}</td>"
            f"<td>{s['accuracy']:.3f}</td><td>{s['mean_confidence']:.3f}</td>"
            f"<td>{het['p_value']:.3g}</td>"
            f"<td>{gl['estimate']:.4f}<br>{H.ci_span(gl['ci_low'], gl['ci_high'], 4)}</td>"
            f"<td>{len(s['regimes'])} ({n_over} over)</td>"
            f"<td>{m['isotonic']['brier']:.3f} → {m['local']['brier']:.3f}{diff}</td></tr>"
        )
    n_yes = sum(s["heterogeneity"]["p_value"] < 0.05 for s in summary["models"])
    shared = sum(len(r["found_by"]) > 1 for r in summary["regions"])
    perms = min(s["heterogeneity"]["permutations"] for s in summary["models"])
    floor_note = (
        f" With {perms} permutations the smallest attainable p is {1 / (perms + 1):.3g}: "
        "use more permutations (--permutations) for this test."
        if 1 / (perms + 1) >= 0.05
        else ""
    )
    body = [
        f"<h1>Where are {len(panel.models)} models' confidences wrong?</h1>",
        f'<p class="sub">{H.escape(panel.meta.get("source", ""))}; confidence '
        f"<code>{H.escape(panel.meta.get('confidence', ''))}</code>; "
        f"{panel.embeddings.shape[0]} items.</p>",
        f'<div class="verdict {"yes" if n_yes else "no"}"><p><b>{n_yes} of '
        f"{len(panel.models)} models</b> show input-dependent miscalibration (permutation test "
        f"p &lt; 0.05). Their regimes pool into {len(summary['regions'])} regions, "
        f"{shared} of them reported for more than one model.{floor_note}</p></div>",
        '<div class="tablewrap"><table><thead><tr><th>model</th><th>n</th><th>accuracy</th>'
        "<th>mean conf.</th><th>heterogeneity p</th><th>grouping loss</th><th>regimes</th>"
        '<th>Brier isotonic → local<br><span class="ci">[CI of the difference]</span></th>'
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        "</div>",
        "<h2>Which regions are shared, which are model-specific</h2>",
    ]
    if comp.regions:
        body += [
            H.img_tag(heatmap_png(comp, [r.name for r in comp.models]), "model by region heat map"),
            '<p class="small">Each cell: accuracy minus the model\'s own globally recalibrated '
            "confidence on the region's items (red: overconfident there, blue: under). Framed: "
            "the region was reported for that model, and the cell is its held-out half; other "
            "cells use all the region's items that model answered. •: the "
            f"{LEVEL:.0%} interval excludes zero.</p>",
            _region_cards(panel, comp),
        ]
    else:
        body.append("<p>No model has a regime that passed the false-discovery-rate threshold.</p>")
    body.append("<h2>Held-out metrics by method, per model</h2>")
    for s in summary["models"]:
        body.append(f"<h3>{H.escape(s['name'])}</h3>")
        body.append(H.render_method_table(s["methods"], s["method_intervals"]))
    notes = [
        "Each model is cross-fitted on the items it answered, with the same folds seed; "
        "per-model tests, regimes and metrics are those of <code>miscal-jax report</code>.",
        "Regions: every model's regimes, merged when two share more than half of their items "
        "(Jaccard index). Terms: distinctive terms of the region's texts (log-odds ratio with "
        "an informative Dirichlet prior, Monroe et al. 2008).",
        "All numbers are relative to each model's own global (isotonic) recalibration, so a "
        "model that is overconfident everywhere is not red everywhere.",
        f"Intervals: {LEVEL:.0%}; metrics by item bootstrap of out-of-fold predictions.",
    ]
    note = H.text_embedding_note(panel.meta)
    if note:
        notes.append(note)
    body += [
        "<h2>Method notes</h2>",
        '<ul class="notes">' + "".join(f"<li>{n}</li>" for n in notes) + "</ul>",
        f'<p class="small">Run time {summary["seconds"]} s.</p>',
    ]
    (out / "report.html").write_text(
        H.page("miscal_jax: model comparison", "\n".join(body)), encoding="utf-8"
    )
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def run_compare(
    panel: Panel,
    out_dir,
    *,
    folds: int = 5,
    permutations: int = 200,
    seed: int = 0,
    candidates: tuple = DEFAULT_CANDIDATES,
    progress: bool = False,
) -> dict:
    """Runs :func:`compare_models` and writes its report; returns ``summary.json``'s content."""
    from miscal_jax.app.report import check_out_dir

    check_out_dir(out_dir)
    if panel.conf.shape[0] < 1:
        raise ValueError("data: the panel has no model.")
    for j, name in enumerate(panel.models):
        obs = np.isfinite(panel.conf[j])
        right = panel.correct[j, obs]
        if obs.sum() < 2 * folds:
            raise ValueError(
                f"data: model {name!r} has {int(obs.sum())} items with a confidence; "
                f"{folds} folds need at least {2 * folds}."
            )
        if right.min() == right.max():
            raise ValueError(
                f"correct: model {name!r} has correct = {int(right[0])} on every item; the "
                "comparison needs both right and wrong answers for each model."
            )
    comp = compare_models(
        panel,
        folds=folds,
        permutations=permutations,
        seed=seed,
        candidates=candidates,
        progress=progress,
    )
    from miscal_jax.app.report import staged

    with staged(Path(out_dir)) as tmp:  # the folder appears complete or not at all
        return write_compare_report(tmp, panel, comp, seed=seed)
