"""Every path of the kernel-sum primitive against a dense float64 NumPy reference."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miscal_jax.kernels.moments import KernelMoments, combine, kernel_moments


def _data(q=29, n=45, d=3, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(q, d)).astype(np.float32),
        rng.normal(size=(n, d)).astype(np.float32),
        rng.normal(size=(n, c)).astype(np.float32),
    )


def dense_reference(query, ref, values, h, kernel, query_index=None, ref_mask=None):
    """Absolute sums ``sum w``, ``sum w V``, ``sum w^2`` with the full float64 matrix."""
    query, ref, values = (np.asarray(a, np.float64) for a in (query, ref, values))
    u2 = ((query[:, None, :] - ref[None, :, :]) ** 2).sum(-1) / h**2
    if kernel == "gaussian":
        w = np.exp(-0.5 * u2)
    else:
        w = np.where(u2 < 1, 1 - u2, 0.0) ** (1 if kernel == "epanechnikov" else 3)
    if query_index is not None:
        for i, j in enumerate(query_index):
            if j >= 0:
                w[i, j] = 0.0
    if ref_mask is not None:
        w[:, ~np.asarray(ref_mask)] = 0.0
    return w.sum(1), w @ values, (w**2).sum(1)


def absolute(m: KernelMoments):
    s = np.exp(np.asarray(m.log_scale, np.float64))
    return s * m.sum_w, s[..., None] * m.sum_wv, s**2 * m.sum_w2


PATHS = [
    dict(impl="xla", query_block=1, ref_block=1),
    dict(impl="xla", query_block=8, ref_block=16),
    dict(impl="xla", query_block=7, ref_block=1000),
    dict(impl="pallas", query_block=16, ref_block=16),
    dict(impl="pallas", query_block=64, ref_block=32),
    dict(impl="dense"),
]


@pytest.mark.parametrize("kernel", ["gaussian", "epanechnikov", "triweight"])
@pytest.mark.parametrize("path", PATHS, ids=lambda p: "-".join(map(str, p.values())))
@pytest.mark.parametrize("loo_and_mask", [False, True])
def test_every_path_equals_dense_float64(kernel, path, loo_and_mask):
    query, ref, values = _data()
    h = 1.1
    query_index = ref_mask = None
    if loo_and_mask:
        query, query_index = ref[:29], np.arange(29)
        ref_mask = np.arange(45) % 4 != 1
    got = kernel_moments(
        query,
        ref,
        values,
        np.log(h),
        kernel=kernel,
        query_index=query_index,
        ref_mask=ref_mask,
        **path,
    )
    want = dense_reference(query, ref, values, h, kernel, query_index, ref_mask)
    for a, b in zip(absolute(got), want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_many_bandwidths_equal_one_at_a_time():
    query, ref, values = _data()
    grid = np.log([0.3, 1.0, 4.0])
    many = kernel_moments(query, ref, values, grid, ref_block=16)
    for k, lb in enumerate(grid):
        one = kernel_moments(query, ref, values, lb, ref_block=16)
        for a, b in zip(
            absolute(one), absolute(jax.tree.map(lambda x, k=k: x[k], many)), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_far_queries_have_no_mass_and_no_nan():
    _, ref, values = _data()
    far = np.full((3, 3), 1e3, np.float32)
    for impl in ("xla", "pallas", "dense"):
        # compact kernels: no reference in reach, -inf scale and zero sums
        m = kernel_moments(far, ref, values, np.log(0.5), kernel="epanechnikov", impl=impl)
        assert np.all(np.isneginf(m.log_scale))
        for a in (m.sum_w, m.sum_wv, m.sum_w2):
            np.testing.assert_array_equal(a, 0.0)
        # Gaussian: absolute weights underflow, the running maximum keeps the
        # relative sums finite and the nearest reference at relative weight 1
        m = kernel_moments(far, ref, values, np.log(0.5), impl=impl)
        assert np.all(m.log_scale < -1e6) and np.all(np.isfinite(m.log_scale))
        np.testing.assert_allclose(m.sum_w, 1.0, rtol=1e-6)
        assert np.all(np.isfinite(m.sum_wv))


@pytest.mark.parametrize("impl", ["xla", "pallas"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_low_precision_inputs_accumulate_in_float32(dtype, impl):
    """bfloat16/float16 points and values: float32 moments, exact for the rounded inputs."""
    query, ref, values = (jnp.asarray(a, dtype) for a in _data())
    m = kernel_moments(query, ref, values, 0.0, ref_block=16, impl=impl)
    assert all(a.dtype == jnp.float32 for a in m)
    # against the float64 reference on the *rounded* inputs: only accumulation error is left
    rounded = (np.asarray(a, np.float64) for a in (query, ref, values))
    want = dense_reference(*rounded, 1.0, "gaussian")
    for a, b in zip(absolute(m), want, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5)


def test_bfloat16_field_within_1e2_of_float64_at_the_loo_bandwidth():
    """Planted data, 16k references in bfloat16: the smoothed value at the LOO-selected
    bandwidth (and at a tenth of the median distance) within 1e-2 of float64's."""
    from miscal_jax.smoothing import select_bandwidth
    from miscal_jax.synthetic import make_planted

    data = make_planted(16384, signal_dim=8, seed=3)
    z = np.asarray(data.embeddings, np.float32)
    r = (np.asarray(data.correct, np.float32) - np.asarray(data.conf, np.float32))[:, None]
    log_h = float(select_bandwidth(z, r[:, 0])[0])
    median = np.median(np.linalg.norm(z[:200, None] - z[None, :200], axis=-1))
    query = z[:256]
    for lb in (log_h, np.log(0.1 * median)):
        m16 = kernel_moments(jnp.asarray(query, jnp.bfloat16), jnp.asarray(z, jnp.bfloat16),
                             jnp.asarray(r, jnp.bfloat16), lb)  # fmt: skip
        with jax.enable_x64(True):
            m64 = kernel_moments(
                np.asarray(query, np.float64), np.asarray(z, np.float64), r.astype(np.float64), lb
            )
            field64 = np.asarray(m64.sum_wv[:, 0] / m64.sum_w)
        field16 = np.asarray(m16.sum_wv[:, 0] / m16.sum_w)
        assert np.max(np.abs(field16 - field64)) < 1e-2, (lb, np.max(np.abs(field16 - field64)))


