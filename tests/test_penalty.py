"""Tests for the local-calibration penalty (miscal_jax.losses.penalty)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miscal_jax.losses.penalty import local_calibration_penalty
from miscal_jax.metrics.calibration import regional_error
from miscal_jax.synthetic.planted import make_planted


def _data(n, d=3, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d)).astype(dtype)
    conf = rng.uniform(0.05, 0.95, size=n).astype(dtype)
    correct = (rng.random(n) < conf).astype(dtype)
    return z, conf, correct


_NUMPY_KERNELS = {
    "gaussian": lambda u2: np.exp(-0.5 * u2),
    "epanechnikov": lambda u2: max(1.0 - u2, 0.0),
    "triweight": lambda u2: max(1.0 - u2, 0.0) ** 3,
}


def _kernel_matrix(z, h, kernel):
    """``[n, n]`` float64 kernel matrix by a double loop, zero diagonal."""
    n = len(z)
    k = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                k[i, j] = _NUMPY_KERNELS[kernel](float(np.sum((z[i] - z[j]) ** 2)) / h**2)
    return k


def _ustat_reference(z, conf, correct, h, kernel="gaussian"):
    r = np.asarray(correct, np.float64) - np.asarray(conf, np.float64)
    k = _kernel_matrix(np.asarray(z, np.float64), h, kernel)
    n = len(r)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += r[i] * r[j] * k[i, j]
    return total / (n * (n - 1))


def _loo_reference(z, conf, correct, h, kernel="gaussian"):
    r = np.asarray(correct, np.float64) - np.asarray(conf, np.float64)
    k = _kernel_matrix(np.asarray(z, np.float64), h, kernel)
    field = np.array([k[i] @ r / k[i].sum() if k[i].sum() > 0 else 0.0 for i in range(len(r))])
    return float(np.mean(r * field))


@pytest.mark.parametrize("kernel", ["gaussian", "epanechnikov", "triweight"])
def test_ustat_equals_double_loop(kernel):
    z, conf, correct = _data(25)
    with jax.enable_x64(True):
        got = local_calibration_penalty(z, conf, correct, np.log(1.5), kernel=kernel)
        assert got.dtype == jnp.float64
    want = _ustat_reference(z, conf, correct, 1.5, kernel)
    np.testing.assert_allclose(float(got), want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kernel", ["gaussian", "epanechnikov"])
def test_loo_equals_dense_reference(kernel):
    z, conf, correct = _data(25, seed=1)
    with jax.enable_x64(True):
        got = local_calibration_penalty(
            z, conf, correct, np.log(0.8), estimator="loo", kernel=kernel
        )
    want = _loo_reference(z, conf, correct, 0.8, kernel)
    np.testing.assert_allclose(float(got), want, rtol=1e-10, atol=1e-14)


def test_float32_close_to_reference():
    z, conf, correct = _data(40, seed=2, dtype=np.float32)
    got = local_calibration_penalty(z, conf, correct, np.log(1.0))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), _ustat_reference(z, conf, correct, 1.0), atol=1e-6)


@pytest.mark.parametrize("estimator", ["ustat", "loo"])
def test_blocked_path_equals_dense(estimator):
    # above dense_max the kernel-sum primitive is used; same value and gradients
    z, conf, correct = _data(37, seed=3)
    lb = np.log(0.9)
    with jax.enable_x64(True):

        def pen(c, dense_max):
            return local_calibration_penalty(
                z, c, correct, lb, estimator=estimator, dense_max=dense_max
            )

        dense, g_dense = jax.value_and_grad(pen)(conf, 1024)
        blocked, g_blocked = jax.value_and_grad(pen)(conf, 8)
    np.testing.assert_allclose(float(blocked), float(dense), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(g_blocked, g_dense, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("estimator", ["ustat", "loo"])
def test_grad_conf_equals_finite_differences(estimator):
    # the blocked path's gradients equal these (test_blocked_path_equals_dense)
    dense_max = 1024
    z, conf, correct = _data(20, seed=4)
    lb = np.log(1.2)
    with jax.enable_x64(True):
        pen = lambda c: local_calibration_penalty(
            z, c, correct, lb, estimator=estimator, dense_max=dense_max
        )
        grad = np.asarray(jax.grad(pen)(jnp.asarray(conf)))
        eps = 1e-6
        fd = np.array(
            [
                (float(pen(conf + eps * e)) - float(pen(conf - eps * e))) / (2 * eps)
                for e in np.eye(len(conf))
            ]
        )
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-10)
    assert np.any(np.abs(grad) > 1e-4)


@pytest.mark.parametrize("dense_max", [1024, 8])
def test_geometry_gradient_stopped_unless_asked(dense_max):
    z, conf, correct = _data(20, seed=5, dtype=np.float32)
    lb = jnp.log(1.0)

    def pen(z, lb, stop):
        return local_calibration_penalty(
            z, conf, correct, lb, stop_geometry=stop, dense_max=dense_max
        )

    gz, glb = jax.grad(pen, argnums=(0, 1))(jnp.asarray(z), lb, True)
    assert np.all(np.asarray(gz) == 0.0) and float(glb) == 0.0
    gz, glb = jax.grad(pen, argnums=(0, 1))(jnp.asarray(z), lb, False)
    assert np.all(np.isfinite(gz)) and np.any(np.abs(gz) > 1e-5)
    assert np.isfinite(glb) and abs(float(glb)) > 1e-6
    if dense_max < len(z):
        return  # bandwidth finite differences: dense path only (compile time)
    with jax.enable_x64(True):
        z64 = jnp.asarray(z, jnp.float64)
        fd = (float(pen(z64, 1e-6, False)) - float(pen(z64, -1e-6, False))) / 2e-6
        np.testing.assert_allclose(float(jax.grad(pen, 1)(z64, 0.0, False)), fd, rtol=1e-5)


def test_geometry_gradient_finite_at_zero_distance():
    z = np.zeros((6, 2), np.float32)
    z[3:] = 1.0  # duplicated points: zero distances off the diagonal
    conf = np.full(6, 0.4, np.float32)
    correct = np.array([1, 0, 1, 1, 0, 0], np.float32)
    for kernel, estimator in (("gaussian", "loo"), ("epanechnikov", "ustat")):
        gz, glb = jax.grad(
            lambda z, lb, e=estimator, k=kernel: local_calibration_penalty(
                z, conf, correct, lb, estimator=e, kernel=k, stop_geometry=False
            ),
            argnums=(0, 1),
        )(jnp.asarray(z), jnp.log(2.0))
        assert np.all(np.isfinite(gz)) and np.isfinite(glb), (kernel, estimator)


def test_isolated_points_give_finite_loo():
    # compact kernel, every point alone: no neighbours, field 0, penalty 0
    z = 10.0 * np.arange(5, dtype=np.float32)[:, None]
    conf = np.full(5, 0.3, np.float32)
    correct = np.ones(5, np.float32)
    val, grad = jax.value_and_grad(
        lambda c: local_calibration_penalty(
            z, c, correct, 0.0, estimator="loo", kernel="epanechnikov"
        )
    )(jnp.asarray(conf))
    assert float(val) == 0.0 and np.all(np.asarray(grad) == 0.0)


@pytest.mark.parametrize("dense_max", [1024, 8], ids=["dense", "blocked"])
@pytest.mark.parametrize("junk", [0.0, 1e4, np.nan], ids=["zeros", "far", "nan"])
@pytest.mark.parametrize("estimator", ["ustat", "loo"])
def test_mask_equals_unpadded_whatever_the_padding_holds(estimator, junk, dense_max):
    """Padding rows may hold anything (far points, NaN): the masked penalty and its
    gradient equal the unpadded ones."""
    z, conf, correct = _data(30, seed=6, dtype=np.float32)
    n = 22
    mask = np.arange(30) < n
    z, conf, correct = z.copy(), conf.copy(), correct.copy()
    z[n:], conf[n:], correct[n:] = junk, 0.5 if np.isnan(junk) else 0.99, 1.0
    f = lambda c, z, y, m: local_calibration_penalty(
        z, c, y, 0.0, estimator=estimator, mask=m, dense_max=dense_max
    )
    padded, g_pad = jax.value_and_grad(f)(conf, z, correct, mask)
    plain, g_plain = jax.value_and_grad(f)(conf[:n], z[:n], correct[:n], None)
    np.testing.assert_allclose(float(padded), float(plain), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(g_pad[:n], g_plain, rtol=1e-4, atol=1e-8)
    np.testing.assert_array_equal(g_pad[n:], 0.0)


def test_jit_vmap_grad_over_models():
    # a batch of 8 models' confidences on the same items and geometry
    z, _, correct = _data(64, seed=7, dtype=np.float32)
    rng = np.random.default_rng(7)
    conf = rng.uniform(0.05, 0.95, size=(8, 64)).astype(np.float32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def value_and_grads(conf, lb):
        f = lambda c: local_calibration_penalty(z, c, correct, lb)
        return jax.vmap(jax.value_and_grad(f))(conf)

    vals, grads = value_and_grads(conf, jnp.float32(0.0))
    for m in range(8):
        v, g = jax.value_and_grad(lambda c: local_calibration_penalty(z, c, correct, 0.0))(conf[m])
        np.testing.assert_allclose(float(vals[m]), float(v), rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(grads[m], g, rtol=1e-5, atol=1e-8)
    # a new bandwidth or new confidences do not recompile
    value_and_grads(conf * 0.9, jnp.float32(0.3))


def test_in_a_training_step():
    # gradient descent on per-item logits lowers the penalty and the planted
    # regions' calibration error
    d = make_planted(300, seed=0, amplitude=0.2)
    logits = jnp.asarray(np.log(d.conf / (1 - d.conf)))
    loss = lambda lg: local_calibration_penalty(d.embeddings, jax.nn.sigmoid(lg), d.correct, 0.0)
    step = jax.jit(lambda lg: lg - 1000.0 * jax.grad(loss)(lg))
    start = float(loss(logits))
    start_regional = float(regional_error(d.conf, d.correct, d.region))
    for _ in range(20):
        logits = step(logits)
    assert float(loss(logits)) < 0.5 * start
    end_regional = float(regional_error(jax.nn.sigmoid(logits), d.correct, d.region))
    assert end_regional < 0.9 * start_regional, (start_regional, end_regional)


def _null_penalties(num_sets, n, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(num_sets, n, 4)).astype(np.float32)
    conf = rng.beta(5.0, 1.6, size=(num_sets, n)).astype(np.float32)
    correct = (rng.random((num_sets, n)) < conf).astype(np.float32)
    pen = jax.jit(jax.vmap(lambda z, c, y: local_calibration_penalty(z, c, y, jnp.log(1.0))))
    return np.asarray(pen(z, conf, correct), np.float64)


def test_null_mean_is_zero_and_planted_is_positive():
    # 400 calibrated-by-construction data sets (correct ~ Bernoulli(conf));
    # the U-statistic is unbiased, so its mean is 0 within 2 standard errors
    null = _null_penalties(400, 200, seed=0)
    se = null.std(ddof=1) / np.sqrt(len(null))
    assert abs(null.mean()) < 2 * se, (null.mean(), se)
    # a planted field: far above the null spread on a single data set
    d = make_planted(1000, seed=0, amplitude=0.15)
    planted = float(local_calibration_penalty(d.embeddings, d.conf, d.correct, 0.0))
    null_1000 = _null_penalties(50, 1000, seed=1)
    assert planted > null_1000.mean() + 8 * null_1000.std(ddof=1), (planted, null_1000.std())


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["ustat"])
def test_null_mean_zero_many_sizes(estimator):
    # 1000 null sets at each of three batch sizes; U-statistic mean within 2 se of 0
    for seed, n in enumerate((16, 128, 1500)):
        null = _null_penalties(1000 if n < 1000 else 200, n, seed=10 + seed)
        se = null.std(ddof=1) / np.sqrt(len(null))
        assert abs(null.mean()) < 2 * se, (n, null.mean(), se)


@pytest.mark.slow
def test_large_batch_never_builds_the_kernel_matrix():
    # value and gradient at n = 4096: compiled temporaries far below one [n, n]
    n = 4096
    z, conf, correct = _data(n, d=4, seed=8, dtype=np.float32)
    fn = jax.jit(jax.value_and_grad(lambda c, z: local_calibration_penalty(z, c, correct, 0.0)))
    compiled = fn.lower(conf, z).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < n * n * 4 / 4, temp
    val, grad = compiled(conf, z)
    small = local_calibration_penalty(z, conf, correct, 0.0, dense_max=n)
    np.testing.assert_allclose(float(val), float(small), rtol=1e-4, atol=1e-9)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"estimator": "mmce"}, "estimator: unknown estimator 'mmce'"),
        ({"kernel": "box"}, "kernel: unknown kernel 'box'"),
        ({"z": np.zeros(5)}, r"z: expected a \[n, d\] array"),
        ({"conf": np.zeros(4)}, r"conf: expected shape \(5,\)"),
        ({"correct": np.zeros((5, 1))}, r"correct: expected shape \(5,\)"),
        ({"mask": np.ones(3, bool)}, r"mask: expected shape \(5,\)"),
        ({"log_bandwidth": np.zeros(2)}, "log_bandwidth: expected a scalar"),
        ({"z": np.zeros((1, 2)), "conf": [0.5], "correct": [1.0]}, "at least 2 items"),
    ],
)
def test_bad_inputs(kwargs, match):
    args = {"z": np.zeros((5, 2)), "conf": np.full(5, 0.5), "correct": np.ones(5)}
    args["log_bandwidth"] = 0.0
    args.update(kwargs)
    pos = [args.pop(k) for k in ("z", "conf", "correct", "log_bandwidth")]
    with pytest.raises(ValueError, match=match):
        local_calibration_penalty(*pos, **args)
