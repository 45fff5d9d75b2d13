import jax
import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from miscal_jax import baselines as B


@pytest.mark.parametrize("seed", range(5))
def test_isotonic_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 500
    x = rng.random(n)
    if seed % 2:  # with many ties, as verbalised confidences have
        x = np.round(x, 1)
    y = (rng.random(n) < x**2).astype(float)
    query = rng.uniform(-0.2, 1.2, size=300)
    with jax.enable_x64(True):
        ours = np.asarray(B.apply_isotonic(B.fit_isotonic(x, y), query))
    ref = IsotonicRegression(out_of_bounds="clip").fit(x, y).predict(query)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_isotonic_monotone_and_degenerate():
    state = B.fit_isotonic(np.full(50, 0.7), np.ones(50))
    np.testing.assert_allclose(B.apply_isotonic(state, [0.1, 0.7, 0.9]), 1.0)
    rng = np.random.default_rng(0)
    s = B.fit_isotonic(rng.random(200), rng.random(200) < 0.5)
    assert np.all(np.diff(np.asarray(s.knots_y)) >= 0)


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


def test_logit_finite_at_ends():
    assert np.all(np.isfinite(np.asarray(B.logit(np.array([0.0, 1.0, 0.5])))))
