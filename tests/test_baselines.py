import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from miscal_jax.calibrators import global_maps as B

GRID = np.linspace(-0.1, 1.1, 121)

# (fit, apply, extra static kwargs) for every confidence-only map
FITS = {
    "temperature": (B.fit_temperature, B.apply_temperature, {}),
    "platt": (B.fit_platt, B.apply_platt, {}),
    "isotonic": (B.fit_isotonic, B.apply_isotonic, {}),
    "histogram": (B.fit_histogram, B.apply_histogram, {"num_bins": 10}),
}


def _data(seed, n, ties=False):
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    if ties:  # verbalised confidences: few distinct values
        x = np.round(x, 1)
    y = (rng.random(n) < x**2).astype(float)
    return x, y


@pytest.mark.parametrize("seed", range(6))
def test_isotonic_matches_sklearn(seed):
    # float64 (locally, via the context manager), ties on odd seeds, weights
    # (including zeros) on seeds >= 2, queries outside the data (clipping)
    rng = np.random.default_rng(seed)
    x, y = _data(seed, 500, ties=seed % 2 == 1)
    w = rng.integers(0, 4, 500).astype(float) if seed >= 2 else None
    if seed >= 4:
        w = w * rng.uniform(0.1, 2.0, 500)  # non-integer weights
    query = np.r_[rng.uniform(-0.2, 1.2, size=300), x[:50]]
    with jax.enable_x64(True):
        state = B.fit_isotonic(x, y, w)
        ours = np.asarray(B.apply_isotonic(state, query))
        assert state.knots_x.dtype == np.float64
    ref = IsotonicRegression(out_of_bounds="clip").fit(x, y, sample_weight=w)
    np.testing.assert_allclose(ours, ref.predict(query), rtol=0, atol=1e-6)
    assert int(state.num_knots) == np.unique(x if w is None else x[w > 0]).size


def test_isotonic_state_has_static_padded_size():
    x, y = _data(0, 300, ties=True)
    state = B.fit_isotonic(x, y)
    assert state.knots_x.shape == state.knots_y.shape == (512,)  # 300 padded to 2 * FIT_PAD
    k = int(state.num_knots)
    assert k == 11
    np.testing.assert_array_equal(state.knots_x[k:], state.knots_x[k - 1])
    np.testing.assert_array_equal(state.knots_y[k:], state.knots_y[k - 1])
    assert B.fit_isotonic(x, y, max_knots=64).knots_x.shape == (64,)


def test_isotonic_exact_when_distinct_values_fit_in_max_knots():
    # more rows than knots but few distinct confidences: no binning, still exact
    x, y = _data(1, 2000, ties=True)
    with jax.enable_x64(True):
        ours = np.asarray(B.apply_isotonic(B.fit_isotonic(x, y, max_knots=16), GRID))
    ref = IsotonicRegression(out_of_bounds="clip").fit(x, y).predict(GRID)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_isotonic_bins_to_max_knots_quantiles():
    x, y = _data(2, 4000)
    state = B.fit_isotonic(x, y, max_knots=256)
    assert state.knots_x.shape == (256,) and int(state.num_knots) <= 256
    assert np.all(np.diff(np.asarray(state.knots_x)) >= 0)
    assert np.all(np.diff(np.asarray(state.knots_y)) >= 0)
    # each bin holds about 4000 / 256 rows; the map stays close to the exact one
    ours = np.asarray(B.apply_isotonic(state, x))
    ref = IsotonicRegression(out_of_bounds="clip").fit(x, y).predict(x)
    assert np.mean(np.abs(ours - ref)) < 0.01
    # the weighted mean outcome is kept by the binning and by PAV
    np.testing.assert_allclose(np.mean(ours), y.mean(), atol=0.01)


