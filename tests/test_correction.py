import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miscal_jax.correction import (
    CorrectionParams,
    fit_correction_params,
    fit_global,
    local_confidence,
)


def _inputs(seed=0, n=400):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.2, 0.95, n).astype(np.float32)
    field = rng.uniform(-0.15, 0.15, n).astype(np.float32)
    n_eff = rng.uniform(0, 50, n).astype(np.float32)
    return p, field, n_eff


def test_zero_field_or_no_support_is_identity():
    p, field, n_eff = _inputs()
    params = CorrectionParams(jnp.float32(0.0), jnp.log(10.0))
    np.testing.assert_allclose(local_confidence(params, p, 0 * field, n_eff), p, atol=1e-6)
    np.testing.assert_allclose(local_confidence(params, p, field, 0 * n_eff), p, atol=1e-6)


def test_full_support_adds_the_field():
    p, field, _ = _inputs()
    params = CorrectionParams(jnp.float32(0.0), jnp.float32(-30.0))  # no shrinkage
    out = local_confidence(params, p, field, np.full_like(p, 1e6))
    np.testing.assert_allclose(out, np.clip(p + field, 1e-4, 1 - 1e-4), atol=1e-5)


def test_jit_equals_no_jit_and_vmap_equals_loop():
    p, field, n_eff = _inputs()
    params = CorrectionParams(jnp.float32(0.2), jnp.float32(1.5))
    fast = jax.jit(local_confidence)(params, p, field, n_eff)
    with jax.disable_jit():
        slow = local_confidence(params, p, field, n_eff)
    np.testing.assert_allclose(fast, slow, rtol=1e-6)
    strengths = jnp.array([-1.0, 0.0, 0.5])
    f = lambda s: local_confidence(CorrectionParams(s, jnp.float32(1.5)), p, field, n_eff)
    np.testing.assert_allclose(jax.vmap(f)(strengths), jnp.stack([f(s) for s in strengths]))


def test_gradient_matches_finite_differences():
    p, field, n_eff = _inputs()
    y = (np.random.default_rng(1).random(len(p)) < p + field).astype(np.float32)

    def loss(v):
        out = local_confidence(CorrectionParams(v[0], v[1]), p, field, n_eff)
        return jnp.mean((out - y) ** 2)

    v = jnp.array([0.3, 1.2])
    g = jax.grad(loss)(v)
    eps = 1e-2
    for i in range(2):
        e = jnp.zeros(2).at[i].set(eps)
        fd = (loss(v + e) - loss(v - e)) / (2 * eps)
        np.testing.assert_allclose(g[i], fd, rtol=2e-2, atol=1e-6)


def test_fit_params_learns_strength():
    rng = np.random.default_rng(0)
    n = 4000
    p = rng.uniform(0.3, 0.8, n).astype(np.float32)
    field = np.where(rng.random(n) < 0.5, 0.15, -0.15).astype(np.float32)
    y = (rng.random(n) < p + field).astype(np.float32)
    params = fit_correction_params(p, field, np.full(n, 100.0), y)
    assert float(jnp.exp(params.log_strength)) == pytest.approx(1.0, abs=0.25)
    # pure-noise field: the fitted correction barely moves confidence
    noise = rng.uniform(-0.15, 0.15, n).astype(np.float32)
    y0 = (rng.random(n) < p).astype(np.float32)
    p0 = fit_correction_params(p, noise, np.full(n, 100.0), y0)
    moved = np.abs(np.asarray(local_confidence(p0, p, noise, np.full(n, 100.0))) - p)
    assert moved.mean() < 0.03


def test_fit_global_rejects_unknown():
    with pytest.raises(ValueError, match="global_method: expected 'isotonic' or 'temperature'"):
        fit_global([0.5], [1.0], method="beta")
