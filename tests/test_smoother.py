import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miscal_jax.kernels import moments as kernel_sums
from miscal_jax.kernels.shapes import get_log_kernel
from miscal_jax.smoothing.nadaraya_watson import (
    N_EFF_EPS,
    PRIOR_VAR,
    bandwidth_grid,
    loo_errors,
    loo_field,
    nw_field,
    select_bandwidth,
)


def _data(n=37, q=23, d=3, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n, d)).astype(np.float32)
    query = rng.normal(size=(q, d)).astype(np.float32)
    residual = (rng.random(n) < 0.6).astype(np.float32) - rng.random(n).astype(np.float32)
    return query, ref, residual


def dense_reference(query, ref, residual, h, kernel="gaussian", loo=False):
    """Slow, obvious float64 Nadaraya-Watson with the full [q, n] matrix."""
    query, ref, residual = (np.asarray(a, np.float64) for a in (query, ref, residual))
    d2 = ((query[:, None, :] - ref[None, :, :]) ** 2).sum(-1) / h**2
    if kernel == "gaussian":
        w = np.exp(-0.5 * d2)
    else:
        w = np.where(d2 < 1, 1 - d2, 0.0) ** (1 if kernel == "epanechnikov" else 3)
    if loo:
        np.fill_diagonal(w, 0.0)
    sw, sw2 = w.sum(1), (w**2).sum(1)
    value = np.where(sw > 0, (w * residual).sum(1) / np.where(sw > 0, sw, 1), 0.0)
    var = (w * (residual - value[:, None]) ** 2).sum(1) / np.where(sw > 0, sw, 1)
    n_eff = sw**2 / (sw2 + N_EFF_EPS**2)
    s2 = (n_eff * var + PRIOR_VAR) / (n_eff + 1)
    return value, np.sqrt(s2 / (n_eff + s2)), n_eff


