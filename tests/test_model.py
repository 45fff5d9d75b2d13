"""The functional core: fit and predict under jit and vmap, out-of-fold honesty, save/load."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miscal_jax.correction.local import apply_global, fit_global
from miscal_jax.geometry.encoder import EncoderConfig
from miscal_jax.geometry.spaces import GEOMETRIES
from miscal_jax.model.field_model import (
    FORMAT_VERSION,
    FitConfig,
    fit,
    fold_masks,
    load,
    out_of_fold,
    out_of_fold_global,
    predict,
    predict_block,
    save,
)
from miscal_jax.synthetic.planted import make_planted

FAST = FitConfig(folds=3, candidates=("raw", "pca"))
LEARNED = FitConfig(
    folds=2,
    candidates=GEOMETRIES,  # every space, the opt-in MLP too
    encoder=EncoderConfig(out_dim=4, batch_size=64, max_steps=40, eval_every=20),
)
jit_fit = jax.jit(fit)


def _data(n=240, seed=0):
    d = make_planted(n, seed=seed)
    return d.embeddings, d.conf, d.correct


@pytest.mark.slow
def test_jit_fit_and_predict_run_with_every_geometry():
    x, p, y = _data()
    model, info = jit_fit(jax.random.key(0), x, p, y, LEARNED)
    assert info["select_error"].shape == (2, 5)
    assert [h["val_loss"].shape[0] for h in info["encoder"]] == [2, 2]
    est, corrected = jax.jit(predict)(model, x[:10], p[:10])
    assert est.value.shape == (10,) and np.all(np.isfinite(np.asarray(corrected)))
    eager = predict(model, x[:10], p[:10])
    np.testing.assert_allclose(eager[1], corrected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_vmap_over_models_equals_a_loop():
    x, _, _ = _data()
    rng = np.random.default_rng(0)
    confs = rng.uniform(0.3, 0.95, size=(8, x.shape[0])).astype(np.float32)
    corrects = (rng.random((8, x.shape[0])) < confs**1.5).astype(np.float32)
    key = jax.random.key(1)
    many, _ = jax.jit(jax.vmap(fit, in_axes=(None, None, 0, 0, None)))(
        key, x, confs, corrects, FAST
    )
    oof_many = jax.vmap(out_of_fold)(many)
    for m in range(8):
        one, _ = jit_fit(key, x, confs[m], corrects[m], FAST)
        oof_one = out_of_fold(one)
        np.testing.assert_allclose(oof_many[0].value[m], oof_one[0].value, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(oof_many[1][m], oof_one[1], rtol=1e-4, atol=1e-5)


def test_out_of_fold_outputs_ignore_the_items_own_outcome():
    x, p, y = _data()
    model, _ = jit_fit(jax.random.key(2), x, p, y, FAST)
    i = 11
    flipped = y.copy()
    flipped[i] = 1 - flipped[i]
    other, _ = jit_fit(jax.random.key(2), x, p, flipped, FAST)
    (a, pa), (b, pb) = out_of_fold(model), out_of_fold(other)
    assert a.value[i] == b.value[i] and pa[i] == pb[i]
    assert np.any(np.asarray(a.value) != np.asarray(b.value))


def test_out_of_fold_smooths_only_held_out_items_and_matches_all_items_then_pick():
    """Smoothing each fold's held-out items only equals smoothing all items and picking."""
    from miscal_jax.model.field_model import apply_fold, fold_parts

    x, p, y = _data(n=241)  # folds of 81, 80, 80: padding in two of them
    model, _ = jit_fit(jax.random.key(2), x, p, y, FAST)
    est, p_local = jax.jit(out_of_fold)(model)
    assert np.all(np.isfinite(np.asarray(est.value))) and np.all(np.isfinite(p_local))
    fold = np.asarray(model.fold)
    for k in range(model.train_mask.shape[0]):
        want, want_p = apply_fold(model, fold_parts(model, k), x, p)
        te = fold == k
        for a, b in zip(est, want, strict=True):
            np.testing.assert_allclose(np.asarray(a)[te], np.asarray(b)[te], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(p_local)[te], np.asarray(want_p)[te], atol=1e-6)


