"""Panel geometry: fitting, recovery of a planted structure, honesty, the loader and the CLI."""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miscal_jax.app.cli import main
from miscal_jax.app.io import load_with_panel
from miscal_jax.geometry.panel import (
    PanelConfig,
    combined_embed,
    fit_combined,
    fit_panel,
    fit_profile,
    panel_embed,
    profile_embed,
)

FAST = PanelConfig(outcome="correct", out_dim=4, max_steps=600, eval_every=50)
fit_jit = jax.jit(fit_panel)


def planted(n=600, m=16, d=64, seed=0, items=None):
    """Items at a latent 2-d position ``u`` hidden in ``d`` dims among ``d - 2`` nuisance ones.

    Panel model ``j`` answers right with probability ``sigmoid(3 u @ w_j + b_j)``;
    the nuisance coordinates have a larger spread than the latent ones and
    carry nothing. ``seed`` fixes the embedding's rotation and the panel,
    ``items`` (default ``seed``) draws the items.
    """
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.normal(size=(d, d)))[0]
    weights, bias = rng.normal(size=(2, m)), 0.5 * rng.normal(size=m)
    rng = np.random.default_rng(seed if items is None else items)
    u = rng.uniform(-1.0, 1.0, (n, 2))
    x = np.concatenate([u, rng.normal(0.0, 1.2, (n, d - 2))], axis=1) @ rotation.T
    logits = 3.0 * u @ weights + bias
    correct = (rng.random((n, m)) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    return x.astype(np.float32), u, correct


def r2(z, u):
    """Share of the variance of ``u`` explained by a linear map from ``z`` (with intercept)."""
    a = np.concatenate([z, np.ones((len(z), 1))], axis=1)
    coef = np.linalg.lstsq(a, u, rcond=None)[0]
    return 1 - np.sum((u - a @ coef) ** 2) / np.sum((u - u.mean(0)) ** 2)


@pytest.fixture(scope="module")
def fitted():
    x, u, y = planted()
    panel_map, history = fit_jit(jax.random.key(0), x, y, np.ones_like(y, bool), FAST)
    return x, u, y, panel_map, history


def test_recovers_planted_latent_position(fitted):
    """The 4-d panel space holds the latent position; raw 64-d space mostly holds nuisance.

    Measured on 600 new items of the same structure (items=1): one seed, a
    deterministic fit, a margin of about 0.1 below the value measured.
    """
    x, u, y, panel_map, history = fitted
    assert history["best_val_loss"] < 0.85 * history["constant_loss"]
    assert np.isnan(history["val_loss"][-1]) or history["steps"] == FAST.max_steps
    x_new, u_new, _ = planted(items=1)
    z_new = np.asarray(panel_embed(panel_map, x_new))
    assert z_new.shape == (600, 4)
    assert r2(z_new, u_new) > 0.85
    top = np.argsort(np.var(z_new, axis=0))[::-1][:2]
    assert r2(z_new[:, top], u_new) > 0.8  # coordinates come ordered by importance

    # nearest neighbours in the panel space are close in u; in raw space much less so
    def neighbour_gap(z):
        dist = np.sum((z[:, None] - z[None]) ** 2, -1) + np.diag(np.full(len(z), np.inf))
        return np.mean(np.linalg.norm(u_new - u_new[np.argmin(dist, 1)], axis=1))

    assert neighbour_gap(z_new) < 0.5 * neighbour_gap(x_new)


def test_distance_tracks_predicted_probabilities(fitted):
    """Panel distance follows the RMS difference of the predicted probabilities (first order)."""
    x, _, _, panel_map, _ = fitted
    xs = (x - panel_map.mean) / panel_map.scale
    prob = jax.nn.sigmoid(panel_map.net.apply({"params": panel_map.params}, xs))
    z = panel_embed(panel_map, x)
    dist = jnp.sqrt(jnp.sum((z[:300] - z[300:]) ** 2, 1))
    rms = jnp.sqrt(jnp.mean((prob[:300] - prob[300:]) ** 2, 1))
    assert np.corrcoef(dist, rms)[0, 1] > 0.9  # 0.945 measured: logits up to +-6 saturate


def test_jit_traces_once():
    x, _, y = planted(n=120, m=5, d=8)
    mask = np.ones_like(y, bool)
    cfg = PanelConfig(outcome="correct", out_dim=2, max_steps=40, eval_every=20)
    traces = []

    def counted(rng, x, y, mask):
        traces.append(1)
        return fit_panel(rng, x, y, mask, cfg)

    run = jax.jit(counted)
    a, _ = run(jax.random.key(0), x, y, mask)
    b, _ = run(jax.random.key(0), x + 1.0, 1.0 - y, mask)
    assert len(traces) == 1
    assert not np.allclose(panel_embed(a, x), panel_embed(b, x))


def test_masked_outcomes_are_never_read():
    x, _, y = planted(n=200, m=6, d=8)
    rng = np.random.default_rng(0)
    mask = rng.random(y.shape) < 0.6
    cfg = PanelConfig(outcome="correct", out_dim=2, max_steps=60, eval_every=20)
    a, ha = fit_jit(jax.random.key(0), x, y, mask, cfg)
    garbage = np.where(mask, y, np.where(rng.random(y.shape) < 0.5, np.nan, 1.0 - y))
    b, hb = fit_jit(jax.random.key(0), x, garbage.astype(np.float32), mask, cfg)
    for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(leaf_a, leaf_b)
    np.testing.assert_array_equal(ha["val_loss"], hb["val_loss"])
    # an observed cell does count
    flipped = np.where(mask, 1.0 - y, y).astype(np.float32)
    c, _ = fit_jit(jax.random.key(0), x, flipped, mask, cfg)
    assert not np.array_equal(panel_embed(a, x), panel_embed(c, x))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, y, m: (x[:, 0], y, m), "embeddings: expected a 2-D array"),
        (lambda x, y, m: (x, y[:-1], m), "panel_outcomes: has 39 rows but embeddings has 40"),
        (lambda x, y, m: (x, y, m[:, :2]), "panel_mask: shape (40, 2) differs"),
        (lambda x, y, m: (x, y, m.astype(np.float32)), "panel_mask: expected booleans"),
        (lambda x, y, m: (x, y * 2, m), "panel_outcomes: value 2.0 at index [0, 0] is not 0 or 1"),
        (lambda x, y, m: (x, y, m & (np.arange(3) != 1)), "panel model (column) 1 has no"),
        (lambda x, y, m: (np.where(x > 2, np.nan, x), y, m), "is not finite"),
        (lambda x, y, m: (x, y[:, :0], m[:, :0]), "the panel has no models"),
    ],
)
def test_bad_inputs_are_refused(change, message):
    x = np.linspace(-3, 3, 80, dtype=np.float32).reshape(40, 2)
    y = np.ones((40, 3), np.float32)
    x, y, mask = change(x, y, np.ones((40, 3), bool))
    with pytest.raises(ValueError) as err:
        fit_panel(jax.random.key(0), x, y, mask, FAST)
    assert message in str(err.value)


