import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miscal_jax.geometry.encoder import (
    EncoderConfig,
    batch_loo_loss,
    fit_encoder,
    heldout_loss,
    init_train_state,
    train_step,
)
from miscal_jax.geometry.spaces import GEOMETRIES, TRAINED, embed, fit_geometry
from miscal_jax.smoothing.nadaraya_watson import loo_field
from miscal_jax.synthetic.planted import make_planted

CFG = EncoderConfig(out_dim=4, batch_size=128, max_steps=120, eval_every=20)


def _xy(n=600, seed=0):
    d = make_planted(n, seed=seed, signal_dim=4, num_clusters=3)
    return d.embeddings, d.correct - d.conf


def test_batch_loss_equals_loo_smoother():
    x, r = _xy(200)
    state = init_train_state(jax.random.key(0), x, CFG)
    loss = batch_loo_loss(
        state.params, state.apply_fn, jnp.asarray(x), jnp.asarray(r), kernel="gaussian"
    )
    z = state.apply_fn({"params": state.params["encoder"]}, x)
    ref = loo_field(z, r, state.params["log_bandwidth"])
    np.testing.assert_allclose(loss, np.mean((r - np.asarray(ref.value)) ** 2), rtol=1e-4)


def test_train_step_reduces_batch_loss_and_gradients_finite():
    x, r = _xy()
    state = init_train_state(jax.random.key(1), x, CFG)
    xb, rb = jnp.asarray(x[:256]), jnp.asarray(r[:256])
    grads = jax.grad(batch_loo_loss)(state.params, state.apply_fn, xb, rb, kernel="gaussian")
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    step = jax.jit(train_step, static_argnames=("kernel",))
    first = None
    for _ in range(60):
        state, metrics = step(state, xb, rb)
        first = metrics["loss"] if first is None else first
    assert float(metrics["loss"]) < float(first)
    assert int(state.step) == 60


def test_fit_encoder_keeps_best_and_stops_after_patience():
    x, r = _xy()
    fit = np.arange(600) < 400
    # a large learning rate overfits quickly: validation loss rises, training must stop
    cfg = CFG.replace(learning_rate=0.3, max_steps=2000, eval_every=10, patience=3)
    state, hist = jax.jit(fit_encoder)(jax.random.key(0), x, r, fit, ~fit, cfg)
    val = np.asarray(hist["val_loss"])
    run = val[~np.isnan(val)]
    assert int(hist["steps"]) < cfg.max_steps  # stopped early
    assert int(hist["steps"]) == (run.size - 1) * cfg.eval_every
    best = int(np.argmin(run))
    # stopped exactly `patience` evaluations after the best one
    assert run.size - 1 - best == cfg.patience
    assert float(hist["best_val_loss"]) == pytest.approx(float(run.min()))
    # the returned parameters are the best ones: their validation loss is the minimum
    again = heldout_loss(state.params, state.apply_fn, x, r, fit, ~fit, kernel="gaussian")
    assert float(again) == pytest.approx(float(run.min()), rel=1e-5)
    assert np.isfinite(float(hist["constant_loss"]))


def test_fit_encoder_masks_equal_slices():
    x, r = _xy(300)
    fit = np.arange(300) < 200
    val = (np.arange(300) >= 200) & (np.arange(300) < 260)
    cfg = CFG.replace(max_steps=40)
    _, h1 = fit_encoder(jax.random.key(3), x, r, fit, val, cfg)
    # rows outside both masks must not matter
    x2, r2 = x.copy(), r.copy()
    x2[260:] = 1e3
    r2[260:] = 1.0
    _, h2 = fit_encoder(jax.random.key(3), x2, r2, fit, val, cfg)
    np.testing.assert_allclose(h1["val_loss"], h2["val_loss"], rtol=1e-5)
    # gathering the 60 validation rows (padded to 70) changes nothing
    _, h3 = jax.jit(fit_encoder, static_argnames=("config", "val_size"))(
        jax.random.key(3), x, r, fit, val, config=cfg, val_size=70
    )
    np.testing.assert_allclose(h1["val_loss"], h3["val_loss"], rtol=1e-5)


