"""How much of the local correction's binned-ECE gap to isotonic is the metric's own noise.

    python benchmarks/ece_floor.py [--models 12] [--max-items 3000] [--rows N]

Binned ECE is biased upward by sampling noise, and the bias grows with the
number of occupied bins: a perfectly calibrated forecaster whose
probabilities ``p`` fill bins ``b`` scores, in expectation, about
``sqrt(2 / pi) * sum_b sqrt(sum_{i in b} p_i (1 - p_i)) / n``
(:func:`miscal_jax.metrics.ece_floor`). Isotonic regression on verbalised confidence outputs a few
distinct values, so its floor is low; the local correction spreads every
item to its own value, so its floor is higher even when it is exactly
calibrated. Per MMLU-Pro row of ``real_llm_study.py`` (same models, same
3,000-question subsample, same folds), this prints the held-out ECE of
isotonic and of the local correction with and without its final isotonic
map, each beside its floor (computed from the method's own held-out
predictions), the gap to isotonic before and after subtracting the
floors, the same gap with ECE computed within each fold's held-out items
and averaged over folds, and Brier and category error of the three.

Why per fold: pooled over folds, cross-fitted isotonic regression on a
confidence with a few distinct values has a summed gap of zero at each
value by construction (each fold predicts the mean outcome of the other
four, and the five held-out gaps cancel exactly when folds are of equal
size), so its pooled binned ECE sits below what any forecaster could reach
on new data. Within one fold nothing cancels. Reads ``../shared/data`` (never shipped).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from miscal_jax import metrics as M
from miscal_jax.model.crossfit import crossfit

sys.path.insert(0, str(Path(__file__).parent))
from compare_mmlu import pick_models  # noqa: E402
from real_llm_study import KINDS, SHARED  # noqa: E402


def rows(num_models, max_items, seed=0):
    src = SHARED / "llm-calibration-study-mmlu-pro"
    emb = np.load(src / "question_embeddings_all-MiniLM-L6-v2_f16.npy").astype(np.float32)
    tidy = pd.read_csv(src / "tidy_long.csv.gz")
    items = np.sort(np.random.default_rng(seed).permutation(emb.shape[0])[:max_items])
    for model in pick_models(num_models):
        df = tidy[tidy.model == model].set_index("row_index").loc[items]
        for kind, col in KINDS.items():
            conf = df[col].to_numpy(np.float64)
            keep = np.isfinite(conf)
            if keep.mean() < 0.5:
                continue
            correct = df.correct.to_numpy(np.float64)[keep]
            group = pd.factorize(df.category)[0][keep]
            yield model, kind, emb[items][keep], np.clip(conf[keep], 0, 1), correct, group


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=12)
    ap.add_argument("--max-items", type=int, default=3000)
    ap.add_argument("--rows", type=int, default=None, help="stop after this many rows")
    args = ap.parse_args(argv)
    print(
        "| model | conf | isotonic ECE (floor) | local ECE (floor) | no final map ECE (floor) | "
        "local - iso | minus floors | no final - iso | minus floors | per-fold ECE (floor) iso / "
        "local / no final | Brier iso / local / no final | regional iso / local / no final |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    gaps, briers, regionals = [], [], []
    for i, (model, kind, x, p, y, group) in enumerate(rows(args.models, args.max_items)):
        if i == args.rows:
            break
        res = {
            final: crossfit(x, p, y, folds=5, seed=0, final_recalibration=final, progress=False)
            for final in (True, False)
        }
        preds = {
            "iso": res[True].predictions["isotonic"],
            "local": res[True].predictions["local"],
            "nofinal": res[False].predictions["local"],
        }
        e = {k: float(M.ece(q, y)) for k, q in preds.items()}
        f = {k: float(M.ece_floor(q)) for k, q in preds.items()}
        g = [e[k] - e["iso"] for k in ("local", "nofinal")]
        h = [e[k] - f[k] - (e["iso"] - f["iso"]) for k in ("local", "nofinal")]
        fold = res[True].fold
        per_fold = {
            k: np.mean([float(M.ece(q[fold == j], y[fold == j])) for j in range(5)])
            for k, q in preds.items()
        }
        fold_floor = {
            k: np.mean([float(M.ece_floor(q[fold == j])) for j in range(5)])
            for k, q in preds.items()
        }
        excess = {k: per_fold[k] - fold_floor[k] for k in preds}
        pf = [per_fold[k] - per_fold["iso"] for k in ("local", "nofinal")]
        pf += [excess[k] - excess["iso"] for k in ("local", "nofinal")]
        gaps.append(g + h + pf)
        briers.append([float(M.brier(q, y)) for q in preds.values()])
        regionals.append([float(M.regional_error(q, y, group)) for q in preds.values()])
        cells = " | ".join(f"{e[k]:.4f} ({f[k]:.4f})" for k in ("iso", "local", "nofinal"))
        folds_cell = " / ".join(f"{per_fold[k]:.4f} ({fold_floor[k]:.4f})" for k in preds)
        print(
            f"| {model} | {kind} | {cells} | {g[0]:+.4f} | {h[0]:+.4f} | {g[1]:+.4f} | "
            f"{h[1]:+.4f} | {folds_cell} | "
            f"{' / '.join(f'{b:.4f}' for b in briers[-1])} | "
            f"{' / '.join(f'{r:.4f}' for r in regionals[-1])} |",
            flush=True,
        )
    gaps = np.asarray(gaps)
    names = (  # the order of g + h + pf above
        "local - iso",
        "no final - iso",
        "local - iso, floors removed",
        "no final - iso, floors removed",
        "local - iso, ECE per fold",
        "no final - iso, ECE per fold",
        "local - iso, ECE per fold, floors removed",
        "no final - iso, ECE per fold, floors removed",
    )
    for name, col in zip(names, gaps.T, strict=True):
        print(
            f"- {name}: mean {col.mean():+.4f}, worst {col.max():+.4f}, "
            f"within 0.01 on {int(np.sum(col <= 0.01))}/{col.size}"
        )
    for name, table in (("Brier", briers), ("regional error", regionals)):
        iso, local, nofinal = np.asarray(table).T
        print(
            f"- {name} mean: isotonic {iso.mean():.4f}, local {local.mean():.4f}, no final map "
            f"{nofinal.mean():.4f} (no final map lower than local on "
            f"{int(np.sum(nofinal < local))}/{local.size})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
