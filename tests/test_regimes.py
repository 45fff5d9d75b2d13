import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miscal_jax.model import FitConfig, fit
from miscal_jax.stats.regimes import (
    _benjamini_hochberg_masked,
    assign_regimes,
    benjamini_hochberg,
    discover_regimes,
    kmeans,
)
from miscal_jax.synthetic.planted import make_planted


def test_benjamini_hochberg_matches_definition():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5])
    adj = benjamini_hochberg(p)
    # sorted: .005 .01 .03 .04 .5 -> *5/rank: .025 .025 .05 .05 .5
    np.testing.assert_allclose(adj, [0.025, 0.05, 0.05, 0.025, 0.5])
    assert benjamini_hochberg([]).size == 0


def test_kmeans_separates_clear_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
    x = np.concatenate([c + rng.normal(size=(50, 2)) for c in centres]).astype(np.float32)
    cents, labels = kmeans(jax.random.key(0), jnp.asarray(x), k=3)
    labels = np.asarray(labels)
    for i in range(3):
        assert len(set(labels[i * 50 : (i + 1) * 50])) == 1
    assert len(set(labels)) == 3


def _fit(x, p, y, key=0):
    """A cheap model of the data (two folds, raw geometry): regimes need its items only."""
    config = FitConfig(folds=2, candidates=("raw",))
    return _jit_fit(jax.random.key(key), x, p, y, config)[0]


_jit_fit = jax.jit(fit)


def test_masked_benjamini_hochberg_equals_the_host_one_on_the_tested():
    rng = np.random.default_rng(0)
    p, tested = rng.random(30) ** 3, rng.random(30) < 0.6
    got = np.asarray(_benjamini_hochberg_masked(jnp.asarray(p), jnp.asarray(tested)))
    np.testing.assert_allclose(got[tested], benjamini_hochberg(p[tested]), rtol=1e-6)
    assert np.all(got[~tested] == 1.0)


@pytest.mark.parametrize("seed", range(3))
def test_finds_planted_regions_with_right_signs(seed):
    d = make_planted(3000, seed=seed, amplitude=0.15)
    found = discover_regimes(jax.random.key(seed), _fit(d.embeddings, d.conf, d.correct))
    regimes = found.as_list()
    assert 2 <= len(regimes) <= 8
    precision, members = 0, 0
    for r in regimes:
        planted = d.region_sign[d.region[r.members]]
        want = 1 if r.sign == "under" else -1
        # a regime never lies mostly in planted regions of the other sign
        assert np.mean(planted == -want) < 0.3
        precision, members = precision + np.sum(planted == want), members + planted.size
        assert r.p_adjusted <= 0.1 and r.ci_low <= r.mean_residual <= r.ci_high
        assert len(r.examples) == 5 and set(r.examples) <= set(r.members)
        assert r.size == np.sum(np.asarray(found.evaluation)[r.members])
    assert precision / members > 0.75
    # assignment: each item goes to the first regime among those holding it
    assigned = np.asarray(assign_regimes(found, d.embeddings))
    holding = np.asarray(found.members)[: len(regimes)]
    first = np.where(holding.any(0), np.argmax(holding, 0), -1)
    np.testing.assert_array_equal(assigned, first)


@pytest.mark.slow
def test_false_discoveries_under_the_null():
    """40 null data sets, fitted and searched as one vmapped batch: nominal FDR
    0.1 bounds the chance of any discovery by 0.1 under the global null, so at
    most 9 of 40 (P(Binomial(40, 0.1) >= 10) = 0.005)."""
    data = [make_planted(1000, seed=700 + s, amplitude=0.0) for s in range(40)]
    x, p, y = (jnp.stack([getattr(d, a) for d in data]) for a in ("embeddings", "conf", "correct"))
    config = FitConfig(folds=2, candidates=("raw",))
    keys = jax.random.split(jax.random.key(0), 40)
    models, _ = jax.jit(jax.vmap(fit, in_axes=(0, 0, 0, 0, None)))(keys, x, p, y, config)
    found = jax.jit(discover_regimes)(jax.random.key(1), models)
    assert found.valid.shape == (40, 8)
    assert int(jnp.sum(found.count > 0)) <= 9, np.asarray(found.count)


def test_all_correct_data_gives_no_regimes_and_finite_output():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)).astype(np.float32)
    found = discover_regimes(jax.random.key(0), _fit(x, rng.random(400), np.ones(400)))
    # residual 1 - conf depends on confidence only: nothing beyond it to find
    assert found.as_list() == [] and int(found.count) == 0
    assert np.all(np.asarray(assign_regimes(found, x)) == -1)
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(found))


def test_too_few_items_for_any_clustering_report_nothing():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    found = discover_regimes(jax.random.key(0), _fit(x, rng.random(60), rng.random(60) < 0.5))
    assert int(found.count) == 0 and found.members.shape == (8, 60)


def test_kmeans_capacity_shares_one_program_with_the_same_result():
    """k = 3 in 8 slots gives the k = 3 clustering; k above the capacity is refused."""
    x = jnp.asarray(np.random.default_rng(1).normal(size=(300, 4)), jnp.float32)
    exact = kmeans(jax.random.key(5), x, k=3)
    roomy = kmeans(jax.random.key(5), x, k=3, max_k=8)
    np.testing.assert_array_equal(np.asarray(exact[1]), np.asarray(roomy[1]))
    np.testing.assert_allclose(np.asarray(exact[0]), np.asarray(roomy[0]), rtol=1e-6)
    assert roomy[0].shape == (3, 4)
    with pytest.raises(ValueError, match="k: expected"):
        kmeans(jax.random.key(5), x, k=9, max_k=8)
