"""Binned kernel sums against exact ones: equal with a bin per point, close with narrow bins."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miscal_jax.kernels import kernel_moments
from miscal_jax.kernels.binned import (
    assign_cells,
    bin_points,
    bin_radius,
    binned_moments,
    cell_centres,
)
from miscal_jax.smoothing.nadaraya_watson import field_from_moments


def _points(n=300, k=3, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)).astype(np.float32)
    r = rng.normal(size=n).astype(np.float32)
    return z, np.stack([r, r * r], 1), rng.random(n) < 0.8


@pytest.mark.parametrize("kernel", ["gaussian", "epanechnikov"])
@pytest.mark.parametrize("log_bw", [0.3, (-0.5, 0.0, 0.7)])
def test_a_bin_per_point_is_exact_with_and_without_leave_one_out(kernel, log_bw):
    z, v, mask = _points()
    n, log_bw = z.shape[0], jnp.asarray(log_bw)
    bins = bin_points(z, v, mask, jnp.arange(n), n)
    queries = np.arange(40)
    exact = kernel_moments(z[queries], z, v, log_bw, ref_mask=mask, kernel=kernel)
    approx = binned_moments(z[queries], bins, log_bw, kernel=kernel)
    own = np.where(mask[queries], queries, -1)
    exact_loo = kernel_moments(
        z[queries], z, v, log_bw, ref_mask=mask, query_index=own, kernel=kernel
    )
    approx_loo = binned_moments(
        z[queries],
        bins,
        log_bw,
        kernel=kernel,
        self_bin=bins.label[queries],
        self_values=v[queries],
    )
    for e, a in ((exact, approx), (exact_loo, approx_loo)):
        fe, fa = field_from_moments(e), field_from_moments(a)
        np.testing.assert_allclose(fa.value, fe.value, atol=1e-5)
        np.testing.assert_allclose(fa.n_eff, fe.n_eff, rtol=1e-4, atol=1e-4)


def test_narrow_bins_are_accurate_and_the_radius_predicts_the_error():
    rng = np.random.default_rng(1)
    z = rng.uniform(size=(4000, 2)).astype(np.float32)
    r = (np.sin(6 * z[:, 0]) * 0.3 + rng.normal(scale=0.3, size=4000)).astype(np.float32)
    v, mask = np.stack([r, r * r], 1), np.ones(4000, bool)
    exact = field_from_moments(kernel_moments(z, z, v, np.log(0.1))).value
    errors, radii = [], []
    for cells in (64, 1024):
        centres = cell_centres(jax.random.key(0), z, mask, cells)
        label = 2 * assign_cells(z, centres) + (r > 0)  # split by sign, as the model splits
        bins = bin_points(z, v, mask, label, 2 * cells)
        approx = field_from_moments(binned_moments(z, bins, np.log(0.1))).value
        errors.append(float(jnp.max(jnp.abs(approx - exact))))
        radii.append(float(bin_radius(z, bins, np.log(0.1))))
    assert radii[1] < 0.15 < 0.4 < radii[0]
    assert errors[1] < 0.005 < 0.015 < errors[0]  # finer bins, smaller error


def test_leaving_out_an_item_alone_in_its_bin_and_far_queries_stay_finite():
    z = np.array([[0.0], [0.1], [50.0]], np.float32)
    v = np.array([[1.0, 1.0], [-1.0, 1.0], [0.5, 0.25]], np.float32)
    bins = bin_points(z, v, np.ones(3, bool), jnp.array([0, 0, 1]), 2)
    loo = binned_moments(z, bins, 0.0, self_bin=bins.label, self_values=v)
    est = field_from_moments(loo)
    assert np.isfinite(np.asarray(est.value)).all()
    assert float(est.n_eff[2]) < 1e-3 and float(est.value[2]) == 0.0  # nothing else in reach
    np.testing.assert_allclose(est.value[:2], [-1.0, 1.0], atol=1e-5)  # its bin-mate's value
    far = field_from_moments(binned_moments(np.array([[1e4]], np.float32), bins, 0.0))
    assert np.isfinite(float(far.value[0])) and float(far.n_eff[0]) == 0.0


def test_cell_centres_use_only_masked_points_and_assign_to_the_nearest():
    z = np.concatenate([np.zeros((20, 2)), np.full((20, 2), 5.0)]).astype(np.float32)
    mask = np.arange(40) < 20
    centres = cell_centres(jax.random.key(0), z, mask, 3)
    np.testing.assert_allclose(centres, 0.0, atol=1e-6)  # the unmasked cluster is never a centre
    np.testing.assert_array_equal(assign_cells(z[:3], np.array([[9.0, 9], [0, 0]])), [1, 1, 1])
