"""Binned kernel sums against exact ones: equal with a bin per point, close with narrow bins."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miscal_jax.kernels import kernel_moments
from miscal_jax.kernels.binned import (
    bin_points,
    bin_radius,
    binned_moments,
    leaf_members,
    near_moments,
    route,
    tree_cells,
)
from miscal_jax.kernels.moments import combine
from miscal_jax.smoothing.nadaraya_watson import field_from_moments


def _points(n=300, k=3, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)).astype(np.float32)
    r = rng.normal(size=n).astype(np.float32)
    return z, np.stack([r, r * r], 1), rng.random(n) < 0.8


@pytest.mark.parametrize("kernel", ["gaussian", "epanechnikov"])
@pytest.mark.parametrize("log_bw", [0.3, (-0.5, 0.0, 0.7)])
def test_a_bin_per_point_is_exact(kernel, log_bw):
    z, v, mask = _points()
    n, log_bw = z.shape[0], jnp.asarray(log_bw)
    bins = bin_points(z, v, mask, jnp.arange(n), n)
    exact = kernel_moments(z[:40], z, v, log_bw, ref_mask=mask, kernel=kernel)
    approx = binned_moments(z[:40], bins, log_bw, kernel=kernel)
    fe, fa = field_from_moments(exact), field_from_moments(approx)
    np.testing.assert_allclose(fa.value, fe.value, atol=1e-5)
    np.testing.assert_allclose(fa.n_eff, fe.n_eff, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("depth", [4, 8])
def test_far_bins_without_the_own_leaf_plus_its_exact_sums(depth):
    z, v, mask = _points(n=256)
    tree = tree_cells(z, depth)  # 2^depth leaves of 256 / 2^depth points
    leaves = 1 << depth
    bins = bin_points(z, v, mask, 2 * tree.leaf + (v[:, 0] > 0), 2 * leaves)
    members = leaf_members(tree.leaf, leaves)
    assert (np.sort(np.asarray(members).ravel()) == np.arange(256)).all()
    query, leaf, own = z[:30], tree.leaf[:30], np.arange(30)
    far = binned_moments(query, bins, 0.5, skip=leaf, group=2)
    idx = members[leaf]
    near = near_moments(query, z[idx], v[idx], mask[idx] & (idx != own[:, None]), 0.5)
    both = field_from_moments(combine(jax.tree.map(lambda a, b: jnp.stack([a, b]), far, near)))
    exact = field_from_moments(kernel_moments(query, z, v, 0.5, ref_mask=mask, query_index=own))
    if depth == 8:  # leaves (and bins) of one point: the far field is exact too
        np.testing.assert_allclose(both.value, exact.value, atol=1e-5)
        np.testing.assert_allclose(both.n_eff, exact.n_eff, rtol=1e-4)
    else:  # bins of about 8 points a bandwidth wide: close, not exact
        assert np.corrcoef(both.value, exact.value)[0, 1] > 0.9
    np.testing.assert_array_equal(route(z, tree), tree.leaf)  # distinct points go where built


def test_narrow_bins_are_accurate_and_the_radius_predicts_the_error():
    rng = np.random.default_rng(1)
    z = rng.uniform(size=(4000, 2)).astype(np.float32)
    r = (np.sin(6 * z[:, 0]) * 0.3 + rng.normal(scale=0.3, size=4000)).astype(np.float32)
    v, mask = np.stack([r, r * r], 1), np.ones(4000, bool)
    exact = field_from_moments(kernel_moments(z, z, v, np.log(0.1))).value
    errors, radii = [], []
    for depth in (6, 10):
        label = 2 * tree_cells(z, depth).leaf + (r > 0)  # split by sign, as the model splits
        bins = bin_points(z, v, mask, label, 2 << depth)
        approx = field_from_moments(binned_moments(z, bins, np.log(0.1))).value
        errors.append(float(jnp.max(jnp.abs(approx - exact))))
        radii.append(float(bin_radius(z, bins, np.log(0.1))))
    assert radii[1] < 0.15 < 0.4 < radii[0]
    assert errors[1] < 0.005 < 0.015 < errors[0]  # finer bins, smaller error


def test_far_queries_and_empty_bins_stay_finite():
    z = np.array([[0.0], [0.1], [50.0]], np.float32)
    v = np.array([[1.0, 1.0], [-1.0, 1.0], [0.5, 0.25]], np.float32)
    bins = bin_points(z, v, np.array([True, True, False]), jnp.array([0, 0, 1]), 3)
    far = field_from_moments(binned_moments(np.array([[1e4]], np.float32), bins, 0.0))
    assert np.isfinite(float(far.value[0])) and float(far.n_eff[0]) == 0.0
    alone = field_from_moments(binned_moments(z[:1], bins, 0.0, skip=np.array([0])))
    assert float(alone.value[0]) == 0.0 and float(alone.n_eff[0]) == 0.0  # nothing left


def test_tree_cells_are_balanced_and_split_along_the_spread():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(1003, 5)).astype(np.float32) * np.array([10, 1, 1, 1, 0.1], np.float32)
    leaves = np.asarray(tree_cells(z, 4).leaf)
    sizes = np.bincount(leaves, minlength=16)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 1003
    first = np.asarray(tree_cells(z, 1).leaf)  # the first split is along the widest axis
    assert abs(np.corrcoef(first, z[:, 0])[0, 1]) > 0.79  # sqrt(2 / pi) at most
    with pytest.raises(ValueError, match="depth"):
        tree_cells(z[:7], 3)
