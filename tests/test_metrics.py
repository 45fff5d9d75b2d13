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
