"""Panel geometry against raw-space smoothing on held-out MMLU-Pro models.

Data: ``../shared/data/llm-calibration-study-mmlu-pro`` (see its README):
``tidy_long.csv.gz`` (item x model results), ``items.jsonl`` (categories)
and the MiniLM question embeddings. For each target model (spread over the
accuracy range, as in ``compare_mmlu.py``), the panel map is fitted by
:func:`miscal_jax.panel.fit_panel` on every item and the ``correct`` column
of every *other* model (82 after dropping ``phi-4``, which never answers);
no outcome of the target enters it. Then the target's rows (verbalised
confidence) are cross-fitted twice with the same folds and seed: in raw
MiniLM space and in the panel space (both with ``candidates=("raw",)``, so
only the space differs). Reported: held-out (out-of-fold) category-level
regional error and Brier of the local correction, and isotonic's.
Categories are never used for fitting.

Usage::

    python benchmarks/panel_mmlu.py [--targets 3] [--items 0] [--folds 5] [--seed 0]
"""

import argparse
import csv
import gzip
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from miscal_jax.crossfit import crossfit
from miscal_jax.metrics import brier, regional_error
from miscal_jax.panel import DEFAULT_CONFIG, fit_panel, panel_embed

sys.path.insert(0, str(Path(__file__).parent))
from compare_mmlu import MMLU, pick_items, pick_models  # noqa: E402


def load_all() -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every model's ``[84, 12032]`` outcomes and verbalised confidences (NaN: none)."""
    models = [r["model"] for r in csv.DictReader(open(MMLU / "model_summary.csv"))]
    index = {m: i for i, m in enumerate(models)}
    correct = np.full((len(models), 12032), np.nan)
    conf = np.full((len(models), 12032), np.nan)
    with gzip.open(MMLU / "tidy_long.csv.gz", "rt") as f:
        for r in csv.DictReader(f):
            i, j = index[r["model"]], int(r["row_index"])
            correct[i, j] = float(r["correct"])
            if r["conf_verbal_numerical"] != "":
                conf[i, j] = min(max(float(r["conf_verbal_numerical"]), 0.0), 1.0)
    return models, correct, conf


def scores(res, correct, group) -> dict:
    out = {}
    for method in ("isotonic", "local"):
        p = res.predictions[method]
        out[method] = {
            "regional_error": float(regional_error(p, correct, group)),
            "brier": float(brier(p, correct)),
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", type=int, default=3, help="held-out target models")
    ap.add_argument("--items", type=int, default=0, help="target items (0: all 12,032)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    started = time.perf_counter()
    models, correct, conf = load_all()
    items = [json.loads(line) for line in open(MMLU / "items.jsonl")]
    names = sorted({it["category"] for it in items})
    group = np.array([names.index(it["category"]) for it in items], np.int64)
    emb = np.load(MMLU / "question_embeddings_all-MiniLM-L6-v2_f16.npy").astype(np.float32)
    rows = pick_items(items, args.items, args.seed) if args.items else np.arange(len(items))
    fit = jax.jit(fit_panel, static_argnums=4)
    table = []
    for target in pick_models(args.targets):
        t = models.index(target)
        others = [j for j, m in enumerate(models) if j != t and m != "phi-4"]
        y_panel = correct[others].T.astype(np.float32)
        t0 = time.perf_counter()
        panel_map, history = fit(
            jax.random.key(args.seed), emb, y_panel, np.isfinite(y_panel), DEFAULT_CONFIG
        )
        z = np.asarray(panel_embed(panel_map, emb))
        panel_seconds = time.perf_counter() - t0
        r = rows[np.isfinite(conf[t, rows])]
        row = {
            "model": target,
            "items": int(r.size),
            "accuracy": float(correct[t, r].mean()),
            "panel_models": len(others),
            "panel_val_loss": float(history["best_val_loss"]),
            "panel_constant_loss": float(history["constant_loss"]),
            "panel_seconds": panel_seconds,
        }
        for name, x in (("raw", emb), ("panel", z)):
            t0 = time.perf_counter()
            res = crossfit(
                x[r],
                conf[t, r],
                correct[t, r],
                folds=args.folds,
                seed=args.seed,
                candidates=("raw",),
                progress=False,
            )
            row[name] = scores(res, correct[t, r], group[r])
            row[name]["seconds"] = time.perf_counter() - t0
        table.append(row)
        print(
            f"{target}: regional error raw {row['raw']['local']['regional_error']:.4f} -> "
            f"panel {row['panel']['local']['regional_error']:.4f}; Brier "
            f"{row['raw']['local']['brier']:.4f} -> {row['panel']['local']['brier']:.4f}",
            flush=True,
        )

    lines = [
        "# Panel geometry vs raw space on held-out MMLU-Pro models",
        "",
        f"Verbalised confidence, {args.folds}-fold cross-fitting (seed {args.seed}), "
        "geometry candidates `raw` only (so only the space differs). Panel: "
        f"`fit_panel` defaults ({DEFAULT_CONFIG.out_dim}-d bottleneck) on every item and "
        "the other models' correctness, never the target's. Regional error: held-out "
        "category-level (14 categories, never used for fitting).",
        "",
        "| target | items | acc. | isotonic RE | local RE raw | local RE panel | ratio | "
        "Brier isotonic | Brier raw | Brier panel | panel loss / constant |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        raw, pan = row["raw"], row["panel"]
        lines.append(
            f"| {row['model']} | {row['items']} | {row['accuracy']:.3f} | "
            f"{raw['isotonic']['regional_error']:.4f} | {raw['local']['regional_error']:.4f} | "
            f"{pan['local']['regional_error']:.4f} | "
            f"{pan['local']['regional_error'] / raw['local']['regional_error']:.2f} | "
            f"{raw['isotonic']['brier']:.4f} | {raw['local']['brier']:.4f} | "
            f"{pan['local']['brier']:.4f} | "
            f"{row['panel_val_loss']:.4f} / {row['panel_constant_loss']:.4f} |"
        )
    local = [(r["raw"]["local"], r["panel"]["local"]) for r in table]
    ratio = [pan["regional_error"] / raw["regional_error"] for raw, pan in local]
    no_worse = sum(pan["brier"] <= raw["brier"] for raw, pan in local)
    lines += [
        "",
        f"Panel / raw local regional error: mean {np.mean(ratio):.2f} (target <= 0.8); Brier "
        f"no worse on {no_worse} of {len(table)} targets. Run time "
        f"{time.perf_counter() - started:.0f} s.",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "panel_mmlu.md").write_text("\n".join(lines) + "\n")
    with open(out / "panel_mmlu.json", "w") as f:
        json.dump({"args": vars(args), "targets": table}, f, indent=1)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
