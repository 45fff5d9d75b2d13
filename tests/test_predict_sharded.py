"""predict with the queries split over 8 host devices equals predict on one."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    import miscal_jax as mj
    from miscal_jax.model import predict_sharded
    assert jax.device_count() == 8
    d = mj.make_planted(700, seed=2, amplitude=0.2)
    cfg = mj.FitConfig(folds=3, candidates=("raw", "pca"))
    model, _ = jax.jit(mj.fit)(jax.random.key(0), d.embeddings[:500], d.conf[:500],
                               d.correct[:500], cfg)
    mesh = jax.make_mesh((8,), ("q",))
    for q in (200, 37, 1):
        x, p = d.embeddings[500:500 + q], d.conf[500:500 + q]
        one = mj.predict(model, x, p)
        many = predict_sharded(model, x, p, mesh=mesh)
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # every device holds its share of the (padded) queries' outputs
    est, corrected = predict_sharded(model, d.embeddings[:700], d.conf[:700], mesh=mesh)
    assert corrected.shape == (700,)
    # the work itself: 700 queries are 88 a device, padded to 128, run where they lie
    from jax.sharding import NamedSharding, PartitionSpec as P
    rows = NamedSharding(mesh, P("q"))
    x = jax.device_put(np.zeros((8 * 128, 8), np.float32), rows)
    p = jax.device_put(np.full(8 * 128, 0.5, np.float32), rows)
    _, sharded = mj.model.sharded._predict_sharded(model, x, p, mesh=mesh, axis="q")
    assert [s.data.shape for s in sharded.addressable_shards] == [(128,)] * 8
    # a second call of the same bucket compiles nothing new
    size = mj.model.sharded._predict_sharded._cache_size()
    predict_sharded(model, d.embeddings[:190], d.conf[:190], mesh=mesh)
    assert mj.model.sharded._predict_sharded._cache_size() == size
    print("ok")
    """
)


@pytest.mark.slow
def test_predict_sharded_over_8_devices_equals_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
