"""Size, power and coverage of miscal_jax's inference, by simulation.

    python benchmarks/inference_calibration.py [--quick] [--scenarios ...] [--sims N]
        [--geometries raw pca learned ...]

Scenarios (synthetic data from ``miscal_jax.synthetic.planted.make_planted``):
- ``null``: no field; the heterogeneity test should reject at about 5%, regime
  discovery should report something in at most 10% of data sets (FDR 0.1).
- ``planted``: six clusters, two over-, two underconfident (amplitude 0.15);
  power, regime recovery (adjusted Rand index against the planted signs) and
  coverage of 90% pointwise intervals.
- ``extreme_null`` / ``extreme_planted``: confidences near 1 (Beta(30, 1.2)),
  where the model is nearly always right.
- ``global_only``: no field but confidence globally overconfident
  (``overconfidence=2``): the test must not mistake this for heterogeneity.
- ``confounded_null`` (``miscal_jax.synthetic.planted.make_confounded_null``):
  confidence depends on the topic cluster and the position in the embedding,
  while ``P(correct) = conf^1.8`` everywhere. The field ``E[correct - conf |
  x]`` varies with x, but only through the confidence, so the heterogeneity
  test must hold its size (at most 0.05 at alpha 0.05) and regimes may be
  reported in at most 10% of data sets. Run once per geometry (default raw,
  pca), each geometry alone as the only crossfit candidate. ``--geometries
  panel`` smooths in the panel geometry instead: the same target data sets
  (``miscal_jax.synthetic.planted.make_confounded_panel``) beside 20 other models
  whose confidences share the target's dependence on the input and whose
  answers carry real regional fields; the panel map is learned from their
  residuals (:func:`miscal_jax.geometry.fit_panel`, default configuration) and
  the target is smoothed in it in raw coordinates, as
  ``real_llm_study.py`` does. ``--geometries profile``: the same in the
  profile geometry (:func:`miscal_jax.geometry.fit_profile`, 16 directions of
  the other models' residuals), the CLI's default panel geometry.

``--approximate`` runs every data set through the large-data path at a small
scale, as ``miscal-jax report`` runs it above ``SELECT_ON`` items: four
times the plan's items, the model chosen on a random quarter of them
(``select_on = n / 4``, the plan's size),
carried to all and binned in ``n / 16`` leaves per fold (about 12 training
items per leaf), the test on the subsample's model and regimes on the binned
one (``miscal_jax.app.report.model_statistics``). Keys get an
``[approximate]`` suffix.

Writes ``benchmarks/results/inference_calibration.json`` and prints a table.
Geometries: the other scenarios choose between raw and PCA (the learned
encoder is left out to keep 200+ pipeline fits within minutes on 2 CPU cores;
the test's logic is the same); ``--geometries`` sets the candidates per run
(``raw+pca`` is one run choosing between the two). ``--sims`` overrides the
number of data sets of every scenario run. Rejection rates come with their
Monte Carlo standard error ``sqrt(rate (1 - rate) / sims)``.
"""

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from miscal_jax.app.report import model_statistics
from miscal_jax.geometry.panel import (
    DEFAULT_CONFIG,
    fit_panel,
    fit_profile,
    panel_embed,
    profile_embed,
)
from miscal_jax.model.crossfit import crossfit
from miscal_jax.stats.inference import heterogeneity_test, normal_interval, undersmoothed_field
from miscal_jax.stats.regimes import assign_regimes, discover_regimes
from miscal_jax.synthetic.planted import make_confounded_null, make_confounded_panel, make_planted

#: Other models answering the target's items in the ``panel`` geometry runs.
PANEL_MODELS = 20
FIT_PANEL = jax.jit(fit_panel)
FIT_PROFILE = jax.jit(fit_profile, static_argnums=2)


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
    "confounded_null": dict(amplitude=0.0, generator="confounded", exponent=1.8),
}
#: Geometry runs per scenario unless ``--geometries`` is given.
DEFAULT_GEOMETRIES = {"confounded_null": ("raw", "pca")}


def make_data(name, n, seed):
    """The scenario's data set number ``seed`` (seeds 1000 + i, as before)."""
    kw = dict(SCENARIOS[name])
    if kw.pop("generator", "planted") == "confounded":
        kw.pop("amplitude")  # no planted field: the null by construction
        return make_confounded_null(n, seed=1000 + seed, **kw)
    return make_planted(n, seed=1000 + seed, **kw)


def panel_target(n, seed, geometry="panel"):
    """The confounded null's data set number ``seed``, its items in a panel geometry.

    ``geometry``: ``panel`` (the :func:`fit_panel` encoder of the item
    embeddings) or ``profile`` (:func:`fit_profile`, the items' own panel
    residual profiles on their principal directions).
    """
    d = make_confounded_panel(n, PANEL_MODELS, seed=1000 + seed)
    observed = np.ones(d.panel_conf.shape, bool)
    panel_outcomes = d.panel_correct - d.panel_conf
    if geometry == "profile":
        profile = FIT_PROFILE(panel_outcomes, observed, DEFAULT_CONFIG.out_dim)
        z = np.asarray(profile_embed(profile, panel_outcomes, observed))
    else:
        panel_map, _ = FIT_PANEL(
            jax.random.key(seed), d.target.embeddings, panel_outcomes, observed, DEFAULT_CONFIG
        )
        z = np.asarray(panel_embed(panel_map, d.target.embeddings))
    return d.target._replace(embeddings=z)


