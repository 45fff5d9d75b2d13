"""Reproduction study on real LLM data: miscal_jax against confidence-only maps and MCGrad.

    pip install torch==2.13.0 && pip install -e ".[benchmark]"   # MCGrad needs torch
    python benchmarks/real_llm_study.py [--mmlu-models 12] [--max-items 3000] [--quick]

Reads ``../shared/data`` (never shipped). Rows: (benchmark, model, confidence
kind).

* MMLU-Pro: ``--mmlu-models`` models spread over the accuracy range (among
  those that answer and give a verbalised confidence on at least 95% of the
  questions), each with both confidence kinds (verbalised; token
  probability) where at least half the questions have one; a seeded
  subsample of ``--max-items`` questions, the same for every model.
  Regional error over the 14 categories.
* LitCab: each data set (NQ, SciQ, TriviaQA, TruthfulQA, WikiQA) and each of
  its six models separately, all items. The data sets carry no categories,
  so regional error is over 8 k-means clusters of the question embeddings,
  fitted once per data set without labels (the same for every model and
  method).

Protocol: one 5-fold split per row. Every method is fitted on four folds and
predicts the fifth, so every metric is held-out: temperature scaling,
isotonic regression, miscal_jax's local correction in the single-model
geometry (default candidates, chosen per fold), the local correction in the
panel geometry (``local_panel``: :func:`miscal_jax.geometry.fit_panel` on the
*other* models' residuals ``correct - confidence``, same confidence kind, on
every item of the benchmark, never the target's; candidates ``raw`` only),
the same with the other models' correctness (``local_panel_correct``), the
profile geometry of the other models' residuals (``local_profile``:
:func:`miscal_jax.geometry.fit_profile`, 16 directions) and MCGrad on the confidence (clipped to
[1e-3, 1 - 1e-3]) and the first 32 principal components of the question
embeddings (label-free PCA over all items). The heterogeneity test
(``--permutations`` within-bin permutations) and regime discovery use the
single-model geometry; p-values are adjusted across all rows with
Benjamini-Hochberg.

Writes ``benchmarks/results/real_llm_study.{json,md}``. ``--add-spaces
local_profile`` cross-fits only the named panel spaces on the rows of an
earlier run (same items, same split) and adds their scores.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from miscal_jax import metrics as M
from miscal_jax.geometry.panel import (
    DEFAULT_CONFIG,
    fit_panel,
    fit_profile,
    panel_embed,
    profile_embed,
)
from miscal_jax.model.crossfit import crossfit
from miscal_jax.stats.inference import heterogeneity_test
from miscal_jax.stats.regimes import discover_regimes, kmeans

sys.path.insert(0, str(Path(__file__).parent))
from compare_mmlu import pick_models  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
KINDS = {"verbal": "conf_verbal_numerical", "logit": "conf_logit_perplexity"}
METHODS = (
    "uncorrected",
    "temperature",
    "isotonic",
    "local",
    "local_panel",
    "local_panel_correct",
    "local_profile",
    "mcgrad",
)
PANELS = ("local_panel", "local_panel_correct", "local_profile")
FIT_PANEL = jax.jit(fit_panel)
FIT_PROFILE = jax.jit(fit_profile, static_argnums=2)


def panel_space(emb, outcomes, target_col, outcome, seed=0):
    """``[N, k]`` panel coordinates of every item from every column but the target's.

    ``outcomes`` is ``[N, M]`` correctness (``outcome="correct"``) or
    residuals (``"residual"``), NaN where missing; columns with nothing
    observed are dropped.
    """
    y, mask = _others(outcomes, target_col)
    config = DEFAULT_CONFIG.replace(outcome=outcome)
    panel_map, _ = FIT_PANEL(jax.random.key(seed), emb, y, mask, config)
    return np.asarray(panel_embed(panel_map, emb))


def _others(outcomes, target_col):
    """The ``[N, M-1]`` outcomes and mask of every observed column but the target's."""
    y = np.delete(outcomes, target_col, axis=1)
    mask = np.isfinite(y)
    return np.where(mask, y, 0.0)[:, mask.any(0)], mask[:, mask.any(0)]


def profile_space(residuals, target_col):
    """``[N, k]`` profile coordinates of every item from the other models' residuals."""
    y, mask = _others(residuals, target_col)
    profile = FIT_PROFILE(y, mask, DEFAULT_CONFIG.out_dim)
    return np.asarray(profile_embed(profile, y, mask))


