import jax
import numpy as np
import pytest

from miscal_jax.model import out_of_fold
from miscal_jax.model.crossfit import crossfit
from miscal_jax.smoothing.nadaraya_watson import nw_field
from miscal_jax.stats.inference import (
    bootstrap_interval,
    grouping_loss_interval,
    heterogeneity_test,
    normal_interval,
    smooth_many,
    undersmoothed_field,
    within_bin_permutations,
)
from miscal_jax.synthetic.planted import make_planted


def test_smooth_many_equals_nw_field_columnwise():
    rng = np.random.default_rng(0)
    ref, query = rng.normal(size=(50, 3)), rng.normal(size=(17, 3))
    cols = rng.normal(size=(50, 4))
    many = np.asarray(smooth_many(query, ref, cols, 0.2, chunk_size=5))
    for b in range(4):
        np.testing.assert_allclose(
            many[:, b], nw_field(query, ref, cols[:, b], 0.2).value, rtol=1e-5, atol=1e-6
        )
    w = rng.random((50, 4))
    weighted = np.asarray(smooth_many(query, ref, cols, 0.2, ref_weights=w))
    d2 = ((query[:, None] - ref[None]) ** 2).sum(-1)
    k = np.exp(-0.5 * d2 / np.exp(0.4))
    want = (k @ (w * cols)) / (k @ w)
    np.testing.assert_allclose(weighted, want, rtol=1e-4)


def test_normal_interval():
    lo, hi = normal_interval(np.array([0.0, 0.9]), np.array([0.1, 0.2]), level=0.9)
    np.testing.assert_allclose(lo, [-0.16449, 0.57103], atol=1e-4)
    np.testing.assert_allclose(hi, [0.16449, 1.0], atol=1e-4)  # clipped to the residual range
    with pytest.raises(ValueError, match=r"level: must be in \(0, 1\)"):
        normal_interval(0.0, 0.1, level=1.5)


def test_bootstrap_intervals_never_collapse():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(40, 2))
    residual = np.full(40, 0.05)  # an all-correct neighbourhood at conf 0.95
    lo, hi = bootstrap_interval(jax.random.key(0), ref[:5], ref, residual, 0.0)
    assert np.all(np.asarray(hi - lo) > 0.01)
    assert np.all((np.asarray(lo) <= 0.05) & (np.asarray(hi) >= 0.05))


def test_bootstrap_interval_covers_mean_of_noisy_neighbourhood():
    rng = np.random.default_rng(1)
    hits, widths = 0, []
    for s in range(40):
        ref = rng.normal(size=(200, 1)) * 0.01
        residual = (rng.random(200) < 0.7).astype(float) - 0.5  # mean 0.2
        lo, hi = bootstrap_interval(
            jax.random.key(s), np.zeros((1, 1)), ref, residual, 0.0, num_samples=300
        )
        hits += float(lo[0]) <= 0.2 <= float(hi[0])
        widths.append(float(hi[0] - lo[0]))
    # nominal 90% of 40: Binomial(40, 0.9) lies in [30, 39] with probability 0.98
    assert 30 <= hits <= 39
    # and not by being wide: a 90% interval for a mean of 200 Bernoulli(0.7)
    # draws is 2 * 1.645 * sqrt(0.21 / 200) = 0.107 wide
    assert 0.085 < np.mean(widths) < 0.133, np.mean(widths)


@pytest.fixture(scope="module")
def fitted():
    out = {}
    for amp in (0.2, 0.0):
        d = make_planted(900, seed=5, amplitude=amp)
        res = crossfit(
            d.embeddings, d.conf, d.correct, folds=3, candidates=("raw",), progress=False
        )
        out[amp] = (d, res)
    return out


def test_heterogeneity_test_detects_and_keeps_null(fitted):
    d, res = fitted[0.2]
    het = heterogeneity_test(jax.random.key(0), res.model, num_permutations=60, batch=25)
    assert het.p_value <= 1 / 61 + 1e-6 and het.null.shape == (60,)
    _, res0 = fitted[0.0]
    het0 = heterogeneity_test(jax.random.key(0), res0.model, num_permutations=60)
    assert het0.p_value > 0.05


def test_heterogeneity_statistic_matches_loop(fitted):
    """The vectorised statistic equals a direct per-fold computation."""
    from miscal_jax._src.binning import bin_index as _bin_index
    from miscal_jax.geometry.spaces import embed

    d, res = fitted[0.2]
    het = heterogeneity_test(jax.random.key(0), res.model, num_permutations=1)
    r = d.correct - d.conf
    bins = np.asarray(_bin_index(d.conf, 10, "mass"))
    e = r - (np.bincount(bins, weights=r) / np.bincount(bins))[bins]
    total = 0.0
    for k, m in enumerate(res.models):
        te = res.fold == k
        z = embed(m.geometry, d.embeddings[te], d.conf[te])
        f = np.asarray(nw_field(z, m.ref_z, e[~te], m.geometry.log_bandwidth).value)
        total += np.sum(e[te] ** 2 - (e[te] - f) ** 2)
    assert float(het.statistic) == pytest.approx(total / len(r), rel=1e-3)


