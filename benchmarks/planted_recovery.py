"""Recovery of planted fields and what the local correction buys, over seeds.

    python benchmarks/planted_recovery.py [--seeds 5]

Prints, per seed, the figures that ``tests/test_crossfit.py``'s slow tests
check (same data and settings): correlation of the out-of-fold field with the
truth; held-out regional error (planted regions) and ECE of isotonic,
temperature and local; the null case's Brier difference local - isotonic;
and, with 48 nuisance dimensions, the field correlation of the chosen
geometry against raw-space smoothing. All held-out (5-fold cross-fitting).
"""

import argparse
import time

import numpy as np

from miscal_jax import metrics as M
from miscal_jax.geometry.encoder import EncoderConfig
from miscal_jax.model.crossfit import crossfit
from miscal_jax.synthetic.planted import make_planted

FAST = EncoderConfig(max_steps=200, eval_every=25)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    print(
        "| seed | corr | regional iso / temp / local | ECE iso / local | null Brier local - iso "
        "| nuisance corr chosen / raw (geometries) | time (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for seed in range(args.seeds):
        start = time.perf_counter()
        d = make_planted(3000, seed=seed)
        res = crossfit(
            d.embeddings, d.conf, d.correct, folds=5, seed=seed, config=FAST, progress=False
        )
        reg = {
            k: float(M.regional_error(res.predictions[k], d.correct, d.region))
            for k in ("isotonic", "temperature", "local")
        }
        ece = {k: float(M.ece(res.predictions[k], d.correct)) for k in ("isotonic", "local")}
        d0 = make_planted(3000, seed=seed, amplitude=0.0)
        r0 = crossfit(
            d0.embeddings, d0.conf, d0.correct, folds=5, seed=seed, config=FAST, progress=False
        )
        dbrier = float(M.brier(r0.predictions["local"], d0.correct)) - float(
            M.brier(r0.predictions["isotonic"], d0.correct)
        )
        dn = make_planted(1500, seed=seed, nuisance_dim=48, nuisance_scale=1.0)
        kw = dict(folds=3, seed=seed, config=FAST, progress=False)
        full = crossfit(dn.embeddings, dn.conf, dn.correct, **kw)
        raw = crossfit(dn.embeddings, dn.conf, dn.correct, candidates=("raw",), **kw)
        chosen = "".join(i["chosen"][0] for i in full.info)
        print(
            f"| {seed} | {np.corrcoef(res.field, d.field)[0, 1]:.3f} | "
            f"{reg['isotonic']:.4f} / {reg['temperature']:.4f} / {reg['local']:.4f} | "
            f"{ece['isotonic']:.4f} / {ece['local']:.4f} | {dbrier:+.4f} | "
            f"{np.corrcoef(full.field, dn.field)[0, 1]:.3f} / "
            f"{np.corrcoef(raw.field, dn.field)[0, 1]:.3f} ({chosen}) | "
            f"{time.perf_counter() - start:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
