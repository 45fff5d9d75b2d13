"""The README's "differentiable in" table, checked: nonzero where it says so, zero where not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import miscal_jax as mj

D = mj.make_planted(600, seed=4)
EMB, CONF, CORRECT = (jnp.asarray(a) for a in (D.embeddings, D.conf, D.correct))


def _nonzero(tree):
    leaves = jax.tree.leaves(tree)
    return all(np.all(np.isfinite(a)) for a in leaves) and all(np.any(a != 0) for a in leaves)


def test_kernel_sums_and_fields_are_differentiable_in_points_values_and_bandwidth():
    def moments(q, z, v, lb):
        m = mj.kernel_moments(q, z, v, lb)
        return jnp.sum(m.sum_wv[:, 0] / m.sum_w) + jnp.sum(m.sum_w2 / m.sum_w**2)

    args = (EMB[:50], EMB, (CORRECT - CONF)[:, None], jnp.float32(0.5))
    assert _nonzero(jax.grad(moments, argnums=(0, 1, 2, 3))(*args))
    field = lambda q, z, r, lb: mj.nw_field(q, z, r, lb)
    cases = {  # output: the arguments (query, ref, residual, bandwidth) it moves with
        "value": (lambda *a: field(*a).value.sum(), (0, 1, 2, 3)),
        "se": (lambda *a: field(*a).se.sum(), (0, 1, 2, 3)),
        "n_eff": (lambda *a: field(*a).n_eff.sum(), (0, 1, 3)),
        "loo value": (lambda q, z, r, lb: mj.loo_field(z, r, lb).value.sum(), (1, 2, 3)),
    }
    for name, (fn, moving) in cases.items():
        grads = jax.grad(fn, argnums=moving)(EMB[:50], EMB, CORRECT - CONF, 0.5)
        assert _nonzero(grads), name


def test_penalty_reaches_conf_and_the_geometry_only_on_request():
    f = lambda z, c, lb, stop: mj.local_calibration_penalty(z, c, CORRECT, lb, stop_geometry=stop)
    g_z, g_c, g_lb = jax.grad(f, argnums=(0, 1, 2))(EMB, CONF, 0.0, True)
    assert np.any(g_c != 0) and np.all(g_z == 0) and g_lb == 0
    assert _nonzero(jax.grad(f, argnums=(0, 1, 2))(EMB, CONF, 0.0, False))


@pytest.mark.slow
def test_predict_field_in_the_embeddings_corrected_conf_only_without_isotonic_maps():
    key = jax.random.key(0)
    iso = mj.FitConfig(folds=2, candidates=("raw",), global_method="isotonic")
    smooth = mj.FitConfig(
        folds=2, candidates=("raw",), global_method="temperature", final_recalibration=False
    )
    x, c = EMB[:20] + 0.01, CONF[:20]
    for config, conf_moves in ((iso, False), (smooth, True)):
        model, _ = mj.fit(key, EMB, CONF, CORRECT, config)
        field = lambda x, m=model: mj.predict(m, x, c)[0].value.sum()
        corrected = lambda x, c, m=model: mj.predict(m, x, c)[1].sum()
        d_field = jax.grad(field)(x)
        d_x, d_c = jax.grad(corrected, argnums=(0, 1))(x, c)
        assert _nonzero(d_field) and _nonzero(d_x)
        assert bool(np.any(d_c != 0)) == conf_moves, config