def run(name, sims, n, permutations, candidates=("raw", "pca"), approximate=False):
    panel = candidates in (("panel",), ("profile",))
    rows = []
    for seed in range(sims):
        d = panel_target(n, seed, candidates[0]) if panel else make_data(name, n, seed)
        res = crossfit(
            d.embeddings,
            d.conf,
            d.correct,
            folds=5,
            seed=seed,
            candidates=("raw",) if panel else candidates,
            progress=False,
            **(dict(select_on=n // 4, cells=n // 16) if approximate else {}),
        )
        if approximate:  # as the report runs it: the test on the subsample's model
            stats = model_statistics(res, seed=seed, permutations=permutations)
            p_value, found = stats.heterogeneity.p_value, stats.found
        else:
            k_het, k_regimes = jax.random.split(jax.random.key(seed))
            het = heterogeneity_test(k_het, res.model, num_permutations=permutations)
            p_value, found = float(het.p_value), discover_regimes(k_regimes, res.model)
        regimes = found.as_list()
        row = {"p_value": float(p_value), "regimes": len(regimes)}
        if SCENARIOS[name]["amplitude"] > 0:
            lo, hi = normal_interval(res.field, res.field_se, level=0.9)
            row["coverage"] = float(np.mean((d.field >= lo) & (d.field <= hi)))
            us = undersmoothed_field(res.model)
            lo, hi = normal_interval(us.value, us.se, level=0.9)
            row["coverage_undersmoothed"] = float(np.mean((d.field >= lo) & (d.field <= hi)))
            assigned = np.asarray(assign_regimes(found, d.embeddings))
            signs = np.zeros(n)
            for r in regimes:
                signs[assigned == r.id] = 1 if r.sign == "under" else -1
            row["ari"] = ari(d.region_sign[d.region], signs)
        rows.append(row)
    return rows


def summarise(rows):
    p = np.array([r["p_value"] for r in rows])
    reject = float(np.mean(p <= 0.05))
    any_regime = float(np.mean([r["regimes"] > 0 for r in rows]))
    out = {
        "sims": len(rows),
        "reject_0.05": reject,
        "reject_0.05_se": float(np.sqrt(reject * (1 - reject) / len(rows))),
        "any_regime": any_regime,
        "any_regime_se": float(np.sqrt(any_regime * (1 - any_regime) / len(rows))),
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
    parser.add_argument(
        "--sims", type=int, default=None, help="data sets per scenario run (overrides the plan)"
    )
    parser.add_argument(
        "--geometries",
        nargs="*",
        default=None,
        help="crossfit candidates per run, e.g. raw pca learned (one run each) or raw+pca "
        "(one run choosing between them), or panel / profile (confounded_null only); "
        "default: raw+pca, and raw, pca for confounded_null",
    )
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument(
        "--approximate",
        action="store_true",
        help="the large-data path at a small scale: subsample selection, carried, binned field",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "results" / "inference_calibration.json",
        help="results JSON (merged into when --scenarios is given)",
    )
    args = parser.parse_args()
    plan = {  # scenario: (simulations, n)
        "null": (200, 1000),
        "planted": (15, 3000),
        "extreme_null": (60, 1000),
        "extreme_planted": (12, 3000),
        "global_only": (60, 1000),
        "confounded_null": (200, 1000),
    }
    if args.quick:
        plan = {k: (3, n) for k, (_, n) in plan.items()}
    if args.sims is not None:
        plan = {k: (args.sims, n) for k, (_, n) in plan.items()}
    if args.approximate:  # four times the items, the model chosen on the plan's number
        plan = {k: (sims, 4 * n) for k, (sims, n) in plan.items()}
    unknown = set(args.scenarios or ()) - set(plan)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {sorted(plan)}")
    panels = {"panel", "profile"} & set(args.geometries or ())
    if panels and set(args.scenarios or ()) != {"confounded_null"}:
        parser.error(f"--geometries {' '.join(sorted(panels))} needs --scenarios confounded_null")
    out = args.out
    results = json.loads(out.read_text()) if out.exists() and args.scenarios else {}
    for name, (sims, n) in plan.items():
        if args.scenarios and name not in args.scenarios:
            continue
        geometries = args.geometries or DEFAULT_GEOMETRIES.get(name, ("raw+pca",))
        for geometry in geometries:
            key = name if geometry == "raw+pca" else f"{name} [{geometry}]"
            key += " [approximate]" if args.approximate else ""
            start = time.perf_counter()
            rows = run(
                name, sims, n, args.permutations, tuple(geometry.split("+")), args.approximate
            )
            results[key] = {
                "n": n,
                "geometry": geometry,
                **summarise(rows),
                "seconds": time.perf_counter() - start,
            }
            print(key, json.dumps(results[key]), flush=True)
            out.write_text(json.dumps(results, indent=2))
    print(
        "| scenario | n | sims | reject at 0.05 (MC se) | any regime, FDR 0.1 (MC se) | "
        "coverage 90% (CV bw / undersmoothed) | ARI | time (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        cov = f"{r['coverage']:.3f} / {r['coverage_undersmoothed']:.3f}" if "coverage" in r else ""
        ari_s = f"{r['ari']:.3f}" if "ari" in r else ""
        rej = f"{r['reject_0.05']:.3f}" + (
            f" ({r['reject_0.05_se']:.3f})" if "reject_0.05_se" in r else ""
        )
        reg = f"{r['any_regime']:.3f}" + (
            f" ({r['any_regime_se']:.3f})" if "any_regime_se" in r else ""
        )
        print(
            f"| {name} | {r['n']} | {r['sims']} | {rej} | {reg} | {cov} | {ari_s} | "
            f"{r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
