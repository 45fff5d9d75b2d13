"""The confounded null: confidence depends on x, P(correct | conf) = conf^1.8 everywhere.

And its panel version: other models on the same items, not null themselves."""

import numpy as np
import pytest

from miscal_jax.synthetic.planted import make_confounded_null, make_confounded_panel

# one large draw, fixed seed: every check below is a z-score against its own
# standard error, so the tolerance is a number of standard errors
N = 100_000


@pytest.fixture(scope="module")
def data():
    return make_confounded_null(N, seed=0)


def test_confidence_depends_on_position(data):
    # topic: cluster means of conf differ by far more than their standard errors
    means = np.array([data.conf[data.region == c].mean() for c in range(6)])
    ses = np.array(
        [data.conf[data.region == c].std() / np.sqrt(np.sum(data.region == c)) for c in range(6)]
    )
    assert means.max() - means.min() > 50 * ses.max()
    # position within clusters: logit(conf) is linear in the embedding and the
    # cluster, plus N(0, 0.7^2) noise. A regression on both leaves exactly the
    # noise (relative SE of a variance: sqrt(2 / N) = 0.45%, tolerance 2%); the
    # cluster label alone leaves clearly more, and the input explains a large share.
    z = np.log(data.conf / (1 - data.conf))
    labels = np.eye(6)[data.region]
    design = np.column_stack([data.embeddings, labels])
    full = np.var(z - design @ np.linalg.lstsq(design, z, rcond=None)[0])
    by_cluster = np.var(z - labels @ np.linalg.lstsq(labels, z, rcond=None)[0])
    assert full == pytest.approx(0.7**2, rel=0.02)
    assert by_cluster > 1.1 * full
    assert np.var(z) > 1.3 * full


def test_correct_given_conf_is_conf_to_the_1_8_everywhere(data):
    # within cells (cluster x confidence decile), the mean of correct equals
    # the mean of conf^1.8; the cell's standard error is sqrt(sum q(1-q)) / m.
    # 60 cells: |z| < 4 for all holds with probability > 0.996 under the claim.
    q = data.conf.astype(np.float64) ** 1.8
    edges = np.quantile(data.conf, np.linspace(0, 1, 11))
    decile = np.clip(np.searchsorted(edges, data.conf, side="right") - 1, 0, 9)
    zs = []
    for c in range(6):
        for b in range(10):
            m = (data.region == c) & (decile == b)
            if m.sum() < 50:
                continue
            se = np.sqrt(np.sum(q[m] * (1 - q[m]))) / m.sum()
            zs.append((data.correct[m].mean() - q[m].mean()) / se)
    assert len(zs) >= 40
    assert np.max(np.abs(zs)) < 4.0, np.round(zs, 2)
    # and the exponent is recovered: a wrong exponent (1.5 or 2.1) is far off
    for wrong in (1.5, 2.1):
        qw = data.conf.astype(np.float64) ** wrong
        z = (data.correct.mean() - qw.mean()) / (np.sqrt(np.sum(qw * (1 - qw))) / N)
        assert abs(z) > 10


def test_field_matches_the_mean_residual_per_cluster(data):
    # the quadrature field E[correct - conf | x], averaged over a cluster, is the
    # cluster's mean residual up to sampling error (4 standard errors, 6 clusters)
    r = data.correct - data.conf
    for c in range(6):
        m = data.region == c
        se = r[m].std() / np.sqrt(m.sum())
        assert abs(r[m].mean() - data.field[m].mean()) < 4 * se
    assert np.all(data.region_sign == 0)
    np.testing.assert_allclose(data.field_given_conf, data.conf**1.8 - data.conf, atol=1e-6)


def test_confounded_null_rejects_bad_arguments():
    with pytest.raises(ValueError, match="exponent must be positive"):
        make_confounded_null(10, exponent=0.0)
    with pytest.raises(ValueError, match="must be positive"):
        make_confounded_null(0)


def test_panel_target_is_the_confounded_null():
    panel = make_confounded_panel(500, 3, seed=4)
    for got, want in zip(panel.target, make_confounded_null(500, seed=4), strict=True):
        np.testing.assert_array_equal(got, want)


def test_panel_shares_the_confounding_and_has_fields_of_its_own():
    n, models = 60_000, 6
    d = make_confounded_panel(n, models, seed=1)
    logit = lambda p: np.log(p / (1 - p))
    target = logit(d.target.conf)
    for m in range(models):
        conf, correct = d.panel_conf[:, m], d.panel_correct[:, m]
        assert set(np.unique(correct)) == {0.0, 1.0}
        # the shared logit (weight 0.7) ties each model's confidence to the
        # target's (about 0.2 to 0.35 after both noises; se 0.004)
        assert np.corrcoef(logit(conf), target)[0, 1] > 0.1
        # a real regional field: half the clusters +0.15, half -0.15 (less where
        # clipped); the per-cluster mean residual, centred within confidence
        # deciles, spreads far beyond sampling error (se about 0.005 per cluster)
        edges = np.quantile(conf, np.linspace(0, 1, 11))
        decile = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, 9)
        r = correct - conf
        centred = r - np.array([r[decile == b].mean() for b in range(10)])[decile]
        by_cluster = [centred[d.target.region == c].mean() for c in range(6)]
        assert np.ptp(by_cluster) > 0.1


def test_confounded_panel_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_models must be positive"):
        make_confounded_panel(10, 0)
    with pytest.raises(ValueError, match="shared in"):
        make_confounded_panel(10, 2, shared=1.5)
    with pytest.raises(ValueError, match="exponent must be positive"):
        make_confounded_panel(10, 2, exponent=-1.0)