def test_out_of_fold_global_matches_a_per_fold_loop():
    """Each item's global-residual field is its own fold's smoother, computed directly."""
    from miscal_jax.geometry.spaces import embed
    from miscal_jax.smoothing.nadaraya_watson import nw_field

    x, p, y = _data()
    model, _ = jit_fit(jax.random.key(2), x, p, y, FAST)
    got = jax.jit(out_of_fold_global)(model)
    for k in range(model.train_mask.shape[0]):
        geometry = jax.tree.map(lambda a, k=k: a[k], model.geometry)
        train = np.asarray(model.train_mask[k])
        z = np.asarray(embed(geometry, x, p))
        residual = np.asarray(model.ref_residual[k])[train]
        want = nw_field(z[~train], z[train], residual, geometry.log_bandwidth)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(np.asarray(a)[~train], b, rtol=1e-3, atol=1e-5)


def test_training_residuals_come_from_a_global_map_that_never_saw_the_item():
    from miscal_jax.model.field_model import inner_global

    _, p, y = _data()
    n = p.shape[0]
    train = np.asarray(fold_masks(jax.random.key(0), n, 3)[0])
    inner = fold_masks(jax.random.key(1), n, 3)
    _, p_global, residual = inner_global(p, y, train, inner, "isotonic")
    for i in np.flatnonzero(train)[:5]:
        flipped = y.copy()
        flipped[i] = 1 - flipped[i]
        _, p_other, _ = inner_global(p, flipped, train, inner, "isotonic")
        assert p_other[i] == p_global[i]  # its own outcome never reached its map
    np.testing.assert_allclose(residual, y - p_global)
    # held-out rows get the map fitted on every training row
    full = apply_global(fit_global(p, y, train), p)
    np.testing.assert_array_equal(np.asarray(p_global)[~train], np.asarray(full)[~train])


def test_one_compilation_serves_new_values():
    x, p, y = _data()
    jit_fit(jax.random.key(0), x, p, y, FAST)
    before = jit_fit._cache_size()
    jit_fit(jax.random.key(5), x * 2.0, p * 0.9, 1.0 - y, FAST)
    assert jit_fit._cache_size() == before


def test_save_load_round_trip_is_bit_exact(tmp_path):
    x, p, y = _data()
    model, _ = jit_fit(jax.random.key(0), x, p, y, LEARNED)
    path = tmp_path / "model.msgpack"
    save(model, path)
    again = load(path)
    assert again.config == model.config
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(again), strict=True):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(predict(again, x[:7], p[:7])[1], predict(model, x[:7], p[:7])[1])


def test_load_refuses_corrupt_foreign_and_future_files(tmp_path):
    from flax import serialization

    x, p, y = _data(60)
    model, _ = jit_fit(jax.random.key(0), x, p, y, FitConfig(folds=2, candidates=("raw",)))
    good = tmp_path / "model.msgpack"
    save(model, good)
    corrupt = tmp_path / "corrupt.msgpack"
    corrupt.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a miscal_jax model file"):
        load(corrupt)
    foreign = tmp_path / "foreign.msgpack"
    foreign.write_bytes(serialization.msgpack_serialize({"weights": np.zeros(3)}))
    with pytest.raises(ValueError, match="not a miscal_jax model file"):
        load(foreign)
    content = serialization.msgpack_restore(good.read_bytes())
    content["header"]["version"] = 99
    future = tmp_path / "future.msgpack"
    future.write_bytes(serialization.msgpack_serialize(content))
    expected = f"version 99; this miscal_jax reads version {FORMAT_VERSION}"
    with pytest.raises(ValueError, match=expected):
        load(future)
    with pytest.raises(ValueError, match="model: cannot read"):
        load(tmp_path / "missing.msgpack")
    unheld = np.array(model.train_mask)
    unheld[:, 3] = True  # item 3 held out by no fold
    moved = np.array(model.train_mask)
    items = np.flatnonzero(~moved[0])[:4]
    moved[0, items], moved[1, items] = True, False  # fold 1 now holds out 8 more than fold 0
    for masks, message in ((unheld, "item 3 is held out by 0 folds"), (moved, "differ by at most")):
        save(model.replace(train_mask=jnp.asarray(masks)), tmp_path / "edited.msgpack")
        with pytest.raises(ValueError, match=message):
            load(tmp_path / "edited.msgpack")