def test_float64_matches_to_double_precision():
    with jax.enable_x64(True):
        query, ref, values = (jnp.asarray(a, jnp.float64) for a in _data())
        m = kernel_moments(query, ref, values, 0.2, ref_block=16)
        assert m.sum_wv.dtype == jnp.float64
        want = dense_reference(query, ref, values, np.exp(0.2), "gaussian")
        for a, b in zip(absolute(m), want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_checkpointed_gradient_equals_dense_gradient(impl):
    query, ref, values = _data(q=16, n=40)

    def loss(lb, q, z, v, impl):
        m = kernel_moments(q, z, v, lb, impl=impl, query_block=16, ref_block=16)
        s = jnp.exp(m.log_scale)
        ratio = m.sum_wv[:, 0] / m.sum_w
        return jnp.sum(ratio**2) + jnp.sum(s * m.sum_w) + jnp.sum(s**2 * m.sum_w2)

    args = (jnp.float32(0.3), query, ref, values)
    got = jax.grad(loss, argnums=(0, 1, 2, 3))(*args, impl)
    want = jax.grad(loss, argnums=(0, 1, 2, 3))(*args, "dense")
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_gradient_matches_finite_differences_float64():
    with jax.enable_x64(True):
        query, ref, values = (jnp.asarray(a, jnp.float64) for a in _data(q=6, n=20))

        def loss(lb, q):
            m = kernel_moments(q, ref, values, lb, ref_block=8, query_block=8)
            return jnp.sum(m.sum_wv[:, 1] / m.sum_w) + jnp.sum(jnp.exp(m.log_scale) * m.sum_w)

        g_lb, g_q = jax.grad(loss, argnums=(0, 1))(jnp.float64(0.1), query)
        eps = 1e-6
        fd = (loss(0.1 + eps, query) - loss(0.1 - eps, query)) / (2 * eps)
        np.testing.assert_allclose(g_lb, fd, rtol=1e-6)
        e = np.zeros(query.shape)
        e[2, 1] = eps
        np.testing.assert_allclose(
            g_q[2, 1], (loss(0.1, query + e) - loss(0.1, query - e)) / (2 * eps), rtol=1e-6
        )


def test_gradient_temporaries_stay_near_the_forward_pass():
    """Reverse mode recomputes blocks: its temporaries must not grow like [q, n]."""
    n, d = 8192, 16
    z = jax.ShapeDtypeStruct((n, d), jnp.float32)
    r = jax.ShapeDtypeStruct((n,), jnp.float32)

    def loss(z, r, lb):
        m = kernel_moments(z, z, r[:, None], lb, query_index=jnp.arange(n))
        return jnp.mean((r - m.sum_wv[:, 0] / m.sum_w) ** 2)

    lb = jax.ShapeDtypeStruct((), jnp.float32)
    fwd = jax.jit(loss).lower(z, r, lb).compile().memory_analysis().temp_size_in_bytes
    bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(z, r, lb).compile()
    bwd = bwd.memory_analysis().temp_size_in_bytes
    dense_matrix = n * n * 4
    assert bwd <= 2 * fwd + 2 * n * d * 4, (fwd, bwd)
    assert bwd < dense_matrix / 8, (fwd, bwd)


def _block_exponentials(compiled_text: str) -> list[str]:
    """Shapes of the ``[g, bq, bn]`` exponentials in an optimised XLA program."""
    return re.findall(r"(f32\[\d+,\d+,\d+\])\S* exponential\(", compiled_text)


def test_one_exponential_a_pair_forward_and_backward():
    """The XLA path evaluates each block's weights once forward and once backward.

    Guards two schedules found by reading the optimised HLO: without the
    forward's barrier XLA rewrites ``sum w^2``'s ``w * w`` as ``exp(2 log w)``
    (a second exponential a pair), and a backward in two layouts recomputes
    every block twice.
    """
    n, d = 4096, 16
    z = jax.ShapeDtypeStruct((n, d), jnp.float32)
    v = jax.ShapeDtypeStruct((n, 2), jnp.float32)
    lb = jax.ShapeDtypeStruct((), jnp.float32)
    forward = jax.jit(lambda z, v, lb: kernel_moments(z, z, v, lb)).lower(z, v, lb).compile()
    assert len(_block_exponentials(forward.as_text())) == 1

    def loss(z, v, lb):
        m = kernel_moments(z, z, v, lb, query_index=jnp.arange(n))
        return jnp.sum(m.sum_wv[:, 0] / m.sum_w) + jnp.sum(m.sum_w2)

    both = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(z, v, lb).compile()
    assert len(_block_exponentials(both.as_text())) == 2  # the forward's and the backward's


def test_combine_equals_one_pass_over_the_union():
    query, ref, values = _data()
    parts = [kernel_moments(query, ref[i::3], values[i::3], 0.1) for i in range(3)]
    both = combine(jax.tree.map(lambda *a: jnp.stack(a), *parts))
    for a, b in zip(absolute(both), absolute(kernel_moments(query, ref, values, 0.1)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_rejects_bad_arguments():
    query, ref, values = _data()
    with pytest.raises(ValueError, match=r"values: expected \[45, c\]"):
        kernel_moments(query, ref, values[:-1], 0.0)
    with pytest.raises(ValueError, match=r"query/ref: expected \[q, d\] and \[n, d\]"):
        kernel_moments(query[:, :2], ref, values, 0.0)
    with pytest.raises(ValueError, match=r"impl: expected one of"):
        kernel_moments(query, ref, values, 0.0, impl="cuda")
    with pytest.raises(ValueError, match=r"ref_mask: expected shape \[45\]"):
        kernel_moments(query, ref, values, 0.0, ref_mask=np.ones(3, bool))
    with pytest.raises(ValueError, match=r"query_index: expected shape \[29\]"):
        kernel_moments(query, ref, values, 0.0, query_index=np.arange(3))
    with pytest.raises(ValueError, match=r"log_bandwidth: expected a scalar or \[g\]"):
        kernel_moments(query, ref, values, np.zeros((2, 2)))
