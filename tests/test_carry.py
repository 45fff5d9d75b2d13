"""Large data: a model chosen on a subsample and carried to every item, still out of fold."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miscal_jax.model import FitConfig, carry, crossfit, fit, out_of_fold, subsample
from miscal_jax.model.carry import carried_folds
from miscal_jax.synthetic.planted import make_planted


def test_carried_folds_are_balanced_and_keep_the_subsample_folds():
    n, folds = 1003, 5
    idx = subsample(jax.random.key(0), n, 301)
    fold_sub = jax.random.permutation(jax.random.key(1), jnp.arange(301) % folds)
    masks = np.asarray(carried_folds(jax.random.key(2), fold_sub, idx, n, folds))
    held = (~masks).sum(axis=1)
    assert held.sum() == n and held.max() - held.min() <= 1  # ceil(n / K) or one fewer
    assert ((~masks).sum(axis=0) == 1).all()  # each item held out by exactly one fold
    np.testing.assert_array_equal(np.argmin(masks, axis=0)[np.asarray(idx)], fold_sub)


def test_selection_grows_with_n_within_its_bounds_and_bad_values_are_refused():
    from miscal_jax.model.crossfit import SELECT_MAX, SELECT_ON, selection_size

    sizes = [selection_size(n) for n in (10, SELECT_ON, SELECT_ON + 1, 600_000, 10**6, 10**8)]
    assert sizes == [10, SELECT_ON, SELECT_ON, 10_000, SELECT_MAX, SELECT_MAX]
    d = make_planted(40, seed=0)
    for bad in ("all", 2.5, True):
        with pytest.raises(ValueError, match="select_on"):
            crossfit(d.embeddings, d.conf, d.correct, select_on=bad, progress=False)


@pytest.mark.slow
def test_carry_is_out_of_fold_and_rescales_the_bandwidth():
    d = make_planted(1500, seed=1, amplitude=0.25)
    idx = subsample(jax.random.key(3), 1500, 500)
    cfg = FitConfig(folds=3, candidates=("raw", "pca"))
    small, _ = jax.jit(fit)(jax.random.key(0), d.embeddings[idx], d.conf[idx], d.correct[idx], cfg)
    big = jax.jit(carry)(small, jax.random.key(4), d.embeddings, d.conf, d.correct, idx)
    # a subsample item is held out by the fold model whose geometry never saw it
    np.testing.assert_array_equal(np.asarray(big.fold)[np.asarray(idx)], np.asarray(small.fold))
    width = np.array([8 if c == 0 else 8 for c in np.asarray(small.geometry.choice)])  # d = 8
    expected = np.asarray(small.geometry.log_bandwidth) + np.log(500 / 1500) / (width + 4)
    np.testing.assert_allclose(big.geometry.log_bandwidth, expected, rtol=1e-5)
    # the same fold model, queried at an item it held out, gives that item's out-of-fold value
    est, _ = out_of_fold(big)
    assert est.value.shape == (1500,) and np.isfinite(np.asarray(est.value)).all()


@pytest.mark.slow
def test_crossfit_large_path_agrees_with_the_exact_path():
    d = make_planted(3000, seed=2, amplitude=0.25)
    kw = dict(folds=3, candidates=("raw", "pca"), progress=False)
    exact = crossfit(d.embeddings, d.conf, d.correct, select_on=None, **kw)
    carried = crossfit(d.embeddings, d.conf, d.correct, select_on=1000, **kw)
    assert exact.scale == {"path": "exact", "n": 3000, "field": "exact"}
    assert carried.scale == {"path": "subsample", "n": 3000, "selected_on": 1000, "field": "exact"}
    assert np.corrcoef(carried.field, exact.field)[0, 1] > 0.9
    truth = lambda r: np.corrcoef(r.field, d.field)[0, 1]
    assert truth(carried) > truth(exact) - 0.05
    brier = lambda r, m: np.mean((r.predictions[m] - d.correct) ** 2)
    assert brier(carried, "local") < brier(carried, "isotonic")


@pytest.mark.slow
def test_binned_model_is_exact_with_a_bin_per_item_and_survives_save_and_load(tmp_path):
    from miscal_jax.model import bin_model, load, predict, save

    d = make_planted(512, seed=3, amplitude=0.25)
    cfg = FitConfig(folds=3, candidates=("raw", "pca"))
    model, _ = jax.jit(fit)(jax.random.key(0), d.embeddings, d.conf, d.correct, cfg)
    binned = bin_model(model, cells=512)  # every leaf holds one item
    (exact, p_exact), (approx, p_approx) = out_of_fold(model), out_of_fold(binned)
    np.testing.assert_allclose(approx.value, exact.value, atol=1e-5)
    np.testing.assert_allclose(p_approx, p_exact, atol=1e-4)
    save(binned, tmp_path / "binned.msgpack")
    again = load(tmp_path / "binned.msgpack")
    assert again.bins.bins.centre.shape == binned.bins.bins.centre.shape
    np.testing.assert_array_equal(
        predict(again, d.embeddings[:7], d.conf[:7])[1],
        predict(binned, d.embeddings[:7], d.conf[:7])[1],
    )


@pytest.mark.slow
def test_crossfit_bins_on_request_and_reports_the_measured_error():
    d = make_planted(2000, seed=4, amplitude=0.25)
    kw = dict(folds=3, candidates=("raw",), progress=False)
    res = crossfit(d.embeddings, d.conf, d.correct, select_on=600, cells=128, **kw)
    scale = res.scale
    assert scale["field"] == "binned" and scale["cells"] == 128
    err = scale["approximation"]
    assert err["checked"] > 0 and 0.0 <= err["field_max_abs_diff"] < 1.0
    assert np.isfinite(res.field).all() and np.isfinite(res.corrected_conf).all()
    assert res.model.bins.bins.count.shape == (3, 256)
    auto = crossfit(d.embeddings, d.conf, d.correct, select_on=600, **kw)
    assert auto.scale["field"] == "exact" and auto.model.bins is None  # below EXACT_UP_TO
    with pytest.raises(ValueError, match="cells"):
        crossfit(d.embeddings, d.conf, d.correct, cells=0, **kw)
