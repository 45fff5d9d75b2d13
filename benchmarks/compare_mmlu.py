"""`miscal-jax compare` on many MMLU-Pro models, and what the built-in text
representation loses against MiniLM embeddings.

Data: ``../shared/data/llm-calibration-study-mmlu-pro`` (see its README):
``tidy_long.csv.gz`` (item x model results), ``items.jsonl`` (question texts,
categories) and ``question_embeddings_all-MiniLM-L6-v2_f16.npy`` (MiniLM
embeddings of the stems, made with the same packaged weights as the
``[embed]`` extra). Models: the eligible rows of ``model_summary.csv`` with
verbalised confidence on >= 95% of items and answered >= 95%, minus known
degenerate ones, spread evenly over the accuracy range. Items: a seeded
category-stratified subsample (all models answer the same items).

The panel is run twice through :func:`miscal_jax.app.compare.compare_models`,
once with the MiniLM embeddings and once with the built-in representation
(TF-IDF + truncated SVD of the question texts, :func:`lsa_embed`), same
items, folds and seeds. Reported per model and on average: held-out
category-level regional error of the local correction (categories are never
used for fitting) against isotonic's, Brier, heterogeneity p and regimes.

Usage::

    python benchmarks/compare_mmlu.py [--models 12] [--items 3000] [--folds 5]
        [--permutations 50] [--geometry raw] [--out benchmarks/results]
"""

import argparse
import csv
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

from miscal_jax.app.compare import Panel, compare_models, write_compare_report
from miscal_jax.app.text_embed import lsa_embed

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
MMLU = DATA / "llm-calibration-study-mmlu-pro"
#: Degenerate or unusable confidence columns (see the data README's caveats).
EXCLUDE = {"phi-4", "Mixtral-8x7B-v0.1", "gemma-2b-it"}


def pick_models(count: int) -> list[str]:
    rows = list(csv.DictReader(open(MMLU / "model_summary.csv")))
    ok = [
        r
        for r in rows
        if float(r["vn_available_frac"]) >= 0.95
        and float(r["answered_frac"]) >= 0.95
        and r["model"] not in EXCLUDE
        and "Base" not in r["model"]
    ]
    ok.sort(key=lambda r: float(r["accuracy"]))
    take = np.unique(np.round(np.linspace(0, len(ok) - 1, count)).astype(int))
    return [ok[i]["model"] for i in take]