@pytest.mark.slow
def test_fit_geometry_each_kind_and_one_standard_error_rule():
    d = make_planted(900, seed=2)
    r = d.correct - d.conf
    for kind in GEOMETRIES:
        g, loo, info = fit_geometry(
            jax.random.key(0), d.embeddings, d.conf, r, candidates=(kind,), config=CFG
        )
        assert g.kind == kind
        z = embed(g, d.embeddings, d.conf)
        assert z.shape[0] == 900 and np.all(np.isfinite(np.asarray(z)))
        # the returned estimate is the leave-one-out smoother in the chosen space
        ref = loo_field(z, r, g.log_bandwidth)
        np.testing.assert_allclose(loo.value, ref.value, rtol=1e-4, atol=1e-5)
        # honest rows: every row for a fixed space; for a trained one only the
        # rows outside its fit part (split 0.7 / 0.15: 30% of them)
        honest = np.asarray(info["honest"])
        if kind == "linear":  # the chosen start's rank survives training (zero columns stay zero)
            used = np.any(np.asarray(g.params[0]["directions"]) != 0.0, axis=0)
            assert used.sum() == int(info["encoder"][0]["rank"]) and used[0]
        if kind in TRAINED:
            assert 0.25 < honest.mean() < 0.35
        else:
            assert honest.all()
    g, loo, info = jax.jit(fit_geometry, static_argnames=("candidates", "config"))(
        jax.random.key(0), d.embeddings, d.conf, r, candidates=GEOMETRIES, config=CFG
    )
    held = np.asarray(info["held_error"])
    fixed = [k for k, kind in enumerate(GEOMETRIES) if kind not in TRAINED]
    # a trained space is used only if it beats the fixed spaces on items it never saw
    if g.kind in TRAINED:
        assert held[GEOMETRIES.index(g.kind)] < min(held[fixed])
    # the geometry is a pytree: it goes through jit
    z_jit = jax.jit(embed)(g, d.embeddings, d.conf)
    np.testing.assert_allclose(z_jit, embed(g, d.embeddings, d.conf), rtol=1e-5, atol=1e-5)


def test_choose_prefers_raw_unless_clearly_beaten():
    from miscal_jax.geometry.spaces import _choose

    rng = np.random.default_rng(0)
    base = rng.random(400)
    train = np.ones(400, bool)
    tiny = np.stack([base, base - 1e-4 + 0.05 * rng.normal(size=400)])  # raw, pca
    assert int(_choose(jnp.asarray(tiny), train, train, ("raw", "pca"))) == 0
    clear = np.stack([base, base - 0.1])
    assert int(_choose(jnp.asarray(clear), train, train, ("raw", "pca"))) == 1


def test_choose_judges_trained_spaces_on_held_items_only():
    from miscal_jax.geometry.spaces import _choose

    base = np.random.default_rng(1).random(400)
    train = np.ones(400, bool)
    held = np.arange(400) >= 300
    # the learned space is far better on the items it was fitted on, worse elsewhere
    learned = np.where(held, base + 0.1, base - 0.5)
    errors = jnp.asarray(np.stack([base, learned]))
    assert int(_choose(errors, train, jnp.asarray(held), ("raw", "learned"))) == 0
    errors = jnp.asarray(np.stack([base, base - 0.1]))
    assert int(_choose(errors, train, jnp.asarray(held), ("raw", "learned"))) == 1


def test_embed_computes_only_the_chosen_space():
    """A conditional on the choice (not every candidate stacked), equal to each candidate alone."""
    from miscal_jax.geometry.spaces import embed_folds

    d = make_planted(300, seed=3)
    r = d.correct - d.conf
    g, _, _ = fit_geometry(
        jax.random.key(0), d.embeddings, d.conf, r, candidates=("raw", "std", "pca"), config=CFG
    )
    x, p = d.embeddings, d.conf
    jaxpr = str(jax.make_jaxpr(embed)(g, x, p))
    assert "cond[" in jaxpr and "concatenate" not in jaxpr
    for k in range(3):
        gk = g.replace(choice=jnp.asarray(k))
        alone = embed(gk.replace(candidates=(g.candidates[k],), choice=jnp.asarray(0)), x, p)
        np.testing.assert_allclose(embed(gk, x, p)[:, : alone.shape[1]], alone, rtol=1e-6)
    # folds: one chosen space each, sequentially, equal to embedding fold by fold
    folds = jax.tree.map(
        lambda *a: jnp.stack(a), *(g.replace(choice=jnp.asarray(k)) for k in (2, 0))
    )
    z = embed_folds(folds, x, p)
    np.testing.assert_allclose(z[0], embed(g.replace(choice=jnp.asarray(2)), x, p), rtol=1e-6)
    np.testing.assert_allclose(z[1], embed(g.replace(choice=jnp.asarray(0)), x, p), rtol=1e-6)


def test_gathered_training_rows_equal_the_masked_smoother():
    """train_size: the training rows alone, smoothed against each other (no masked pairs)."""
    d = make_planted(700, seed=4, amplitude=0.3)
    r = d.correct - d.conf
    train = np.arange(700) % 5 != 2  # one fold held out: 560 training rows
    kw = dict(candidates=("raw", "pca", "linear"), config=CFG)  # linear: gathered stop rows
    key = jax.random.key(0)
    masked, _, masked_info = fit_geometry(key, d.embeddings, d.conf, r, train, **kw)
    size = 600  # the 560 training rows, padded
    g, loo, info = fit_geometry(key, d.embeddings, d.conf, r, train, train_size=size, **kw)
    z = embed(g, d.embeddings, d.conf)
    ref = loo_field(z, r, g.log_bandwidth, ref_mask=train)  # all rows, masked references
    np.testing.assert_allclose(loo.value[train], ref.value[train], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loo.n_eff[train], ref.n_eff[train], rtol=1e-4)
    assert not np.asarray(loo.value)[~train].any()  # held-out rows are not computed
    assert int(g.choice) == int(masked.choice)
    np.testing.assert_array_equal(info["honest"], masked_info["honest"])
    np.testing.assert_allclose(info["select_error"], masked_info["select_error"], rtol=1e-4)