def panel_spaces(emb, residuals, correct, target_col, spaces):
    """``{method: [N, k]}`` the requested panel spaces of every item (see ``PANELS``)."""
    make = {
        "local_panel": lambda: panel_space(emb, residuals, target_col, "residual"),
        "local_panel_correct": lambda: panel_space(emb, correct, target_col, "correct"),
        "local_profile": lambda: profile_space(residuals, target_col),
    }
    return {name: make[name]() for name in spaces}


def mmlu_rows(num_models, max_items, seed=0, keep_row=lambda key: True, spaces=PANELS):
    src = SHARED / "llm-calibration-study-mmlu-pro"
    emb = np.load(src / "question_embeddings_all-MiniLM-L6-v2_f16.npy").astype(np.float32)
    tidy = pd.read_csv(src / "tidy_long.csv.gz")

    def wide(values):
        table = tidy.pivot(index="row_index", columns="model", values=values)
        return table.reindex(np.arange(emb.shape[0]))

    correct = wide("correct")
    outcomes = correct.to_numpy(np.float64)
    confs = {kind: wide(col).clip(0, 1).to_numpy(np.float64) for kind, col in KINDS.items()}
    items = np.sort(np.random.default_rng(seed).permutation(emb.shape[0])[:max_items])
    for model in pick_models(num_models):
        target = correct.columns.get_loc(model)
        df = tidy[tidy.model == model].set_index("row_index").loc[items]
        z_correct = {}  # the correctness panel serves both confidence kinds
        for kind, col in KINDS.items():
            conf = df[col].to_numpy(np.float64)
            keep = np.isfinite(conf)
            if keep.mean() < 0.5 or not keep_row(("MMLU-Pro", model, kind)):
                continue
            per_kind = [m for m in spaces if m not in z_correct]
            z = panel_spaces(emb, outcomes - confs[kind], outcomes, target, per_kind)
            if "local_panel_correct" in z:
                z_correct["local_panel_correct"] = z["local_panel_correct"]
            z.update(z_correct)
            yield dict(
                benchmark="MMLU-Pro",
                model=model,
                kind=kind,
                x=emb[items][keep],
                z={k: v[items][keep] for k, v in z.items()},
                conf=np.clip(conf[keep], 0, 1),
                correct=df.correct.to_numpy(np.float64)[keep],
                group=pd.factorize(df.category)[0][keep],
            )


def litcab_rows(num_groups=8, seed=0, keep_row=lambda key: True, spaces=PANELS):
    src = SHARED / "litcab"
    tidy = pd.read_csv(src / "tidy.csv.gz")
    emb = np.load(src / "question_embeddings_all-MiniLM-L6-v2_f16.npy").astype(np.float32)
    index = pd.read_csv(src / "question_embeddings_index.csv")
    for dataset, part in tidy.groupby("dataset"):
        outcomes = part.pivot(index="item_id", columns="model", values="correct_gpt4")
        confs = part.pivot(index="item_id", columns="model", values="conf_seq_prob")
        rows = index.set_index(["dataset", "item_id"]).loc[
            [(dataset, i) for i in outcomes.index], "emb_row"
        ]
        x_items = emb[rows.to_numpy()]
        _, clusters = kmeans(jax.random.key(seed), x_items, k=num_groups)
        clusters = np.asarray(clusters)
        position = {item: i for i, item in enumerate(outcomes.index)}
        for model, df in part.groupby("model"):
            if not keep_row((f"LitCab {dataset}", model, "seq_prob")):
                continue
            y = outcomes.to_numpy(np.float64)
            residual = y - confs[outcomes.columns].to_numpy(np.float64)
            target = outcomes.columns.get_loc(model)
            z = panel_spaces(x_items, residual, y, target, spaces)
            at = np.array([position[i] for i in df.item_id])
            yield dict(
                benchmark=f"LitCab {dataset}",
                model=model,
                kind="seq_prob",
                x=x_items[at],
                z={k: v[at] for k, v in z.items()},
                conf=df.conf_seq_prob.to_numpy(np.float64),
                correct=df.correct_gpt4.to_numpy(np.float64),
                group=clusters[at],
            )


def mcgrad_oof(x, conf, correct, fold, num_pcs=32, seed=0):
    """Out-of-fold MCGrad predictions on (confidence, 32 PCs), same folds."""
    from mcgrad.methods import MCGrad

    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    pcs = xc @ vt[:num_pcs].T
    cols = [f"pc{j}" for j in range(pcs.shape[1])]
    df = pd.DataFrame(pcs, columns=cols)
    df["conf"] = np.clip(conf, 1e-3, 1 - 1e-3)
    df["y"] = correct.astype(int)
    out = np.zeros(len(conf))
    for k in np.unique(fold):
        tr, te = fold != k, fold == k
        model = MCGrad(random_state=seed)
        model.fit(df[tr].reset_index(drop=True), "conf", "y", numerical_feature_column_names=cols)
        out[te] = model.predict(
            df[te].reset_index(drop=True), "conf", numerical_feature_column_names=cols
        )
    return out


