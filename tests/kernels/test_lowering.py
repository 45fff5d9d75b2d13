"""Every kernel-sum entry point lowers for GPU (Triton) and TPU (Mosaic) on this CPU machine.

``jax.export`` lowers a program for a platform that is not present: the
Pallas kernels go through the Triton and Mosaic lowerings here, so a kernel
that cannot lower (a rank-3 dot, a non-power-of-two Triton block, a
shared-memory overflow of Mosaic GPU) fails this suite, with no card. What
needs the card itself (Triton's PTX compilation and register allocation,
libtpu's layout passes and VMEM budget) is not checked here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import miscal_jax as mj

# The Pallas kernels are custom calls without a serialisation-compatibility
# promise; exporting (not running) them is what this test needs.
DISABLED = [
    jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton"),
    jax.export.DisabledSafetyCheck.custom_call("tpu_custom_call"),
]
PLATFORMS = ("cuda", "tpu")
KERNEL_CALLS = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}


def _export(fn, platform, *args):
    return jax.export.export(jax.jit(fn), platforms=[platform], disabled_checks=DISABLED)(*args)


def _spec(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("g", [1, 24])
@pytest.mark.parametrize("d", [8, 16, 64, 384])
@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_kernel_moments_lowers(impl, d, g, dtype, platform):
    q, n = 1000, 3000

    def fn(query, ref, values, log_bw):
        return mj.kernel_moments(
            query, ref, values, log_bw, impl=impl,
            query_index=jnp.arange(q), ref_mask=jnp.arange(n) % 3 > 0,
        )  # fmt: skip

    exported = _export(fn, platform, _spec((q, d), dtype), _spec((n, d), dtype),
                       _spec((n, 2), dtype), _spec((g,)))  # fmt: skip
    text = exported.mlir_module()
    assert (KERNEL_CALLS[platform] in text) == (impl == "pallas")


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_kernel_moments_gradient_lowers(impl, platform):
    def loss(query, ref, values, log_bw):
        m = mj.kernel_moments(query, ref, values, log_bw, impl=impl, query_index=jnp.arange(500))
        return jnp.sum(m.sum_wv[..., 0] / m.sum_w)

    grad = jax.grad(loss, argnums=(0, 1, 2, 3))
    _export(grad, platform, _spec((500, 16)), _spec((500, 16)), _spec((500, 1)), _spec((24,)))


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("d", [16, 384])
def test_smoothers_and_penalty_lower(d, platform):
    n = 2000
    z, r, lb = _spec((n, d)), _spec((n,)), _spec(())
    _export(lambda z, r, lb: mj.nw_field(z[:100], z, r, lb), platform, z, r, lb)
    _export(lambda z, r, lb: mj.loo_field(z, r, lb, ref_mask=jnp.arange(n) % 2 > 0),
            platform, z, r, lb)  # fmt: skip
    _export(lambda z, r: mj.select_bandwidth(z, r), platform, z, r)
    conf = _spec((n,))
    for estimator in ("ustat", "loo"):
        penalty = lambda z, c, y, lb, e=estimator: mj.local_calibration_penalty(
            z, c, y, lb, estimator=e, mask=jnp.arange(n) < n - 7, dense_max=256
        )
        _export(jax.grad(penalty, argnums=1), platform, z, conf, conf, lb)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_fit_and_predict_lower(platform):
    n, d = 600, 16
    config = mj.FitConfig(folds=3, candidates=("raw", "std"))
    emb, conf = _spec((n, d)), _spec((n,))
    key = jax.random.key(0)
    _export(lambda e, c, y: mj.fit(key, e, c, y, config)[0], platform, emb, conf, conf)
    data = mj.make_planted(n, signal_dim=d, seed=0)
    model, _ = mj.fit(key, data.embeddings, data.conf, data.correct, config)
    exported = _export(lambda m, e, c: mj.predict(m, e, c), platform, model,
                       _spec((50, d)), _spec((50,)))  # fmt: skip
    assert exported.out_avals[1].shape == (50,)
    # the large-data path: binning the folds, and predicting through the bins
    binned = _export(lambda m: mj.model.bin_model(m, cells=64), platform, model)
    assert binned.out_avals[-1].shape[:2] == (3, 64)  # the leaves' members, [K, L, cap]
    small = mj.model.bin_model(model, cells=64)
    exported = _export(lambda m, e, c: mj.predict(m, e, c), platform, small,
                       _spec((50, d)), _spec((50,)))  # fmt: skip
    assert exported.out_avals[1].shape == (50,)


def test_pallas_is_imported_only_when_used():
    import subprocess
    import sys

    code = (
        "import sys, miscal_jax, numpy as np\n"
        "ours = lambda: [m for m in sys.modules if m.startswith('miscal_jax.kernels.pallas')\n"
        "                or m.startswith('jax.experimental.pallas')]\n"
        "assert not ours(), ours()\n"
        "miscal_jax.kernel_moments(np.zeros((3, 2)), np.zeros((4, 2)), np.ones((4, 1)), 0.0)\n"
        "assert not ours(), ours()\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_default_implementation_lowers_for_every_platform():
    """The defaults (no ``impl``) lower everywhere: a default never fails."""
    z = np.zeros((300, 8), np.float32)
    for platform in ("cpu", *PLATFORMS):
        _export(lambda z: mj.nw_field(z, z, z[:, 0], 0.0).value, platform, z)
