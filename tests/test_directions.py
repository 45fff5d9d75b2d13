"""The linear metric's start: gradient directions, their rank, and the metric itself."""

import jax
import jax.numpy as jnp
import numpy as np

from miscal_jax.geometry.directions import RANKS, gradient_directions, initial_metric
from miscal_jax.geometry.encoder import LinearMetric, batch_loo_loss
from miscal_jax.smoothing.nadaraya_watson import bandwidth_grid, loo_field, nw_field
from miscal_jax.synthetic.planted import make_planted


def _angles(a, b):
    """Principal angles in degrees between the column spans of ``a`` and ``b``."""
    qa, _ = np.linalg.qr(a)
    qb, _ = np.linalg.qr(b)
    s = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return np.degrees(np.arccos(np.clip(s, -1.0, 1.0)))


def test_gradient_outer_product_equals_finite_differences():
    u = np.asarray(jax.random.normal(jax.random.key(0), (80, 3)))
    r = 0.3 * np.tanh(u @ np.array([1.0, -0.5, 0.2]))
    mask = np.arange(80) < 70
    dirs, strengths = gradient_directions(jnp.asarray(u), jnp.asarray(r), mask, kernel="gaussian")
    outer = np.asarray(dirs) @ np.diag(np.asarray(strengths)) @ np.asarray(dirs).T
    # the same matrix from central differences of the leave-one-out smoothed field
    grid = bandwidth_grid(u, ref_mask=mask)
    err = [
        np.mean(((r - np.asarray(v)) ** 2)[mask])
        for v in loo_field(u, r, grid, ref_mask=mask).value
    ]
    log_bw = grid[int(np.argmin(err))]
    index = np.arange(80)

    def field(q):
        return np.asarray(nw_field(q, u, r, log_bw, query_index=index, ref_mask=mask).value)

    eps = 1e-2
    grads = np.stack(
        [(field(u + eps * e) - field(u - eps * e)) / (2 * eps) for e in np.eye(3)], axis=1
    )
    grads = grads[mask]
    np.testing.assert_allclose(outer, grads.T @ grads / mask.sum(), rtol=2e-2, atol=1e-5)


def test_gradient_directions_find_a_rotated_direction():
    u = np.asarray(jax.random.normal(jax.random.key(1), (600, 6)))
    a = np.asarray(jax.random.normal(jax.random.key(2), (6,)))
    a = a / np.linalg.norm(a)
    r = 0.3 * np.tanh(2.0 * u @ a) + 0.1 * np.asarray(jax.random.normal(jax.random.key(3), (600,)))
    dirs, strengths = gradient_directions(jnp.asarray(u), jnp.asarray(r), np.ones(600, bool),
                                          kernel="gaussian")  # fmt: skip
    assert _angles(np.asarray(dirs)[:, :1], a[:, None])[0] < 10.0
    assert np.all(np.diff(np.asarray(strengths)) <= 1e-6)  # strongest first


def test_initial_metric_recovers_a_planted_subspace_and_zeroes_past_its_rank():
    # a strong planted field on 2 of 24 rotated directions, with its own structure
    d = make_planted(1500, seed=0, signal_dim=2, nuisance_dim=22, nuisance_scale=0.43,
                     amplitude=0.3)  # fmt: skip
    u = (d.embeddings - d.embeddings.mean(0)) / d.embeddings.std(0)
    r = jnp.asarray(d.field_given_conf)  # E[r | x, conf]: no coin flips
    fit = np.arange(1500) < 1000
    cov = np.cov(u[fit].T)
    principal = np.linalg.eigh(cov)[1][:, ::-1][:, :8]
    matrix, rank = initial_metric(jnp.asarray(u), r, fit, ~fit, jnp.asarray(principal),
                                  kernel="gaussian")  # fmt: skip
    matrix, rank = np.asarray(matrix), int(rank)
    assert rank in RANKS and matrix.shape == (24, 8)
    assert np.all(matrix[:, rank:] == 0.0)
    # the signal directions in u's coordinates: u = x / std, so x @ B = u @ (std * B)
    basis = d.embeddings.std(0)[:, None] * d.signal_basis
    assert rank >= 2
    assert np.mean(_angles(matrix[:, :rank], basis)) < 25.0
    # the stop items alone, gathered (padded to 600), choose the same directions
    gathered, same_rank = initial_metric(jnp.asarray(u), r, fit, ~fit, jnp.asarray(principal),
                                         kernel="gaussian", stop_size=600)  # fmt: skip
    assert int(same_rank) == rank
    np.testing.assert_allclose(np.asarray(gathered), matrix, atol=1e-6)


def test_linear_metric_zero_columns_get_zero_gradient():
    d = make_planted(400, seed=1, signal_dim=4, nuisance_dim=4)
    u = jnp.asarray((d.embeddings - d.embeddings.mean(0)) / d.embeddings.std(0))
    start = np.zeros((8, 3), np.float32)
    start[:, 0] = 1.0
    module = LinearMetric(rank=3)
    params = {"encoder": {"log_w": jnp.zeros(8), "directions": jnp.asarray(start)},
              "log_bandwidth": jnp.asarray(0.5)}  # fmt: skip
    loss = lambda p: batch_loo_loss(p, module.apply, u, jnp.asarray(d.correct - d.conf),
                                    kernel="gaussian")  # fmt: skip  # noqa: E731
    grads = jax.grad(loss)(params)["encoder"]
    # a zero column changes no distance, so training never moves it: the start sets the rank
    assert np.all(np.asarray(grads["directions"])[:, 1:] == 0.0)
    assert np.any(np.asarray(grads["directions"])[:, 0] != 0.0)
    assert np.any(np.asarray(grads["log_w"]) != 0.0)
    z = module.apply({"params": params["encoder"]}, u)  # [u * w, u @ W / sqrt(d)]
    np.testing.assert_allclose(z[:, 8], u @ start[:, 0] / np.sqrt(8), rtol=1e-5, atol=1e-6)
    assert z.shape == (400, 11)