def evaluate(row, permutations, use_mcgrad):
    x, p, y, g = row["x"], row["conf"], row["correct"], row["group"]
    start = time.perf_counter()
    res = crossfit(x, p, y, folds=5, seed=0, progress=False)
    k_het, k_regimes = jax.random.split(jax.random.key(0))
    het = heterogeneity_test(k_het, res.model, num_permutations=permutations)
    regimes = discover_regimes(k_regimes, res.model).as_list()
    seconds = time.perf_counter() - start
    preds = {k: res.predictions[k] for k in ("uncorrected", "temperature", "isotonic", "local")}
    preds.update(panel_predictions(row, res.fold))
    mc_seconds = None
    if use_mcgrad:
        t = time.perf_counter()
        preds["mcgrad"] = mcgrad_oof(x, p, y, res.fold)
        mc_seconds = round(time.perf_counter() - t, 1)
    out = {
        "benchmark": row["benchmark"],
        "model": row["model"],
        "kind": row["kind"],
        "n": int(len(y)),
        "accuracy": float(y.mean()),
        "p_value": het.p_value,
        "regimes": len(regimes),
        "geometry": [i["chosen"] for i in res.info],
        "seconds_miscal": round(seconds, 1),
        "seconds_mcgrad": mc_seconds,
    }
    out.update({name: scores(q, y, g) for name, q in preds.items()})
    return out


def panel_predictions(row, fold=None):
    """``{method: [n]}`` the local correction cross-fitted in each of the row's panel spaces.

    Candidates ``raw`` only, the study's split (5 folds, seed 0); ``fold``,
    where given, is the single-model run's split, checked to be the same.
    """
    preds = {}
    for method, z in row["z"].items():
        panel = crossfit(
            z, row["conf"], row["correct"], folds=5, seed=0, candidates=("raw",), progress=False
        )
        assert fold is None or np.array_equal(panel.fold, fold)
        preds[method] = panel.predictions["local"]
    return preds


def scores(q, y, g):
    """Held-out metrics of ``[n]`` predictions ``q`` against outcomes ``y``, groups ``g``."""
    return {
        "ece": float(M.ece(q, y)),
        "smece": float(M.smooth_ece(q, y)),
        "ecce": float(M.ecce(q, y)),
        "brier": float(M.brier(q, y)),
        "regional": float(M.regional_error(q, y, g)),
    }


