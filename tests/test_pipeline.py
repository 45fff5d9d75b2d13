"""fit -> heterogeneity_test -> discover_regimes -> predict as one jitted program,
for one model and vmapped over eight (the README's script)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import miscal_jax as mj

CONFIG = mj.FitConfig(folds=3, candidates=("raw",))


def analyse(key, x, p, y, new_x, new_p):
    k_fit, k_test, k_regimes = jax.random.split(key, 3)
    model, _ = mj.fit(k_fit, x, p, y, CONFIG)
    het = mj.heterogeneity_test(k_test, model, num_permutations=40)
    regimes = mj.discover_regimes(k_regimes, model, num_simulations=500)
    _, corrected = mj.predict(model, new_x, new_p)
    return model, het, regimes, corrected


@pytest.fixture(scope="module")
def world():
    d = mj.make_planted(900, seed=3, amplitude=0.2)
    x, new_x = d.embeddings[:800], d.embeddings[800:]
    shifts = jnp.linspace(-0.1, 0.1, 8)
    confs = jnp.clip(jnp.asarray(d.conf)[None, :] + shifts[:, None], 0.01, 0.99)
    rng = np.random.default_rng(0)
    truth = np.clip(np.asarray(d.conf) + np.asarray(d.field), 0, 1)
    corrects = jnp.asarray(rng.random((8, 900)) < truth, jnp.float32)
    return x, new_x, confs, corrects


@pytest.mark.slow
def test_one_jit_for_one_model_and_for_a_batch_of_eight(world, tmp_path):
    x, new_x, confs, corrects = world
    keys = jax.random.split(jax.random.key(0), 8)
    run = jax.jit(analyse)
    many = jax.jit(jax.vmap(analyse, in_axes=(0, None, 0, 0, None, 0)))
    models, het, regimes, corrected = many(
        keys, x, confs[:, :800], corrects[:, :800], new_x, confs[:, 800:]
    )
    assert het.p_value.shape == (8,) and regimes.valid.shape == (8, 8)
    assert corrected.shape == (8, 100) and mj.model.num_models(models) == 8
    # the planted field is strong: every model's heterogeneity is detected
    assert np.all(np.asarray(het.p_value) <= 1 / 41 + 1e-6)
    assert np.all(np.asarray(regimes.count) >= 1)
    # model i of the batch is the single-model program's model i; the second
    # model of the same shapes reuses the compiled program
    sizes = []
    for i in (0, 5):
        one = run(keys[i], x, confs[i, :800], corrects[i, :800], new_x, confs[i, 800:])
        sizes.append(run._cache_size())
        np.testing.assert_allclose(one[3], corrected[i], atol=1e-5)
        np.testing.assert_allclose(one[1].null, het.null[i], rtol=1e-4, atol=1e-7)
        assert int(one[2].count) == int(regimes.count[i])
        np.testing.assert_array_equal(one[2].members, regimes.members[i])
    assert sizes[0] == sizes[1]
    # the batch saved and loaded predicts bit for bit the same
    mj.save(models, tmp_path / "batch.msgpack")
    loaded = mj.load(tmp_path / "batch.msgpack")
    for a, b in zip(jax.tree.leaves(models), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    again = mj.predict(loaded, new_x, confs[0, 800:])[1]
    np.testing.assert_array_equal(
        np.asarray(again), np.asarray(mj.predict(models, new_x, confs[0, 800:])[1])
    )