def test_predict_rejects_wrong_shapes():
    x, p, y = _data(60)
    model, _ = jit_fit(jax.random.key(0), x, p, y, FitConfig(folds=2, candidates=("raw",)))
    with pytest.raises(ValueError, match=r"embeddings: expected \[q, 8\]"):
        predict(model, x[:, :3], p)
    with pytest.raises(ValueError, match=r"conf: expected shape \[60\]"):
        predict(model, x, p[:5])
    with pytest.raises(ValueError, match="embeddings/conf/correct"):
        fit(jax.random.key(0), x, p[:5], y, FitConfig(folds=2))
    assert jnp.isfinite(predict(model, 1e4 * x[:3], p[:3])[0].value).all()


def test_predict_shares_one_compilation_across_nearby_query_sizes():
    x, p, y = _data()
    model, _ = jit_fit(jax.random.key(0), x, p, y, FAST)
    rng = np.random.default_rng(0)
    predict(model, x[:3], p[:3])  # a different bucket, compiled before counting
    before = predict_block._cache_size()
    outs, sizes = {}, []
    for q in (1000, 1023, 1024, 1050, 1100):
        xq = rng.normal(size=(q, x.shape[1])).astype(np.float32)
        outs[q] = predict(model, xq, np.full(q, 0.7, np.float32))
        assert outs[q][0].value.shape == (q,)
        sizes.append(predict_block._cache_size())
    # at most one new program (none if another test on this worker compiled it), by the first
    assert sizes == [sizes[0]] * 5 and sizes[0] <= before + 1, (before, sizes)
    # chunks and padding change nothing: the first rows agree with a direct call
    est, corrected = predict_block(model, jnp.asarray(xq[:1024]), jnp.full(1024, 0.7))
    np.testing.assert_allclose(outs[1100][1][:1024], corrected, rtol=1e-6, atol=1e-7)


def test_predict_recovers_the_planted_field_on_new_items():
    """A predict that ignored the field, or the correction, would fail this."""
    d = make_planted(6000, seed=11)  # one planted world: the first half fits, the second tests
    fit_rows, new = slice(0, 3000), slice(3000, None)
    model, _ = jit_fit(
        jax.random.key(0), d.embeddings[fit_rows], d.conf[fit_rows], d.correct[fit_rows], FAST
    )
    est, corrected = predict(model, d.embeddings[new], d.conf[new])
    assert np.corrcoef(np.asarray(est.value), d.field[new])[0, 1] > 0.7
    # held-out Brier: the local correction beats the confidence-only global map
    p_global = apply_global(fit_global(d.conf[fit_rows], d.correct[fit_rows]), d.conf[new])
    brier = lambda q: float(np.mean((np.asarray(q) - d.correct[new]) ** 2))
    assert brier(corrected) < brier(p_global) - 0.002, (brier(corrected), brier(p_global))