def test_isotonic_monotone_and_degenerate():
    state = B.fit_isotonic(np.full(50, 0.7), np.ones(50))
    np.testing.assert_allclose(B.apply_isotonic(state, [0.1, 0.7, 0.9]), 1.0)
    rng = np.random.default_rng(0)
    s = B.fit_isotonic(rng.random(200), rng.random(200) < 0.5)
    assert np.all(np.diff(np.asarray(s.knots_y)) >= 0)
    # nothing selected: the constant map 0.5, no NaN
    empty = B.fit_isotonic(rng.random(20), rng.random(20) < 0.5, np.zeros(20))
    np.testing.assert_allclose(B.apply_isotonic(empty, [0.1, 0.9]), 0.5)


def test_temperature_recovers_known_temperature():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, size=20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-true_logit))).astype(float)
    reported = 1 / (1 + np.exp(-2.0 * true_logit))  # overconfident by T = 2
    state = B.fit_temperature(reported, y)
    assert float(np.exp(state.log_temperature)) == pytest.approx(2.0, rel=0.05)
    out = np.asarray(B.apply_temperature(state, reported))
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-true_logit)), atol=0.03)


def test_platt_matches_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.95, 3000)
    y = (rng.random(3000) < p**1.5).astype(float)
    ours = B.fit_platt(p, y)
    z = np.log(p / (1 - p))[:, None]
    lr = LogisticRegression(C=1e9).fit(z, y)
    assert float(ours.slope) == pytest.approx(lr.coef_[0, 0], rel=1e-3)
    assert float(ours.intercept) == pytest.approx(lr.intercept_[0], abs=1e-3)


def test_histogram_binning_bin_means():
    p = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 0.95])
    y = np.array([0, 0, 1, 1, 1, 0])
    s = B.fit_histogram(p, y, num_bins=2)
    np.testing.assert_allclose(B.apply_histogram(s, [0.15, 0.9]), [1 / 3, 2 / 3], rtol=1e-6)


def _numpy_histogram(x, y, num_bins):
    """The NumPy reference: equal-mass edges by np.quantile, bin means, empty -> mid."""
    edges = np.quantile(x, np.linspace(0, 1, num_bins + 1))
    edges[0], edges[-1] = 0.0, 1.0
    edges = np.maximum.accumulate(edges)
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, num_bins - 1)
    counts = np.bincount(idx, minlength=num_bins)
    sums = np.bincount(idx, weights=y, minlength=num_bins)
    mids = 0.5 * (edges[:-1] + edges[1:])
    return edges, np.where(counts > 0, sums / np.maximum(counts, 1), mids)


@pytest.mark.parametrize("n, ties, num_bins", [(7, False, 3), (3001, True, 15), (2400, False, 15)])
def test_histogram_matches_numpy_reference(n, ties, num_bins):
    x, y = _data(3, n, ties)
    edges, values = _numpy_histogram(x, y, num_bins)
    s = B.fit_histogram(x, y, num_bins=num_bins)
    np.testing.assert_allclose(s.bin_edges, edges, atol=1e-6)
    np.testing.assert_allclose(s.bin_values, values, atol=1e-6)


def test_logit_finite_at_ends():
    assert np.all(np.isfinite(np.asarray(B.logit(np.array([0.0, 1.0, 0.5])))))


def _assert_tree_close(a, b, **tol):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, **tol), a, b)


