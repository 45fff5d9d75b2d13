"""Recovery of planted fields and what the local correction buys, over seeds.

    python benchmarks/planted_recovery.py [--seeds 5] [--global-method stacked]

Prints, per seed, the figures that ``tests/test_crossfit.py``'s slow tests
check (same data and settings): correlation of the out-of-fold field with the
truth; held-out regional error (planted regions) and ECE of isotonic,
temperature and local; the null case's Brier difference local - isotonic;
and, with 48 nuisance dimensions, the field correlation of the chosen
geometry against raw-space smoothing. All held-out (5-fold cross-fitting).

A second table, on the same planted data, asks how much of what is there to
gain each method gains: the out-of-fold field's least-squares slope against
the true field (1: full size; below 1: shrunk), and the share of the
*oracle's* held-out Brier gain over isotonic that each method closes,
``(Brier_iso - Brier_method) / (Brier_iso - Brier_oracle)``, the oracle being
the true probability ``conf + E[correct - conf | x, conf]`` (the Bayes
predictor; no estimator reaches 100%). ``signal`` is the local correction
cross-fitted in the true signal coordinates ``x @ signal_basis`` (raw
geometry): the share a perfect geometry would leave to the smoother. ECE
beside its floor (:func:`miscal_jax.metrics.ece_floor` at the local
correction's probabilities).
"""

import argparse
import time

import numpy as np

from miscal_jax import metrics as M
from miscal_jax.correction import GLOBAL_METHODS
from miscal_jax.geometry.encoder import EncoderConfig
from miscal_jax.model.crossfit import crossfit
from miscal_jax.synthetic.planted import make_planted

FAST = EncoderConfig(max_steps=200, eval_every=25)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--global-method",
        default="stacked",
        choices=GLOBAL_METHODS,
        help="the correction's first map (and, stacked, its final one)",
    )
    args = parser.parse_args()
    method = {"global_method": args.global_method}
    print(
        "| seed | corr | regional iso / temp / local | ECE iso / local | null Brier local - iso "
        "| nuisance corr chosen / raw (geometries) | time (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    gains = []
    for seed in range(args.seeds):
        start = time.perf_counter()
        d = make_planted(3000, seed=seed)
        five = dict(folds=5, seed=seed, config=FAST, progress=False, **method)
        res = crossfit(d.embeddings, d.conf, d.correct, **five)
        reg = {
            k: float(M.regional_error(res.predictions[k], d.correct, d.region))
            for k in ("isotonic", "temperature", "local")
        }
        ece = {k: float(M.ece(res.predictions[k], d.correct)) for k in ("isotonic", "local")}
        d0 = make_planted(3000, seed=seed, amplitude=0.0)
        r0 = crossfit(d0.embeddings, d0.conf, d0.correct, **five)
        dbrier = float(M.brier(r0.predictions["local"], d0.correct)) - float(
            M.brier(r0.predictions["isotonic"], d0.correct)
        )
        dn = make_planted(1500, seed=seed, nuisance_dim=48, nuisance_scale=1.0)
        kw = dict(folds=3, seed=seed, config=FAST, progress=False, **method)
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
        signal = crossfit(
            d.embeddings @ d.signal_basis, d.conf, d.correct, candidates=("raw",), **five
        )
        gains.append(oracle_shares(d, res, signal))
    print()
    print(
        "| seed | field slope chosen / signal | share of oracle Brier gain temp / local / signal "
        "| Brier iso / local / oracle | ECE iso / local / floor |"
    )
    print("|---|---|---|---|---|")
    for seed, g in enumerate(gains):
        print(
            f"| {seed} | {g['slope_local']:.2f} / {g['slope_signal']:.2f} | "
            f"{g['share_temperature']:.0%} / {g['share_local']:.0%} / {g['share_signal']:.0%} | "
            f"{g['brier_isotonic']:.4f} / {g['brier_local']:.4f} / {g['brier_oracle']:.4f} | "
            f"{g['ece_isotonic']:.4f} / {g['ece_local']:.4f} / {g['ece_floor']:.4f} |"
        )
    mean = {k: np.mean([g[k] for g in gains]) for k in gains[0]}
    print(
        f"| mean | {mean['slope_local']:.2f} / {mean['slope_signal']:.2f} | "
        f"{mean['share_temperature']:.0%} / {mean['share_local']:.0%} / "
        f"{mean['share_signal']:.0%} | | {mean['ece_isotonic']:.4f} / {mean['ece_local']:.4f} / "
        f"{mean['ece_floor']:.4f} |"
    )


def oracle_shares(d, res, signal) -> dict:
    """Field slopes, Brier shares of the oracle's gain over isotonic, ECE and its floor."""
    oracle = np.clip(d.conf + d.field_given_conf, 0.0, 1.0)
    brier = {
        "isotonic": float(M.brier(res.predictions["isotonic"], d.correct)),
        "temperature": float(M.brier(res.predictions["temperature"], d.correct)),
        "local": float(M.brier(res.predictions["local"], d.correct)),
        "signal": float(M.brier(signal.predictions["local"], d.correct)),
        "oracle": float(M.brier(oracle, d.correct)),
    }
    gain = brier["isotonic"] - brier["oracle"]
    truth = d.field - d.field.mean()
    out = {f"brier_{k}": v for k, v in brier.items()}
    for k in ("temperature", "local", "signal"):
        out[f"share_{k}"] = (brier["isotonic"] - brier[k]) / gain
    for k, field in (("local", res.field), ("signal", signal.field)):
        out[f"slope_{k}"] = float(np.sum(truth * (field - field.mean())) / np.sum(truth**2))
    out["ece_isotonic"] = float(M.ece(res.predictions["isotonic"], d.correct))
    out["ece_local"] = float(M.ece(res.predictions["local"], d.correct))
    out["ece_floor"] = float(M.ece_floor(res.predictions["local"]))
    return out


if __name__ == "__main__":
    main()
