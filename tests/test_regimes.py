import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miscal_jax.stats.regimes import assign_regimes, benjamini_hochberg, discover_regimes, kmeans
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


@pytest.mark.parametrize("seed", range(3))
def test_finds_planted_regions_with_right_signs(seed):
    d = make_planted(3000, seed=seed, amplitude=0.15)
    regimes, model = discover_regimes(d.embeddings, d.conf, d.correct, seed=seed)
    assert 2 <= len(regimes) <= 8
    assigned = assign_regimes(model, d.embeddings)
    for r in regimes:
        members = assigned == r.id
        planted = d.region_sign[d.region[members]]
        want = 1 if r.sign == "under" else -1
        assert np.mean(planted == want) > 0.7  # precision of the sign
        assert r.p_adjusted <= 0.1 and r.ci_low <= r.mean_residual <= r.ci_high
        assert len(r.examples) == 5


def test_reports_nothing_on_most_null_data():
    found = sum(
        len(discover_regimes(*make_planted(1000, seed=s, amplitude=0.0)[:3], seed=s)[0]) > 0
        for s in range(10)
    )
    assert found <= 3  # nominal FDR 0.1: expect about 1 of 10


def test_all_correct_data_gives_no_regimes_and_finite_output():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    regimes, model = discover_regimes(x, rng.random(400), np.ones(400))
    # residual 1 - conf depends on confidence only: nothing beyond it to find
    assert regimes == []
    assert np.all(assign_regimes(model, x) == -1)


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
