"""What the final isotonic map costs and buys: local correction with and without it.

On planted data (:func:`miscal_jax.synthetic.make_planted`) with no field
(``amplitude=0``) and with one (``amplitude=0.1``), over ``--seeds`` seeds:
held-out Brier and ECE of the local correction minus isotonic regression's,
with ``final_recalibration`` on (the default) and off. Same folds for both.

Usage::

    python benchmarks/final_map_cost.py [--n 400 1000] [--seeds 10] [--geometry raw]
"""

import argparse

import numpy as np

from miscal_jax.metrics.calibration import brier, ece
from miscal_jax.model.crossfit import crossfit
from miscal_jax.synthetic.planted import make_planted


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[400, 1000])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--geometry", default="raw", help="comma-separated candidates")
    args = ap.parse_args(argv)
    candidates = tuple(args.geometry.split(","))
    print("| n | field | final map | Brier local - isotonic (se) | ECE local - isotonic |")
    print("|---|---|---|---|---|")
    for n in args.n:
        for amplitude in (0.0, 0.1):
            for final in (True, False):
                d_brier, d_ece = [], []
                for seed in range(args.seeds):
                    d = make_planted(n, seed=seed, amplitude=amplitude)
                    res = crossfit(
                        d.embeddings,
                        d.conf,
                        d.correct,
                        folds=5,
                        seed=seed,
                        candidates=candidates,
                        final_recalibration=final,
                        progress=False,
                    )
                    local, iso = res.predictions["local"], res.predictions["isotonic"]
                    d_brier.append(float(brier(local, d.correct) - brier(iso, d.correct)))
                    d_ece.append(float(ece(local, d.correct) - ece(iso, d.correct)))
                se = np.std(d_brier) / np.sqrt(len(d_brier))
                print(
                    f"| {n} | {amplitude} | {'on' if final else 'off'} | "
                    f"{np.mean(d_brier):+.5f} ({se:.5f}) | {np.mean(d_ece):+.4f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