def test_residuals_outside_minus_one_one_are_refused():
    x = np.linspace(-3, 3, 80, dtype=np.float32).reshape(40, 2)
    y = np.zeros((40, 3), np.float32)
    y[5, 2] = -1.5
    with pytest.raises(ValueError, match=r"value -1.5 at index \[5, 2\] is not a residual"):
        fit_panel(jax.random.key(0), x, y, np.ones_like(y, bool), PanelConfig(out_dim=2))


def test_residual_panel_recovers_where_the_panel_is_miscalibrated():
    """Residual outcomes: the panel space holds the latent position of the miscalibration.

    Every panel model states the same confidence 0.7 everywhere, so its residual
    ``correct - 0.7`` varies only through ``u``; the planted structure is the one
    of :func:`planted`. One seed, deterministic fit: R^2 0.97 measured, loss 0.73x.
    """
    x, u, y = planted()
    cfg = PanelConfig(out_dim=4, max_steps=600, eval_every=50)
    panel_map, history = fit_jit(jax.random.key(0), x, y - 0.7, np.ones_like(y, bool), cfg)
    assert history["best_val_loss"] < 0.85 * history["constant_loss"]
    x_new, u_new, _ = planted(items=1)
    assert r2(np.asarray(panel_embed(panel_map, x_new)), u_new) > 0.9


