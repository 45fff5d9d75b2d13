"""Size, power and coverage of miscal_jax's inference, by simulation.

    python benchmarks/inference_calibration.py [--quick]

Scenarios (synthetic data from ``miscal_jax.synthetic.make_planted``):
- ``null``: no field; the heterogeneity test should reject at about 5%, regime
  discovery should report something in at most 10% of data sets (FDR 0.1).
- ``planted``: six clusters, two over-, two underconfident (amplitude 0.15);
  power, regime recovery (adjusted Rand index against the planted signs) and
  coverage of 90% pointwise intervals.
- ``extreme_null`` / ``extreme_planted``: confidences near 1 (Beta(30, 1.2)),
  where the model is nearly always right.
- ``global_only``: no field but confidence globally overconfident
  (``overconfidence=2``): the test must not mistake this for heterogeneity.

Writes ``benchmarks/results/inference_calibration.json`` and prints a table.
Geometries: raw and PCA (the learned encoder is left out to keep 200+
pipeline fits within minutes on 2 CPU cores; the test's logic is the same).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from miscal_jax.crossfit import crossfit
from miscal_jax.inference import heterogeneity_test, normal_interval, undersmoothed_field
from miscal_jax.regimes import assign_regimes, discover_regimes
from miscal_jax.synthetic import make_planted


def ari(a, b):
    """Adjusted Rand index (no scikit-learn dependency)."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    comb = lambda x: x * (x - 1) / 2
    idx = comb(table).sum()
    ea, eb = comb(table.sum(1)).sum(), comb(table.sum(0)).sum()
    expected = ea * eb / comb(len(a))
    top = 0.5 * (ea + eb) - expected
    return float((idx - expected) / top) if top else 1.0


SCENARIOS = {
    "null": dict(amplitude=0.0),
    "planted": dict(amplitude=0.15),
    "extreme_null": dict(amplitude=0.0, conf_ab=(30.0, 1.2)),
    "extreme_planted": dict(amplitude=0.15, conf_ab=(30.0, 1.2)),
    "global_only": dict(amplitude=0.0, overconfidence=2.0),
}


def run(name, sims, n, permutations):
    rows = []
    for seed in range(sims):
        d = make_planted(n, seed=1000 + seed, **SCENARIOS[name])
        res = crossfit(
            d.embeddings,
            d.conf,
            d.correct,
            folds=5,
            seed=seed,
            candidates=("raw", "pca"),
            progress=False,
        )
        het = heterogeneity_test(
            res, d.embeddings, d.conf, d.correct, num_permutations=permutations, seed=seed
        )
        regimes, model = discover_regimes(d.embeddings, d.conf, d.correct, seed=seed)
        row = {"p_value": het.p_value, "regimes": len(regimes)}
        if SCENARIOS[name]["amplitude"] > 0:
            lo, hi = normal_interval(res.field, res.field_se, level=0.9)
            row["coverage"] = float(np.mean((d.field >= lo) & (d.field <= hi)))
            us = undersmoothed_field(res, d.embeddings, d.conf)
            lo, hi = normal_interval(us.value, us.se, level=0.9)
            row["coverage_undersmoothed"] = float(np.mean((d.field >= lo) & (d.field <= hi)))
            assigned = assign_regimes(model, d.embeddings)
            signs = np.zeros(n)
            for r in regimes:
                signs[assigned == r.id] = 1 if r.sign == "under" else -1
            row["ari"] = ari(d.region_sign[d.region], signs)
        rows.append(row)
    return rows


def summarise(rows):
    p = np.array([r["p_value"] for r in rows])
    out = {
        "sims": len(rows),
        "reject_0.05": float(np.mean(p <= 0.05)),
        "any_regime": float(np.mean([r["regimes"] > 0 for r in rows])),
        "mean_regimes": float(np.mean([r["regimes"] for r in rows])),
    }
    for key in ("coverage", "coverage_undersmoothed", "ari"):
        if key in rows[0]:
            out[key] = float(np.mean([r[key] for r in rows]))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="few simulations, for a smoke run")
    parser.add_argument("--scenarios", nargs="*", default=None, help="run only these")
    args = parser.parse_args()
    plan = {  # scenario: (simulations, n)
        "null": (200, 1000),
        "planted": (15, 3000),
        "extreme_null": (60, 1000),
        "extreme_planted": (12, 3000),
        "global_only": (60, 1000),
    }
    if args.quick:
        plan = {k: (3, n) for k, (_, n) in plan.items()}
    out = Path(__file__).parent / "results" / "inference_calibration.json"
    results = json.loads(out.read_text()) if out.exists() and args.scenarios else {}
    for name, (sims, n) in plan.items():
        if args.scenarios and name not in args.scenarios:
            continue
        start = time.perf_counter()
        rows = run(name, sims, n, permutations=200)
        results[name] = {"n": n, **summarise(rows), "seconds": time.perf_counter() - start}
        print(name, json.dumps(results[name]), flush=True)
        out.write_text(json.dumps(results, indent=2))
    print(
        "| scenario | n | sims | reject at 0.05 | any regime (FDR 0.1) | coverage 90% "
        "(CV bw / undersmoothed) | ARI | time (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        cov = f"{r['coverage']:.3f} / {r['coverage_undersmoothed']:.3f}" if "coverage" in r else ""
        ari_s = f"{r['ari']:.3f}" if "ari" in r else ""
        print(
            f"| {name} | {r['n']} | {r['sims']} | {r['reject_0.05']:.3f} | "
            f"{r['any_regime']:.3f} | {cov} | {ari_s} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
