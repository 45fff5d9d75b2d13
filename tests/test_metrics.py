import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from miscal_jax import metrics as M


def _data(seed=0, n=2000):
    rng = np.random.default_rng(seed)
    p = np.round(rng.random(n), 2)  # ties
    y = (rng.random(n) < p**1.3).astype(float)
    return p, y


@pytest.mark.parametrize("seed", range(3))
def test_brier_auroc_nll_match_sklearn(seed):
    p, y = _data(seed)
    assert float(M.brier(p, y)) == pytest.approx(brier_score_loss(y, p), rel=1e-5)
    assert float(M.auroc(p, y)) == pytest.approx(roc_auc_score(y, p), rel=1e-5)
    pc = np.clip(p, 1e-4, 1 - 1e-4)
    assert float(M.nll(p, y)) == pytest.approx(log_loss(y, pc), rel=1e-4)


@pytest.mark.parametrize("strategy", ["width", "mass"])
@pytest.mark.parametrize("kind", ["few_values", "spread"])
def test_ece_floor_is_the_mean_ece_of_calibrated_draws(kind, strategy):
    """The floor against 400 Monte Carlo draws of y ~ Bernoulli(p): the mean
    ECE has a standard error near 1% of the floor here, the normal
    approximation errs by a few percent; tolerance 6%. And the floor of few
    distinct values (isotonic on verbalised confidence) sits well below the
    floor of spread values (a local correction), at equal calibration."""
    rng = np.random.default_rng(1)
    n = 3000
    p = {
        "few_values": rng.choice([0.6, 0.8, 0.9, 0.95], n),
        "spread": rng.beta(5.0, 2.0, n),
    }[kind]
    y = (rng.random((400, n)) < p).astype(np.float32)
    ece = jax.vmap(lambda yy: M.ece(p, yy, strategy=strategy))(jnp.asarray(y))
    floor = float(M.ece_floor(p, strategy=strategy))
    assert floor == pytest.approx(float(ece.mean()), rel=0.06)
    if kind == "spread" and strategy == "width":
        few = rng.choice([0.6, 0.8, 0.9, 0.95], n)
        assert float(M.ece_floor(few)) < 0.6 * floor


def test_auroc_one_class_is_half():
    assert float(M.auroc([0.1, 0.9], [1.0, 1.0])) == 0.5


def test_ece_against_loop():
    p, y = _data()
    for strategy in ("width", "mass"):
        if strategy == "width":
            idx = np.minimum((p * 10).astype(int), 9)
        else:
            idx = np.empty(len(p), int)
            idx[np.argsort(p, kind="stable")] = np.arange(len(p)) * 10 // len(p)
        want = sum(abs((y - p)[idx == b].sum()) for b in range(10)) / len(p)
        got = float(M.ece(p, y, num_bins=10, strategy=strategy))
        assert got == pytest.approx(want, rel=1e-4)
    with pytest.raises(ValueError, match="strategy"):
        M.ece(p, y, strategy="quantile")


def test_regional_error_weighted_and_not():
    p = np.array([0.5, 0.5, 0.5, 0.9])
    y = np.array([1.0, 1.0, 0.0, 0.0])
    g = np.array([0, 0, 0, 1])
    assert float(M.regional_error(p, y, g)) == pytest.approx((1 / 6 + 0.9) / 2)
    assert float(M.regional_error(p, y, g, weighted=True)) == pytest.approx((0.5 + 0.9) / 4)
    # negative group ids are ignored
    assert float(M.regional_error(p, y, np.array([0, 0, 0, -1]))) == pytest.approx(1 / 6)


def test_grouping_loss_bias_correction():
    rng = np.random.default_rng(0)
    n = 20000
    conf = rng.random(n)
    true = np.where(rng.random(n) < 0.5, 0.1, -0.1)  # Var(delta | P) = 0.01
    se = np.full(n, 0.05)
    noisy = true + se * rng.normal(size=n)
    gl = M.grouping_loss(conf, noisy, se)
    assert float(gl.raw) == pytest.approx(0.01 + 0.0025, rel=0.05)
    assert float(gl.estimate) == pytest.approx(0.01, rel=0.08)
    null = M.grouping_loss(conf, 0.05 * rng.normal(size=n), se)
    assert float(null.estimate) < 1e-3


