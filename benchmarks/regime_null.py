"""False alarms of regime discovery alone, over many null data sets (fast).

    python benchmarks/regime_null.py [--sims 200] [--scenarios confounded_null ...]

Same data sets and seeds as the ``null``/``extreme_null``/``global_only``/
``confounded_null`` scenarios of ``inference_calibration.py`` (n = 1000, seeds 1000+i), but only
:func:`miscal_jax.discover_regimes` runs, so 200 data sets take a minute or two.
Prints the fraction of data sets with at least one reported regime (nominal
false discovery rate 0.1, which under a global null bounds this by 0.1).
"""

import argparse
import time

import numpy as np

from miscal_jax.stats.regimes import discover_regimes
from miscal_jax.synthetic.planted import make_confounded_null, make_planted

SCENARIOS = {
    "null": dict(amplitude=0.0),
    "extreme_null": dict(amplitude=0.0, conf_ab=(30.0, 1.2)),
    "global_only": dict(amplitude=0.0, overconfidence=2.0),
    # confidence depends on topic and position, P(correct) = conf^1.8 everywhere
    "confounded_null": dict(generator=make_confounded_null, exponent=1.8),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sims", type=int, default=200)
    parser.add_argument("--scenarios", nargs="*", choices=sorted(SCENARIOS), default=None)
    args = parser.parse_args()
    print("| scenario | n | sims | any regime reported | time (s) |")
    print("|---|---|---|---|---|")
    for name, kw in SCENARIOS.items():
        if args.scenarios and name not in args.scenarios:
            continue
        kw = dict(kw)
        generator = kw.pop("generator", make_planted)
        start = time.perf_counter()
        found = []
        for s in range(args.sims):
            d = generator(1000, seed=1000 + s, **kw)
            found.append(len(discover_regimes(d.embeddings, d.conf, d.correct, seed=s)[0]) > 0)
        print(
            f"| {name} | 1000 | {args.sims} | {np.mean(found):.3f} | "
            f"{time.perf_counter() - start:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