def test_bad_config_is_refused():
    x, _, y = planted(n=10, m=2, d=3)
    mask = np.ones_like(y, bool)
    with pytest.raises(ValueError, match="config.outcome: 'probability'"):
        fit_panel(jax.random.key(0), x, y, mask, PanelConfig(outcome="probability"))
    with pytest.raises(ValueError, match="config.val_fraction: 0.01 of 10 items"):
        fit_panel(jax.random.key(0), x, y, np.ones_like(y, bool), PanelConfig(val_fraction=0.01))
    with pytest.raises(ValueError, match="eval_every <= max_steps"):
        fit_panel(jax.random.key(0), x, y, np.ones_like(y, bool), PanelConfig(max_steps=10))


# ----------------------------------------------------------------------------- long tables


def long_table(
    path, n=240, m=6, d=16, seed=0, *, emb_columns=True, target_flip=False, panel_conf=True
):
    """A long table: panel models p0..p{m-1} and a target whose miscalibration follows u.

    Every third item is missing for panel model p0; item ids are integers.
    With ``panel_conf`` every panel model but p1 states confidence 0.7 (p1
    states none); without it no panel model does. Returns
    ``(path, item_embeddings [n, d])``.
    """
    x, u, y = planted(n=n, m=m, d=d, seed=seed)
    rng = np.random.default_rng(seed + 100)
    conf = rng.uniform(0.5, 0.95, n)
    p_true = np.clip(conf + 0.3 * np.sign(u[:, 0]), 0.01, 0.99)
    target = (rng.random(n) < p_true).astype(int)
    if target_flip:
        target = 1 - target
    header = ["item", "model", "confidence", "correct"] + (
        [f"emb_{j}" for j in range(d)] if emb_columns else []
    )
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(n):
            emb = [f"{v:.6g}" for v in x[i]] if emb_columns else []
            w.writerow([i, "target", f"{conf[i]:.4f}", target[i], *emb])
            for j in range(m):
                outcome = "" if j == 0 and i % 3 == 0 else int(y[i, j])
                stated = "0.7" if panel_conf and j != 1 else ""
                w.writerow([i, f"p{j}", stated, outcome, *emb])
    return path, np.array([[float(f"{v:.6g}") for v in row] for row in x], np.float32)


def test_loader_builds_target_rows_and_panel(tmp_path):
    path, x = long_table(tmp_path / "long.csv")
    d = load_with_panel(path, model="target")
    assert d.panel_models == [f"p{j}" for j in range(6)]
    assert d.panel_correct.shape == d.panel_mask.shape == (240, 6)
    assert d.panel_mask[::3, 0].sum() == 0 and d.panel_mask[:, 1:].all()
    assert np.isnan(d.panel_conf[:, 1]).all() and (d.panel_conf[:, 2:] == np.float32(0.7)).all()
    values, mask = d.panel_outcomes("residual")  # p1 gave no confidence: left out
    assert values.shape == mask.shape == (240, 5)
    np.testing.assert_array_equal(mask, d.panel_mask[:, [0, 2, 3, 4, 5]])
    np.testing.assert_allclose(values[mask], (d.panel_correct[:, [0, 2, 3, 4, 5]] - 0.7)[mask])
    assert d.panel_outcomes("correct")[0] is d.panel_correct
    assert d.target.embeddings.shape == (240, 16)
    assert d.target.item == [str(i) for i in range(240)]
    np.testing.assert_array_equal(d.item_embeddings, x)
    np.testing.assert_array_equal(d.target.embeddings, x[d.target_item])
    assert d.target.meta["model"] == "target"
    # --embeddings: row k belongs to item id k (the table may use a subset, in any order)
    npy = tmp_path / "items.npy"
    np.save(npy, np.concatenate([x, np.zeros((5, 16), np.float32)]))
    e = load_with_panel(tmp_path / "long.csv", model="targ", embeddings=npy)
    np.testing.assert_array_equal(e.item_embeddings, x)


def test_target_outcomes_never_enter_the_panel_map(tmp_path):
    a = load_with_panel(long_table(tmp_path / "a.csv")[0], model="target")
    b = load_with_panel(long_table(tmp_path / "b.csv", target_flip=True)[0], model="target")
    assert not np.array_equal(a.target.correct, b.target.correct)
    np.testing.assert_array_equal(a.panel_correct, b.panel_correct)
    np.testing.assert_array_equal(a.panel_mask, b.panel_mask)
    cfg = PanelConfig(out_dim=2, max_steps=40, eval_every=20)
    ma, _ = fit_jit(jax.random.key(0), a.item_embeddings, a.panel_correct, a.panel_mask, cfg)
    mb, _ = fit_jit(jax.random.key(0), b.item_embeddings, b.panel_correct, b.panel_mask, cfg)
    for leaf_a, leaf_b in zip(jax.tree.leaves(ma), jax.tree.leaves(mb), strict=True):
        np.testing.assert_array_equal(leaf_a, leaf_b)


