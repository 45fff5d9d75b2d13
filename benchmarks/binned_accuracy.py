"""The binned field against the exact one: same folds, geometry and bandwidth, held-out numbers.

A model is fitted on a subsample (``SELECT_ON`` items) and carried to all
``n`` items twice with the same key, so both carry the same folds, global
maps, geometry and bandwidth: once smoothing every training item exactly, once
smoothing each fold's training items binned in ``2 cells`` bins
(:func:`~miscal_jax.model.bin_model`; the correction refitted on binned
leave-one-out values). Printed for each: the out-of-fold field's correlation
with the exact one and its largest and median differences, the bins' radius
over the bandwidth, and each path's held-out Brier score, regional error
(planted regions) and correlation with the planted truth.

Two planted data sets: ``nuisance`` (8 signal + 24 nuisance columns, d = 32,
the case of ``scale.py``: a 16-32-D space is chosen, the kernel is wide and
the bins are wider than the bandwidth) and ``low-dim`` (2 signal columns, no
nuisance: bins much narrower than the bandwidth).

    python benchmarks/binned_accuracy.py                 # n = 50,000
    python benchmarks/binned_accuracy.py --n 20000 --cells 1024,4096
"""

import argparse
import os
import time

import jax
import numpy as np

from miscal_jax.metrics import regional_error
from miscal_jax.model import FitConfig, carry, fit, out_of_fold, subsample
from miscal_jax.model.binned import bin_radii
from miscal_jax.model.crossfit import SELECT_ON
from miscal_jax.synthetic.planted import make_planted

CASES = {
    "nuisance": dict(amplitude=0.25, nuisance_dim=24),
    "low-dim": dict(amplitude=0.25, signal_dim=2, num_clusters=6),
}


def _outputs(model, d):
    est, p_local = jax.block_until_ready(jax.jit(out_of_fold)(model))
    y = np.asarray(d.correct, np.float64)
    p = np.asarray(p_local, np.float64)
    return {
        "field": np.asarray(est.value, np.float64),
        "brier": float(np.mean((p - y) ** 2)),
        "regional": float(regional_error(p, y, d.region)),
        "truth": float(np.corrcoef(np.asarray(est.value), d.field)[0, 1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--cells", default="4096,16384")
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    print(f"# JAX {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores")
    run_carry = jax.jit(carry, static_argnames=("cells",))
    print(
        "\n| case | cells | field corr | largest diff | median diff | rho / h | "
        "Brier binned / exact | regional binned / exact | truth corr binned / exact | "
        "time binned / exact (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        d = make_planted(args.n, seed=0, **CASES[case])
        idx = np.asarray(subsample(jax.random.key(1), args.n, SELECT_ON))
        small, _ = jax.jit(fit)(
            jax.random.key(2), d.embeddings[idx], d.conf[idx], d.correct[idx], FitConfig()
        )
        start = time.perf_counter()
        exact_model = run_carry(small, jax.random.key(3), d.embeddings, d.conf, d.correct, idx)
        exact = _outputs(exact_model, d)
        exact_s = time.perf_counter() - start
        for cells in (int(c) for c in args.cells.split(",")):
            start = time.perf_counter()
            model = run_carry(
                small, jax.random.key(3), d.embeddings, d.conf, d.correct, idx, cells=cells
            )
            binned = _outputs(model, d)
            binned_s = time.perf_counter() - start
            diff = np.abs(binned["field"] - exact["field"])
            corr = np.corrcoef(binned["field"], exact["field"])[0, 1]
            rho = float(np.max(np.asarray(bin_radii(model))))
            print(
                f"| {case} | {cells:,} | {corr:.4f} | {diff.max():.4f} | {np.median(diff):.4f} | "
                f"{rho:.2f} | {binned['brier']:.4f} / {exact['brier']:.4f} | "
                f"{binned['regional']:.4f} / {exact['regional']:.4f} | "
                f"{binned['truth']:.3f} / {exact['truth']:.3f} | {binned_s:.0f} / {exact_s:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
