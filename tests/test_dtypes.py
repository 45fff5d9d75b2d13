"""One dtype policy, end to end: the default float dtype (float64 under x64),
half-precision inputs raised to it, integer and boolean outcomes converted."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import miscal_jax as mj
from miscal_jax._src.dtypes import float_dtype
from miscal_jax.synthetic.planted import make_planted

CONFIG = mj.FitConfig(folds=2, candidates=("raw",))


def _float_leaves(tree) -> set:
    return {str(a.dtype) for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)}


def _pipeline(x, p, y):
    model, info = jax.jit(mj.fit)(jax.random.key(0), x, p, y, CONFIG)
    return {
        "model": model,
        "info": info,
        "predict": mj.predict(model, x[:7], p[:7]),
        "out_of_fold": mj.out_of_fold(model),
        "heterogeneity": mj.heterogeneity_test(jax.random.key(1), model, num_permutations=5),
        "regimes": mj.discover_regimes(jax.random.key(2), model, num_simulations=50),
        "field": mj.nw_field(x[:7], x, y - p, 0.5),
        "loo": mj.loo_field(x, y - p, 0.5),
        "bandwidth": mj.select_bandwidth(x, y - p),
        "metrics": [
            mj.metrics.ece(p, y),
            mj.metrics.brier(p, y),
            mj.metrics.smooth_ece(p, y),
            mj.local_calibration_error(x, p, y, 0.5),
        ],
    }


@pytest.mark.slow
def test_everything_is_float64_under_x64():
    d = make_planted(200, seed=0)
    with jax.enable_x64(True):
        assert float_dtype() == jnp.float64
        # float32 inputs (the harder case: they must be raised, not followed)
        x, p = d.embeddings.astype(np.float32), d.conf.astype(np.float32)
        out = _pipeline(x, p, d.correct.astype(np.float32))
        for name, value in out.items():
            assert _float_leaves(value) == {"float64"}, (name, _float_leaves(value))


def test_float64_is_computed_in_float64_not_cast_at_the_end():
    """Under x64 the smoother equals a float64 NumPy reference to 1e-13 (measured
    1e-16); the float32 run is off by about 5e-8."""
    rng = np.random.default_rng(0)
    ref, query = rng.normal(size=(300, 4)), rng.normal(size=(20, 4))
    residual = rng.normal(size=300)
    d2 = ((query[:, None] - ref[None]) ** 2).sum(-1)
    w = np.exp(-0.5 * d2 / np.exp(2 * 0.3))
    want = (w @ residual) / w.sum(1)
    with jax.enable_x64(True):
        got = np.asarray(mj.nw_field(query, ref, residual, 0.3).value)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)
    single = np.asarray(mj.nw_field(query, ref, residual, 0.3).value)
    assert np.max(np.abs(single - want)) > 1e-10


@pytest.mark.slow
def test_half_precision_and_integer_inputs_give_float32_results():
    d = make_planted(200, seed=1)
    x = jnp.asarray(d.embeddings, jnp.bfloat16)
    p = jnp.asarray(d.conf, jnp.float16)
    y = jnp.asarray(d.correct, jnp.int32)
    out = _pipeline(x, p, y)
    for name, value in out.items():
        assert _float_leaves(value) <= {"float32"}, (name, _float_leaves(value))
    # and the field matches the float32 run's closely (only the inputs were rounded)
    exact = _pipeline(d.embeddings, d.conf, d.correct)
    corr = np.corrcoef(out["out_of_fold"][0].value, exact["out_of_fold"][0].value)[0, 1]
    assert corr > 0.95, corr