def _write(path, rows):
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    "rows, kwargs, message",
    [
        (["item,model,correct", "0,a,1"], {}, "has no column 'confidence'; pass the right name"),
        (["item,model,confidence,correct", "0,a,0.5,1", "0,b,,1"], {"model": "c"}, "--model: 'c'"),
        (["item,model,confidence,correct,emb_0", "0,a,0.5,1,0"], {}, "no model besides 'a'"),
        (
            ["item,model,confidence,correct,emb_0", "0,a,0.5,1,0", "0,b,,1,0", "0,b,,0,0"],
            {},
            "line 4 of",
        ),
        (
            ["item,model,confidence,correct,emb_0", "0,a,0.5,1,0", "0,b,,2,0"],
            {},
            "correct: value 2 on line 3 of",
        ),
        (
            ["item,model,confidence,correct,emb_0", "0,a,0.5,1,0", "0,b,,1,0.5"],
            {},
            "differs from the one on line 2",
        ),
        (
            ["item,model,confidence,correct,emb_0", "x,a,0.5,1,0", "x,b,,1,0"],
            {"embeddings": True},
            "item: value 'x' on line 2 of",
        ),
        (
            ["item,model,confidence,correct", "7,a,0.5,1", "7,b,,1"],
            {"embeddings": True},
            "item: id 7 on line 2 of",
        ),
        (["item,model,confidence,correct", ",a,0.5,1"], {}, "item: empty value on line 2"),
        (
            ["item,model,confidence,correct,emb_0", "0,a,0.5,1,0", "0,b,70,1,0"],
            {},
            "confidence: value 70 on line 3 of",
        ),
    ],
)
def test_loader_refuses_bad_tables(tmp_path, rows, kwargs, message):
    path = _write(tmp_path / "t.csv", rows)
    kwargs = {"model": "a", **kwargs}
    if kwargs.get("embeddings"):
        np.save(tmp_path / "e.npy", np.zeros((3, 2)))
        kwargs["embeddings"] = tmp_path / "e.npy"
    with pytest.raises(ValueError) as err:
        load_with_panel(path, **kwargs)
    assert message in str(err.value)


# ----------------------------------------------------------------------------- profile geometry


def test_profile_distance_is_rms_difference_of_denoised_profiles():
    """Against a slow reference: fill missing cells at the column mean, centre, rank-k SVD."""
    rng = np.random.default_rng(3)
    y = (rng.random((50, 7)) < 0.6).astype(np.float32)
    mask = rng.random(y.shape) < 0.8
    mask[0] = True
    garbage = np.where(mask, y, np.nan).astype(np.float32)  # unobserved cells never read
    for k in (2, 7, 20):
        pm = fit_profile(garbage, mask, k)
        z = np.asarray(profile_embed(pm, garbage, mask), np.float64)
        mean = np.array([y[mask[:, j], j].mean() for j in range(7)])
        c = np.where(mask, y - mean, 0.0)
        _, _, vt = np.linalg.svd(c, full_matrices=False)
        kept = min(k, 7)
        denoised = c @ vt[:kept].T @ vt[:kept]
        assert z.shape == (50, kept)
        i, j = np.triu_indices(50, 1)
        dist = np.linalg.norm(z[i] - z[j], axis=1)
        rms = np.sqrt(np.mean((denoised[i] - denoised[j]) ** 2, axis=1))
        np.testing.assert_allclose(dist, rms, atol=2e-5)
        s = np.linalg.svd(c, compute_uv=False)
        np.testing.assert_allclose(pm.explained, np.sum(s[:kept] ** 2) / np.sum(s**2), rtol=1e-4)
    jitted = jax.jit(fit_profile, static_argnums=2)(garbage, mask, 3)
    eager = fit_profile(garbage, mask, 3)
    np.testing.assert_allclose(jitted.components, eager.components, atol=1e-5)


def test_profile_recovers_planted_latent_position():
    """The panel's own outcomes place items by the latent position (no embedding needed).

    Measured r2 0.80 on this draw (16 models' coin flips per item); the
    bound leaves a margin of 0.1, and raw embedding space is at 0.03.
    """
    x, u, y = planted()
    z = np.asarray(
        profile_embed(fit_profile(y, np.ones_like(y, bool), 2), y, np.ones_like(y, bool))
    )
    assert r2(z, u) > 0.7
    assert r2(x[:, :2], u) < 0.2