@pytest.mark.parametrize("name", FITS)
def test_jit_equals_eager(name):
    """The fits are jitted inside; ``disable_jit`` runs them op by op, their
    loops (PAV's while loop, Newton steps) as Python loops: a different path."""
    fit, _, kw = FITS[name]
    x, y = _data(4, 300, ties=True)
    w = (np.arange(300) % 3 > 0).astype(float)
    jitted = jax.jit(lambda c, t, m: fit(c, t, m, **kw))(x, y, w)
    with jax.disable_jit():
        eager = fit(x, y, w, **kw)
    _assert_tree_close(jitted, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", FITS)
def test_vmap_over_eight_fits_equals_loop(name):
    fit, apply, kw = FITS[name]
    pairs = [_data(seed, 200, ties=seed % 2 == 0) for seed in range(8)]
    conf = np.stack([p[0] for p in pairs])
    correct = np.stack([p[1] for p in pairs])
    batched = jax.vmap(lambda c, t: fit(c, t, **kw))(conf, correct)
    for i in range(8):
        one = fit(conf[i], correct[i], **kw)
        _assert_tree_close(jax.tree.map(lambda a, i=i: a[i], batched), one, rtol=1e-4, atol=1e-5)
    out = jax.vmap(apply, in_axes=(0, None))(batched, GRID)
    assert out.shape == (8, GRID.size)


@pytest.mark.parametrize("name", FITS)
def test_masked_fit_equals_fit_on_slice(name):
    fit, apply, kw = FITS[name]
    x, y = _data(5, 400, ties=name == "isotonic")
    mask = np.random.default_rng(0).random(400) < 0.6
    # masked-out rows carry arbitrary values: they must not matter at all
    masked = fit(np.where(mask, x, 0.99), np.where(mask, y, 1.0), mask.astype(float), **kw)
    sliced = fit(x[mask], y[mask], **kw)
    np.testing.assert_allclose(apply(masked, GRID), apply(sliced, GRID), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["temperature", "platt", "isotonic"])
def test_integer_weights_equal_repeated_rows(name):
    fit, apply, kw = FITS[name]
    x, y = _data(6, 150, ties=True)
    reps = np.random.default_rng(1).integers(0, 4, 150)
    weighted = fit(x, y, reps.astype(float), **kw)
    repeated = fit(np.repeat(x, reps), np.repeat(y, reps), **kw)
    np.testing.assert_allclose(apply(weighted, GRID), apply(repeated, GRID), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FITS)
def test_new_values_do_not_retrace(name):
    fit, _, kw = FITS[name]
    chex.clear_trace_counter()  # the counter is keyed by code location: reset per case

    @jax.jit
    @chex.assert_max_traces(n=1)
    def fitted(c, t, m):
        return fit(c, t, m, **kw)

    for seed in range(3):
        x, y = _data(seed, 100)
        fitted(x, y, (x > 0.2 * seed).astype(float))


def test_eager_fits_of_nearby_sizes_share_compiled_code():
    x, y = _data(7, 300)
    B.fit_isotonic(x, y)
    before = B._fit_isotonic._cache_size()
    B.fit_isotonic(x[:290], y[:290])  # padded to the same FIT_PAD multiple
    assert B._fit_isotonic._cache_size() == before


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: B.fit_isotonic(np.ones((3, 2)), np.ones((3, 2))), r"conf: expected a 1-D"),
        (lambda: B.fit_temperature(np.ones(3), np.ones(4)), r"correct: expected shape \(3,\)"),
        (lambda: B.fit_platt(np.ones(3), np.ones(3), np.ones(2)), r"weight: expected shape \(3,\)"),
        (lambda: B.fit_histogram(np.ones(0), np.ones(0)), r"conf: expected at least one item"),
        (lambda: B.fit_isotonic(np.ones(3), np.ones(3), max_knots=0), r"max_knots: expected"),
        (lambda: B.fit_histogram(np.ones(3), np.ones(3), num_bins=2.0), r"num_bins: expected"),
    ],
)
def test_bad_inputs_are_rejected(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_apply_is_traceable():
    x, y = _data(8, 100)
    state = B.fit_isotonic(x, y)
    f = jax.jit(B.apply_isotonic)
    np.testing.assert_allclose(f(state, GRID), B.apply_isotonic(state, GRID), atol=1e-7)
    assert jnp.all(jnp.isfinite(f(state, GRID)))


def test_numpy_integer_static_sizes_are_accepted():
    x, y = _data(9, 50)
    assert B.fit_histogram(x, y, num_bins=np.int64(5)).bin_values.shape == (5,)
    assert B.fit_isotonic(x, y, max_knots=np.int32(32)).knots_x.shape == (32,)