@pytest.mark.parametrize("kernel", ["gaussian", "epanechnikov", "triweight"])
@pytest.mark.parametrize("chunk_size", [1, 23, 7, 5, 1000])
def test_chunked_equals_dense(kernel, chunk_size):
    query, ref, residual = _data()
    h = 1.3
    est = nw_field(query, ref, residual, np.log(h), kernel=kernel, chunk_size=chunk_size)
    for got, want in zip(est, dense_reference(query, ref, residual, h, kernel), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("chunk_size", [1, 37, 10])
def test_loo_equals_dense(chunk_size):
    _, ref, residual = _data()
    est = loo_field(ref, residual, np.log(0.9), chunk_size=chunk_size)
    for got, want in zip(est, dense_reference(ref, ref, residual, 0.9, loo=True), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_jit_equals_no_jit():
    query, ref, residual = _data()
    est = nw_field(query, ref, residual, 0.1, chunk_size=4)
    with jax.disable_jit():
        slow = nw_field(query, ref, residual, 0.1, chunk_size=4)
    for a, b in zip(est, slow, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_vmapped_equals_looped_over_bandwidths():
    query, ref, residual = _data()
    log_bws = jnp.linspace(-1.0, 1.0, 5)
    f = lambda lb: nw_field(query, ref, residual, lb, chunk_size=8).value
    vmapped = jax.vmap(f)(log_bws)
    looped = jnp.stack([f(lb) for lb in log_bws])
    np.testing.assert_allclose(vmapped, looped, rtol=1e-5, atol=1e-6)


def test_vmapped_equals_looped_over_residual_sets():
    query, ref, residual = _data()
    sets = jnp.stack([residual, -residual, residual**2])
    f = lambda r: nw_field(query, ref, r, 0.0, chunk_size=6).value
    np.testing.assert_allclose(jax.vmap(f)(sets), jnp.stack([f(r) for r in sets]), atol=1e-6)


@pytest.mark.parametrize("kernel", ["gaussian", "triweight"])
def test_gradient_matches_finite_differences(kernel):
    query, ref, residual = _data(q=5)
    with jax.enable_x64(True):
        q64, r64, res64 = (jnp.asarray(a, jnp.float64) for a in (query, ref, residual))

        def loss(log_bw, q):
            est = nw_field(q, r64, res64, log_bw, kernel=kernel, chunk_size=2, ref_block=8)
            return jnp.sum(est.value**2) + jnp.sum(est.se) + 1e-2 * jnp.sum(est.n_eff)

        lb = jnp.float64(0.4)
        g_bw, g_q = jax.grad(loss, argnums=(0, 1))(lb, q64)
        eps = 1e-5
        fd = (loss(lb + eps, q64) - loss(lb - eps, q64)) / (2 * eps)
        np.testing.assert_allclose(g_bw, fd, rtol=1e-5, atol=1e-8)
        e = np.zeros_like(query, dtype=np.float64)
        e[1, 2] = eps
        fdq = (loss(lb, q64 + e) - loss(lb, q64 - e)) / (2 * eps)
        np.testing.assert_allclose(g_q[1, 2], fdq, rtol=1e-5, atol=1e-8)


def test_gradients_finite_at_zero_distance_and_zero_mass():
    _, ref, residual = _data()
    on_top = jnp.asarray(ref[:3])  # queries exactly at references
    far = jnp.full((2, ref.shape[1]), 1e4)

    for kernel in ("gaussian", "epanechnikov"):
        for q in (on_top, far):
            g = jax.grad(
                lambda lb, q, k=kernel: jnp.sum(nw_field(q, ref, residual, lb, kernel=k).value),
                argnums=(0, 1),
            )(0.0, q)
            assert all(np.all(np.isfinite(x)) for x in g)


def test_far_queries_are_finite_with_no_support():
    _, ref, residual = _data()
    far = np.full((3, ref.shape[1]), 1e3, np.float32)
    for kernel in ("gaussian", "epanechnikov"):
        est = nw_field(far, ref, residual, np.log(0.5), kernel=kernel)
        assert np.all(np.isfinite(est.value)) and np.all(np.isfinite(est.se))
        np.testing.assert_allclose(est.n_eff, 0.0, atol=1e-6)
        np.testing.assert_allclose(est.se, 1.0, atol=1e-6)


def test_degenerate_residuals_give_finite_output():
    _, ref, _ = _data()
    for residual in (np.zeros(len(ref)), np.ones(len(ref))):
        est = loo_field(ref, residual, 0.0)
        assert np.all(np.isfinite(np.stack(est)))
        np.testing.assert_allclose(est.value, residual, atol=1e-6)
        assert np.all(est.se > 0)  # the prior keeps intervals from collapsing


def test_self_excluded_in_loo():
    ref = np.array([[0.0], [10.0]], np.float32)
    est = loo_field(ref, np.array([1.0, -1.0]), np.log(100.0))
    np.testing.assert_allclose(est.value, [-1.0, 1.0], atol=1e-6)


def test_select_bandwidth_matches_brute_force():
    _, ref, residual = _data(n=60)
    grid = bandwidth_grid(ref, num=7)
    best, errs = select_bandwidth(ref, residual, log_bandwidths=grid, chunk_size=7)
    assert errs.shape == (7,)
    brute = [
        np.mean((residual - dense_reference(ref, ref, residual, np.exp(g), loo=True)[0]) ** 2)
        for g in grid
    ]
    np.testing.assert_allclose(errs, brute, rtol=1e-4)
    assert float(best) == pytest.approx(grid[int(np.argmin(brute))])


def test_bandwidth_selection_finds_signal_scale():
    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 3, size=(800, 1)).astype(np.float32)
    field = 0.3 * np.sin(2 * x[:, 0])
    residual = (rng.random(800) < 0.5 + field).astype(np.float32) - 0.5
    best, _ = select_bandwidth(x, residual)
    est = loo_field(x, residual, best)
    assert np.corrcoef(est.value, field)[0, 1] > 0.8
    assert 0.05 < float(jnp.exp(best)) < 1.5


def test_no_retrace_when_values_change():
    query, ref, residual = _data()
    nw_field(query, ref, residual, 0.0, chunk_size=4)
    before = kernel_sums._kernel_moments._cache_size()
    for lb in (0.5, -0.3):
        nw_field(query * lb, ref, residual * lb, lb, chunk_size=4)
    assert kernel_sums._kernel_moments._cache_size() == before


def test_loo_errors_all_bandwidths_in_one_compiled_pass():
    _, ref, residual = _data()
    grid = jnp.asarray(bandwidth_grid(ref, num=4))
    loo_errors(ref, residual, grid)
    before = kernel_sums._kernel_moments._cache_size()
    for s in (1.0, 2.0):
        loo_errors(ref, residual * s, grid + s)
    assert kernel_sums._kernel_moments._cache_size() == before


def test_nearby_sizes_share_compiled_code():
    _, ref, residual = _data(n=300)
    nw_field(ref[:250], ref[:250], residual[:250], 0.0)
    before = kernel_sums._kernel_moments._cache_size()
    for n in (251, 255, 240):
        nw_field(ref[:n], ref[:n], residual[:n], 0.0)
    assert kernel_sums._kernel_moments._cache_size() == before


def test_select_bandwidth_traces_under_jit_and_vmap():
    _, ref, residual = _data(n=60)
    best, errs = jax.jit(select_bandwidth)(ref, residual)
    want_best, want_errs = select_bandwidth(ref, residual)
    np.testing.assert_allclose(errs, want_errs, rtol=1e-5)
    sets = jnp.stack([residual, -residual, 0.5 * residual])
    bests, _ = jax.vmap(lambda r: select_bandwidth(ref, r))(sets)
    np.testing.assert_allclose(bests, [select_bandwidth(ref, r)[0] for r in sets], rtol=1e-6)


def test_masked_references_equal_dropped_references():
    query, ref, residual = _data()
    keep = np.arange(len(ref)) % 3 != 0
    masked = nw_field(query, ref, residual, 0.1, ref_mask=keep)
    dropped = nw_field(query, ref[keep], residual[keep], 0.1)
    for a, b in zip(masked, dropped, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    grid = bandwidth_grid(ref, num=5)
    np.testing.assert_allclose(
        loo_errors(ref, residual, grid, ref_mask=keep),
        loo_errors(ref[keep], residual[keep], grid),
        rtol=1e-5,
    )


def test_rejects_bad_shapes_and_kernel():
    query, ref, residual = _data()
    with pytest.raises(ValueError, match=r"ref_residual: expected shape \[37\]"):
        nw_field(query, ref, residual[:-1], 0.0)
    with pytest.raises(ValueError, match=r"query/ref: expected \[q, k\] and \[n, k\]"):
        nw_field(query[:, :2], ref, residual, 0.0)
    with pytest.raises(ValueError, match=r"chunk_size: must be a positive int"):
        nw_field(query, ref, residual, 0.0, chunk_size=0)
    with pytest.raises(ValueError, match=r"kernel: unknown kernel 'box'"):
        get_log_kernel("box")


def test_bandwidth_grid_does_not_depend_on_row_order():
    # rows grouped by cluster (as data sorted by category are) must not shrink the scale
    rng = np.random.default_rng(0)
    centres = 10.0 * rng.normal(size=(20, 8))
    x = centres[np.sort(rng.integers(20, size=2000))] + rng.normal(size=(2000, 8))
    grouped = np.asarray(bandwidth_grid(x))
    shuffled = np.asarray(bandwidth_grid(x[rng.permutation(2000)]))
    np.testing.assert_allclose(grouped, shuffled, atol=0.1)  # within 10% in scale