def test_profile_degenerate_and_bad_input():
    same = np.ones((6, 3), np.float32)
    pm = fit_profile(same, np.ones_like(same, bool), 2)
    z = profile_embed(pm, same, np.ones_like(same, bool))
    assert np.all(np.isfinite(z)) and np.allclose(z, 0.0) and float(pm.explained) == 1.0
    y, mask = np.zeros((4, 3), np.float32), np.ones((4, 3), bool)
    cases = [
        ((y[0], mask[0], 2), "panel_outcomes: expected a 2-D"),
        ((y, mask[:3], 2), "panel_mask: shape (3, 3) differs"),
        ((y, mask, 0), "k: 0 directions"),
        ((y, mask.astype(int), 2), "panel_mask: expected booleans"),
        ((np.where(np.eye(4, 3) > 0, np.inf, y), mask, 2), "value inf at index [0, 0]"),
        ((y, mask & (np.arange(3) != 2), 2), "panel model (column) 2 has no observed"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError) as err:
            fit_profile(*args)
        assert message in str(err.value)


# ----------------------------------------------------------------------------- combined geometry


def test_combined_is_profile_beside_topic_blocks_balanced():
    """Against a slow reference: the profile block and the embedding's top PCs, RMS radius 1."""
    x, _, y = planted(n=300, m=10, d=12)
    mask = np.random.default_rng(1).random(y.shape) < 0.9
    mask[0] = True
    cm = jax.jit(fit_combined, static_argnums=3)(y, mask, x, 3)
    z = np.asarray(combined_embed(cm, y, mask, x), np.float64)
    assert z.shape == (300, 6)
    profile = np.asarray(profile_embed(fit_profile(y, mask, 3), y, mask), np.float64)
    centred = x.astype(np.float64) - x.mean(0)
    pcs = centred @ np.linalg.svd(centred, full_matrices=False)[2][:3].T
    for block, ref in ((z[:, :3], profile), (z[:, 3:], pcs)):
        radius = np.sqrt(np.mean(np.sum((ref - ref.mean(0)) ** 2, axis=1)))
        np.testing.assert_allclose(np.abs(block), np.abs(ref) / radius, atol=2e-4)  # PC signs
        np.testing.assert_allclose(np.mean(np.sum(block**2, axis=1)), 1.0, rtol=1e-4)
    # new items (here a subset in another order) are placed where the fitting items were
    rows = np.array([5, 2, 299])
    np.testing.assert_allclose(combined_embed(cm, y[rows], mask[rows], x[rows]), z[rows], atol=1e-5)


def test_combined_keeps_the_topic_the_profile_loses():
    """A topic the panel does not react to is lost by the profile space, kept by the combined one.

    The planted embedding carries the panel's latent position in 2 of its
    dims and a topic ``t`` (which the panel's outcomes ignore) in a third,
    with a spread well above the nuisance dims'. Measured r2 of ``t``: 0.01
    from the profile space, 1.00 from the combined one.
    """
    x, u, y = planted(n=600, m=16, d=8)
    t = np.random.default_rng(7).uniform(-1, 1, 600)
    x = np.concatenate([x, 3.0 * t[:, None]], axis=1).astype(np.float32)
    mask = np.ones_like(y, bool)
    profile = np.asarray(profile_embed(fit_profile(y, mask, 4), y, mask))
    combined = np.asarray(combined_embed(fit_combined(y, mask, x, 4), y, mask, x))
    assert r2(profile, t[:, None]) < 0.1 and r2(combined, t[:, None]) > 0.9
    assert r2(combined, u) >= r2(profile, u) - 1e-6


def test_combined_degenerate_and_bad_input():
    y, mask = np.ones((6, 3), np.float32), np.ones((6, 3), bool)
    same = np.zeros((6, 4), np.float32)
    z = combined_embed(fit_combined(y, mask, same, 2), y, mask, same)
    assert z.shape == (6, 4) and np.all(np.isfinite(z)) and np.allclose(z, 0.0)
    cases = [
        ((y, mask, same[:5], 2), "embeddings: expected a 2-D [items, dims] array with one row"),
        ((y, mask, same[:, 0], 2), "embeddings: expected a 2-D"),
        ((y, mask, np.where(np.eye(6, 4) > 0, np.nan, same), 2), "value nan at index [0, 0]"),
        ((y, mask, same, 0), "k: 0 directions"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError) as err:
            fit_combined(*args)
        assert message in str(err.value)


# ----------------------------------------------------------------------------- command line

CLI_FAST = ["--folds", "3", "--permutations", "20", "--quiet", "--geometry", "raw"]


@pytest.mark.slow
def test_cli_report_in_the_panel_geometry(tmp_path, capsys):
    path, x = long_table(tmp_path / "long.csv", emb_columns=False)
    np.save(tmp_path / "items.npy", x)
    out = tmp_path / "rep"
    argv = ["report", "--data", str(path), "--embeddings", str(tmp_path / "items.npy")]
    argv += ["--model", "target", "--item-col", "item", "--out", str(out), *CLI_FAST]
    assert main([*argv, "--panel-geometry", "profile"]) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 240
    panel = summary["source"]["panel"]
    assert panel["geometry"] == "profile" and panel["outcome"] == "residual"
    assert panel["models"] == 5 and panel["items"] == 240 and panel["dims"] == 5  # rank <= m
    assert 0 < panel["explained"] <= 1
    with open(out / "points.csv") as f:
        points = list(csv.DictReader(f))
    assert [p["item"] for p in points] == [str(i) for i in range(240)]
    assert "panel profile space" in (out / "report.md").read_text()
    encoder = tmp_path / "enc"
    argv[argv.index(str(out))] = str(encoder)
    assert main([*argv, "--panel-geometry", "encoder"]) == 0, capsys.readouterr().err
    panel = json.loads((encoder / "summary.json").read_text())["source"]["panel"]
    assert panel["geometry"] == "encoder" and panel["dims"] == 5
    assert panel["val_loss"] < panel["constant_loss"]
    assert "panel space (5-d) learned from" in (encoder / "report.md").read_text()
    combined = tmp_path / "both"  # the default where the items have embeddings
    argv[argv.index(str(encoder))] = str(combined)
    assert main(argv) == 0, capsys.readouterr().err
    panel = json.loads((combined / "summary.json").read_text())["source"]["panel"]
    assert panel["geometry"] == "combined" and panel["dims"] == 5 + 16
    assert panel["profile_dims"] == 5
    assert "panel profile and the topic together (21-d)" in (combined / "report.md").read_text()


def test_cli_combined_needs_item_embeddings(tmp_path, capsys):
    path, _ = long_table(tmp_path / "long.csv", n=30, emb_columns=False)
    argv = ["report", "--data", str(path), "--model", "target", "--out", str(tmp_path / "r")]
    assert main([*argv, "--panel-geometry", "combined"]) == 2
    err = capsys.readouterr().err
    assert "--panel-geometry combined: " in err and "has no item embeddings" in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_cli_panel_from_correctness_when_no_panel_confidence(tmp_path, capsys):
    path, _ = long_table(tmp_path / "long.csv", n=120, panel_conf=False)
    argv = ["report", "--data", str(path), "--model", "target", *CLI_FAST]
    code = main([*argv, "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and "--panel-outcome: no model besides the target gave a confidence" in err
    assert "Traceback" not in err and not (tmp_path / "a").exists()
    out = tmp_path / "b"
    assert main([*argv, "--out", str(out), "--panel-outcome", "correct"]) == 0
    panel = json.loads((out / "summary.json").read_text())["source"]["panel"]
    assert panel["outcome"] == "correct" and panel["models"] == 6
    assert "correctness" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--item-col", "item"], "--item-col: only with --data LONG_TABLE --model TARGET"),
        (["--panel-outcome", "correct"], "--panel-outcome: only with --data LONG_TABLE --model"),
        (["--panel-geometry", "encoder"], "--panel-geometry: only with --data LONG_TABLE"),
        (["--model", "target", "--text-col", "q"], "--text-col: "),
        (["--model", "nobody"], "--model: 'nobody' matches 0 of the 7 models"),
    ],
)
def test_cli_panel_errors_exit_2(tmp_path, capsys, extra, message):
    path, _ = long_table(tmp_path / "long.csv", n=30)
    code = main(["report", "--data", str(path), "--out", str(tmp_path / "r"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("miscal-jax: error: ") and message in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()
