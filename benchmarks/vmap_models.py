"""Many models in one call: ``jax.vmap(fit)`` against a Python loop of single fits.

Data: ``../shared/data/llm-calibration-study-mmlu-pro`` (see its README). The
``--models`` models are picked as in ``compare_mmlu.py`` (verbalised
confidence on >= 95% of items, spread over the accuracy range); the items are
a category-stratified subsample on which every picked model gave a
confidence, so all models share one MiniLM embedding matrix.

Both sides run the same jitted :func:`miscal_jax.fit` (5 folds, raw and PCA
geometries) with the same key; the loop reuses one compilation for all
models. Printed: compile time, steady wall time, speed-up, the largest
difference between the two sides' out-of-fold outputs, and the held-out
Brier of the local correction against isotonic's averaged over the models.

Usage::

    python benchmarks/vmap_models.py [--models 40] [--items 1500] [--folds 5]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from compare_mmlu import MMLU, load, pick_items, pick_models  # noqa: E402

from miscal_jax import metrics as M  # noqa: E402
from miscal_jax.model.field_model import FitConfig, fit, out_of_fold  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=40)
    ap.add_argument("--items", type=int, default=1500)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    items = [json.loads(line) for line in open(MMLU / "items.jsonl")]
    models = pick_models(args.models)
    rows = pick_items(items, 2 * args.items, args.seed)
    conf, correct, _, _ = load(models, rows, items)
    complete = np.flatnonzero(np.all(np.isfinite(conf), axis=0))[: args.items]
    conf, correct = conf[:, complete].astype(np.float32), correct[:, complete].astype(np.float32)
    emb = np.load(MMLU / "question_embeddings_all-MiniLM-L6-v2_f16.npy")[rows[complete]]
    emb = emb.astype(np.float32)
    m, n = conf.shape
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print(f"{m} models x {n} items x {emb.shape[1]}-d embeddings, {args.folds} folds")
    cfg = FitConfig(folds=args.folds, candidates=("raw", "pca"))
    key = jax.random.key(args.seed)

    def fit_one(p, y):
        model = fit(key, emb, p, y, cfg)[0]
        est, corrected = out_of_fold(model)
        return est, corrected, model.geometry.choice, model.geometry.log_bandwidth

    one = jax.jit(fit_one)
    many = jax.jit(jax.vmap(fit_one))

    start = time.perf_counter()
    jax.block_until_ready(one(conf[0], correct[0]))
    compile_one = time.perf_counter() - start
    print(f"single fit compiled in {compile_one:.1f} s", flush=True)
    start = time.perf_counter()
    loop = [jax.block_until_ready(one(conf[i], correct[i])) for i in range(m)]
    loop_s = time.perf_counter() - start
    print(f"loop of {m} fits: {loop_s:.1f} s", flush=True)

    start = time.perf_counter()
    jax.block_until_ready(many.lower(conf, correct).compile())
    compile_many = time.perf_counter() - start
    print(f"vmapped fit compiled in {compile_many:.1f} s", flush=True)
    start = time.perf_counter()
    batched = jax.block_until_ready(many(conf, correct))
    vmap_s = time.perf_counter() - start

    gaps = np.stack([np.abs(np.asarray(batched[1][i]) - np.asarray(loop[i][1])) for i in range(m)])
    same_choice = np.stack([np.asarray(batched[2][i]) == np.asarray(loop[i][2]) for i in range(m)])
    same_bw = np.stack(
        [np.isclose(np.asarray(batched[3][i]), np.asarray(loop[i][3])) for i in range(m)]
    )
    same = same_choice & same_bw  # [m, K] fold models with identical discrete choices
    agree = np.repeat(same.all(axis=1), n)
    brier_local = np.mean([float(M.brier(loop[i][1], correct[i])) for i in range(m)])
    print("| side | compile (s) | wall (s) | per model (s) |")
    print("|---|---|---|---|")
    print(f"| loop of single fits | {compile_one:.1f} | {loop_s:.1f} | {loop_s / m:.2f} |")
    print(f"| one vmapped fit | {compile_many:.1f} | {vmap_s:.1f} | {vmap_s / m:.2f} |")
    print(f"speed-up (steady wall time): {loop_s / vmap_s:.1f}x")
    print(
        f"fold models with the same geometry and bandwidth choice: {same.sum()} of {same.size}; "
        f"largest |difference| of corrected confidences where all of a model's choices agree: "
        f"{gaps.reshape(-1)[agree].max(initial=0.0):.2e}, overall {gaps.max():.2e} "
        f"(99.9th percentile {np.quantile(gaps, 0.999):.2e})"
    )
    print(f"mean held-out Brier of the local correction over {m} models: {brier_local:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
