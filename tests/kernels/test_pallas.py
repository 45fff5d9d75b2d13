"""Both Pallas kernels, in the interpreter at their *default* tiles, against dense float64.

The data span several tiles in each direction (300 queries, 1,100 references:
5 x 18 GPU tiles, 2 x 3 TPU tiles), with a ragged last tile, leave-one-out,
masked references, two bandwidths, and ``d = 70`` so the GPU kernel's column
chunks (64) and padding are exercised.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from test_moments import absolute, dense_reference

from miscal_jax.kernels import pallas_gpu, pallas_tpu
from miscal_jax.kernels.moments import pad_rows, round_up


@pytest.mark.parametrize("kernel", ["gaussian", "epanechnikov"])
@pytest.mark.parametrize("d", [3, 70])
@pytest.mark.parametrize("module", [pallas_gpu, pallas_tpu], ids=["triton", "mosaic"])
def test_default_tiles_equal_dense_float64(module, d, kernel):
    rng = np.random.default_rng(d)
    q, n, c = 300, 1100, 3
    ref = rng.normal(size=(n, d)).astype(np.float32)
    query, values = ref[:q] + 0.01, rng.normal(size=(n, c)).astype(np.float32)
    query_index, ref_mask = np.arange(q), np.arange(n) % 7 != 3
    h = np.array([0.6, 1.5]) * np.sqrt(d)
    bq, bn = module.TILES[:2]
    big_q, big_n = round_up(q, bq), round_up(n, bn)
    codes = np.where(ref_mask, np.arange(n), -2).astype(np.int32)
    ones = np.concatenate([np.ones((n, 1), np.float32), values], axis=1)
    out = module.forward(
        pad_rows(jnp.asarray(query), big_q),
        pad_rows(jnp.asarray(query_index, jnp.int32), big_q, -1),
        pad_rows(jnp.asarray(ref), big_n),
        pad_rows(jnp.asarray(codes), big_n, -2),
        pad_rows(jnp.asarray(ones), big_n),
        jnp.asarray(h**-2, jnp.float32),
        kernel=kernel,
        loo=True,
        interpret=True,
    )
    assert out.sum_wv.shape == (2, big_q, c)
    for k in range(2):
        got = absolute(type(out)(*(a[k, :q] for a in out)))
        want = dense_reference(query, ref, values, h[k], kernel, query_index, ref_mask)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("kernel", ["gaussian", "triweight"])
def test_fused_triton_backward_equals_dense_gradient(kernel):
    """The two backward kernels (in the interpreter) against autodiff of the dense path:
    several tiles each way, leave-one-out, masks, two bandwidths, d = 70 (two column chunks)."""
    import jax

    from miscal_jax.kernels import kernel_moments

    rng = np.random.default_rng(1)
    q, n, d = 100, 150, 70
    ref = rng.normal(size=(n, d)).astype(np.float32)
    query, values = ref[:q] + 0.01, rng.normal(size=(n, 2)).astype(np.float32)
    kw = dict(kernel=kernel, query_index=np.arange(q), ref_mask=np.arange(n) % 5 != 2)

    def loss(lb, query, ref, values, **impl):
        m = kernel_moments(query, ref, values, lb, **kw, **impl)
        s = jnp.exp(m.log_scale)
        ratio = m.sum_wv[..., 0] / jnp.maximum(m.sum_w, 1e-12)
        return jnp.sum(ratio**2) + jnp.sum(s * m.sum_w) + jnp.sum(s**2 * m.sum_w2)

    args = (jnp.log(jnp.array([0.8, 1.4]) * np.sqrt(d)), query, ref, values)
    got = jax.grad(loss, argnums=(0, 1, 2, 3))(*args, impl="pallas", interpret=True)
    want = jax.grad(loss, argnums=(0, 1, 2, 3))(*args, impl="dense")
    for a, b in zip(got, want, strict=True):
        scale = np.max(np.abs(b))
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale)
