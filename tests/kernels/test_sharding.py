"""The sharded and ring kernel sums on 8 host devices, against one device."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from miscal_jax.kernels import kernel_moments, kernel_moments_ring, kernel_moments_sharded
    from miscal_jax.kernels.sharded import _ring, _sharded
    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    mesh = jax.make_mesh((8,), ("d",))

    def absolute(m):
        s = np.exp(np.asarray(m.log_scale, np.float64))
        return s * m.sum_w, s[..., None] * m.sum_wv, s**2 * m.sum_w2

    def check(one, many, tol):
        for a, b in zip(absolute(one), absolute(many), strict=True):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)

    # 1. equal to one device: every kernel, leave-one-out and masks, two bandwidths
    z = rng.normal(size=(45, 3)).astype(np.float32)
    v = rng.normal(size=(45, 2)).astype(np.float32)
    for kernel in ("gaussian", "epanechnikov", "triweight"):
        for loo in (False, True):
            kw = dict(kernel=kernel, ref_mask=np.arange(45) % 5 != 0)
            if loo:
                kw["query_index"] = np.arange(45)
            one = kernel_moments(z, z, v, np.log([0.7, 1.5]), impl="dense", **kw)
            check(one, kernel_moments_sharded(z, z, v, np.log([0.7, 1.5]), mesh=mesh,
                                              ref_block=8, **kw), 1e-5)
            check(one, kernel_moments_ring(z, z, v, np.log([0.7, 1.5]), mesh=mesh,
                                           ref_block=8, **kw), 1e-5)

    # 2. the ring at 8 x 128 rows: every device holds 1/8 of queries, references, outputs
    n = 1024
    z = rng.normal(size=(n, 4)).astype(np.float32)
    v = rng.normal(size=(n, 2)).astype(np.float32)
    one = kernel_moments(z, z, v, np.log(0.5), query_index=np.arange(n))
    ring = kernel_moments_ring(z, z, v, np.log(0.5), mesh=mesh, query_index=np.arange(n))
    check(one, ring, 1e-5)
    shards = [s.data.shape for s in ring.sum_wv.addressable_shards]
    assert shards == [(n // 8, 2)] * 8, shards

    # 3. gradients through the ring equal one device's
    def loss(fn, lb, **kw):
        m = fn(z, z, v, lb, query_index=np.arange(n), **kw)
        return jax.numpy.sum(m.sum_wv[:, 0] / m.sum_w)
    g_one = jax.grad(lambda lb: loss(kernel_moments, lb))(np.float32(-0.5))
    with jax.set_mesh(mesh):  # the mesh's axes are explicit: its context for the traced scalar
        g_ring = jax.grad(lambda lb: loss(kernel_moments_ring, lb, mesh=mesh))(np.float32(-0.5))
    np.testing.assert_allclose(g_one, g_ring, rtol=1e-4)

    # 4. five calls of the same shapes compile once (new values each time)
    before = (_sharded._cache_size(), _ring._cache_size())
    for seed in range(5):
        w = np.random.default_rng(seed).normal(size=(300, 4)).astype(np.float32)
        kernel_moments_sharded(w, w, w[:, :2], 0.1 * seed, mesh=mesh)
        kernel_moments_ring(w, w, w[:, :2], 0.1 * seed, mesh=mesh)
    after = (_sharded._cache_size(), _ring._cache_size())
    assert after == (before[0] + 1, before[1] + 1), (before, after)
    print("ok")
    """
)


@pytest.mark.slow
def test_sharded_and_ring_equal_one_device_on_eight_host_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