def test_local_calibration_error_detects_regions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 2)).astype(np.float32)
    p = np.full(1500, 0.6)
    y_cal = (rng.random(1500) < 0.6).astype(float)
    y_mis = (rng.random(1500) < 0.6 + 0.3 * np.sign(x[:, 0])).astype(float)
    cal = float(M.local_calibration_error(x, p, y_cal, np.log(0.5)))
    mis = float(M.local_calibration_error(x, p, y_mis, np.log(0.5)))
    assert mis > 0.2 and cal < 0.1


# ----------------------------------------------------------------------------- binning-free


def _reference_smooth_ece_sigma(f, y, sigma, num_t=4001):
    """Slow, obvious smECE_sigma: dense reflected-Gaussian kernel, trapezoid on a fine grid.

    Images of each confidence under the reflections at 0 and 1 (``f + 2k``,
    ``-f + 2k`` for ``|k| <= 2``) make the kernel integrate to 1 over [0, 1].
    """
    t = np.linspace(0.0, 1.0, num_t)
    resid = np.zeros(num_t)
    dens = np.zeros(num_t)
    for i in range(len(f)):
        k = sum(
            np.exp(-0.5 * ((t - s * f[i] - 2 * j) / sigma) ** 2)
            for j in range(-2, 3)
            for s in (1, -1)
        )
        resid += (y[i] - f[i]) * k
        dens += k
    return np.trapezoid(np.abs(resid), t) / np.trapezoid(dens, t)


