"""Panel geometry against raw-space smoothing on held-out MMLU-Pro models.

Data: ``../shared/data/llm-calibration-study-mmlu-pro`` (see its README):
``tidy_long.csv.gz`` (item x model results), ``items.jsonl`` (categories)
and the MiniLM question embeddings. For each target model (spread over the
accuracy range, as in ``compare_mmlu.py``), four panel geometries are fitted
on every item from every *other* model (82 after dropping ``phi-4``, which
never answers), each from their residuals ``correct - verbalised confidence``
(the default outcome) or their correctness alone (``_correct``): the
encoder :func:`miscal_jax.geometry.fit_panel` (``panel``, which maps the
question embedding to the panel's outcomes through a bottleneck) and the
profile space :func:`miscal_jax.geometry.fit_profile` (``profile``, the panel
outcomes' principal directions); no outcome of the target enters any. Then
the target's rows (verbalised confidence) are cross-fitted with the same
folds and seed in raw MiniLM space and in each panel space (all with
``candidates=("raw",)``, so only the space differs). Reported: held-out
(out-of-fold) category-level regional error, Brier and 15-bin ECE of the
local correction, and isotonic's, beside the regional error's noise
floor: what a perfect predictor would score from the outcomes' sampling noise
alone, ``mean_c sqrt(2 / pi) sqrt(sum_{i in c} p_i (1 - p_i)) / n_c`` with
``p`` the local correction's probabilities. Categories are never used for
fitting.

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

from miscal_jax.geometry import DEFAULT_CANDIDATES
from miscal_jax.geometry.panel import (
    DEFAULT_CONFIG,
    combined_embed,
    fit_combined,
    fit_panel,
    fit_profile,
    panel_embed,
    profile_embed,
)
from miscal_jax.metrics.calibration import brier, ece, regional_error
from miscal_jax.model.crossfit import crossfit

# space name -> (geometry, panel outcome, geometry candidates of the cross-fit)
SPACES = {
    "raw": ("embedding", None, ("raw",)),
    "panel": ("encoder", "residual", ("raw",)),
    "panel_correct": ("encoder", "correct", ("raw",)),
    "profile": ("profile", "residual", ("raw",)),
    "profile_correct": ("profile", "correct", ("raw",)),
    "pipeline": ("embedding", None, DEFAULT_CANDIDATES),
    "profile_pipeline": ("profile", "residual", DEFAULT_CANDIDATES),
    "combined": ("combined", "residual", DEFAULT_CANDIDATES),
}

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


def noise_floor(p, group) -> float:
    """Expected regional error of the true probabilities ``p``: outcome noise alone."""
    floors = [
        np.sqrt(2 / np.pi)
        * np.sqrt(np.sum(p[group == g] * (1 - p[group == g])))
        / np.sum(group == g)
        for g in np.unique(group)
    ]
    return float(np.mean(floors))


def scores(res, correct, group) -> dict:
    out = {"noise_floor": noise_floor(np.asarray(res.predictions["local"], np.float64), group)}
    for method in ("isotonic", "local"):
        p = res.predictions[method]
        out[method] = {
            "regional_error": float(regional_error(p, correct, group)),
            "brier": float(brier(p, correct)),
            "ece": float(ece(p, correct)),
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", type=int, default=3, help="held-out target models")
    ap.add_argument("--items", type=int, default=0, help="target items (0: all 12,032)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--spaces", default=",".join(SPACES), help=f"comma-separated, of {', '.join(SPACES)}"
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    started = time.perf_counter()
    models, correct, conf = load_all()
    items = [json.loads(line) for line in open(MMLU / "items.jsonl")]
    names = sorted({it["category"] for it in items})
    group = np.array([names.index(it["category"]) for it in items], np.int64)
    emb = np.load(MMLU / "question_embeddings_all-MiniLM-L6-v2_f16.npy").astype(np.float32)
    rows = pick_items(items, args.items, args.seed) if args.items else np.arange(len(items))
    fit = jax.jit(fit_panel)
    profile = jax.jit(fit_profile, static_argnums=2)
    combine = jax.jit(fit_combined, static_argnums=3)
    names = [name.strip() for name in args.spaces.split(",")]
    unknown = sorted(set(names) - set(SPACES))
    if unknown or "raw" not in names:
        ap.error(f"--spaces: unknown {unknown} or no 'raw' (the baseline); pick of {list(SPACES)}")
    table = []
    for target in pick_models(args.targets):
        t = models.index(target)
        others = [j for j, m in enumerate(models) if j != t and m != "phi-4"]
        r = rows[np.isfinite(conf[t, rows])]
        row = {
            "model": target,
            "items": int(r.size),
            "accuracy": float(correct[t, r].mean()),
            "panel_models": len(others),
        }
        spaces = {}
        for name in names:
            geometry, outcome, _ = SPACES[name]
            if geometry == "embedding":
                spaces[name] = emb
                continue
            y = correct[others] if outcome == "correct" else correct[others] - conf[others]
            y = y.T.astype(np.float32)
            mask = np.isfinite(y)
            mask, y = mask[:, mask.any(0)], np.where(mask, y, 0.0)[:, mask.any(0)]
            t0 = time.perf_counter()
            if geometry == "profile":
                profile_map = profile(y, mask, DEFAULT_CONFIG.out_dim)
                spaces[name] = np.asarray(profile_embed(profile_map, y, mask))
                info = {"explained": float(profile_map.explained)}
            elif geometry == "combined":
                combined_map = combine(y, mask, emb, DEFAULT_CONFIG.out_dim)
                spaces[name] = np.asarray(combined_embed(combined_map, y, mask, emb))
                info = {"scales": np.asarray(combined_map.scales).tolist()}
            else:
                config = DEFAULT_CONFIG.replace(outcome=outcome)
                panel_map, history = fit(jax.random.key(args.seed), emb, y, mask, config)
                spaces[name] = np.asarray(panel_embed(panel_map, emb))
                info = {
                    "val_loss": float(history["best_val_loss"]),
                    "constant_loss": float(history["constant_loss"]),
                }
            row[f"{name}_fit"] = {
                "models": int(y.shape[1]),
                **info,
                "seconds": time.perf_counter() - t0,
            }
        for name, x in spaces.items():
            t0 = time.perf_counter()
            res = crossfit(
                x[r],
                conf[t, r],
                correct[t, r],
                folds=args.folds,
                seed=args.seed,
                candidates=SPACES[name][2],
                progress=False,
            )
            row[name] = scores(res, correct[t, r], group[r])
            row[name]["chosen"] = [i["chosen"] for i in res.info]
            row[name]["seconds"] = time.perf_counter() - t0
        table.append(row)
        print(
            target,
            {s: round(row[s]["local"]["regional_error"], 4) for s in spaces},
            {s: round(row[s]["local"]["brier"], 4) for s in spaces},
            flush=True,
        )

    lines = [
        "# Panel geometry vs raw space on held-out MMLU-Pro models",
        "",
        f"Verbalised confidence, {args.folds}-fold cross-fitting (seed {args.seed}), "
        "geometry candidates `raw` only (so only the space differs) except in the "
        "`*pipeline` and `combined` columns, which choose per fold among the default "
        f"candidates {DEFAULT_CANDIDATES}. `raw` and `pipeline`: the MiniLM question "
        "embedding. Panel geometries, "
        "all fitted on every item from the other models' residuals or, with `_correct`, "
        "their correctness, never the target's: `panel`, the `fit_panel` encoder "
        f"({DEFAULT_CONFIG.out_dim}-d bottleneck) from the question embedding; `profile`, "
        f"the `fit_profile` space ({DEFAULT_CONFIG.out_dim} principal directions of the "
        "panel's outcomes); `combined`, `fit_combined`: the profile beside the embedding's "
        f"top {DEFAULT_CONFIG.out_dim} principal components, each block at RMS radius 1. "
        "Regional error (RE): held-out, category-level (14 categories, "
        "never used for fitting); floor: its expected value from outcome noise alone. "
        "All figures are the local correction's held-out values unless marked isotonic.",
        "",
        "| target | items | acc. | RE isotonic | "
        + " | ".join(f"RE {n}" for n in names)
        + " | RE floor |",
        "|" + "---|" * (len(names) + 5),
    ]
    for row in table:
        lines.append(
            f"| {row['model']} | {row['items']} | {row['accuracy']:.3f} | "
            f"{row['raw']['isotonic']['regional_error']:.4f} | "
            + " | ".join(f"{row[n]['local']['regional_error']:.4f}" for n in names)
            + f" | {row['raw']['noise_floor']:.4f} |"
        )
    for metric, label in (("brier", "Brier"), ("ece", "ECE")):
        lines += [
            "",
            f"| target | {label} isotonic | " + " | ".join(f"{label} {n}" for n in names) + " |",
            "|" + "---|" * (len(names) + 2),
        ]
        for row in table:
            lines.append(
                f"| {row['model']} | {row['raw']['isotonic'][metric]:.4f} | "
                + " | ".join(f"{row[n]['local'][metric]:.4f}" for n in names)
                + " |"
            )
    lines.append("")
    for name in names[1:]:
        ratio = [
            r[name]["local"]["regional_error"] / r["raw"]["local"]["regional_error"] for r in table
        ]
        no_worse = sum(r[name]["local"]["brier"] <= r["raw"]["local"]["brier"] for r in table)
        d_ece = [r[name]["local"]["ece"] - r[name]["isotonic"]["ece"] for r in table]
        lines.append(
            f"- {name} / raw local regional error: "
            + ", ".join(f"{x:.2f}" for x in ratio)
            + f" (mean {np.mean(ratio):.2f}; target <= 0.8); Brier no worse than raw on "
            f"{no_worse} of {len(table)} targets; ECE minus isotonic's "
            + ", ".join(f"{d:+.4f}" for d in d_ece)
            + "."
        )
    if "pipeline" in names:
        for name in names:
            if name in ("raw", "pipeline"):
                continue
            ratio = [
                r[name]["local"]["regional_error"] / r["pipeline"]["local"]["regional_error"]
                for r in table
            ]
            lines.append(
                f"- {name} / pipeline local regional error: "
                + ", ".join(f"{x:.2f}" for x in ratio)
                + f" (max {np.max(ratio):.2f}; target <= 0.8 on every row)."
            )
    for name in names:
        if SPACES[name][2] != ("raw",):
            chosen = "; ".join(f"{r['model']} {'/'.join(r[name]['chosen'])}" for r in table)
            lines.append(f"- {name}: geometry chosen per fold: {chosen}.")
    lines.append(f"- Run time {time.perf_counter() - started:.0f} s.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "panel_mmlu.md").write_text("\n".join(lines) + "\n")
    with open(out / "panel_mmlu.json", "w") as f:
        json.dump({"args": vars(args), "targets": table}, f, indent=1)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