def test_heterogeneity_null_does_not_depend_on_batching(fitted):
    """Batches of 7 (padded) and of all 31 columns give the same statistics."""
    _, res = fitted[0.2]
    small = heterogeneity_test(jax.random.key(3), res.model, num_permutations=30, batch=7)
    whole = heterogeneity_test(jax.random.key(3), res.model, num_permutations=30, batch=100)
    np.testing.assert_allclose(small.null, whole.null, rtol=1e-4, atol=1e-7)
    assert float(small.statistic) == pytest.approx(float(whole.statistic), rel=1e-4)


def test_undersmoothed_field_matches_per_fold_loop(fitted):
    """Each item's value equals its own fold's smoother at half the bandwidth."""
    from miscal_jax.geometry.spaces import embed

    d, res = fitted[0.2]
    us = undersmoothed_field(res.model, factor=0.5)
    for k, m in enumerate(res.models):
        te = res.fold == k
        z = embed(m.geometry, d.embeddings[te], d.conf[te])
        ref = nw_field(z, m.ref_z, m.ref_residual, m.geometry.log_bandwidth + np.log(0.5))
        for got, want in zip(us, ref, strict=True):
            np.testing.assert_allclose(got[te], np.asarray(want), rtol=1e-3, atol=1e-5)
    same = undersmoothed_field(res.model, factor=1.0)
    np.testing.assert_allclose(same.value, res.field, atol=1e-5)


def test_grouping_loss_interval_and_undersmoothing(fitted):
    d, res = fitted[0.2]
    gl = grouping_loss_interval(jax.random.key(0), res.model, num_samples=200)
    assert 0 < gl.low <= gl.estimate <= gl.high
    # the out-of-fold field passed in is the one it computes otherwise
    given = grouping_loss_interval(
        jax.random.key(0), res.model, estimate=jax.jit(out_of_fold)(res.model)[0], num_samples=200
    )
    np.testing.assert_allclose(np.asarray(given), np.asarray(gl), rtol=1e-5)
    us = undersmoothed_field(res.model, factor=0.5)
    assert np.mean(us.se) > np.mean(res.field_se)
    with pytest.raises(ValueError, match="factor"):
        undersmoothed_field(res.model, factor=2.0)


@pytest.mark.slow
def test_heterogeneity_test_size_under_null():
    """40 null data sets (n = 600, raw geometry, 100 permutations), fitted and
    tested as one vmapped batch: the rejection rate at alpha = 0.05 is at most
    0.125 (binomial 97.5% bound for a true size of 0.05 with 40 draws). The
    200-simulation study is in benchmarks/inference_calibration.py."""
    import jax.numpy as jnp

    from miscal_jax.model import FitConfig, fit

    data = [make_planted(600, seed=500 + s, amplitude=0.0) for s in range(40)]
    x, p, y = (jnp.stack([getattr(d, a) for d in data]) for a in ("embeddings", "conf", "correct"))
    keys = jax.random.split(jax.random.key(0), 40)
    config = FitConfig(folds=3, candidates=("raw",))
    models, _ = jax.jit(jax.vmap(fit, in_axes=(0, 0, 0, 0, None)))(keys, x, p, y, config)
    het = heterogeneity_test(jax.random.key(1), models, num_permutations=100)
    rejections = int(jnp.sum(het.p_value <= 0.05))
    assert rejections / 40 <= 0.125, rejections


def test_within_bin_permutations_are_uniform_within_bins():
    """Bins {0, 2, 4} and {1, 3}: 3! * 2! = 12 permutations, each drawn 1/12 of the time."""
    bins = jax.numpy.array([0, 1, 0, 1, 0])
    perms = np.asarray(within_bin_permutations(jax.random.key(0), bins, jax.numpy.arange(6000)))
    assert np.all(np.asarray(bins)[perms] == np.asarray(bins))
    assert np.all(np.sort(perms, axis=1) == np.arange(5))
    _, counts = np.unique(perms, axis=0, return_counts=True)
    assert counts.size == 12
    # chi-square, 11 degrees of freedom: P(> 31.3) = 0.001
    chi2 = np.sum((counts - 500) ** 2 / 500)
    assert chi2 < 31.3, chi2
    # a column's draw does not depend on the columns drawn beside it
    one = within_bin_permutations(jax.random.key(0), bins, jax.numpy.array([17]))
    np.testing.assert_array_equal(np.asarray(one)[0], perms[17])


def test_statistics_take_a_batch_of_models(fitted):
    """A batch of two models gives each model's own test and interval (keys split)."""
    import jax.numpy as jnp

    from miscal_jax.model import select_model

    _, res = fitted[0.2]
    _, res0 = fitted[0.0]
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), res.model, res0.model)
    key = jax.random.key(4)
    het = heterogeneity_test(key, both, num_permutations=20)
    keys = jax.random.split(key, 2)
    for i in range(2):
        alone = heterogeneity_test(keys[i], select_model(both, i), num_permutations=20)
        np.testing.assert_allclose(np.asarray(het.null[i]), np.asarray(alone.null), rtol=1e-5)
    assert het.p_value.shape == (2,) and het.p_value[0] < het.p_value[1]
    gl = grouping_loss_interval(key, both, num_samples=50)
    assert gl.estimate.shape == (2,)
