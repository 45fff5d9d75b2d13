import jax
import jax.numpy as jnp
import numpy as np

from miscal_jax.geometry import GEOMETRIES, embed, fit_geometry
from miscal_jax.representation import (
    EncoderConfig,
    batch_loo_loss,
    fit_encoder,
    init_train_state,
    train_step,
)
from miscal_jax.smoother import loo_field
from miscal_jax.synthetic import make_planted

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


def test_fit_encoder_early_stops_and_reports_history():
    x, r = _xy()
    state, hist = fit_encoder(
        jax.random.key(0), x[:400], r[:400], x[400:], r[400:], CFG, progress=False
    )
    assert hist["step"][0] == 0 and len(hist["val_loss"]) == len(hist["step"])
    assert hist["best_val_loss"] == min(hist["val_loss"])
    assert np.isfinite(hist["constant_loss"])


def test_fit_geometry_returns_each_kind_and_picks_lowest_error():
    d = make_planted(900, seed=2)
    r = d.correct - d.conf
    for kind in GEOMETRIES:
        g, info = fit_geometry(
            jax.random.key(0),
            d.embeddings,
            d.conf,
            r,
            candidates=(kind,),
            config=CFG,
            progress=False,
        )
        assert g.kind == kind and info["chosen"] == kind
        z = embed(g, d.embeddings, d.conf)
        assert z.shape[0] == 900 and np.all(np.isfinite(np.asarray(z)))
    g, info = fit_geometry(jax.random.key(0), d.embeddings, d.conf, r, config=CFG, progress=False)
    assert info["chosen"] == min(info["select_error"], key=info["select_error"].get)
    # the geometry is a pytree: it goes through jit
    z_jit = jax.jit(embed)(g, d.embeddings, d.conf)
    np.testing.assert_allclose(z_jit, embed(g, d.embeddings, d.conf), rtol=1e-5, atol=1e-5)