def benjamini_hochberg(p_values):
    """Adjusted p-values (step-up, monotone) for ``[R]`` p-values."""
    p = np.asarray(p_values, np.float64)
    order = np.argsort(p)
    scaled = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def table(results):
    methods = [m for m in METHODS if m in results[0]]
    head = ["benchmark", "model", "conf", "n", "acc", "BH q", "regimes"]
    head += [f"{m} ECE/Brier/reg" for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [
            r["benchmark"],
            r["model"],
            r["kind"],
            str(r["n"]),
            f"{r['accuracy']:.3f}",
            f"{r['q_value']:.3f}",
            str(r["regimes"]),
        ]
        best_brier = min(r[m]["brier"] for m in methods)
        for m in methods:
            b = f"{r[m]['brier']:.4f}"
            b = f"**{b}**" if r[m]["brier"] == best_brier else b
            cells.append(f"{r[m]['ece']:.3f} / {b} / {r[m]['regional']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(results, alpha=0.05):
    """Per benchmark family: rows significant after BH, regimes, and mean metrics."""
    methods = [m for m in METHODS if m in results[0]]
    lines = [
        "| family | rows | significant (BH 0.05) | rows with regimes | "
        + " | ".join(f"{m} ECE/smECE/Brier/reg" for m in methods)
        + " |",
        "|" + "---|" * (4 + len(methods)),
    ]
    families = {"MMLU-Pro": [], "LitCab": []}
    for r in results:
        families["LitCab" if r["benchmark"].startswith("LitCab") else "MMLU-Pro"].append(r)
    for name, rows in families.items():
        if not rows:
            continue
        cells = [
            name,
            str(len(rows)),
            str(sum(r["q_value"] <= alpha for r in rows)),
            str(sum(r["regimes"] > 0 for r in rows)),
        ]
        for m in methods:
            keys = ("ece", "smece", "brier", "regional")
            mean = {k: np.mean([r[m][k] for r in rows]) for k in keys}
            cells.append(
                f"{mean['ece']:.4f} / {mean['smece']:.4f} / {mean['brier']:.4f} / "
                f"{mean['regional']:.4f}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for m in ("local", *PANELS, "mcgrad"):
        if m not in results[0]:
            continue
        d_brier = [r[m]["brier"] - r["isotonic"]["brier"] for r in results]
        d_ece = [r[m]["ece"] - r["isotonic"]["ece"] for r in results]
        d_reg = [r[m]["regional"] - r["isotonic"]["regional"] for r in results]
        lines.append(
            f"- {m} vs isotonic over {len(results)} rows: Brier lower on "
            f"{sum(d < 0 for d in d_brier)} (mean {np.mean(d_brier):+.4f}); regional error lower "
            f"on {sum(d < 0 for d in d_reg)} (mean {np.mean(d_reg):+.4f}); ECE within 0.01 on "
            f"{sum(d <= 0.01 for d in d_ece)} (mean {np.mean(d_ece):+.4f})."
        )
    for m in (m for m in PANELS if m in results[0]):
        ratio = [r[m]["regional"] / r["local"]["regional"] for r in results]
        lines.append(
            f"- {m} / local regional error: median {np.median(ratio):.2f}, mean "
            f"{np.mean(ratio):.2f}, at most 0.8 on {sum(q <= 0.8 for q in ratio)} of "
            f"{len(ratio)} rows; Brier no worse on "
            f"{sum(r[m]['brier'] <= r['local']['brier'] for r in results)}."
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-items", type=int, default=3000)
    parser.add_argument("--mmlu-models", type=int, default=12)
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--no-mmlu", action="store_true")
    parser.add_argument("--no-litcab", action="store_true")
    parser.add_argument("--no-mcgrad", action="store_true")
    parser.add_argument("--quick", action="store_true", help="one MMLU model, 1000 items")
    parser.add_argument("--out", default=str(RESULTS / "real_llm_study"))
    parser.add_argument(
        "--resume", action="store_true", help="keep the rows already in OUT.json, run the rest"
    )
    parser.add_argument(
        "--add-spaces",
        nargs="+",
        choices=PANELS,
        default=None,
        help="only cross-fit these panel spaces on the rows already in OUT.json and add "
        "their scores (the rest of each row is kept)",
    )
    args = parser.parse_args()
    if args.quick:
        args.mmlu_models, args.max_items, args.no_litcab = 1, 1000, True
    use_mcgrad = not (args.no_mcgrad or args.add_spaces)
    if use_mcgrad:
        try:
            import mcgrad  # noqa: F401
        except ImportError:
            print(
                "mcgrad not installed (pip install torch==2.13.0 && pip install -e "
                "'.[benchmark]'); running without it"
            )
            use_mcgrad = False
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = []
    if (args.resume or args.add_spaces) and out.with_suffix(".json").exists():
        results = json.loads(out.with_suffix(".json").read_text())
    if args.add_spaces and not results:
        parser.error(f"--add-spaces needs the rows of an earlier run in {out.with_suffix('.json')}")
    by_key = {(r["benchmark"], r["model"], r["kind"]): r for r in results}
    if args.add_spaces:
        keep_row, spaces = by_key.__contains__, tuple(args.add_spaces)
    else:
        keep_row, spaces = (lambda key: key not in by_key), PANELS
    rows = []
    if not args.no_litcab:
        rows.append(litcab_rows(keep_row=keep_row, spaces=spaces))
    if not args.no_mmlu:
        rows.append(mmlu_rows(args.mmlu_models, args.max_items, keep_row=keep_row, spaces=spaces))
    for source in rows:
        for row in source:
            if args.add_spaces:
                r = by_key[(row["benchmark"], row["model"], row["kind"])]
                assert r["n"] == len(row["correct"])
                preds = panel_predictions(row)
                r.update({m: scores(q, row["correct"], row["group"]) for m, q in preds.items()})
            else:
                results.append(evaluate(row, args.permutations, use_mcgrad))
                r = results[-1]
            print(
                json.dumps({k: r[k] for k in ("benchmark", "model", "kind", "n", "p_value")}),
                {m: round(r[m]["brier"], 4) for m in METHODS[2:] if m in r},
                flush=True,
            )
            out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    q = benjamini_hochberg([r["p_value"] for r in results])
    for r, qv in zip(results, q, strict=True):
        r["q_value"] = float(qv)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    md = "\n\n".join(
        [
            summary(results),
            table(results),
            f"{', '.join(args.add_spaces)} added to an earlier run's rows in "
            f"{time.perf_counter() - started:.0f} s."
            if args.add_spaces
            else f"Run time {time.perf_counter() - started:.0f} s; "
            f"MCGrad {'on' if use_mcgrad else 'off'}.",
        ]
    )
    out.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
