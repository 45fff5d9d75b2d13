"""Fit + predict at 10^5 items beside MCGrad's, on the same planted data, in the same run.

Planted data as in ``scale.py`` (8 signal + 24 nuisance columns: d = 32):
``2n`` items drawn at once (a seed draws its own clusters and field) and
split: ``n`` to fit on, ``n`` fresh items from the same distribution to
predict. Each method fits on the first set and predicts the second; the
table gives wall times (fit, predict) and the fresh items' Brier score, with
isotonic regression on the confidence alone as the floor to beat.

- miscal_jax: :func:`~miscal_jax.model.crossfit` (five folds, the subsample
  path above ``SELECT_ON`` items, out-of-fold outputs for every fitted item)
  then :func:`~miscal_jax.model.predict` on the fresh items (fold-averaged);
- MCGrad (gradient-boosted multicalibration) with its defaults, on the
  confidence and the 32 columns (needs ``torch`` and ``mcgrad``:
  ``pip install torch==2.13.0 && pip install -e ".[benchmark]"``).

    python benchmarks/mcgrad_scale.py              # n = 100,000
    python benchmarks/mcgrad_scale.py --n 20000
"""

import argparse
import os
import time

import jax
import numpy as np

from miscal_jax.calibrators.global_maps import apply_isotonic, fit_isotonic
from miscal_jax.model import crossfit, predict
from miscal_jax.synthetic.planted import make_planted

FIELDS = ("embeddings", "conf", "correct", "field", "field_given_conf", "region")


def _brier(p, y) -> float:
    return float(np.mean((np.asarray(p, np.float64) - y) ** 2))


def _mcgrad(train, test) -> dict:
    import pandas as pd
    from mcgrad.methods import MCGrad

    cols = [f"x{j}" for j in range(train.embeddings.shape[1])]

    def frame(d):
        df = pd.DataFrame(np.asarray(d.embeddings), columns=cols)
        df["conf"] = np.clip(np.asarray(d.conf, np.float64), 1e-3, 1 - 1e-3)
        df["y"] = np.asarray(d.correct).astype(int)
        return df

    fit_df, test_df = frame(train), frame(test)
    start = time.perf_counter()
    model = MCGrad(random_state=0)
    model.fit(fit_df, "conf", "y", numerical_feature_column_names=cols)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    pred = model.predict(test_df, "conf", numerical_feature_column_names=cols)
    return {"fit_s": fit_s, "predict_s": time.perf_counter() - start, "pred": pred}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    print(f"# JAX {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores")
    # one draw of 2n items split in halves: a seed draws its own clusters and field
    both = make_planted(2 * args.n, seed=0, amplitude=0.25, nuisance_dim=24)
    half = lambda a: (a[: args.n], a[args.n :])
    train, test = (
        both._replace(**dict(zip(FIELDS, parts, strict=True)))
        for parts in zip(*(half(getattr(both, f)) for f in FIELDS), strict=True)
    )
    y = np.asarray(test.correct, np.float64)
    rows = {}

    start = time.perf_counter()
    res = crossfit(train.embeddings, train.conf, train.correct, progress=False)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    _, p_local = jax.block_until_ready(predict(res.model, test.embeddings, test.conf))
    rows["miscal_jax (crossfit + predict)"] = (fit_s, time.perf_counter() - start, p_local)

    iso = fit_isotonic(train.conf, train.correct)
    rows["isotonic (confidence only)"] = (
        float("nan"),
        float("nan"),
        apply_isotonic(iso, test.conf),
    )
    try:
        mc = _mcgrad(train, test)
        rows["MCGrad"] = (mc["fit_s"], mc["predict_s"], mc["pred"])
    except ImportError as err:
        print(f"MCGrad skipped ({err}); pip install torch==2.13.0 mcgrad")

    print(f"\nn = {args.n:,} fitted, {args.n:,} fresh items predicted; path {res.scale}")
    print("\n| method | fit (s) | predict (s) | fresh-item Brier |")
    print("|---|---|---|---|")
    for name, (f, p, pred) in rows.items():
        print(f"| {name} | {f:.1f} | {p:.1f} | {_brier(pred, y):.4f} |")
    truth = np.corrcoef(np.asarray(res.field), np.asarray(train.field))[0, 1]
    print(f"\nmiscal_jax out-of-fold field against the planted truth: corr {truth:.3f}")


if __name__ == "__main__":
    main()
