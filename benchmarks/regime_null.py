"""False alarms of regime discovery alone, over many null data sets (fast).

    python benchmarks/regime_null.py [--sims 200] [--n 1000] [--scenarios confounded_null ...]

Same data sets and seeds as the ``null``/``extreme_null``/``global_only``/
``confounded_null`` scenarios of ``inference_calibration.py`` (n = 1000 unless
``--n`` says otherwise, seeds 1000+i), but only
a cheap fit (two folds, raw geometry: regime discovery uses the model's items,
not its field) and :func:`miscal_jax.discover_regimes` run, both vmapped over
batches of 40 data sets, so 200 data sets take a minute or two.
Prints the fraction of data sets with at least one reported regime (nominal
false discovery rate 0.1, which under a global null bounds this by 0.1).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from miscal_jax.model import FitConfig, fit
from miscal_jax.stats.regimes import discover_regimes
from miscal_jax.synthetic.planted import make_confounded_null, make_planted

BATCH = 40
CONFIG = FitConfig(folds=2, candidates=("raw",))


@jax.jit
def _found(keys, x, p, y):
    """``[b]`` number of regimes reported on each of ``b`` stacked data sets."""
    models, _ = jax.vmap(fit, in_axes=(0, 0, 0, 0, None))(keys, x, p, y, CONFIG)
    return discover_regimes(jax.random.fold_in(keys[0], 1), models).count


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
    parser.add_argument("--n", type=int, default=1000, help="items per data set")
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
        for first in range(0, args.sims, BATCH):
            seeds = range(first, min(first + BATCH, args.sims))
            data = [generator(args.n, seed=1000 + s, **kw) for s in seeds]
            x, p, y = (
                jnp.stack([getattr(d, a) for d in data]) for a in ("embeddings", "conf", "correct")
            )
            keys = jnp.stack([jax.random.key(s) for s in seeds])
            found.extend(np.asarray(_found(keys, x, p, y)) > 0)
        print(
            f"| {name} | {args.n} | {args.sims} | {np.mean(found):.3f} | "
            f"{time.perf_counter() - start:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