def pick_items(items: list[dict], n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cats = np.array([it["category"] for it in items])
    out = []
    for c in sorted(set(cats)):
        idx = np.flatnonzero(cats == c)
        k = int(round(n * idx.size / cats.size))
        out.append(rng.choice(idx, size=min(k, idx.size), replace=False))
    return np.sort(np.concatenate(out))


def load(models: list[str], rows: np.ndarray, items: list[dict]):
    pos = {int(r): j for j, r in enumerate(rows)}
    which = {m: i for i, m in enumerate(models)}
    conf = np.full((len(models), rows.size), np.nan)
    correct = np.zeros((len(models), rows.size))
    with gzip.open(MMLU / "tidy_long.csv.gz", "rt") as f:
        for r in csv.DictReader(f):
            i = which.get(r["model"])
            j = pos.get(int(r["row_index"]))
            if i is None or j is None or r["conf_verbal_numerical"] == "":
                continue
            conf[i, j] = min(max(float(r["conf_verbal_numerical"]), 0.0), 1.0)
            correct[i, j] = float(r["correct"])
    cats = sorted({items[r]["category"] for r in rows})
    group = np.array([cats.index(items[r]["category"]) for r in rows], np.int64)
    return conf, correct, group, cats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=12)
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--permutations", type=int, default=50)
    ap.add_argument("--geometry", default="raw")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--reports", default="/tmp/compare_mmlu", help="where the HTML reports go")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    items = [json.loads(line) for line in open(MMLU / "items.jsonl")]
    models = pick_models(args.models)
    rows = pick_items(items, args.items, args.seed)
    conf, correct, group, cats = load(models, rows, items)
    texts = [items[r]["question"] for r in rows]
    minilm = np.load(MMLU / "question_embeddings_all-MiniLM-L6-v2_f16.npy")[rows]
    t0 = time.perf_counter()
    lsa = lsa_embed(texts)
    lsa_seconds = time.perf_counter() - t0
    print(f"{len(models)} models x {rows.size} items; LSA in {lsa_seconds:.1f} s", flush=True)
    candidates = tuple(g.strip() for g in args.geometry.split(","))
    results = {}
    for name, emb in (("minilm", minilm.astype(np.float32)), ("lsa", lsa)):
        panel = Panel(
            emb,
            conf,
            correct,
            models,
            [int(r) for r in rows],
            texts,
            group,
            cats,
            {"source": f"MMLU-Pro ({rows.size} items)", "confidence": "verbal"},
        )
        t0 = time.perf_counter()
        comp = compare_models(
            panel,
            folds=args.folds,
            permutations=args.permutations,
            seed=args.seed,
            candidates=candidates,
            progress=True,
        )
        out_dir = Path(args.reports) / name
        summary = write_compare_report(out_dir, panel, comp, seed=args.seed)
        results[name] = {"summary": summary, "seconds": time.perf_counter() - t0}
        print(f"{name}: {time.perf_counter() - t0:.0f} s; report in {out_dir}", flush=True)

    lines = [
        "# compare on MMLU-Pro: built-in text representation vs MiniLM",
        "",
        f"{len(models)} models x {rows.size} items (category-stratified, seed {args.seed}), "
        f"verbalised confidence, {args.folds}-fold cross-fitting, geometry "
        f"{'/'.join(candidates)}, {args.permutations} permutations. Regional error: held-out "
        "category-level (14 MMLU-Pro categories, never used for fitting). "
        f"LSA (TF-IDF + SVD, 128-d) of the question texts took {lsa_seconds:.1f} s.",
        "",
        "| model | acc. | isotonic RE | local RE (MiniLM) | local RE (LSA) | "
        "Brier local MiniLM / LSA | het. p MiniLM / LSA | regimes MiniLM / LSA |",
        "|---|---|---|---|---|---|---|---|",
    ]
    table = []
    for j, model in enumerate(models):
        a = results["minilm"]["summary"]["models"][j]
        b = results["lsa"]["summary"]["models"][j]
        iso = a["methods"]["isotonic"]["regional_error"]
        ra, rb = a["methods"]["local"]["regional_error"], b["methods"]["local"]["regional_error"]
        table.append((iso, ra, rb))
        lines.append(
            f"| {model} | {a['accuracy']:.3f} | {iso:.4f} | {ra:.4f} | {rb:.4f} | "
            f"{a['methods']['local']['brier']:.4f} / {b['methods']['local']['brier']:.4f} | "
            f"{a['heterogeneity']['p_value']:.3f} / {b['heterogeneity']['p_value']:.3f} | "
            f"{len(a['regimes'])} / {len(b['regimes'])} |"
        )
    t = np.array(table)
    removed_a = 1 - t[:, 1] / t[:, 0]
    removed_b = 1 - t[:, 2] / t[:, 0]
    ratio = t[:, 2] / t[:, 1]
    lines += [
        "",
        f"Mean held-out regional error: isotonic {t[:, 0].mean():.4f}, local with MiniLM "
        f"{t[:, 1].mean():.4f}, local with LSA {t[:, 2].mean():.4f}.",
        f"Share of isotonic's regional error removed by the local correction: MiniLM "
        f"{removed_a.mean():.0%} (median {np.median(removed_a):.0%}), LSA {removed_b.mean():.0%} "
        f"(median {np.median(removed_b):.0%}).",
        f"LSA / MiniLM local regional error: mean {ratio.mean():.2f}, median "
        f"{np.median(ratio):.2f}; LSA is worse on {int(np.sum(ratio > 1))} of {len(models)} "
        "models.",
        f"Regions shared by more than one model: MiniLM "
        f"{sum(len(r['found_by']) > 1 for r in results['minilm']['summary']['regions'])} of "
        f"{len(results['minilm']['summary']['regions'])}, LSA "
        f"{sum(len(r['found_by']) > 1 for r in results['lsa']['summary']['regions'])} of "
        f"{len(results['lsa']['summary']['regions'])}.",
        "",
        f"Run time: MiniLM panel {results['minilm']['seconds']:.0f} s, LSA panel "
        f"{results['lsa']['seconds']:.0f} s, total {time.perf_counter() - started:.0f} s "
        "(2-core CPU shared with other jobs: upper bounds).",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_mmlu.md").write_text("\n".join(lines) + "\n")
    with open(out / "compare_mmlu.json", "w") as f:
        json.dump(
            {
                "models": models,
                "items": int(rows.size),
                "args": vars(args),
                "minilm": results["minilm"]["summary"],
                "lsa": results["lsa"]["summary"],
            },
            f,
            indent=1,
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
