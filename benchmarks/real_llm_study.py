"""Reproduction study on real LLM data: miscal_jax against confidence-only maps and MCGrad.

    pip install torch==2.13.0 && pip install -e ".[benchmark]"   # MCGrad needs torch
    python benchmarks/real_llm_study.py [--max-items 3000] [--models ...] [--quick]

Reads ``../shared/data`` (never shipped; LitCab is used for evaluation only).
Rows: (benchmark, model, confidence kind). For MMLU-Pro, a seeded subsample of
``--max-items`` questions (the same for every model), rows without a
confidence dropped, degenerate columns skipped (phi-4; Mixtral-8x7B-v0.1
verbal; deepseek-chat token probability). For LitCab, the five data sets
pooled per model, with the data set as the evaluation group.

Protocol: one 5-fold split per row. Every method (temperature, isotonic,
miscal_jax's local correction, MCGrad) is fitted on four folds and predicts
the fifth, so every metric is held-out. MCGrad gets the confidence (clipped
to [1e-3, 1 - 1e-3]) and the first 32 principal components of the question
embeddings (label-free PCA over all items). Groups (categories / data sets)
are only used to compute regional error.

Writes ``benchmarks/results/real_llm_study.{json,md}``.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from miscal_jax import metrics as M
from miscal_jax.crossfit import crossfit
from miscal_jax.inference import heterogeneity_test
from miscal_jax.regimes import discover_regimes

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
MMLU_MODELS = [
    "gpt-4o-2024-08-06",
    "Meta-Llama-3.1-8B-Instruct-Turbo",
    "Qwen2.5-7B-Instruct",
    "gemini-2.0-flash",
    "gemma-2-9b-it",
]
SKIP = {
    ("phi-4", "verbal"),
    ("phi-4", "logit"),
    ("Mixtral-8x7B-v0.1", "verbal"),
    ("deepseek-chat", "logit"),
}
KINDS = {"verbal": "conf_verbal_numerical", "logit": "conf_logit_perplexity"}


def mmlu_rows(models, max_items, seed=0):
    src = SHARED / "llm-calibration-study-mmlu-pro"
    emb = np.load(src / "question_embeddings_all-MiniLM-L6-v2_f16.npy").astype(np.float32)
    tidy = pd.read_csv(src / "tidy_long.csv.gz")
    items = np.sort(np.random.default_rng(seed).permutation(emb.shape[0])[:max_items])
    for model in models:
        df = tidy[tidy.model == model].set_index("row_index").loc[items]
        for kind, col in KINDS.items():
            if (model, kind) in SKIP:
                continue
            conf = df[col].to_numpy(np.float64)
            keep = np.isfinite(conf)
            if keep.mean() < 0.5:
                continue
            groups = pd.factorize(df.category)[0]
            yield dict(
                benchmark="MMLU-Pro",
                model=model,
                kind=kind,
                x=emb[items][keep],
                conf=np.clip(conf[keep], 0, 1),
                correct=df.correct.to_numpy(np.float64)[keep],
                group=groups[keep],
            )


def litcab_rows():
    src = SHARED / "litcab"
    tidy = pd.read_csv(src / "tidy.csv.gz")
    emb = np.load(src / "question_embeddings_all-MiniLM-L6-v2_f16.npy").astype(np.float32)
    index = pd.read_csv(src / "question_embeddings_index.csv")
    lookup = {
        (d, i): r for r, d, i in index[["emb_row", "dataset", "item_id"]].itertuples(index=False)
    }
    for model, df in tidy.groupby("model"):
        rows = np.array([lookup[(d, i)] for d, i in zip(df.dataset, df.item_id, strict=True)])
        yield dict(
            benchmark="LitCab (5 sets pooled)",
            model=model,
            kind="seq_prob",
            x=emb[rows],
            conf=df.conf_seq_prob.to_numpy(np.float64),
            correct=df.correct_gpt4.to_numpy(np.float64),
            group=pd.factorize(df.dataset)[0],
        )


def mcgrad_oof(x, conf, correct, fold, num_pcs=32, seed=0):
    """Out-of-fold MCGrad predictions on (confidence, 32 PCs), same folds."""
    from mcgrad.methods import MCGrad

    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    pcs = xc @ vt[:num_pcs].T
    cols = [f"pc{j}" for j in range(num_pcs)]
    df = pd.DataFrame(pcs, columns=cols)
    df["conf"] = np.clip(conf, 1e-3, 1 - 1e-3)
    df["y"] = correct.astype(int)
    out = np.zeros(len(conf))
    for k in np.unique(fold):
        tr, te = fold != k, fold == k
        model = (
            MCGrad(random_state=seed)
            if "random_state" in MCGrad.__init__.__code__.co_varnames
            else MCGrad()
        )
        model.fit(df[tr].reset_index(drop=True), "conf", "y", numerical_feature_column_names=cols)
        out[te] = model.predict(
            df[te].reset_index(drop=True), "conf", numerical_feature_column_names=cols
        )
    return out


def evaluate(row, permutations, use_mcgrad):
    x, p, y, g = row["x"], row["conf"], row["correct"], row["group"]
    start = time.perf_counter()
    res = crossfit(x, p, y, folds=5, seed=0, progress=False)
    het = heterogeneity_test(res, x, p, y, num_permutations=permutations)
    regimes, _ = discover_regimes(x, p, y)
    seconds = time.perf_counter() - start
    preds = {k: res.predictions[k] for k in ("uncorrected", "temperature", "isotonic", "local")}
    if use_mcgrad:
        t = time.perf_counter()
        preds["mcgrad"] = mcgrad_oof(x, p, y, res.fold)
        mc_seconds = time.perf_counter() - t
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
        "seconds_mcgrad": round(mc_seconds, 1) if use_mcgrad else None,
    }
    for name, q in preds.items():
        out[name] = {
            "ece": float(M.ece(q, y)),
            "smece": float(M.smooth_ece(q, y)),
            "ecce": float(M.ecce(q, y)),
            "brier": float(M.brier(q, y)),
            "regional": float(M.regional_error(q, y, g)),
        }
    return out


def table(results):
    methods = [
        m for m in ("uncorrected", "temperature", "isotonic", "local", "mcgrad") if m in results[0]
    ]
    head = ["benchmark", "model", "conf", "n", "acc", "het. p", "regimes"]
    head += [f"{m} ECE/Brier/reg" for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [
            r["benchmark"],
            r["model"],
            r["kind"],
            str(r["n"]),
            f"{r['accuracy']:.3f}",
            f"{r['p_value']:.3f}",
            str(r["regimes"]),
        ]
        best_brier = min(r[m]["brier"] for m in methods)
        for m in methods:
            b = f"{r[m]['brier']:.4f}"
            b = f"**{b}**" if r[m]["brier"] == best_brier else b
            cells.append(f"{r[m]['ece']:.3f} / {b} / {r[m]['regional']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-items", type=int, default=3000)
    parser.add_argument("--models", nargs="*", default=MMLU_MODELS)
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--no-litcab", action="store_true")
    parser.add_argument("--no-mcgrad", action="store_true")
    parser.add_argument("--quick", action="store_true", help="one MMLU model, 1000 items")
    args = parser.parse_args()
    if args.quick:
        args.models, args.max_items = args.models[:1], 1000
    use_mcgrad = not args.no_mcgrad
    if use_mcgrad:
        try:
            import mcgrad  # noqa: F401
        except ImportError:
            print(
                "mcgrad not installed (pip install torch==2.13.0 && pip install -e "
                "'.[benchmark]'); running without it"
            )
            use_mcgrad = False
    RESULTS.mkdir(exist_ok=True)
    rows = list(mmlu_rows(args.models, args.max_items))
    if not args.no_litcab and not args.quick:
        rows += list(litcab_rows())
    results = []
    for row in rows:
        results.append(evaluate(row, args.permutations, use_mcgrad))
        r = results[-1]
        print(
            json.dumps({k: r[k] for k in ("benchmark", "model", "kind", "n", "p_value")}),
            {m: round(r[m]["brier"], 4) for m in ("isotonic", "local", "mcgrad") if m in r},
            flush=True,
        )
        (RESULTS / "real_llm_study.json").write_text(json.dumps(results, indent=2))
    md = table(results)
    (RESULTS / "real_llm_study.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