def _smooth_data(seed, n, kind):
    """Generated data sets: confidence distribution and miscalibration shape vary."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":  # kept 0.005 from the ends (see the boundary test below)
        p = 0.005 + 0.99 * rng.random(n)
        y = (rng.random(n) < p**1.5).astype(float)
    elif kind == "llm":  # mostly high confidence, overconfident
        p = 0.005 + 0.99 * rng.beta(5.0, 1.6, n)
        y = (rng.random(n) < p**1.8).astype(float)
    elif kind == "calibrated":
        p = rng.beta(2.0, 2.0, n)
        y = (rng.random(n) < p).astype(float)
    elif kind == "under":  # underconfident, confidence in the middle
        p = 0.3 + 0.4 * rng.random(n)
        y = (rng.random(n) < np.clip(0.5 + 1.6 * (p - 0.5), 0, 1)).astype(float)
    elif kind == "ends":  # a third of the mass exactly at 1, a tenth at 0
        p = rng.random(n)
        p[: n // 3] = 1.0
        p[n // 3 : n // 3 + n // 10] = 0.0
        y = (rng.random(n) < p**1.5).astype(float)
    else:
        raise AssertionError(kind)
    return p, y


@pytest.mark.parametrize(
    ("seed", "kind"), [(0, "uniform"), (1, "llm"), (2, "calibrated"), (3, "under"), (4, "ends")]
)
def test_smooth_ece_sigma_matches_dense_reference(seed, kind):
    # the grid version bins confidences linearly onto 2049 nodes; its error is
    # O((h / sigma)^2) relative, h = 1/2048: below 1e-5 absolute for sigma >= 0.02
    p, y = _smooth_data(seed, 400, kind)
    for sigma in (0.02, 0.05, 0.15):
        want = _reference_smooth_ece_sigma(p, y, sigma)
        got = float(M.smooth_ece_sigma(p, y, sigma))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("seed", "n", "kind"),
    [(0, 500, "uniform"), (1, 2000, "llm"), (2, 3000, "calibrated"), (3, 1000, "under")],
)
def test_smooth_ece_matches_relplot(seed, n, kind, monkeypatch):
    relplot = pytest.importorskip("relplot")
    # relplot evaluates the smoothed curve on max(200, 10/sigma) points and sums
    # them with full weight at the two ends (a Riemann sum, where we integrate by
    # the trapezoid rule); at 200 points that alone moves smECE by up to 3e-4.
    # A fine evaluation mesh (relplot's own setting) takes that away; what is
    # left is relplot's coarser grid (1001 nodes, linear interpolation to the
    # mesh): up to 6e-4 relative at sigma = 0.01, 4e-5 from sigma = 0.05 on
    # (measured; the dense reference above sides with us to 1e-6).
    monkeypatch.setattr(relplot.config, "smECE_mesh_pts", 20001)
    p, y = _smooth_data(seed, n, kind)
    for sigma in (0.01, 0.05, 0.1):
        want = relplot.smECE_sigma(p, y, sigma)
        tol = 1e-3 if sigma < 0.05 else 1e-4
        np.testing.assert_allclose(float(M.smooth_ece_sigma(p, y, sigma)), want, rtol=tol)
    # relplot bisects 10 times from [0, 1] and keeps the upper end, as we do:
    # the same bandwidth, and the same value
    want, want_sigma = relplot.smECE(p, y, return_width=True)
    got_sigma = float(M.smooth_ece_bandwidth(p, y, num_bisections=10))
    np.testing.assert_allclose(got_sigma, want_sigma, rtol=1e-6)
    np.testing.assert_allclose(float(M.smooth_ece(p, y, num_bisections=10)), want, rtol=5e-4)
    # the default (16 bisections) finds sigma* up to 2^-16 rather than 2^-10;
    # smECE_sigma falls with sigma, by at most 2e-4 over relplot's last interval here
    np.testing.assert_allclose(float(M.smooth_ece(p, y)), want, atol=3e-4)


def test_smooth_ece_counts_boundary_mass_fully():
    # confidences exactly at 0 or 1 are their own mirror image: the reflected
    # kernel there is 2 phi, not phi. relplot's grid convolution counts such
    # items once (off by 1e-2 on this data set); the dense reference and we agree.
    p, y = _smooth_data(4, 400, "ends")
    want = _reference_smooth_ece_sigma(p, y, 0.05)
    np.testing.assert_allclose(float(M.smooth_ece_sigma(p, y, 0.05)), want, rtol=1e-4)


def test_smooth_ece_is_its_own_bandwidth():
    p, y = _smooth_data(1, 2000, "llm")
    sigma = float(M.smooth_ece_bandwidth(p, y))
    value = float(M.smooth_ece(p, y))
    assert value == pytest.approx(float(M.smooth_ece_sigma(p, y, sigma)), abs=1e-7)
    # upper end of the last bisection interval: value <= sigma <= value + 2^-16 (+ slope)
    assert value <= sigma + 1e-7
    assert sigma - value < 2 * 2**-16


def test_binning_free_known_values():
    # constant residual r: smECE = |r| at every bandwidth, ECCE = |r|
    p = np.full(50, 0.7)
    for y, r in ((np.ones(50), 0.3), (np.zeros(50), 0.7)):
        assert float(M.smooth_ece(p, y)) == pytest.approx(r, abs=1e-6)
        assert float(M.smooth_ece_sigma(p, y, 0.3)) == pytest.approx(r, abs=1e-6)
        assert float(M.ecce(p, y)) == pytest.approx(r, abs=1e-6)
    # residuals of opposite sign far apart do not cancel at a small bandwidth
    assert float(M.smooth_ece_sigma([0.1, 0.9], [1.0, 0.0], 0.02)) == pytest.approx(0.9, abs=1e-5)


def _reference_ecce(f, y):
    """Range of the cumulative residual, read at the end of each tie block, with 0 at the start."""
    order = np.argsort(f, kind="stable")
    f, r = f[order], (y - f)[order] / len(f)
    curve = [0.0]
    total = 0.0
    for i in range(len(f)):
        total += r[i]
        if i == len(f) - 1 or f[i + 1] != f[i]:
            curve.append(total)
    return max(curve) - min(curve)


@pytest.mark.parametrize("kind", ["uniform", "llm", "calibrated", "ends"])
def test_ecce_against_loop(kind):
    p, y = _smooth_data(7, 1500, kind)
    p = p.astype(np.float32).astype(np.float64)  # the same ties as in float32
    np.testing.assert_allclose(float(M.ecce(p, y)), _reference_ecce(p, y), atol=2e-6)
    # rounded confidences (ties): still the loop's value
    q = np.round(p, 1)
    np.testing.assert_allclose(float(M.ecce(q, y)), _reference_ecce(q, y), atol=2e-6)


def test_binning_free_invariant_to_item_order():
    p, y = _data(3)  # confidences rounded to 0.01: many ties
    perm = np.random.default_rng(0).permutation(len(p))
    for f in (M.smooth_ece, M.ecce, lambda a, b: M.smooth_ece_sigma(a, b, 0.05)):
        assert float(f(p[perm], y[perm])) == pytest.approx(float(f(p, y)), abs=1e-6)


def test_binning_free_vanish_under_calibration():
    # "infinite data": outcomes equal to the probability, so every residual is 0
    p = np.random.default_rng(0).random(1000)
    assert float(M.smooth_ece(p, p)) == pytest.approx(0.0, abs=1e-7)
    assert float(M.ecce(p, p)) == pytest.approx(0.0, abs=1e-7)
    # Bernoulli outcomes: both shrink like 1/sqrt(n). ECCE's null scale is
    # s_n = sqrt(sum p(1-p)) / n and its range exceeds 4 s_n with probability
    # ~1e-5 (Brownian-motion range); smECE falls by ~sqrt(10) per tenfold n.
    rng = np.random.default_rng(1)
    sm = []
    for n in (1_000, 10_000, 100_000):
        p = rng.beta(2.0, 2.0, n)
        y = (rng.random(n) < p).astype(float)
        scale = np.sqrt(np.sum(p * (1 - p))) / n
        assert float(M.ecce(p, y)) < 4 * scale
        sm.append(float(M.smooth_ece(p, y)))
    assert sm[0] > sm[1] > sm[2]
    assert sm[2] < 0.01


def test_binning_free_degenerate_inputs_are_finite():
    cases = [
        ([0.5], [1.0]),  # one item
        ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]),  # all at the upper end, all right
        ([0.0, 0.0], [0.0, 0.0]),  # all at the lower end
        ([0.0, 1.0], [1.0, 0.0]),  # maximally wrong at both ends
        ([0.3] * 10, [0.0] * 10),  # one confidence value
    ]
    for conf, correct in cases:
        for f in (M.smooth_ece, M.ecce, lambda a, b: M.smooth_ece_sigma(a, b, 1e-3)):
            v = float(f(conf, correct))
            assert np.isfinite(v) and -1e-6 <= v <= 1.0 + 1e-6, (conf, correct, v)
    # +1 at 0 and -1 at 1 cancel once the kernel reaches across: sigma* is near 0.47
    sigma = float(M.smooth_ece_bandwidth([0.0, 1.0], [1.0, 0.0]))
    assert 0.3 < sigma < 0.6
    assert float(M.smooth_ece([0.0, 1.0], [1.0, 0.0])) == pytest.approx(sigma, abs=1e-4)


def test_smooth_ece_gradient_is_finite():
    p, y = _smooth_data(0, 300, "ends")  # mass exactly at the ends, where the clip sits
    for fn in (lambda c: M.smooth_ece(c, y), lambda c: M.smooth_ece_sigma(c, y, 0.05)):
        g = np.asarray(jax.grad(fn)(jnp.asarray(p, jnp.float32)))
        assert g.shape == p.shape and np.all(np.isfinite(g))


def test_binning_free_do_not_retrace_on_new_values():
    traced = chex.assert_max_traces(lambda c, y: (M.smooth_ece(c, y), M.ecce(c, y)), n=1)
    fn = jax.jit(traced)
    for seed in range(3):
        p, y = _smooth_data(seed, 256, "uniform")
        fn(jnp.asarray(p, jnp.float32), jnp.asarray(y, jnp.float32))


def test_binning_free_reject_bad_inputs():
    with pytest.raises(ValueError, match="smooth_ece: conf and correct must be 1-D"):
        M.smooth_ece([0.5, 0.6], [1.0])
    with pytest.raises(ValueError, match="ecce: conf and correct must be 1-D"):
        M.ecce(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="smooth_ece_sigma: conf is empty"):
        M.smooth_ece_sigma([], [], 0.1)
    with pytest.raises(ValueError, match="ecce: conf is empty"):
        M.ecce([], [])
    with pytest.raises(ValueError, match="num_grid"):
        M.smooth_ece([0.5], [1.0], num_grid=2)
    with pytest.raises(ValueError, match="num_bisections"):
        M.smooth_ece_bandwidth([0.5], [1.0], num_bisections=0)
    with pytest.raises(ValueError, match="min_sigma"):
        M.smooth_ece([0.5], [1.0], min_sigma=0.0)
