"""Property-based tests (hypothesis) of the numerical core, through the public API only.

Profiles: ``fast`` (default, 25 examples per property, run in the fast suite)
and ``thorough`` (400 examples). ``MISCAL_HYPOTHESIS_PROFILE=thorough`` selects
the larger one and marks this module ``slow``, so CI's slow run
(``MISCAL_HYPOTHESIS_PROFILE=thorough python -m pytest -q -n 2 -m slow``) runs it
and its fast run, without the variable, runs the bounded one.

Shapes are fixed per property (hypothesis varies values, not sizes), so each
property compiles once.
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import miscal_jax as mj

settings.register_profile(
    "fast",
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same examples every run: the fast suite never flakes
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
PROFILE = os.environ.get("MISCAL_HYPOTHESIS_PROFILE", "fast")
settings.load_profile(PROFILE)
pytestmark = [pytest.mark.slow] if PROFILE == "thorough" else []

N, Q, D = 12, 5, 2
TOL = {"rtol": 2e-4, "atol": 2e-5}


def _points(rows, dim=D, scale=3.0):
    return arrays(np.float32, (rows, dim), elements=st.floats(-scale, scale, width=32))


_residuals = arrays(np.float32, (N,), elements=st.floats(-1.0, 1.0, width=32))
_log_bandwidth = st.floats(-1.5, 1.5)
_kernel = st.sampled_from(["gaussian", "epanechnikov", "triweight"])


def _field(query, ref, residual, log_bandwidth, kernel="gaussian"):
    est = mj.nw_field(query, ref, residual, np.float32(log_bandwidth), kernel=kernel)
    return tuple(np.asarray(a, np.float64) for a in est)


def _assert_same(a, b, **tol):
    for name, x, y in zip(("value", "se", "n_eff"), a, b, strict=True):
        np.testing.assert_allclose(x, y, err_msg=name, **(tol or TOL))


def _assume_off_the_support_edge(query, ref, lb, kernel):
    """A reference on the edge of a compact support carries weight 0 or a rounding
    error's worth, and with no other neighbour the value jumps from 0 to that
    reference's residual: a discontinuity of the estimator, not an error of the
    property under test. Keep references off the edge."""
    if kernel != "gaussian":
        u = np.sum((query[:, None] - ref[None]) ** 2, -1, dtype=np.float64) / np.exp(2 * lb)
        assume(np.all(np.abs(u - 1.0) > 1e-3))


@given(_points(Q), _points(N), _residuals, _log_bandwidth, _kernel, st.permutations(range(N)))
def test_smoother_invariant_to_reordering_references(query, ref, residual, lb, kernel, order):
    order = np.array(order)
    _assert_same(
        _field(query, ref, residual, lb, kernel),
        _field(query, ref[order], residual[order], lb, kernel),
    )


@given(
    _points(Q),
    _points(N),
    _residuals,
    _log_bandwidth,
    arrays(np.float32, (D,), elements=st.floats(-20.0, 20.0, width=32)),
)
def test_smoother_invariant_to_translation(query, ref, residual, lb, shift):
    _assert_same(
        _field(query, ref, residual, lb),
        _field(query + shift, ref + shift, residual, lb),
        rtol=2e-3,
        atol=2e-4,  # float32 coordinates of size 20 lose about 3 decimal digits of distance
    )


@given(_points(Q), _points(N), _residuals, _log_bandwidth, st.floats(0.05, 20.0), _kernel)
def test_smoother_invariant_to_scaling_points_and_bandwidth(query, ref, residual, lb, s, kernel):
    _assume_off_the_support_edge(query, ref, lb, kernel)
    _assert_same(
        _field(query, ref, residual, lb, kernel),
        _field(query * np.float32(s), ref * np.float32(s), residual, lb + np.log(s), kernel),
        rtol=1e-3,
        atol=1e-4,
    )


@given(_points(Q, scale=50.0), _points(N), _residuals, st.floats(-4.0, 3.0), _kernel)
def test_smoother_value_within_residual_range(query, ref, residual, lb, kernel):
    """Far queries included (up to ~50 bandwidths away): finite, and a weighted
    mean of the residuals wherever some reference carries weight."""
    value, se, n_eff = _field(query, ref, residual, lb, kernel)
    assert np.all(np.isfinite(value) & np.isfinite(se) & np.isfinite(n_eff))
    assert np.all((n_eff >= 0) & (n_eff <= N + 1e-3)) and np.all(se >= 0)
    inside = (value >= residual.min() - 1e-5) & (value <= residual.max() + 1e-5)
    if kernel == "gaussian":  # infinite support: every query is a weighted mean
        assert np.all(inside)
    else:  # beyond a compact support: no neighbours, n_eff 0 and value 0
        assert np.all(inside | ((n_eff == 0) & (value == 0)))


@given(_points(N), _residuals, _log_bandwidth, _kernel, st.integers(0, N - 1))
def test_leave_one_out_equals_dropping_the_point(ref, residual, lb, kernel, i):
    _assume_off_the_support_edge(ref[i : i + 1], np.delete(ref, i, 0), lb, kernel)
    loo = mj.loo_field(ref, residual, np.float32(lb), kernel=kernel)
    dropped = _field(ref[i : i + 1], np.delete(ref, i, 0), np.delete(residual, i), lb, kernel)
    _assert_same(tuple(np.asarray(a[i : i + 1], np.float64) for a in loo), dropped)


_conf = arrays(np.float32, (40,), elements=st.floats(0.0, 1.0, width=32))
_correct = arrays(np.float32, (40,), elements=st.sampled_from([0.0, 1.0]))


@given(_conf, _correct, arrays(np.int32, (40,), elements=st.integers(0, 4)), _points(40))
def test_metrics_stay_in_their_ranges(conf, correct, groups, points):
    for strategy in ("width", "mass"):
        assert 0.0 <= float(mj.metrics.ece(conf, correct, strategy=strategy)) <= 1.0 + 1e-6
    assert 0.0 <= float(mj.metrics.brier(conf, correct)) <= 1.0 + 1e-6
    nll = float(mj.metrics.nll(conf, correct))
    assert 0.0 <= nll <= -np.log(1e-4) + 1e-3  # confidences are clipped to [1e-4, 1 - 1e-4]
    assert 0.0 <= float(mj.metrics.auroc(conf, correct)) <= 1.0
    assert 0.0 <= float(mj.metrics.regional_error(conf, correct, groups)) <= 1.0 + 1e-6
    lce = float(mj.local_calibration_error(points, conf, correct, np.float32(0.0)))
    assert 0.0 <= lce <= 1.0 + 1e-6


@given(_conf, _correct, arrays(np.float32, (30,), elements=st.floats(-0.5, 1.5, width=32)))
def test_isotonic_output_is_monotone_and_a_probability(conf, correct, query):
    state = mj.fit_isotonic(conf, correct)
    out = np.asarray(mj.apply_isotonic(state, np.sort(query)), np.float64)
    assert np.all(np.diff(out) >= -1e-6)
    assert np.all((out >= -1e-6) & (out <= 1 + 1e-6))
    fitted = np.asarray(mj.apply_isotonic(state, conf), np.float64)
    # an isotonic fit keeps the mean outcome (calibration in the large)
    assert fitted.mean() == pytest.approx(correct.mean(), abs=1e-4)


@given(
    st.floats(-3.0, 2.0),
    st.floats(-3.0, 6.0),
    st.floats(0.001, 0.999),
    st.floats(0.0, 500.0),
    arrays(np.float32, (20,), elements=st.floats(-1.0, 1.0, width=32)),
)
def test_correction_is_monotone_in_the_field(log_strength, log_shrinkage, p, n_eff, field):
    params = mj.correction.CorrectionParams(jnp.float32(log_strength), jnp.float32(log_shrinkage))
    field = np.sort(field)
    out = np.asarray(
        mj.correction.local_confidence(
            params, np.full(20, p, np.float32), field, np.full(20, n_eff)
        ),
        np.float64,
    )
    assert np.all(np.isfinite(out)) and np.all((out >= 0) & (out <= 1))
    assert np.all(np.diff(out) >= -1e-6)