@pytest.mark.slow
def test_configs_are_pytrees_jit_needs_no_static_args_and_a_sweep_compiles_once():
    x, p, y = _data()
    cfg = FitConfig(
        folds=2,
        candidates=("raw", "linear"),
        encoder=EncoderConfig(out_dim=4, max_steps=20, eval_every=10, linear_batch_size=64),
    )
    shapes = jax.eval_shape(fit, jax.random.key(0), x, p, y, cfg)
    assert shapes[0].ref_x.shape == x.shape
    fit_jit = jax.jit(fit)  # (jit caches are shared per function: count the increase)
    models, sizes = [], []
    for lr in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1):
        sweep = cfg.replace(encoder=cfg.encoder.replace(linear_learning_rate=lr))
        models.append(fit_jit(jax.random.key(0), x, p, y, sweep)[0])
        sizes.append(fit_jit._cache_size())
    assert sizes == [sizes[0]] * 5, sizes  # compiled by the first call only
    weights = [np.asarray(jax.tree.leaves(m.geometry.params)[0]) for m in models]
    assert not np.allclose(weights[0], weights[-1])  # the traced step size is used
    # ... and the sweep vmaps: one program over all five step sizes
    rates = jnp.array([1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    axes = cfg.replace(encoder=cfg.encoder.replace(learning_rate=None, weight_decay=None,
                                                   linear_learning_rate=0))  # fmt: skip
    batched = cfg.replace(encoder=cfg.encoder.replace(linear_learning_rate=rates))
    many, _ = jax.jit(jax.vmap(fit, in_axes=(None, None, None, None, axes)))(
        jax.random.key(0), x, p, y, batched
    )
    np.testing.assert_allclose(
        np.asarray(jax.tree.leaves(many.geometry.params)[0][-1]), weights[-1], rtol=1e-4,
        atol=1e-5,
    )  # fmt: skip


@pytest.mark.slow
def test_a_batch_of_eight_models_is_first_class(tmp_path):
    """vmap(fit) over 8 models: predict, out_of_fold, select_model and a bit-exact save/load."""
    from miscal_jax.model import num_models, select_model

    x, p, y = _data()
    rng = np.random.default_rng(3)
    confs = np.clip(p[None] + rng.normal(0, 0.05, (8, p.shape[0])), 0.01, 0.99).astype(np.float32)
    corrects = np.stack([y] * 8)
    cfg = FitConfig(folds=3, candidates=("raw", "std"))
    many, _ = jax.jit(jax.vmap(fit, in_axes=(None, None, 0, 0, None)))(
        jax.random.key(0), x, confs, corrects, cfg
    )
    assert num_models(many) == 8
    est, corrected = out_of_fold(many)
    new_est, new_p = predict(many, x[:7], np.full(7, 0.6, np.float32))
    assert est.value.shape == (8, x.shape[0]) and new_p.shape == (8, 7)
    for i in (0, 5):
        one = select_model(many, i)
        np.testing.assert_allclose(out_of_fold(one)[1], corrected[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            predict(one, x[:7], np.full(7, 0.6, np.float32))[1], new_p[i], rtol=1e-5, atol=1e-6
        )
    save(many, tmp_path / "many.msgpack")
    back = load(tmp_path / "many.msgpack")
    assert num_models(back) == 8
    for a, b in zip(jax.tree.leaves(many), jax.tree.leaves(back), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="i: the batch holds 8 models"):
        select_model(many, 8)


@pytest.mark.slow
def test_fit_many_holds_the_shared_embeddings_once(tmp_path):
    """fit_many equals vmap(fit) leaf for leaf, but keeps one [n, d] ref_x; every
    batch consumer (out_of_fold, predict, select_model, save/load, the statistics)
    takes it."""
    from miscal_jax.model import fit_many, num_models, select_model
    from miscal_jax.stats import discover_regimes, heterogeneity_test

    x, p, y = _data()
    rng = np.random.default_rng(4)
    confs = np.clip(p[None] + rng.normal(0, 0.05, (3, p.shape[0])), 0.01, 0.99).astype(np.float32)
    corrects = np.stack([y] * 3)
    cfg = FitConfig(folds=3, candidates=("raw",))
    shared, _ = jax.jit(fit_many)(jax.random.key(0), x, confs, corrects, cfg)
    copied, _ = jax.jit(jax.vmap(fit, in_axes=(None, None, 0, 0, None)))(
        jax.random.key(0), x, confs, corrects, cfg
    )
    assert shared.ref_x.shape == x.shape and copied.ref_x.shape == (3, *x.shape)
    assert num_models(shared) == 3
    for a, b in zip(
        jax.tree.leaves(shared.replace(ref_x=None)),
        jax.tree.leaves(copied.replace(ref_x=None)),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_of_fold(shared)[1], out_of_fold(copied)[1], atol=1e-6)
    new = (x[:9], np.full(9, 0.7, np.float32))
    np.testing.assert_allclose(predict(shared, *new)[1], predict(copied, *new)[1], atol=1e-6)
    one = select_model(shared, 2)
    assert num_models(one) is None and one.ref_x.shape == x.shape
    np.testing.assert_allclose(predict(one, *new)[1], predict(copied, *new)[1][2], atol=1e-6)
    key = jax.random.key(1)
    np.testing.assert_allclose(
        heterogeneity_test(key, shared, num_permutations=10).null,
        heterogeneity_test(key, copied, num_permutations=10).null,
        rtol=1e-5,
        atol=1e-7,
    )
    assert discover_regimes(key, shared).valid.shape == (3, 8)
    save(shared, tmp_path / "shared.msgpack")
    back = load(tmp_path / "shared.msgpack")
    assert back.ref_x.shape == x.shape
    for a, b in zip(jax.tree.leaves(shared), jax.tree.leaves(back), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
